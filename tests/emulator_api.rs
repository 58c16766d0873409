//! The emulator's wire protocol as other clients use it (SDK-style GETs, POST forms,
//! malformed requests), and its admin API.

use std::time::{Duration, Instant};

use ecs_emulator::{AccountSpec, Delays, EmulatorConfig};
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
    creds_of(AK, sk)
}

fn creds_of(ak: &str, sk: &str) -> Credentials {
    Credentials {
        access_key: ak.into(),
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
        self.raw_as(AK, r)
    }

    /// `raw`, signed with the access key `ak` (and `r.secret`).
    fn raw_as(&self, ak: &str, r: &Raw<'_>) -> reqwest::RequestBuilder {
        let x_date = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let sig = sign(
            &creds_of(ak, r.secret),
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
        self.get_as(AK, SK, params).await
    }

    /// `get`, signed with another key pair (another account's, or none's).
    async fn get_as(&self, ak: &str, sk: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let q = pairs(params);
        let r = Raw {
            method: "GET",
            wire_query: canonical_query(&q),
            signed_query: q,
            headers: vec![],
            body: vec![],
            sent_body: None,
            secret: sk,
        };
        json_answer(self.raw_as(ak, &r).send().await.unwrap()).await
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

// Several accounts: each key belongs to one account, and a call sees only the instances of
// the account whose key signed it.

const KEY_A: (&str, &str) = ("AKLTteamA", "team-a-secret");
const KEY_B: (&str, &str) = ("AKLTteamB", "team-b-secret");

/// Accounts `default` (AK/SK), `team-a` (KEY_A) and `team-b` (KEY_B).
async fn start_accounts() -> Emu {
    let spec = |name: &str, (ak, sk): (&str, &str)| AccountSpec {
        name: name.into(),
        keys: vec![(ak.into(), Secret::new(sk))],
    };
    let cfg = EmulatorConfig {
        delays: Delays::ZERO,
        accounts: vec![spec("team-a", KEY_A), spec("team-b", KEY_B)],
        ..Default::default()
    };
    Emu(EmulatorServer::start(cfg).await)
}

impl Emu {
    /// One real-API call signed with `key`.
    async fn call(&self, key: (&str, &str), action: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let mut p = params.to_vec();
        p.extend([("Action", action), ("Version", "2020-04-01")]);
        self.get_as(key.0, key.1, &p).await
    }
}

fn listed(v: &Value) -> Vec<String> {
    v["Result"]["Instances"]
        .as_array()
        .unwrap_or_else(|| panic!("no Instances in {v}"))
        .iter()
        .map(|i| i["InstanceId"].as_str().unwrap().to_string())
        .collect()
}

/// An answer with what differs between two calls by design (the RequestId, the ID named)
/// blanked out, so "answers like an unknown ID" is compared byte for byte.
fn shape(v: &Value, id: &str) -> String {
    let mut v = v.clone();
    v["ResponseMetadata"]["RequestId"] = json!("");
    v.to_string().replace(id, "<ID>")
}

#[tokio::test]
async fn another_accounts_vm_is_invisible_and_untouchable() {
    let emu = start_accounts().await;
    let vm_b = emu
        .seed_in(
            "team-b",
            json!({"InstanceName": "b-vm", "Tags": [{"Key": "owner", "Value": "x"}]}),
        )
        .await;
    let vm_a = emu
        .seed_in("team-a", json!({"Tags": [{"Key": "owner", "Value": "x"}]}))
        .await;

    // Not visible to A (nor to the default account) by ID or by TagFilters; B sees it.
    for key in [KEY_A, (AK, SK)] {
        let (s, v) = emu
            .call(key, "DescribeInstances", &[("InstanceIds.1", &vm_b)])
            .await;
        assert_eq!((s, listed(&v).len()), (200, 0), "{v}");
        assert_eq!(v["Result"]["TotalCount"], 0);
    }
    let by_tag = [
        ("TagFilters.1.Key", "owner"),
        ("TagFilters.1.Values.1", "x"),
    ];
    let (_, v) = emu.call(KEY_A, "DescribeInstances", &by_tag).await;
    assert_eq!(listed(&v), [vm_a.as_str()], "A sees only its own VM by tag");
    let (_, v) = emu.call(KEY_B, "DescribeInstances", &by_tag).await;
    assert_eq!(listed(&v), [vm_b.as_str()]);
    let (_, v) = emu.call((AK, SK), "DescribeInstances", &by_tag).await;
    assert_eq!(listed(&v), Vec::<String>::new());
    let (_, v) = emu.call(KEY_A, "DescribeInstances", &[]).await;
    assert_eq!(listed(&v), [vm_a.as_str()], "a plain listing too");

    // Every write naming B's VM answers exactly as for an ID nobody has, and changes nothing.
    let unknown = "i-nosuchinstance00000";
    let writes: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("DeleteInstances", vec![("InstanceIds.1", "<ID>")]),
        ("DeleteInstance", vec![("InstanceId", "<ID>")]),
        ("StopInstances", vec![("InstanceIds.1", "<ID>")]),
        ("StartInstances", vec![("InstanceIds.1", "<ID>")]),
        (
            "TagResources",
            vec![
                ("ResourceType", "instance"),
                ("ResourceIds.1", "<ID>"),
                ("Tags.1.Key", "owner"),
                ("Tags.1.Value", "stolen"),
            ],
        ),
        (
            "UntagResources",
            vec![
                ("ResourceType", "instance"),
                ("ResourceIds.1", "<ID>"),
                ("TagKeys.1", "owner"),
            ],
        ),
        (
            "ModifyInstanceAttribute",
            vec![
                ("InstanceId", "<ID>"),
                ("DeletionProtection", "true"),
                ("InstanceName", "stolen"),
            ],
        ),
    ];
    for (action, params) in &writes {
        let with = |id: &str| -> Vec<(String, String)> {
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.replace("<ID>", id)))
                .collect()
        };
        let (sb, vb) = {
            let p = with(&vm_b);
            let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            emu.call(KEY_A, action, &p).await
        };
        let (su, vu) = {
            let p = with(unknown);
            let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            emu.call(KEY_A, action, &p).await
        };
        assert_eq!(
            (sb, shape(&vb, &vm_b)),
            (su, shape(&vu, unknown)),
            "{action}: another account's VM answers like an unknown one"
        );
        assert!(
            vb.to_string().contains("InvalidInstance.NotFound"),
            "{action}: {vb}"
        );
    }
    let b = emu.instances_in("team-b").await;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["InstanceId"], vm_b.as_str());
    assert_eq!(b[0]["account"], "team-b");
    assert_eq!(b[0]["Status"], "RUNNING");
    assert_eq!(b[0]["InstanceName"], "b-vm");
    assert_eq!(b[0]["DeletionProtection"], false);
    assert_eq!(b[0]["Tags"], json!([{"Key": "owner", "Value": "x"}]));
    for account in ["team-a", "team-b", "default"] {
        let (s, v) = emu
            .admin("GET", &format!("deletions?account={account}"), None)
            .await;
        assert_eq!((s, v), (200, json!([])), "{account}");
    }
    let (_, v) = emu.admin("GET", &format!("instances/{vm_b}"), None).await;
    assert_eq!(
        v["account"], "team-b",
        "the admin API finds it in its account"
    );

    // The call log: every write was A's, signed with A's key; B made none.
    let a_calls = emu.calls_in("team-a", "").await;
    assert_eq!(a_calls.len(), 3 + 2 * writes.len());
    assert!(
        a_calls.iter().all(|c| c["access_key"] == KEY_A.0),
        "{a_calls:?}"
    );
    assert!(a_calls.iter().all(|c| c["account"] == "team-a"));
    assert!(
        !serde_json::to_string(&a_calls).unwrap().contains(KEY_A.1),
        "never the secret"
    );
    assert_eq!(emu.calls_in("team-b", "DeleteInstances").await.len(), 0);
    assert_eq!(emu.calls_with_key(KEY_B.0, "DescribeInstances").await, 1);
    assert_eq!(emu.calls_with_key(KEY_A.0, "DeleteInstances").await, 2);

    // B itself can, of course.
    let (s, v) = emu
        .call(KEY_B, "DeleteInstances", &[("InstanceIds.1", &vm_b)])
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["Result"]["OperationDetails"][0]["Error"],
        Value::Null,
        "{v}"
    );
    let (_, v) = emu.admin("GET", "deletions?account=team-b", None).await;
    assert_eq!(v[0]["instance_id"], vm_b.as_str());
    assert!(emu.instances_in("team-b").await.is_empty());
    assert_eq!(emu.instances_in("team-a").await.len(), 1);
}

#[tokio::test]
async fn instance_ids_are_global_and_client_tokens_per_account() {
    let emu = start_accounts().await;
    let run = [
        ("ClientToken", "same-token"),
        ("ZoneId", "cn-beijing-a"),
        ("ImageId", "image-1"),
        ("InstanceTypeId", "ecs.g1.large"),
        ("InstanceName", "vm"),
        ("NetworkInterfaces.1.SubnetId", "subnet-1"),
        ("NetworkInterfaces.1.SecurityGroupIds.1", "sg-1"),
    ];
    let (s, va) = emu.call(KEY_A, "RunInstances", &run).await;
    assert_eq!(s, 200, "{va}");
    let (s, vb) = emu.call(KEY_B, "RunInstances", &run).await;
    assert_eq!(s, 200, "{vb}");
    let id_a = va["Result"]["InstanceIds"][0].as_str().unwrap().to_string();
    let id_b = vb["Result"]["InstanceIds"][0].as_str().unwrap().to_string();
    assert_ne!(
        id_a, id_b,
        "the same ClientToken in two accounts creates two VMs"
    );
    assert_eq!(emu.instances_in("team-a").await.len(), 1);
    assert_eq!(emu.instances_in("team-b").await.len(), 1);
    assert!(emu.instances_in("default").await.is_empty());
    // Within one account it is still one request: replayed.
    let (_, again) = emu.call(KEY_A, "RunInstances", &run).await;
    assert_eq!(again["Result"]["InstanceIds"], json!([id_a]));
    let replays: Vec<bool> = emu
        .calls_in("team-a", "RunInstances")
        .await
        .iter()
        .map(|c| c["replayed"].as_bool().unwrap())
        .collect();
    assert_eq!(replays, [false, true]);
    assert_eq!(emu.instances_in("team-a").await.len(), 1);

    // An ID one account holds cannot be seeded into another, nor reused by a bulk seed.
    let (s, v) = emu
        .admin(
            "POST",
            "instances?account=team-a",
            Some(json!({"InstanceId": id_b})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    emu.admin(
        "POST",
        "instances/bulk?account=team-b",
        Some(json!({"Count": 2, "Prefix": "i-p"})),
    )
    .await;
    let (s, v) = emu
        .admin(
            "POST",
            "instances/bulk",
            Some(json!({"Count": 2, "Prefix": "i-p"})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(v["InstanceIds"], json!(["i-p-00003", "i-p-00004"]));

    // The per-ID admin endpoints find the ID in whichever account holds it.
    let (s, v) = emu
        .admin(
            "PATCH",
            "instances/i-p-00001",
            Some(json!({"Status": "STOPPED"})),
        )
        .await;
    assert_eq!(
        (s, &v["account"], &v["Status"]),
        (200, &json!("team-b"), &json!("STOPPED"))
    );
    let (s, _) = emu.admin("DELETE", "instances/i-p-00002", None).await;
    assert_eq!(s, 204);
    let (_, stats) = emu.admin("GET", "stats?account=team-b", None).await;
    assert_eq!(stats["instances"], 2, "{stats}");
    let (_, stats) = emu.admin("GET", "stats", None).await;
    assert_eq!(stats["instances"], 2, "the default account's: {stats}");
    for path in [
        "instances?account=nobody",
        "deletions?account=nobody",
        "stats?account=nobody",
        "calls?account=nobody",
    ] {
        assert_eq!(emu.admin("GET", path, None).await.0, 404, "{path}");
    }
    let (s, _) = emu
        .admin("POST", "instances?account=nobody", Some(json!({})))
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn keys_added_and_revoked_at_runtime_and_reset() {
    let emu = start_accounts().await;
    let vm_a = emu.seed_in("team-a", json!({})).await;
    let key_a2 = ("AKLTteamA2", "team-a-second");
    let invalid = |ak: &str| {
        json!({"status": 401, "code": "InvalidAccessKey",
            "message": format!("The accesskey [{ak}] included in the request is invalid.")})
    };
    let verdict = |s: u16, v: &Value| {
        json!({"status": s, "code": code(v),
            "message": v["ResponseMetadata"]["Error"]["Message"]})
    };
    let describe = [("InstanceIds.1", vm_a.as_str())];

    let (s, v) = emu.call(key_a2, "DescribeInstances", &describe).await;
    assert_eq!(verdict(s, &v), invalid(key_a2.0), "not a key yet");
    emu.add_account_key("team-a", key_a2.0, key_a2.1).await;
    let (s, v) = emu.call(key_a2, "DescribeInstances", &describe).await;
    assert_eq!(
        (s, listed(&v)),
        (200, vec![vm_a.clone()]),
        "works at once, as team-a"
    );

    // A new account; a key of another account, or with another secret, is refused.
    let (s, v) = emu
        .admin(
            "POST",
            "accounts",
            Some(json!({"name": "team-c", "access_key": "AKLTteamC", "secret_key": "c"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v,
        json!({"name": "team-c", "access_keys": ["AKLTteamC"], "instances": 0})
    );
    for (body, want) in [
        (
            json!({"name": "team-b", "access_key": KEY_A.0, "secret_key": KEY_A.1}),
            409,
        ),
        (
            json!({"name": "team-a", "access_key": KEY_A.0, "secret_key": "other"}),
            409,
        ),
        (
            json!({"name": "team-a", "access_key": KEY_A.0, "secret_key": KEY_A.1}),
            200,
        ),
        (
            json!({"name": "team a", "access_key": "AKx", "secret_key": "x"}),
            400,
        ),
        (
            json!({"name": "team-a", "access_key": "AK/x", "secret_key": "x"}),
            400,
        ),
        (
            json!({"name": "team-a", "access_key": "AKx", "secret_key": ""}),
            400,
        ),
        (json!({"name": "team-a", "access_key": "AKx"}), 400),
    ] {
        let (s, v) = emu.admin("POST", "accounts", Some(body.clone())).await;
        assert_eq!(s, want, "{body}: {v}");
    }
    let (_, v) = emu.admin("GET", "accounts", None).await;
    assert_eq!(
        v,
        json!([
            {"name": "default", "access_keys": [AK], "instances": 0},
            {"name": "team-a", "access_keys": [KEY_A.0, key_a2.0], "instances": 1},
            {"name": "team-b", "access_keys": [KEY_B.0], "instances": 0},
            {"name": "team-c", "access_keys": ["AKLTteamC"], "instances": 0},
        ])
    );
    assert!(!v.to_string().contains(KEY_A.1), "never a secret key");

    // Revoked: the next call is an unknown key's; the account's other key still works.
    let (s, _) = emu.call(KEY_A, "DescribeInstances", &describe).await;
    assert_eq!(s, 200);
    emu.revoke_key("team-a", KEY_A.0).await;
    let (s, v) = emu.call(KEY_A, "DescribeInstances", &describe).await;
    assert_eq!(verdict(s, &v), invalid(KEY_A.0));
    let (s, v) = emu
        .call(("AKLTnobody", "x"), "DescribeInstances", &describe)
        .await;
    assert_eq!(
        verdict(s, &v),
        invalid("AKLTnobody"),
        "the same form as an unknown key"
    );
    let (s, v) = emu.call(key_a2, "DescribeInstances", &describe).await;
    assert_eq!((s, listed(&v)), (200, vec![vm_a.clone()]));
    // The refused call is logged under its key, and belongs to no account.
    assert_eq!(emu.calls_with_key(KEY_A.0, "DescribeInstances").await, 2);
    let (_, refused) = emu
        .admin("GET", &format!("calls?access_key={}", KEY_A.0), None)
        .await;
    assert_eq!(refused[1]["code"], "InvalidAccessKey");
    assert_eq!(refused[1]["account"], "");
    assert_eq!(emu.calls_in("team-a", "DescribeInstances").await.len(), 3);
    for path in [
        format!("accounts/team-a/keys/{}", KEY_A.0),
        format!("accounts/team-b/keys/{}", key_a2.0),
        format!("accounts/nobody/keys/{}", key_a2.0),
    ] {
        assert_eq!(emu.admin("DELETE", &path, None).await.0, 404, "{path}");
    }

    // Reset: the initial accounts and keys, nothing else.
    assert_eq!(emu.admin("POST", "reset", None).await.0, 204);
    let (_, v) = emu.admin("GET", "accounts", None).await;
    assert_eq!(
        v,
        json!([
            {"name": "default", "access_keys": [AK], "instances": 0},
            {"name": "team-a", "access_keys": [KEY_A.0], "instances": 0},
            {"name": "team-b", "access_keys": [KEY_B.0], "instances": 0},
        ])
    );
    let (s, _) = emu.call(KEY_A, "DescribeInstances", &[]).await;
    assert_eq!(s, 200);
    let (s, v) = emu.call(key_a2, "DescribeInstances", &[]).await;
    assert_eq!(verdict(s, &v), invalid(key_a2.0));
}

#[tokio::test]
async fn a_fault_with_an_account_applies_only_there() {
    let emu = start_accounts().await;
    let (s, v) = emu
        .admin(
            "PUT",
            "faults/DescribeInstances",
            Some(json!({"account": "team-a", "throttle_rate": 1.0})),
        )
        .await;
    assert_eq!((s, &v["account"]), (200, &json!("team-a")), "{v}");
    let (s, v) = emu
        .admin(
            "PUT",
            "faults/DeleteInstances",
            Some(json!({"account": "nobody", "fail_next": 1})),
        )
        .await;
    assert_eq!(s, 404, "a fault for no account would never fire: {v}");
    for _ in 0..3 {
        let (s, v) = emu.call(KEY_A, "DescribeInstances", &[]).await;
        assert_eq!((s, code(&v)), (429, "FlowLimitExceeded"));
        for key in [KEY_B, (AK, SK)] {
            let (s, v) = emu.call(key, "DescribeInstances", &[]).await;
            assert_eq!(s, 200, "{v}");
        }
    }
    let throttled = emu.calls_in("team-a", "DescribeInstances").await;
    assert!(
        throttled.iter().all(|c| c["fault"] == "throttle"),
        "{throttled:?}"
    );
    assert!(emu
        .calls_in("team-b", "DescribeInstances")
        .await
        .iter()
        .all(|c| c["fault"].is_null()));

    // A counter scoped to A is not used up by B's calls.
    emu.admin(
        "PUT",
        "faults/DescribeInstances",
        Some(json!({"account": "team-a", "fail_next": 1})),
    )
    .await;
    let (s, _) = emu.call(KEY_B, "DescribeInstances", &[]).await;
    assert_eq!(s, 200);
    let (s, v) = emu.call(KEY_A, "DescribeInstances", &[]).await;
    assert_eq!((s, code(&v)), (500, "InternalError"));
    let (s, _) = emu.call(KEY_A, "DescribeInstances", &[]).await;
    assert_eq!(s, 200);

    // Without `account`, every account's calls, and GET /faults as before.
    emu.admin(
        "PUT",
        "faults/DescribeInstances",
        Some(json!({"fail_next": 3})),
    )
    .await;
    let (_, v) = emu.admin("GET", "faults", None).await;
    assert!(v["DescribeInstances"].get("account").is_none(), "{v}");
    for key in [KEY_A, KEY_B, (AK, SK)] {
        let (s, _) = emu.call(key, "DescribeInstances", &[]).await;
        assert_eq!(s, 500);
    }
}

/// The console's and the cloud's changes through `PATCH /_emulator/instances/{id}`:
/// description, type, private and public IP as DescribeInstances then shows them, and
/// `Hold` keeping a VM in STOPPING until a later patch.
#[tokio::test]
async fn admin_patch_models_console_changes_and_holds_a_status() {
    let emu = start(Delays {
        create_ms: 0,
        stop_ms: 200,
        start_ms: 0,
        delete_ms: 0,
    })
    .await;
    let (s, v) = emu
        .admin(
            "POST",
            "instances",
            Some(json!({"InstanceId": "i-console"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = emu
        .admin(
            "PATCH",
            "instances/i-console",
            Some(
                json!({"Description": "changed in the console", "InstanceTypeId": "ecs.g3i.xlarge",
                "PrivateIp": "10.0.3.7", "PublicIp": "203.0.113.9"}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let described = |v: &Value| v["Result"]["Instances"][0].clone();
    let (_, d) = emu
        .get(&[
            ("Action", "DescribeInstances"),
            ("Version", "2020-04-01"),
            ("InstanceIds.1", "i-console"),
        ])
        .await;
    let i = described(&d);
    assert_eq!(i["Description"], "changed in the console", "{i}");
    assert_eq!(i["InstanceTypeId"], "ecs.g3i.xlarge");
    assert_eq!(i["NetworkInterfaces"][0]["PrimaryIpAddress"], "10.0.3.7");
    assert_eq!(i["NetworkInterfaces"][0]["Type"], "primary");
    assert_eq!(i["EipAddress"]["IpAddress"], "203.0.113.9");
    let alloc = i["EipAddress"]["AllocationId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(alloc.starts_with("eip-"), "{i}");

    // A new address keeps the EIP's AllocationId; "" removes the EIP.
    let (_, v) = emu
        .admin(
            "PATCH",
            "instances/i-console",
            Some(json!({"PublicIp": "203.0.113.10"})),
        )
        .await;
    assert_eq!(
        v["EipAddress"],
        json!({"AllocationId": alloc, "IpAddress": "203.0.113.10"})
    );
    let (_, v) = emu
        .admin(
            "PATCH",
            "instances/i-console",
            Some(json!({"PublicIp": ""})),
        )
        .await;
    assert!(v.get("EipAddress").is_none(), "{v}");
    for bad in [
        json!({"PrivateIp": "10.0.3"}),
        json!({"PublicIp": "not an ip"}),
        json!({"private_ip": "10.0.3.8"}),
    ] {
        let (s, v) = emu
            .admin("PATCH", "instances/i-console", Some(bad.clone()))
            .await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let (_, v) = emu.admin("GET", "instances/i-console", None).await;
    assert_eq!(
        v["NetworkInterfaces"][0]["PrimaryIpAddress"], "10.0.3.7",
        "a refused patch changes nothing"
    );

    // Held: STOPPING outlasts stop_ms until a patch sets another status.
    let (_, v) = emu
        .admin(
            "PATCH",
            "instances/i-console",
            Some(json!({"Status": "STOPPING", "Hold": true})),
        )
        .await;
    assert_eq!(v["Status"], "STOPPING");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, v) = emu.admin("GET", "instances/i-console", None).await;
    assert_eq!(v["Status"], "STOPPING", "held past stop_ms");
    let (_, v) = emu
        .admin(
            "PATCH",
            "instances/i-console",
            Some(json!({"Description": ""})),
        )
        .await;
    assert_eq!(
        (&v["Status"], &v["Description"]),
        (&json!("STOPPING"), &json!(""))
    );
    let (_, v) = emu
        .admin(
            "PATCH",
            "instances/i-console",
            Some(json!({"Status": "STOPPED"})),
        )
        .await;
    assert_eq!(v["Status"], "STOPPED");

    // Hold without Status freezes a transition StopInstances started.
    emu.admin(
        "PATCH",
        "instances/i-console",
        Some(json!({"Status": "RUNNING"})),
    )
    .await;
    let (s, v) = emu
        .get(&[
            ("Action", "StopInstances"),
            ("Version", "2020-04-01"),
            ("InstanceIds.1", "i-console"),
        ])
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = emu
        .admin("PATCH", "instances/i-console", Some(json!({"Hold": true})))
        .await;
    assert_eq!(v["Status"], "STOPPING");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, v) = emu.admin("GET", "instances/i-console", None).await;
    assert_eq!(v["Status"], "STOPPING");
    // Unheld by a patch with a status that runs its delay.
    emu.admin(
        "PATCH",
        "instances/i-console",
        Some(json!({"Status": "STOPPING"})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, v) = emu.admin("GET", "instances/i-console", None).await;
    assert_eq!(v["Status"], "STOPPED");
}

/// ModifyInstanceSpec over the wire: the admin-configured unavailable types, and ClientToken
/// replay for it and for StopInstances/StartInstances as for DeleteInstances (a re-sent token
/// answers the recorded result and applies nothing; other parameters with it are refused).
#[tokio::test]
async fn modify_spec_and_stop_start_honour_client_tokens() {
    let emu = start(Delays::ZERO).await;
    emu.admin("POST", "instances", Some(json!({"InstanceId": "i-spec"})))
        .await;
    let call = |action: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let mut p = vec![("Action", action), ("Version", "2020-04-01")];
        p.extend(extra);
        p
    };
    let stop = call(
        "StopInstances",
        vec![
            ("InstanceIds.1", "i-spec"),
            ("StoppedMode", "KeepCharging"),
            ("ClientToken", "stop-1"),
        ],
    );
    let (s, first) = emu.get(&stop).await;
    assert_eq!(s, 200, "{first}");
    // Stopped already: executed again it would fail InvalidInstanceStatus; replayed, it is OK.
    let (s, again) = emu.get(&stop).await;
    assert_eq!(s, 200);
    assert_eq!(again["Result"], first["Result"]);
    let bad_mode = call(
        "StopInstances",
        vec![
            ("InstanceIds.1", "i-spec"),
            ("StoppedMode", "Hibernate"),
            ("ClientToken", "stop-2"),
        ],
    );
    let (s, v) = emu.get(&bad_mode).await;
    assert_eq!((s, code(&v)), (400, "InvalidStoppedMode.Malformed"));

    let (_, cfg) = emu
        .admin(
            "PUT",
            "config",
            Some(json!({"unavailable_instance_types": ["ecs.g3i.8xlarge"]})),
        )
        .await;
    assert_eq!(
        cfg["unavailable_instance_types"],
        json!(["ecs.g3i.8xlarge"])
    );
    let (s, v) = emu
        .get(&call(
            "ModifyInstanceSpec",
            vec![
                ("InstanceId", "i-spec"),
                ("InstanceTypeId", "ecs.g3i.8xlarge"),
                ("ClientToken", "spec-0"),
            ],
        ))
        .await;
    assert_eq!((s, code(&v)), (400, "ResourceNotFound.InstanceType"));

    let spec = call(
        "ModifyInstanceSpec",
        vec![
            ("InstanceId", "i-spec"),
            ("InstanceTypeId", "ecs.g3i.xlarge"),
            ("ClientToken", "spec-1"),
        ],
    );
    let (s, first) = emu.get(&spec).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["Result"]["InstanceId"], "i-spec");
    assert!(first["Result"]["OrderId"]
        .as_str()
        .unwrap()
        .starts_with("Order"));
    // The console changes the type back; the re-sent token must not apply again.
    emu.admin(
        "PATCH",
        "instances/i-spec",
        Some(json!({"InstanceTypeId": "ecs.g3i.large"})),
    )
    .await;
    let (s, again) = emu.get(&spec).await;
    assert_eq!(s, 200);
    assert_eq!(
        again["Result"], first["Result"],
        "the recorded answer, same OrderId"
    );
    let (_, v) = emu.admin("GET", "instances/i-spec", None).await;
    assert_eq!(
        v["InstanceTypeId"], "ecs.g3i.large",
        "a replay applies nothing"
    );
    let other = call(
        "ModifyInstanceSpec",
        vec![
            ("InstanceId", "i-spec"),
            ("InstanceTypeId", "ecs.g3i.2xlarge"),
            ("ClientToken", "spec-1"),
        ],
    );
    let (s, v) = emu.get(&other).await;
    assert_eq!((s, code(&v)), (400, "IdempotentParameterMismatch"));

    let start_call = call(
        "StartInstances",
        vec![("InstanceIds.1", "i-spec"), ("ClientToken", "start-1")],
    );
    let (s, first) = emu.get(&start_call).await;
    assert_eq!(s, 200, "{first}");
    assert!(
        first["Result"]["OperationDetails"][0]["Error"].is_null(),
        "{first}"
    );
    let (_, again) = emu.get(&start_call).await;
    assert_eq!(
        again["Result"], first["Result"],
        "RUNNING now, yet the recorded OK"
    );
    let (_, v) = emu.admin("GET", "instances/i-spec", None).await;
    assert_eq!(v["Status"], "RUNNING");
    // RUNNING: ModifyInstanceSpec is refused.
    let (s, v) = emu
        .get(&call(
            "ModifyInstanceSpec",
            vec![
                ("InstanceId", "i-spec"),
                ("InstanceTypeId", "ecs.g3i.2xlarge"),
            ],
        ))
        .await;
    assert_eq!((s, code(&v)), (400, "InvalidInstanceStatus"));
    let (_, calls) = emu
        .admin("GET", "calls?action=ModifyInstanceSpec", None)
        .await;
    let replayed: Vec<bool> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["replayed"].as_bool().unwrap())
        .collect();
    assert_eq!(replayed, [false, false, true, false, false]);
}
