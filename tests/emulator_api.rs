//! The emulator's wire protocol as other clients use it (SDK-style GETs, POST forms,
//! malformed requests), and its admin API.

use std::time::{Duration, Instant};

use ecs_emulator::{Delays, EmulatorConfig};
use ecs_operator::cloud::client::{ClientConfig, EcsClient};
use ecs_operator::cloud::limiter::RateLimit;
use ecs_operator::cloud::model::DescribeQuery;
use ecs_operator::cloud::signer::{canonical_query, sign, Credentials, Secret, SignRequest};
use ecs_test_harness::{json_answer, EmulatorServer};
use serde_json::{json, Value};

const AK: &str = "AKLTemulator";
const SK: &str = "emulator-secret";

/// The in-process emulator (harness), with this file's signed-request helpers.
struct Emu(EmulatorServer);

impl std::ops::Deref for Emu {
    type Target = EmulatorServer;
    fn deref(&self) -> &EmulatorServer {
        &self.0
    }
}

async fn start(delays: Delays) -> Emu {
    let cfg = EmulatorConfig {
        delays,
        ..Default::default()
    };
    Emu(EmulatorServer::start(cfg).await)
}

fn creds(sk: &str) -> Credentials {
    Credentials {
        access_key: AK.into(),
        secret_key: Secret::new(sk),
        session_token: None,
    }
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A request signed over `signed_query`, sent with `wire_query` (so encodings can differ).
struct Raw<'a> {
    method: &'a str,
    signed_query: Vec<(String, String)>,
    wire_query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Sent instead of `body` when set (the signature still covers `body`).
    sent_body: Option<Vec<u8>>,
    secret: &'a str,
}

impl Emu {
    fn raw(&self, r: &Raw<'_>) -> reqwest::RequestBuilder {
        let x_date = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let sig = sign(
            &creds(r.secret),
            &SignRequest {
                method: r.method,
                host: &self.host,
                path: "/",
                query: &r.signed_query,
                headers: &r.headers,
                body: &r.body,
                x_date: &x_date,
                region: "cn-beijing",
                service: "ecs",
            },
        );
        let m = reqwest::Method::from_bytes(r.method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}/?{}", self.base, r.wire_query))
            .body(r.sent_body.clone().unwrap_or_else(|| r.body.clone()));
        for (k, v) in sig.headers {
            req = req.header(k, v);
        }
        req
    }

    async fn send(&self, r: &Raw<'_>) -> (u16, Value) {
        json_answer(self.raw(r).send().await.unwrap()).await
    }

    /// Signed GET with the canonical query on the wire, like our client.
    async fn get(&self, params: &[(&str, &str)]) -> (u16, Value) {
        let q = pairs(params);
        self.send(&Raw {
            method: "GET",
            wire_query: canonical_query(&q),
            signed_query: q,
            headers: vec![],
            body: vec![],
            sent_body: None,
            secret: SK,
        })
        .await
    }
}

fn code(v: &Value) -> &str {
    v["ResponseMetadata"]["Error"]["Code"]
        .as_str()
        .unwrap_or("OK")
}

#[tokio::test]
async fn sdk_style_get_with_plus_encoding_and_extra_signed_headers() {
    let emu = start(Delays::ZERO).await;
    // What volcenginesdk-ecs sends: insertion order, `+` for spaces, Action/Version last,
    // Content-Type and its telemetry headers signed.
    let params = pairs(&[
        ("ClientToken", "tok-3"),
        ("Count", "2"),
        ("DeletionProtection", "true"),
        ("ImageId", "image-abc"),
        ("InstanceName", "k8s-node"),
        ("InstanceTypeId", "ecs.g1.large"),
        ("NetworkInterfaces.1.SecurityGroupIds.1", "sg-1"),
        ("NetworkInterfaces.1.SubnetId", "subnet-1"),
        ("Tags.1.Key", "owner"),
        ("Tags.1.Value", "my operator/*:"),
        ("ZoneId", "cn-beijing-a"),
        ("Action", "RunInstances"),
        ("Version", "2020-04-01"),
    ]);
    let wire: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    assert!(wire.contains("my+operator"));
    let (s, v) = emu
        .send(&Raw {
            method: "GET",
            signed_query: params,
            wire_query: wire,
            headers: pairs(&[
                ("Content-Type", "text/plain"),
                (
                    "X-Sdk-Invocation-Id",
                    "00000000-0000-4000-8000-000000000001",
                ),
                ("X-Sdk-Request", "attempt=1; max=4"),
            ]),
            body: vec![],
            sent_body: None,
            secret: SK,
        })
        .await;
    assert_eq!(s, 200, "{v}");
    let meta = &v["ResponseMetadata"];
    assert_eq!(meta["Action"], "RunInstances");
    assert_eq!(meta["Version"], "2020-04-01");
    assert_eq!(meta["Service"], "ecs");
    assert_eq!(meta["Region"], "cn-beijing");
    assert!(meta.get("Error").is_none());
    let ids = v["Result"]["InstanceIds"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    let (_, inst) = emu
        .admin(
            "GET",
            &format!("instances/{}", ids[0].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(inst["Tags"][0]["Value"], "my operator/*:");
    assert_eq!(inst["DeletionProtection"], true);
    assert_eq!(inst["Status"], "RUNNING");
}

#[tokio::test]
async fn post_form_body_is_merged_and_covered_by_the_body_hash() {
    let emu = start(Delays::ZERO).await;
    let (_, seeded) = emu
        .admin("POST", "instances", Some(json!({"InstanceId": "i-form"})))
        .await;
    assert_eq!(seeded["InstanceId"], "i-form");
    let query = pairs(&[("Action", "DeleteInstances"), ("Version", "2020-04-01")]);
    let form = |body: &str, sent: &str| Raw {
        method: "POST",
        wire_query: canonical_query(&query),
        signed_query: query.clone(),
        headers: pairs(&[("Content-Type", "application/x-www-form-urlencoded")]),
        body: body.as_bytes().to_vec(),
        sent_body: Some(sent.as_bytes().to_vec()),
        secret: SK,
    };
    // Signed over one body, another sent: the hash gives it away.
    let (s, v) = emu
        .send(&form(
            "InstanceIds.1=i-form&ClientToken=t1",
            "InstanceIds.1=i-other&ClientToken=t1",
        ))
        .await;
    assert_eq!((s, code(&v)), (401, "SignatureDoesNotMatch"));
    let (s, v) = emu
        .send(&form(
            "InstanceIds.1=i-form&ClientToken=t1",
            "InstanceIds.1=i-form&ClientToken=t1",
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["Result"],
        json!({"OperationDetails": [{"InstanceId": "i-form"}]})
    );
    let (_, calls) = emu.admin("GET", "calls?action=DeleteInstances", None).await;
    assert_eq!(calls[1]["method"], "POST");
    assert_eq!(calls[1]["client_token"], "t1");
    assert_eq!(calls[1]["params"]["InstanceIds.1"], "i-form");
}

#[tokio::test]
async fn malformed_requests_get_gateway_errors_with_fresh_request_ids() {
    let emu = start(Delays::ZERO).await;
    let mut ids = Vec::new();
    let mut check = |status: u16, v: &Value, want_status: u16, want: &str, code_n: Option<i64>| {
        assert_eq!((status, code(v)), (want_status, want), "{v}");
        assert_eq!(
            v["ResponseMetadata"]["Error"]["CodeN"].as_i64(),
            code_n,
            "{v}"
        );
        assert_eq!(v["ResponseMetadata"]["Service"], "ecs");
        assert!(v.get("Result").is_none());
        ids.push(
            v["ResponseMetadata"]["RequestId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    };

    let (s, v) = json_answer(
        emu.http
            .get(format!(
                "{}/?Action=DescribeInstances&Version=2020-04-01",
                emu.base
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    check(s, &v, 401, "MissingAuthenticationToken", Some(100003));
    assert_eq!(v["ResponseMetadata"]["Action"], "DescribeInstances");
    let (s, v) = json_answer(
        emu.http
            .get(format!(
                "{}/?Action=DescribeInstances&Version=2020-04-01",
                emu.base
            ))
            .header("Authorization", "HMAC-SHA256 Credential=AK/2024")
            .send()
            .await
            .unwrap(),
    )
    .await;
    check(s, &v, 400, "InvalidAuthorization", None);
    let (s, v) = emu.get(&[("Version", "2020-04-01")]).await;
    check(s, &v, 400, "MissingParameter", Some(100002));
    let (s, v) = emu.get(&[("Action", "DescribeInstances")]).await;
    check(s, &v, 400, "MissingParameter", Some(100002));
    let (s, v) = emu
        .get(&[("Action", "RebootInstances"), ("Version", "2020-04-01")])
        .await;
    check(s, &v, 404, "InvalidActionOrVersion", Some(100008));
    let (s, v) = emu
        .get(&[("Action", "DescribeInstances"), ("Version", "2019-01-01")])
        .await;
    check(s, &v, 404, "InvalidActionOrVersion", Some(100008));
    let (s, v) = emu
        .get(&[
            ("Action", "RunInstances"),
            ("Version", "2020-04-01"),
            ("ClientToken", &"x".repeat(65)),
        ])
        .await;
    check(s, &v, 400, "InvalidClientToken.Malformed", None);
    let (s, v) = emu
        .get(&[
            ("Action", "RunInstances"),
            ("Version", "2020-04-01"),
            ("ClientToken", "töken"),
        ])
        .await;
    check(s, &v, 400, "InvalidClientToken.Malformed", None);
    let (s, v) = emu
        .get(&[
            ("Action", "RunInstances"),
            ("Version", "2020-04-01"),
            ("ImageId", "img"),
            ("InstanceTypeId", "t"),
            ("InstanceName", "n"),
        ])
        .await;
    check(s, &v, 400, "MissingParameter.ZoneId", None);
    let q = pairs(&[("Action", "DescribeInstances"), ("Version", "2020-04-01")]);
    let (s, v) = emu
        .send(&Raw {
            method: "PUT",
            wire_query: canonical_query(&q),
            signed_query: q,
            headers: vec![],
            body: vec![],
            sent_body: None,
            secret: SK,
        })
        .await;
    check(s, &v, 405, "MethodNotAllowed", None);
    let (s, v) = json_answer(
        emu.http
            .get(format!("{}/v1/instances", emu.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    check(s, &v, 404, "InvalidActionOrVersion", Some(100008));

    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "request ids must be fresh");
    let (_, calls) = emu.admin("GET", "calls", None).await;
    assert_eq!(
        calls.as_array().unwrap().len(),
        n - 1,
        "every API request but the wrong path is logged"
    );
}

#[tokio::test]
async fn lost_responses_fail_at_the_transport_level() {
    let emu = start(Delays::ZERO).await;
    emu.admin(
        "PUT",
        "faults/DescribeInstances",
        Some(json!({"lose_next": 1})),
    )
    .await;
    let q = pairs(&[("Action", "DescribeInstances"), ("Version", "2020-04-01")]);
    let raw = Raw {
        method: "GET",
        wire_query: canonical_query(&q),
        signed_query: q,
        headers: vec![],
        body: vec![],
        sent_body: None,
        secret: SK,
    };
    let outcome = match emu.raw(&raw).send().await {
        Err(e) => Err(e),
        Ok(resp) => resp.bytes().await.map(|_| ()),
    };
    assert!(
        outcome.is_err(),
        "a lost response must not look like an answer"
    );
    let (s, _) = emu.send(&raw).await;
    assert_eq!(s, 200);
    let (_, calls) = emu.admin("GET", "calls", None).await;
    assert_eq!(calls[0]["lost"], true);
    assert_eq!(calls[0]["fault"], "lost");
    assert_eq!(calls[1]["lost"], false);
}

#[tokio::test]
async fn admin_instances_seed_patch_vanish() {
    let emu = start(Delays {
        create_ms: 0,
        stop_ms: 60_000,
        start_ms: 0,
        delete_ms: 0,
    })
    .await;
    let (s, v) = emu
        .admin(
            "POST",
            "instances",
            Some(
                json!({"InstanceId": "i-seeded", "ZoneId": "cn-shanghai-b", "InstanceName": "db",
                "Tags": [{"Key": "a", "Value": "b"}], "DeletionProtection": true,
                "InstanceChargeType": "PrePaid", "ExpiredAt": "2030-01-01T00:00:00Z"}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["Region"], "cn-shanghai", "region follows the zone");
    for key in [
        "InstanceId",
        "InstanceName",
        "Status",
        "ZoneId",
        "NetworkInterfaces",
        "Tags",
        "DeletionProtection",
        "InstanceChargeType",
        "ExpiredAt",
        "CreatedAt",
    ] {
        assert!(v.get(key).is_some(), "{key} missing in {v}");
    }
    let (s, _) = emu
        .admin("POST", "instances", Some(json!({"InstanceId": "i-seeded"})))
        .await;
    assert_eq!(s, 409);
    let (s, v) = emu
        .admin("POST", "instances", Some(json!({"InstanceID": "typo"})))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = emu
        .admin(
            "POST",
            "instances",
            Some(json!({"ExpiredAt": "next tuesday"})),
        )
        .await;
    assert_eq!(s, 400);

    let (s, v) = emu
        .admin(
            "PATCH",
            "instances/i-seeded",
            Some(json!({"Status": "STOPPING", "DeletionProtection": false, "ExpiredAt": "", "InstanceChargeType": "PostPaid"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["Status"], "STOPPING");
    assert_eq!(v["DeletionProtection"], false);
    assert!(v.get("ExpiredAt").is_none());
    let (_, v) = emu.admin("GET", "instances?region=cn-beijing", None).await;
    assert_eq!(v, json!([]));
    let (_, v) = emu.admin("GET", "instances", None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);

    let (s, _) = emu.admin("DELETE", "instances/i-seeded", None).await;
    assert_eq!(s, 204);
    let (s, _) = emu.admin("DELETE", "instances/i-seeded", None).await;
    assert_eq!(s, 404);
    let (s, _) = emu
        .admin(
            "PATCH",
            "instances/i-seeded",
            Some(json!({"Status": "RUNNING"})),
        )
        .await;
    assert_eq!(s, 404);
    let (_, v) = emu.admin("GET", "deletions", None).await;
    assert_eq!(v, json!([]), "vanishing out of band is not a deletion");
}

#[tokio::test]
async fn admin_faults_config_calls_stats_reset() {
    let emu = start(Delays::ZERO).await;
    let (s, v) = emu
        .admin(
            "PUT",
            "faults/DeleteInstances",
            Some(json!({"fail_next": 3, "latency_ms": 5})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["fail_next"], 3);
    let (s, _) = emu
        .admin("PUT", "faults/RebootInstances", Some(json!({})))
        .await;
    assert_eq!(s, 404);
    let (s, _) = emu
        .admin(
            "PUT",
            "faults/DeleteInstances",
            Some(json!({"error_rate": 1.5})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = emu
        .admin(
            "PUT",
            "faults/DeleteInstances",
            Some(json!({"fail_nxet": 1})),
        )
        .await;
    assert_eq!(s, 400);
    emu.admin(
        "PUT",
        "faults/StopInstances",
        Some(json!({"error_rate": 0.5})),
    )
    .await;
    let (_, v) = emu.admin("GET", "faults", None).await;
    assert_eq!(v["DeleteInstances"]["fail_next"], 3);
    assert_eq!(v["StopInstances"]["error_rate"], 0.5);
    emu.admin("DELETE", "faults/StopInstances", None).await;
    let (_, v) = emu.admin("GET", "faults", None).await;
    assert!(v.get("StopInstances").is_none());

    // A fault counts only real API calls.
    let del = [
        ("Action", "DeleteInstances"),
        ("Version", "2020-04-01"),
        ("InstanceIds.1", "i-x"),
    ];
    let (s, v) = emu.get(&del).await;
    assert_eq!((s, code(&v)), (500, "InternalError"));
    assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100014);
    let (_, v) = emu.admin("GET", "faults", None).await;
    assert_eq!(v["DeleteInstances"]["fail_next"], 2);
    emu.admin("DELETE", "faults", None).await;
    let (s, v) = emu.get(&del).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["Result"]["OperationDetails"][0]["Error"]["Code"],
        "InvalidInstance.NotFound"
    );
    emu.get(&[("Action", "DescribeInstances"), ("Version", "2020-04-01")])
        .await;

    let (_, calls) = emu.admin("GET", "calls", None).await;
    let calls = calls.as_array().unwrap();
    assert_eq!(calls.len(), 3);
    assert!(calls
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    calls[0]["time"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert_eq!(
        calls[1]["instance_codes"],
        json!(["InvalidInstance.NotFound"])
    );
    let first = calls[0]["seq"].as_u64().unwrap();
    let (_, since) = emu
        .admin("GET", &format!("calls?since={first}"), None)
        .await;
    assert_eq!(since.as_array().unwrap().len(), 2);
    let (_, only) = emu
        .admin("GET", "calls?action=DescribeInstances", None)
        .await;
    assert_eq!(only.as_array().unwrap().len(), 1);
    let (_, stats) = emu.admin("GET", "stats", None).await;
    assert_eq!(stats["calls"], 3);
    assert_eq!(
        stats["actions"]["DeleteInstances"]["codes"]["InternalError"],
        1
    );
    assert_eq!(stats["actions"]["DeleteInstances"]["codes"]["OK"], 1);
    assert_eq!(
        stats["actions"]["DeleteInstances"]["instance_codes"]["InvalidInstance.NotFound"],
        1
    );
    let (s, _) = emu.admin("DELETE", "calls", None).await;
    assert_eq!(s, 204);
    let (_, calls) = emu.admin("GET", "calls", None).await;
    assert_eq!(calls, json!([]));

    let (_, c) = emu.admin("GET", "config", None).await;
    assert_eq!(c["replay"], true);
    assert_eq!(c["create_delay_ms"], 0);
    let (s, c) = emu
        .admin(
            "PUT",
            "config",
            Some(json!({"replay": false, "delete_delay_ms": 250, "expired_tokens": ["t"]})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        (c["replay"].as_bool(), c["delete_delay_ms"].as_u64()),
        (Some(false), Some(250))
    );
    assert_eq!(c["expired_tokens"], json!(["t"]));
    assert!(c.get("secret_key").is_none());
    let (s, _) = emu
        .admin("PUT", "config", Some(json!({"replya": true})))
        .await;
    assert_eq!(s, 400);

    emu.admin("POST", "instances/bulk", Some(json!({"Count": 3})))
        .await;
    emu.admin("PUT", "faults/RunInstances", Some(json!({"fail_next": 1})))
        .await;
    let (s, _) = emu.admin("POST", "reset", None).await;
    assert_eq!(s, 204);
    let (_, c) = emu.admin("GET", "config", None).await;
    assert_eq!(
        (c["replay"].as_bool(), c["delete_delay_ms"].as_u64()),
        (Some(true), Some(0))
    );
    assert_eq!(emu.admin("GET", "instances", None).await.1, json!([]));
    assert_eq!(emu.admin("GET", "faults", None).await.1, json!({}));
    assert_eq!(emu.admin("GET", "stats", None).await.1["calls"], 0);
    assert_eq!(emu.admin("GET", "nope", None).await.0, 404);
}

#[tokio::test]
async fn ten_thousand_instances_and_hundreds_of_requests() {
    let emu = start(Delays::ZERO).await;
    let started = Instant::now();
    let (s, v) = emu
        .admin(
            "POST",
            "instances/bulk",
            Some(json!({"Count": 10_000, "Prefix": "i-bench", "Tags": [{"Key": "fleet", "Value": "bench"}]})),
        )
        .await;
    assert_eq!(s, 201);
    let ids: Vec<String> = v["InstanceIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 10_000);
    assert_eq!(ids[0], "i-bench-00001");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bulk took {:?}",
        started.elapsed()
    );
    let (_, more) = emu
        .admin(
            "POST",
            "instances/bulk",
            Some(json!({"Count": 2, "Prefix": "i-bench"})),
        )
        .await;
    assert_eq!(
        more["InstanceIds"],
        json!(["i-bench-10001", "i-bench-10002"])
    );

    let mut cfg = ClientConfig::new(&emu.base, "cn-beijing", creds(SK));
    cfg.rate_limit = RateLimit {
        rate: 0.0,
        burst: 1,
    };
    cfg.max_attempts = 1;
    let client = std::sync::Arc::new(EcsClient::new(cfg, None).unwrap());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..400usize {
        let client = client.clone();
        let id = ids[(i * 37) % ids.len()].clone();
        tasks.push(tokio::spawn(async move {
            let q = if i % 20 == 0 {
                DescribeQuery {
                    tag_filters: vec![("fleet".into(), vec!["bench".into()])],
                    max_results: Some(100),
                    ..Default::default()
                }
            } else {
                DescribeQuery {
                    instance_ids: vec![id],
                    ..Default::default()
                }
            };
            client
                .describe_instances("cn-beijing", q)
                .await
                .map(|r| r.value)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap().unwrap();
        if i % 20 == 0 {
            // TagFilters resolve at most 1,000 of the 10,000 (the documented limit).
            assert_eq!((r.instances.len(), r.total_count), (100, Some(1_000)));
        } else {
            assert_eq!(r.instances.len(), 1);
        }
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "400 requests took {took:?}");

    // The TagFilters limit is switched off through the admin API.
    let (s, c) = emu
        .admin("PUT", "config", Some(json!({"tag_filter_limit": 0})))
        .await;
    assert_eq!((s, c["tag_filter_limit"].as_u64()), (200, Some(0)));
    let q = DescribeQuery {
        tag_filters: vec![("fleet".into(), vec!["bench".into()])],
        max_results: Some(100),
        ..Default::default()
    };
    let r = client
        .describe_instances("cn-beijing", q)
        .await
        .unwrap()
        .value;
    assert_eq!(r.total_count, Some(10_000));
}
