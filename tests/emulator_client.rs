//! The project's real ECS client against the emulator over real HTTP on loopback: every
//! action, every error class, retries, idempotency and unusable responses.

use std::time::Duration;

use ecs_emulator::{Delays, EmulatorConfig};
use ecs_operator::cloud::client::{ClientConfig, EcsClient};
use ecs_operator::cloud::limiter::RateLimit;
use ecs_operator::cloud::model::{
    Action, DescribeQuery, EmptyResult, OperationDetailsResult, Params, RunInstancesRequest, Tag,
    VolumeSpec,
};
use ecs_operator::cloud::signer::{Credentials, Secret};
use ecs_test_harness::EmulatorServer;
use serde_json::{json, Value};
use volcengine_ecs::{CloudError, ErrorClass};

const AK: &str = "AKLTtest-client";
const SK: &str = "test-secret";
const REGION: &str = "cn-beijing";

/// The in-process emulator (harness), with this file's client and admin helpers.
struct Emu(EmulatorServer);

impl std::ops::Deref for Emu {
    type Target = EmulatorServer;
    fn deref(&self) -> &EmulatorServer {
        &self.0
    }
}

async fn start_with(delays: Delays) -> Emu {
    let cfg = EmulatorConfig {
        access_key: AK.into(),
        secret_key: Secret::new(SK),
        delays,
        ..Default::default()
    };
    Emu(EmulatorServer::start(cfg).await)
}

async fn start() -> Emu {
    start_with(Delays::ZERO).await
}

fn creds(ak: &str, sk: &str, token: Option<&str>) -> Credentials {
    Credentials {
        access_key: ak.into(),
        secret_key: Secret::new(sk),
        session_token: token.map(Secret::new),
    }
}

impl Emu {
    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(&self.base, REGION, creds(AK, SK, None));
        c.max_attempts = 1;
        c.retry_base = Duration::from_millis(20);
        c.retry_max = Duration::from_millis(100);
        c.request_timeout = Duration::from_secs(5);
        c.rate_limit = RateLimit {
            rate: 0.0,
            burst: 1,
        };
        c
    }

    fn client(&self) -> EcsClient {
        EcsClient::new(self.config(), None).unwrap()
    }

    fn client_with(&self, f: impl FnOnce(&mut ClientConfig)) -> EcsClient {
        let mut c = self.config();
        f(&mut c);
        EcsClient::new(c, None).unwrap()
    }

    async fn seed(&self, body: Value) -> String {
        let (s, v) = self.admin("POST", "instances", Some(body)).await;
        assert_eq!(s, 201, "{v}");
        v["InstanceId"].as_str().unwrap().to_string()
    }

    async fn fault(&self, action: &str, spec: Value) {
        let (s, v) = self
            .admin("PUT", &format!("faults/{action}"), Some(spec))
            .await;
        assert_eq!(s, 200, "{v}");
    }

    async fn calls(&self, action: &str) -> Vec<Value> {
        let (_, v) = self
            .admin("GET", &format!("calls?action={action}"), None)
            .await;
        v.as_array().unwrap().clone()
    }

    async fn deletions_of(&self, id: &str) -> usize {
        let (_, v) = self.admin("GET", "deletions", None).await;
        v.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["instance_id"] == id)
            .count()
    }

    /// Polls until the instance reaches `want` (None = gone); the deadline is generous so a
    /// loaded machine does not fail the test, while a wrong state machine still does.
    async fn wait_status(&self, id: &str, want: Option<&str>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.status_of(id).await;
            if got.as_deref() == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id}: still {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn status_of(&self, id: &str) -> Option<String> {
        let (s, v) = self.admin("GET", &format!("instances/{id}"), None).await;
        (s == 200).then(|| v["Status"].as_str().unwrap().to_string())
    }
}

fn run_request(name: &str, token: &str) -> RunInstancesRequest {
    RunInstancesRequest {
        zone_id: "cn-beijing-a".into(),
        image_id: "image-ubuntu".into(),
        instance_type_id: "ecs.g3i.large".into(),
        instance_name: name.into(),
        subnet_id: "subnet-1".into(),
        security_group_ids: vec!["sg-1".into(), "sg-2".into()],
        system_volume: Some(VolumeSpec {
            volume_type: Some("ESSD_PL0".into()),
            size: 40,
            delete_with_instance: Some(true),
        }),
        tags: vec![
            Tag {
                key: "owner".into(),
                value: "my operator".into(),
            },
            Tag {
                key: "k8s/uid".into(),
                value: "u-1".into(),
            },
        ],
        client_token: token.into(),
        ..Default::default()
    }
}

fn ids_query(ids: &[&str]) -> DescribeQuery {
    DescribeQuery {
        instance_ids: ids.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn api_err(e: &CloudError) -> (&str, u16) {
    match e {
        CloudError::Api { code, status, .. } => (code.as_str(), *status),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn codes(details: &[ecs_operator::cloud::OperationDetail]) -> Vec<String> {
    details
        .iter()
        .map(|d| {
            d.error
                .as_ref()
                .map_or("OK".to_string(), |e| e.code.clone())
        })
        .collect()
}

async fn batch(c: &EcsClient, action: Action, ids: &[&str], token: &str) -> Vec<String> {
    let mut p = Params::new();
    p.list("InstanceIds", ids).set("ClientToken", token);
    let r = c
        .call::<OperationDetailsResult>(REGION, action, p.into_vec())
        .await
        .unwrap();
    codes(&r.value.operation_details)
}

#[tokio::test]
async fn full_lifecycle_with_transitional_states() {
    let emu = start_with(Delays {
        create_ms: 1500,
        stop_ms: 1500,
        start_ms: 1500,
        delete_ms: 1500,
    })
    .await;
    let c = emu.client();
    let ids = c
        .run_instances(REGION, run_request("web-1", "run-1"))
        .await
        .unwrap()
        .value;
    assert_eq!(ids.len(), 1);
    let id = ids[0].clone();
    assert!(id.starts_with("i-") && id.len() == 22, "{id}");

    let d = c
        .describe_instances(REGION, ids_query(&[&id]))
        .await
        .unwrap();
    assert_eq!(d.value.total_count, Some(1));
    let inst = &d.value.instances[0];
    assert_eq!(inst.status, "CREATING");
    assert_eq!(inst.zone_id.as_deref(), Some("cn-beijing-a"));
    assert_eq!(inst.instance_type_id.as_deref(), Some("ecs.g3i.large"));
    assert_eq!(inst.image_id.as_deref(), Some("image-ubuntu"));
    assert_eq!(inst.instance_name.as_deref(), Some("web-1"));
    assert_eq!(inst.tag("owner"), Some("my operator"));
    assert_eq!(inst.tag("k8s/uid"), Some("u-1"));
    assert_eq!(inst.deletion_protection, Some(false));
    assert_eq!(inst.instance_charge_type.as_deref(), Some("PostPaid"));
    assert!(inst.primary_ip().unwrap().starts_with("172.16."));
    assert_eq!(
        inst.network_interfaces[0].security_group_ids,
        vec!["sg-1", "sg-2"]
    );
    assert_eq!(
        inst.network_interfaces[0].subnet_id.as_deref(),
        Some("subnet-1")
    );
    inst.created_at
        .as_deref()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();

    // Deleting while CREATING is refused per instance, not per call.
    assert_eq!(
        batch(&c, Action::DeleteInstances, &[&id], "del-early").await,
        vec!["InvalidInstanceStatus"]
    );
    emu.wait_status(&id, Some("RUNNING")).await;

    assert_eq!(
        batch(&c, Action::StartInstances, &[&id], "start-0").await,
        vec!["InvalidInstanceStatus"]
    );
    assert_eq!(
        batch(&c, Action::StopInstances, &[&id], "stop-1").await,
        vec!["OK"]
    );
    assert_eq!(emu.status_of(&id).await.as_deref(), Some("STOPPING"));
    emu.wait_status(&id, Some("STOPPED")).await;
    assert_eq!(
        batch(&c, Action::StartInstances, &[&id], "start-1").await,
        vec!["OK"]
    );
    assert_eq!(emu.status_of(&id).await.as_deref(), Some("STARTING"));
    emu.wait_status(&id, Some("RUNNING")).await;

    // Protection blocks deletion until it is lifted.
    c.set_deletion_protection(REGION, id.clone(), true)
        .await
        .unwrap();
    let d = c
        .describe_instances(REGION, ids_query(&[&id]))
        .await
        .unwrap();
    assert_eq!(d.value.instances[0].deletion_protection, Some(true));
    let r = c
        .delete_instances(REGION, vec![id.clone()], "del-1".into())
        .await
        .unwrap();
    assert_eq!(codes(&r.value), vec!["OperationDenied.DeletionProtection"]);
    c.set_deletion_protection(REGION, id.clone(), false)
        .await
        .unwrap();

    let r = c
        .delete_instances(REGION, vec![id.clone()], "del-2".into())
        .await
        .unwrap();
    assert_eq!(r.value[0].instance_id, id);
    assert!(r.value[0].error.is_none());
    assert!(!r.request_id.is_empty());
    let d = c
        .describe_instances(REGION, ids_query(&[&id]))
        .await
        .unwrap();
    assert_eq!(d.value.instances[0].status, "DELETING");
    emu.wait_status(&id, None).await;
    let d = c
        .describe_instances(REGION, ids_query(&[&id]))
        .await
        .unwrap();
    assert!(d.value.instances.is_empty());
    assert_eq!(d.value.total_count, Some(0));
    assert_eq!(emu.deletions_of(&id).await, 1);
}

/// With the realism switches on (`null` for empty fields, no `Result` for operation
/// actions) every call the operator makes still reads its answer: the raw body shows the
/// switches were on, so the test cannot pass by the emulator answering as before.
#[tokio::test]
async fn answers_with_nulls_and_without_result_are_read() {
    let emu = start_with(Delays::ZERO).await;
    let (s, v) = emu
        .admin(
            "PUT",
            "config",
            Some(json!({"null_empty": true, "omit_operation_result": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let c = emu.client();
    let id = emu.seed(json!({"Status": "RUNNING", "Tags": []})).await;
    let seen = c
        .describe_instances(REGION, ids_query(&[&id]))
        .await
        .unwrap();
    assert_eq!(seen.value.instances[0].instance_id, id);
    assert!(seen.value.instances[0].tags.is_empty());
    let none = c
        .describe_instances(REGION, ids_query(&["i-doesnotexist000000000"]))
        .await
        .unwrap();
    assert!(none.value.instances.is_empty());
    c.set_deletion_protection(REGION, id.clone(), true)
        .await
        .unwrap();
    c.tag_instances(
        REGION,
        vec![id.clone()],
        vec![Tag {
            key: "k".into(),
            value: "v".into(),
        }],
    )
    .await
    .unwrap();
    c.untag_instances(REGION, vec![id.clone()], vec!["k".into()])
        .await
        .unwrap();
    // The answers really were of the kind the switches make.
    let none = raw_call(
        &emu,
        "DescribeInstances",
        &[("InstanceIds.1", "i-doesnotexist000000000")],
    )
    .await;
    assert_eq!(none["Result"]["Instances"], Value::Null, "{none}");
    let op = raw_call(
        &emu,
        "ModifyInstanceAttribute",
        &[("InstanceId", &id), ("DeletionProtection", "false")],
    )
    .await;
    assert!(
        op.get("Result").is_none() && op["ResponseMetadata"]["RequestId"].is_string(),
        "{op}"
    );
}

/// One signed call, its body as JSON (what any client receives).
async fn raw_call(emu: &Emu, action: &str, params: &[(&str, &str)]) -> Value {
    let mut q: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    q.push(("Action".into(), action.into()));
    q.push(("Version".into(), "2020-04-01".into()));
    let req = signed_get(emu, &q, jiff::Timestamp::now());
    req.send().await.unwrap().json().await.unwrap()
}

/// A GET of the real API with `query`, signed as the operator's client signs, dated `at`.
fn signed_get(
    emu: &Emu,
    query: &[(String, String)],
    at: jiff::Timestamp,
) -> reqwest::RequestBuilder {
    use ecs_operator::cloud::signer::{canonical_query, sign, SignRequest};
    let x_date = at.strftime("%Y%m%dT%H%M%SZ").to_string();
    let sig = sign(
        &creds(AK, SK, None),
        &SignRequest {
            method: "GET",
            host: &emu.host,
            path: "/",
            query,
            headers: &[],
            body: b"",
            x_date: &x_date,
            region: REGION,
            service: "ecs",
        },
    );
    let mut req = emu
        .http
        .get(format!("{}/?{}", emu.base, canonical_query(query)));
    for (k, v) in &sig.headers {
        req = req.header(k, v);
    }
    req
}

#[tokio::test]
async fn delete_instance_single_uses_call_level_errors() {
    let emu = start().await;
    let c = emu.client();
    let running = emu.seed(json!({"Status": "RUNNING"})).await;
    let busy = emu.seed(json!({"Status": "REBUILDING"})).await;
    let call = |id: &str, token: &str| {
        let mut p = Params::new();
        p.set("InstanceId", id).set("ClientToken", token);
        c.call::<EmptyResult>(REGION, Action::DeleteInstance, p.into_vec())
    };
    let e = call("i-doesnotexist000000000", "s-1").await.unwrap_err();
    assert_eq!(api_err(&e), ("InvalidInstance.NotFound", 404));
    assert_eq!(e.class(), ErrorClass::Terminal);
    let e = call(&busy, "s-2").await.unwrap_err();
    assert_eq!(api_err(&e), ("InvalidInstanceStatus", 400));
    call(&running, "s-3").await.unwrap();
    assert_eq!(emu.status_of(&running).await, None);
    let e = c
        .call::<EmptyResult>(REGION, Action::DeleteInstance, vec![])
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("MissingParameter.InstanceId", 400));
}

#[tokio::test]
async fn batch_delete_reports_each_instance_in_request_order() {
    let emu = start().await;
    let c = emu.client();
    let ok = emu.seed(json!({})).await;
    let stopped = emu.seed(json!({"Status": "STOPPED"})).await;
    let rebooted = emu.seed(json!({"Status": "REBOOTING"})).await;
    emu.admin("PUT", "config", Some(json!({"start_delay_ms": 600000})))
        .await;
    let rebooting = emu.seed(json!({"Status": "REBOOTING"})).await;
    let protected = emu.seed(json!({"DeletionProtection": true})).await;
    let prepaid = emu
        .seed(json!({"InstanceChargeType": "PrePaid", "ExpiredAt": "2999-01-01T00:00:00Z"}))
        .await;
    let expired = emu
        .seed(json!({"InstanceChargeType": "PrePaid", "ExpiredAt": "2001-01-01T00:00:00Z"}))
        .await;
    let other_region = emu.seed(json!({"Region": "cn-shanghai"})).await;
    let ids = [
        "i-unknown0000000000000",
        &ok,
        &stopped,
        &rebooted,
        &rebooting,
        &protected,
        &prepaid,
        &expired,
        &other_region,
    ];
    let r = c
        .delete_instances(
            REGION,
            ids.iter().map(|s| s.to_string()).collect(),
            "mixed".into(),
        )
        .await
        .unwrap();
    assert_eq!(
        r.value
            .iter()
            .map(|d| d.instance_id.as_str())
            .collect::<Vec<_>>(),
        ids.to_vec()
    );
    assert_eq!(
        codes(&r.value),
        vec![
            "InvalidInstance.NotFound",
            "OK",
            "OK",
            "OK", // REBOOTING under a 0 ms delay was already RUNNING again
            "InvalidInstanceStatus",
            "OperationDenied.DeletionProtection",
            "InvalidChargeType",
            "OK",
            "InvalidInstance.NotFound",
        ]
    );
    assert_eq!(
        r.value[0].error.as_ref().unwrap().message,
        "The specified instance does not exist."
    );
    let (_, dels) = emu.admin("GET", "deletions", None).await;
    let mut deleted: Vec<&str> = dels
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["client_token"], "mixed");
            assert_eq!(d["action"], "DeleteInstances");
            d["instance_id"].as_str().unwrap()
        })
        .collect();
    deleted.sort();
    let mut want = vec![
        ok.as_str(),
        stopped.as_str(),
        rebooted.as_str(),
        expired.as_str(),
    ];
    want.sort();
    assert_eq!(deleted, want);
    let calls = emu.calls("DeleteInstances").await;
    assert_eq!(
        calls[0]["instance_codes"].as_array().unwrap().len(),
        ids.len()
    );
    // Still there, in the other region.
    assert_eq!(
        emu.status_of(&other_region).await.as_deref(),
        Some("RUNNING")
    );
}

#[tokio::test]
async fn batch_size_is_validated() {
    let emu = start().await;
    let c = emu.client();
    let e = c
        .delete_instances(REGION, vec![], "none".into())
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("MissingParameter.InstanceIds", 400));
    let many: Vec<String> = (0..101).map(|i| format!("i-{i:020}")).collect();
    let e = c
        .delete_instances(REGION, many, "many".into())
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("InvalidParameter", 400));
    assert_eq!(e.class(), ErrorClass::Terminal);
}

#[tokio::test]
async fn run_instances_validates_and_is_idempotent_by_token() {
    let emu = start().await;
    let c = emu.client();
    let first = c
        .run_instances(REGION, run_request("node-a", "create-once"))
        .await
        .unwrap()
        .value;
    let again = c
        .run_instances(REGION, run_request("node-a", "create-once"))
        .await
        .unwrap()
        .value;
    assert_eq!(first, again, "same token must not create a second VM");
    let (_, all) = emu.admin("GET", "instances", None).await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(all[0]["Region"], REGION);

    let e = c
        .run_instances(REGION, run_request("node-b", "create-once"))
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("IdempotentParameterMismatch", 400));

    let mut missing = run_request("node-c", "c-1");
    missing.image_id.clear();
    let e = c.run_instances(REGION, missing).await.unwrap_err();
    assert_eq!(api_err(&e), ("MissingParameter.ImageId", 400));
    let e = c
        .run_instances(REGION, run_request("9-starts-with-digit", "c-2"))
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("InvalidInstanceName.Malformed", 400));
    let mut zone = run_request("node-d", "c-3");
    zone.zone_id = "cn-shanghai-a".into();
    let e = c.run_instances(REGION, zone).await.unwrap_err();
    assert_eq!(api_err(&e), ("InvalidZoneId.NotFound", 404));

    // A refused call leaves its token free for the corrected request.
    let ok = c
        .run_instances(REGION, run_request("node-c", "c-1"))
        .await
        .unwrap();
    assert_eq!(ok.value.len(), 1);

    let mut pre = run_request("billing", "c-4");
    pre.instance_charge_type = Some("PrePaid".into());
    pre.deletion_protection = Some(true);
    let id = c.run_instances(REGION, pre).await.unwrap().value[0].clone();
    let d = c
        .describe_instances(REGION, ids_query(&[&id]))
        .await
        .unwrap()
        .value;
    assert_eq!(
        d.instances[0].instance_charge_type.as_deref(),
        Some("PrePaid")
    );
    assert_eq!(d.instances[0].deletion_protection, Some(true));
    assert!(d.instances[0].expired_at.is_some());
}

#[tokio::test]
async fn describe_pages_and_filters_by_tags() {
    let emu = start().await;
    let c = emu.client();
    let (s, v) = emu
        .admin(
            "POST",
            "instances/bulk",
            Some(json!({"Count": 230, "Prefix": "i-page",
                "Tags": [{"Key": "owner", "Value": "op"}, {"Key": "env", "Value": "dev"}]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    emu.admin(
        "POST",
        "instances/bulk",
        Some(json!({"Count": 20, "Prefix": "i-prod",
            "Tags": [{"Key": "owner", "Value": "op"}, {"Key": "env", "Value": "prod"}]})),
    )
    .await;
    emu.admin(
        "POST",
        "instances/bulk",
        Some(json!({"Count": 7, "Prefix": "i-other", "Status": "STOPPED",
            "Tags": [{"Key": "owner", "Value": "someone-else"}]})),
    )
    .await;
    emu.admin(
        "POST",
        "instances/bulk",
        Some(
            json!({"Count": 5, "Prefix": "i-sh", "Region": "cn-shanghai",
            "Tags": [{"Key": "owner", "Value": "op"}]}),
        ),
    )
    .await;

    let page_all = |filters: Vec<(String, Vec<String>)>| {
        let c = &c;
        async move {
            let mut seen = Vec::new();
            let mut token = None;
            let mut totals = Vec::new();
            loop {
                let r = c
                    .describe_instances(
                        REGION,
                        DescribeQuery {
                            tag_filters: filters.clone(),
                            max_results: Some(100),
                            next_token: token.clone(),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap()
                    .value;
                assert!(r.instances.len() <= 100);
                totals.push(r.total_count.unwrap());
                seen.extend(r.instances.into_iter().map(|i| i.instance_id));
                match r.next_token.filter(|t| !t.is_empty()) {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            (seen, totals)
        }
    };
    let (owned, totals) = page_all(vec![("owner".into(), vec!["op".into()])]).await;
    assert_eq!(owned.len(), 250);
    assert!(totals.iter().all(|t| *t == 250), "{totals:?}");
    let mut sorted = owned.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, owned, "stable id order, no duplicates");

    let (prod, _) = page_all(vec![
        ("owner".into(), vec!["op".into(), "nobody".into()]),
        ("env".into(), vec!["prod".into()]),
    ])
    .await;
    assert_eq!(prod.len(), 20);
    assert!(prod.iter().all(|id| id.starts_with("i-prod-")));
    let (with_env, _) = page_all(vec![("env".into(), vec![])]).await;
    assert_eq!(with_env.len(), 250);
    let (everything, _) = page_all(vec![]).await;
    assert_eq!(everything.len(), 257, "other regions are invisible");

    // Default page size is 10; an explicit id list ignores unknown ids.
    let r = c
        .describe_instances(REGION, DescribeQuery::default())
        .await
        .unwrap()
        .value;
    assert_eq!(r.instances.len(), 10);
    assert_eq!(r.total_count, Some(257));
    let r = c
        .describe_instances(REGION, ids_query(&["i-page-00001", "i-nope", "i-sh-00001"]))
        .await
        .unwrap()
        .value;
    assert_eq!(r.instances.len(), 1);

    // Status filter, through the raw parameters.
    let mut p = Params::new();
    p.set("Status", "STOPPED").set("MaxResults", 100);
    let r = c
        .call::<ecs_operator::cloud::DescribeInstancesResult>(
            REGION,
            Action::DescribeInstances,
            p.into_vec(),
        )
        .await
        .unwrap()
        .value;
    assert_eq!(r.total_count, Some(7));
    let e = c
        .describe_instances(
            REGION,
            DescribeQuery {
                max_results: Some(101),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("InvalidMaxResults.Malformed", 400));
}

#[tokio::test]
async fn auth_errors_are_classified_and_logged() {
    let emu = start().await;
    let with = |ak: &str, sk: &str, token: Option<&str>| {
        let ak = ak.to_string();
        let sk = sk.to_string();
        let token = token.map(str::to_string);
        emu.client_with(move |c| c.credentials = creds(&ak, &sk, token.as_deref()))
    };
    let q = DescribeQuery::default;

    let e = with(AK, "wrong", None)
        .describe_instances(REGION, q())
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("SignatureDoesNotMatch", 401));
    assert_eq!(e.class(), ErrorClass::Auth);
    assert!(matches!(
        e,
        CloudError::Api {
            code_n: Some(100010),
            ..
        }
    ));
    let e = with("AKLTunknown", SK, None)
        .describe_instances(REGION, q())
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("InvalidAccessKey", 401));
    assert_eq!(e.class(), ErrorClass::Auth);

    emu.admin(
        "PUT",
        "config",
        Some(json!({"expired_tokens": ["sts-old"]})),
    )
    .await;
    let e = with(AK, SK, Some("sts-old"))
        .describe_instances(REGION, q())
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("InvalidSecretToken", 401));
    assert_eq!(e.class(), ErrorClass::Auth);
    with(AK, SK, Some("sts-fresh"))
        .describe_instances(REGION, q())
        .await
        .unwrap();

    let e = emu
        .client()
        .describe_instances("mars-north-1", q())
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("InvalidRegion", 400));

    let calls = emu.calls("DescribeInstances").await;
    let got: Vec<(&str, u64)> = calls
        .iter()
        .map(|c| (c["code"].as_str().unwrap(), c["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("SignatureDoesNotMatch", 401),
            ("InvalidAccessKey", 401),
            ("InvalidSecretToken", 401),
            ("OK", 200),
            ("InvalidRegion", 400),
        ]
    );
    assert_eq!(calls[4]["region"], "mars-north-1");
}

#[tokio::test]
async fn clock_skew_is_rejected() {
    let emu = start().await;
    let query = vec![
        ("Action".to_string(), "DescribeInstances".to_string()),
        ("Version".to_string(), "2020-04-01".to_string()),
    ];
    let send = |at: jiff::Timestamp| {
        let req = signed_get(&emu, &query, at);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            (status, v)
        }
    };
    let now = jiff::Timestamp::now();
    let (s, v) = send(now - jiff::SignedDuration::from_mins(20)).await;
    assert_eq!(s, 400);
    assert_eq!(v["ResponseMetadata"]["Error"]["Code"], "InvalidTimestamp");
    assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100006);
    let (s, _) = send(now + jiff::SignedDuration::from_mins(20)).await;
    assert_eq!(s, 400);
    let (s, v) = send(now - jiff::SignedDuration::from_mins(10)).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn internal_error_is_retried_with_the_same_token() {
    let emu = start().await;
    let id = emu.seed(json!({})).await;
    emu.fault("DeleteInstances", json!({"fail_next": 2})).await;
    let c = emu.client_with(|c| c.max_attempts = 3);
    let r = c
        .delete_instances(REGION, vec![id.clone()], "tok-retry".into())
        .await
        .unwrap();
    assert!(r.value[0].error.is_none());
    let calls = emu.calls("DeleteInstances").await;
    let seen: Vec<(u64, &str, &str)> = calls
        .iter()
        .map(|c| {
            (
                c["status"].as_u64().unwrap(),
                c["code"].as_str().unwrap(),
                c["client_token"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (500, "InternalError", "tok-retry"),
            (500, "InternalError", "tok-retry"),
            (200, "OK", "tok-retry"),
        ]
    );
    assert_eq!(calls[0]["fault"], "injected_error");
    assert_eq!(emu.deletions_of(&id).await, 1);

    // Without retries the 500 surfaces as retryable, and nothing was applied.
    let other = emu.seed(json!({})).await;
    emu.fault(
        "DeleteInstances",
        json!({"fail_next": 1, "error_code": "ServiceUnavailableTemp", "error_status": 503}),
    )
    .await;
    let e = emu
        .client()
        .delete_instances(REGION, vec![other.clone()], "tok-x".into())
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("ServiceUnavailableTemp", 503));
    assert!(e.is_retryable());
    assert_eq!(emu.status_of(&other).await.as_deref(), Some("RUNNING"));
}

#[tokio::test]
async fn throttling_gives_429_and_the_client_backs_off() {
    let emu = start().await;
    emu.fault(
        "DescribeInstances",
        json!({"throttle_rps": 2.0, "throttle_burst": 1}),
    )
    .await;
    let c = emu.client();
    c.describe_instances(REGION, DescribeQuery::default())
        .await
        .unwrap();
    let e = c
        .describe_instances(REGION, DescribeQuery::default())
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("FlowLimitExceeded", 429));
    assert_eq!(e.class(), ErrorClass::Throttled);

    let patient = emu.client_with(|c| {
        c.max_attempts = 5;
        c.retry_base = Duration::from_millis(100);
        c.retry_max = Duration::from_millis(600);
    });
    for _ in 0..3 {
        patient
            .describe_instances(REGION, DescribeQuery::default())
            .await
            .unwrap();
    }
    let calls = emu.calls("DescribeInstances").await;
    assert!(calls
        .iter()
        .filter(|c| c["status"] == 429)
        .all(|c| c["fault"] == "throttle"));
    // The patient client's calls (after the first client's two): each throttled answer was
    // followed by a pause of at least half the retry base (the backoff's jitter floor), not
    // by an immediate re-send.
    let patient_calls = &calls[2..];
    let at = |c: &Value| c["at_ms"].as_i64().unwrap();
    let gaps: Vec<i64> = patient_calls
        .windows(2)
        .filter(|w| w[0]["status"] == 429)
        .map(|w| at(&w[1]) - at(&w[0]))
        .collect();
    assert!(
        !gaps.is_empty(),
        "the patient client was never throttled: {calls:?}"
    );
    assert!(
        gaps.iter().all(|g| *g >= 50),
        "retried too soon: {gaps:?} ms"
    );
}

/// Every code the official Go SDK treats as throttling slows the client down (the limiter
/// pauses), with whichever status it comes; and a 503 without a throttling code too.
#[tokio::test]
async fn every_throttling_code_and_status_is_throttling() {
    let emu = start().await;
    // The emulator's list of throttling answers (ambient throttling cycles through it): so
    // an answer the suites throttle with that the client would not slow down for fails here.
    for (code, status, _) in ecs_emulator::THROTTLE_VARIANTS {
        emu.fault(
            "DescribeInstances",
            json!({"throttle_rate": 1.0, "throttle_code": code, "throttle_status": status}),
        )
        .await;
        // A fresh client each time: the last one's limiter is paused, as it should be.
        let e = emu
            .client()
            .describe_instances(REGION, DescribeQuery::default())
            .await
            .unwrap_err();
        assert_eq!(api_err(&e), (code, status));
        assert_eq!(e.class(), ErrorClass::Throttled, "{code} {status}");
    }
}

/// `Retry-After` outranks the client's own backoff: the retry comes no sooner than the
/// server asked, though the backoff alone would have retried after 20-40 ms.
#[tokio::test]
async fn retry_after_is_honoured_before_the_retry() {
    let emu = start().await;
    emu.fault(
        "DescribeInstances",
        json!({"fail_next": 1, "error_code": "Throttling", "error_status": 400, "retry_after_secs": 1}),
    )
    .await;
    let c = emu.client_with(|c| c.max_attempts = 2);
    c.describe_instances(REGION, DescribeQuery::default())
        .await
        .unwrap();
    let calls = emu.calls("DescribeInstances").await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    let gap = calls[1]["at_ms"].as_i64().unwrap() - calls[0]["at_ms"].as_i64().unwrap();
    assert!(gap >= 1000, "retried {gap} ms after Retry-After: 1");
}

#[tokio::test]
async fn lost_response_is_a_network_error_and_the_retry_replays() {
    let emu = start().await;
    let id = emu.seed(json!({})).await;
    emu.fault("DeleteInstances", json!({"lose_next": 1})).await;
    let e = emu
        .client()
        .delete_instances(REGION, vec![id.clone()], "tok-lost".into())
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::Network { .. }), "{e:?}");
    assert!(e.is_retryable());
    // It was applied all the same.
    assert_eq!(emu.deletions_of(&id).await, 1);

    let id2 = emu.seed(json!({})).await;
    emu.fault("DeleteInstances", json!({"lose_next": 1})).await;
    let c = emu.client_with(|c| c.max_attempts = 3);
    let r = c
        .delete_instances(REGION, vec![id2.clone()], "tok-lost-2".into())
        .await
        .unwrap();
    assert!(r.value[0].error.is_none(), "{:?}", r.value);
    assert_eq!(emu.deletions_of(&id2).await, 1, "deleted exactly once");
    let calls: Vec<Value> = emu
        .calls("DeleteInstances")
        .await
        .into_iter()
        .filter(|c| c["client_token"] == "tok-lost-2")
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0]["lost"].as_bool(), calls[0]["replayed"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(
        (calls[1]["lost"].as_bool(), calls[1]["replayed"].as_bool()),
        (Some(false), Some(true))
    );
    assert_ne!(calls[0]["request_id"], calls[1]["request_id"]);
}

#[tokio::test]
async fn same_token_with_other_ids_is_a_mismatch() {
    let emu = start().await;
    let a = emu.seed(json!({})).await;
    let b = emu.seed(json!({})).await;
    let c = emu.client_with(|c| c.max_attempts = 3);
    c.delete_instances(REGION, vec![a.clone()], "tok-m".into())
        .await
        .unwrap();
    let e = c
        .delete_instances(REGION, vec![b.clone()], "tok-m".into())
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("IdempotentParameterMismatch", 400));
    assert_eq!(e.class(), ErrorClass::Terminal);
    assert_eq!(emu.calls("DeleteInstances").await.len(), 2, "not retried");
    assert_eq!(emu.status_of(&b).await.as_deref(), Some("RUNNING"));
    // The same token on another action is unrelated.
    assert_eq!(
        batch(&c, Action::StopInstances, &[&b], "tok-m").await,
        vec!["OK"]
    );
}

#[tokio::test]
async fn concurrent_same_token_gets_idempotent_processing() {
    let emu = start().await;
    let id = emu.seed(json!({})).await;
    emu.fault("DeleteInstances", json!({"latency_ms": 800}))
        .await;
    let c = emu.client();
    let first = c.delete_instances(REGION, vec![id.clone()], "tok-busy".into());
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.delete_instances(REGION, vec![id.clone()], "tok-busy".into())
            .await
    };
    let (a, b) = tokio::join!(first, second);
    assert!(a.unwrap().value[0].error.is_none());
    let e = b.unwrap_err();
    assert_eq!(api_err(&e), ("IdempotentProcessing", 412));
    assert_eq!(e.class(), ErrorClass::Retryable);

    // With retries the second caller ends up with the first one's answer.
    let id2 = emu.seed(json!({})).await;
    let patient = emu.client_with(|c| {
        c.max_attempts = 10;
        c.retry_base = Duration::from_millis(200);
        c.retry_max = Duration::from_millis(400);
    });
    let first = c.delete_instances(REGION, vec![id2.clone()], "tok-busy-2".into());
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        patient
            .delete_instances(REGION, vec![id2.clone()], "tok-busy-2".into())
            .await
    };
    let (a, b) = tokio::join!(first, second);
    assert_eq!(a.unwrap().value, b.unwrap().value);
    assert_eq!(emu.deletions_of(&id2).await, 1);
}

#[tokio::test]
async fn replay_returns_the_recorded_error_until_replay_is_off() {
    let emu = start().await;
    let id = emu.seed(json!({"Status": "REBUILDING"})).await;
    let c = emu.client();
    let del = || c.delete_instances(REGION, vec![id.clone()], "tok-replay".into());
    assert_eq!(
        codes(&del().await.unwrap().value),
        vec!["InvalidInstanceStatus"]
    );
    let (s, _) = emu
        .admin(
            "PATCH",
            &format!("instances/{id}"),
            Some(json!({"Status": "RUNNING"})),
        )
        .await;
    assert_eq!(s, 200);
    // Deletable now, but the token's recorded answer wins.
    assert_eq!(
        codes(&del().await.unwrap().value),
        vec!["InvalidInstanceStatus"]
    );
    assert_eq!(emu.status_of(&id).await.as_deref(), Some("RUNNING"));
    let calls = emu.calls("DeleteInstances").await;
    assert_eq!(calls[1]["replayed"], true);
    assert_eq!(calls[1]["instance_codes"], json!(["InvalidInstanceStatus"]));

    emu.admin("PUT", "config", Some(json!({"replay": false})))
        .await;
    assert_eq!(codes(&del().await.unwrap().value), vec!["OK"]);
    assert_eq!(emu.deletions_of(&id).await, 1);
    assert_eq!(emu.calls("DeleteInstances").await[2]["replayed"], false);
}

#[tokio::test]
async fn unusable_responses_are_bad_response_with_status() {
    let emu = start().await;
    let c = emu.client();
    for (kind, status, want) in [
        ("html", None, 502),
        ("html", Some(503), 503),
        ("truncated_json", None, 200),
        ("no_metadata", None, 200),
        ("oversized", None, 200),
        ("empty", None, 200),
        ("empty", Some(500), 500),
    ] {
        let id = emu.seed(json!({})).await;
        let mut spec = json!({"garbage_next": 1, "garbage_kind": kind});
        if let Some(s) = status {
            spec["garbage_status"] = json!(s);
        }
        emu.fault("DeleteInstances", spec).await;
        let e = c
            .delete_instances(REGION, vec![id.clone()], format!("tok-{kind}-{want}"))
            .await
            .unwrap_err();
        match &e {
            CloudError::BadResponse { status, .. } => assert_eq!(*status, want, "{kind}: {e}"),
            other => panic!("{kind}: expected BadResponse, got {other:?}"),
        }
        assert_eq!(e.http_status(), Some(want));
        assert_eq!(
            emu.status_of(&id).await.as_deref(),
            Some("RUNNING"),
            "{kind}: not applied"
        );
    }
    let calls = emu.calls("DeleteInstances").await;
    assert_eq!(calls[0]["code"], "Garbage:html");
    assert_eq!(calls[0]["fault"], "garbage:html");
}

#[tokio::test]
async fn slow_answers_time_out() {
    let emu = start().await;
    emu.fault("DescribeInstances", json!({"latency_ms": 1500}))
        .await;
    let c = emu.client_with(|c| c.request_timeout = Duration::from_millis(300));
    let started = std::time::Instant::now();
    let e = c
        .describe_instances(REGION, DescribeQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::Timeout { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(started.elapsed() < Duration::from_millis(1200));
}

#[tokio::test]
async fn connection_refused_is_a_network_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = ClientConfig::new(&format!("http://{addr}"), REGION, creds(AK, SK, None));
    cfg.max_attempts = 1;
    let c = EcsClient::new(cfg, None).unwrap();
    let e = c
        .describe_instances(REGION, DescribeQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::Network { .. }), "{e:?}");
}

#[tokio::test]
async fn modify_instance_attribute_errors() {
    let emu = start().await;
    let c = emu.client();
    let e = c
        .set_deletion_protection(REGION, "i-missing000000000000".into(), true)
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("InvalidInstance.NotFound", 404));
    let id = emu.seed(json!({"InstanceName": "before"})).await;
    let mut p = Params::new();
    p.set("InstanceId", &id)
        .set("InstanceName", "after")
        .set("Description", "renamed")
        .set("DeletionProtection", "maybe");
    let e = c
        .call::<EmptyResult>(
            REGION,
            Action::ModifyInstanceAttribute,
            p.clone().into_vec(),
        )
        .await
        .unwrap_err();
    assert_eq!(api_err(&e), ("InvalidDeletionProtection.Malformed", 400));
    let mut p = Params::new();
    p.set("InstanceId", &id)
        .set("InstanceName", "after")
        .set("Description", "renamed");
    c.call::<EmptyResult>(REGION, Action::ModifyInstanceAttribute, p.into_vec())
        .await
        .unwrap();
    let d = c
        .describe_instances(REGION, ids_query(&[&id]))
        .await
        .unwrap()
        .value;
    assert_eq!(d.instances[0].instance_name.as_deref(), Some("after"));
    assert_eq!(d.instances[0].description.as_deref(), Some("renamed"));
}

/// A client that hangs up (a timeout, a SIGKILLed operator) does not stop a real server from
/// applying the call; the emulator's log must still show the call, as a lost answer, or a
/// test counting applied calls from the log miscounts (the soak once saw 200 deletions of
/// 199 "created" VMs).
#[tokio::test]
async fn a_call_whose_client_hung_up_is_applied_and_logged_as_lost() {
    let emu = start().await;
    let id = emu.seed(json!({})).await;
    emu.fault("DeleteInstances", json!({"latency_ms": 600}))
        .await;
    let impatient = emu.client_with(|c| c.request_timeout = Duration::from_millis(150));
    let e = impatient
        .delete_instances(REGION, vec![id.clone()], "tok-hangup".into())
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    let mut logged = Vec::new();
    for _ in 0..100 {
        logged = emu.calls("DeleteInstances").await;
        if !logged.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(logged.len(), 1, "the call is logged: {logged:?}");
    assert_eq!(logged[0]["code"], "OK");
    assert_eq!(logged[0]["lost"], true);
    assert_eq!(logged[0]["fault"], "client_gone");
    assert_eq!(emu.deletions_of(&id).await, 1, "and applied");
}

/// AK/SK and STS token of `client_requests_are_logged_for_the_official_sdk`:
/// `tests/python/test_client_requests.py` recomputes each signature with the same values.
const WIRE_AK: &str = "AKLTwire-check";
const WIRE_SK: &str = "wire-check-secret";
const WIRE_TOKEN: &str = "STS2eyJ3aXJlIjoiY2hlY2sifQ+/a=";

/// The real client through every action it has, with values that need percent-encoding
/// (space, `/`, `+`, `=`, `~`, `*`, reserved characters, non-ASCII, an empty value), indexed
/// lists past 9 (`InstanceIds.10` sorts before `InstanceIds.2`), `TagFilters.N.Values.M`,
/// ClientTokens, two regions, with and without an STS token, while the emulator logs each
/// request as it arrived (`EmulatorConfig::request_log`). The wire tier hands that log
/// (`ECS_CLIENT_REQUESTS`) to the official Python SDK's signer, which must compute the same
/// Authorization for every request: a check by an implementation that is not ours. Without
/// `ECS_CLIENT_REQUESTS` the log goes to a temporary file and is only checked to be there.
#[tokio::test]
async fn client_requests_are_logged_for_the_official_sdk() {
    use base64::Engine;
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let path = match std::env::var_os("ECS_CLIENT_REQUESTS") {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => tmp.path().to_path_buf(),
    };
    // This test owns the file: start it empty so it holds exactly this run's requests.
    std::fs::File::create(&path).unwrap();
    let emu = Emu(EmulatorServer::start(EmulatorConfig {
        access_key: WIRE_AK.into(),
        secret_key: Secret::new(WIRE_SK),
        delays: Delays::ZERO,
        request_log: Some(path.clone()),
        ..Default::default()
    })
    .await);
    let plain = emu.client_with(|c| c.credentials = creds(WIRE_AK, WIRE_SK, None));
    let sts = emu.client_with(|c| c.credentials = creds(WIRE_AK, WIRE_SK, Some(WIRE_TOKEN)));

    let user_data =
        base64::engine::general_purpose::STANDARD.encode(b"#!/bin/sh\necho \xfb\xff ~ok\n");
    assert!(
        user_data.contains('+') && user_data.contains('/') && user_data.ends_with('='),
        "{user_data}"
    );
    let mut run = run_request("测试-vm_1", "tok run/1+=");
    run.tags.push(Tag {
        key: "a+b=c d".into(),
        value: "x/y z+1=2 é~*".into(),
    });
    run.description = Some("!\"#$%&'()*,:;<>?@[\\]^`{|} 描述".into());
    run.user_data = Some(user_data);
    run.host_name = Some("host-1".into());
    let first = plain.run_instances(REGION, run).await.unwrap().value;
    let second = sts
        .run_instances(REGION, run_request("second", "tok-run-2"))
        .await
        .unwrap()
        .value;
    let (a, b) = (first[0].clone(), second[0].clone());

    // Twelve IDs: InstanceIds.10..12 sort before InstanceIds.2 in the canonical query.
    let mut ids: Vec<String> = (3..=12).map(|n| format!("i-missing{n:012}")).collect();
    ids.insert(0, b.clone());
    ids.insert(0, a.clone());
    let found = plain
        .describe_instances(
            REGION,
            DescribeQuery {
                instance_ids: ids,
                tag_filters: vec![
                    ("owner".into(), vec!["my operator".into(), "x".into()]),
                    ("a+b=c d".into(), vec!["x/y z+1=2 é~*".into()]),
                ],
                max_results: Some(100),
                next_token: None,
            },
        )
        .await
        .unwrap()
        .value;
    let got: Vec<&str> = found
        .instances
        .iter()
        .map(|i| i.instance_id.as_str())
        .collect();
    assert_eq!(got, vec![a.as_str()]);
    sts.describe_instances(
        "cn-shanghai",
        DescribeQuery {
            tag_filters: vec![("owner".into(), vec!["测试 值".into()])],
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let tags = vec![
        Tag {
            key: "team/名前".into(),
            value: "a+b=c d".into(),
        },
        Tag {
            key: "empty".into(),
            value: String::new(),
        },
    ];
    plain
        .tag_instances(REGION, vec![a.clone(), b.clone()], tags)
        .await
        .unwrap();
    sts.untag_instances(
        REGION,
        vec![a.clone()],
        vec!["team/名前".into(), "empty".into()],
    )
    .await
    .unwrap();
    plain
        .set_deletion_protection(REGION, b.clone(), true)
        .await
        .unwrap();
    sts.set_deletion_protection(REGION, b.clone(), false)
        .await
        .unwrap();
    let mut p = Params::new();
    p.set("InstanceId", &a)
        .set("Description", "~!*'();:@&=+$,/?#[]% \"<>");
    // Every reserved character, for the signers; the cloud refuses such a description
    // (doc 92110), and the refused request is logged and checked all the same.
    let refused = plain
        .call::<EmptyResult>(REGION, Action::ModifyInstanceAttribute, p.into_vec())
        .await;
    assert!(
        matches!(&refused, Err(e) if e.code() == "InvalidDescription.Malformed"),
        "{refused:?}"
    );

    emu.wait_status(&a, Some("RUNNING")).await;
    let mut p = Params::new();
    p.list("InstanceIds", &[&a])
        .set("ForceStop", true)
        .set("StoppedMode", "KeepCharging")
        .set("ClientToken", "tok stop=1");
    let r = sts
        .call::<OperationDetailsResult>(REGION, Action::StopInstances, p.into_vec())
        .await
        .unwrap();
    assert_eq!(codes(&r.value.operation_details), vec!["OK"]);
    emu.wait_status(&a, Some("STOPPED")).await;
    assert_eq!(
        batch(&plain, Action::StartInstances, &[&a], "tok~start").await,
        vec!["OK"]
    );
    emu.wait_status(&a, Some("RUNNING")).await;
    let mut p = Params::new();
    p.set("InstanceId", &b).set("ClientToken", "tok/one+");
    plain
        .call::<EmptyResult>(REGION, Action::DeleteInstance, p.into_vec())
        .await
        .unwrap();
    let deleted = sts
        .delete_instances(REGION, vec![a.clone()], "tok del+/= 1".into())
        .await
        .unwrap()
        .value;
    assert_eq!(codes(&deleted), vec!["OK"]);
    // A refused call is logged as well: its signature is as checkable as any other.
    let e = plain
        .delete_instances(REGION, vec!["i-missing000000000099".into()], "tok-x".into())
        .await
        .unwrap_or_else(|e| panic!("batch errors are per instance: {e}"))
        .value;
    assert_eq!(codes(&e), vec!["InvalidInstance.NotFound"]);

    let log = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let api: Vec<&Value> = lines.iter().filter(|l| l["path"] == "/").collect();
    assert!(api.len() >= 14, "{} API requests logged: {log}", api.len());
    for l in &api {
        let has = |name: &str| {
            l["headers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h[0] == name)
        };
        assert!(has("authorization") && has("x-date") && has("host"), "{l}");
    }
    let calls = emu.admin("GET", "calls", None).await.1;
    let failed: Vec<&Value> = calls
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != 200)
        .collect();
    // Every request passed the emulator's signature check; the one refusal is the
    // description of reserved characters, refused for its content.
    assert!(
        failed.len() == 1 && failed[0]["code"] == "InvalidDescription.Malformed",
        "every request passed the emulator's signature check: {failed:?}"
    );
    eprintln!(
        "{} client requests logged to {} for the official SDK's signer",
        api.len(),
        path.display()
    );
}
