//! /metrics, /healthz and /readyz of a running operator, and JSON logs.

use ecs_test_harness as support;

use ecs_operator::api::EcsInstance;
use kube::api::Api;
use serde_json::json;
use support::*;

fn metrics_addr(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("serving /metrics"))?;
    // JSON log: "addr":"127.0.0.1:PORT"
    let i = line.find("\"addr\":\"")? + 8;
    Some(line[i..].split('"').next()?.to_string())
}

fn value(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_json_logs() {
    let client = client().await;
    let ns = namespace(&client, "e2e-metrics").await;
    let emu = Emulator::start("metrics", &["--delete-delay-ms", "0"]);
    let op = Operator::start("metrics", &ns, &emu, &["--log-format", "json"]);
    let addr = wait_for(20, "metrics address in the log", || async {
        metrics_addr(&op.log())
    })
    .await;
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let (http, addr) = (http.clone(), addr.clone());
        async move {
            let r = http.get(format!("http://{addr}{path}")).send().await.ok()?;
            Some((r.status().as_u16(), r.text().await.ok()?))
        }
    };
    assert_eq!(get("/healthz").await.unwrap().0, 200);
    wait_for(20, "ready", || async {
        (get("/readyz").await?.0 == 200).then_some(())
    })
    .await;

    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    create(&api, "vm", json!({"instanceId": id})).await;
    wait_for(20, "finalizer", || async {
        has_finalizer(&api, "vm").await.filter(|h| *h)
    })
    .await;
    delete(&api, "vm").await;
    wait_for(20, "gone", || gone(&api, "vm")).await;

    let m = wait_for(10, "deletion metrics", || async {
        let (_, m) = get("/metrics").await?;
        (value(&m, "ecs_operator_deletion_latency_seconds_count") >= 1.0).then_some(m)
    })
    .await;
    assert_eq!(
        value(
            &m,
            "ecs_operator_cloud_calls_total{account=\"default\",action=\"DeleteInstances\",code=\"OK\"}"
        ),
        1.0,
        "{m}"
    );
    assert!(
        value(
            &m,
            "ecs_operator_cloud_calls_total{account=\"default\",action=\"DescribeInstances\",code=\"OK\"}"
        ) >= 1.0
    );
    assert!(value(&m, "ecs_operator_reconciles_total{result=\"ok\"}") >= 2.0);
    assert_eq!(value(&m, "ecs_operator_delete_batch_size_count"), 1.0);
    assert!(m.contains("ecs_operator_cloud_call_duration_seconds_bucket"));
    assert!(m.contains("ecs_operator_reconcile_duration_seconds_bucket"));
    // Every log line is JSON, and lines about a resource name it.
    let log = op.log();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == "DeleteInstances answered" {
            assert_eq!(v["name"], "vm");
            assert_eq!(v["namespace"], ns.as_str());
        }
    }
    assert!(log.contains("DeleteInstances answered"));
}

/// The operator's Event recorder on a real API server: a repeat becomes a `series` update
/// of the first Event (count 2), anything else a new Event.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_events_become_a_series() {
    use ecs_operator::controller::events::{EventRecorder, Note};
    use k8s_openapi::api::events::v1::Event;
    use kube::api::ListParams;
    use kube::Resource;

    let client = client().await;
    let ns = namespace(&client, "e2e-events").await;
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let obj = create(&api, "web", json!({"instanceId": "i-eventsonly000000001"})).await;
    let rec = EventRecorder::new(client.clone(), "ecs-operator-test", None);
    let r = obj.object_ref(&());
    let note = |text: &'static str| Note {
        warning: true,
        reason: "CloudError",
        action: "Delete",
        note: text,
    };
    rec.publish(&r, &note("InternalError")).await.unwrap();
    rec.publish(&r, &note("InternalError")).await.unwrap();
    rec.publish(&r, &note("ServiceUnavailable")).await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let mut list: Vec<(String, Option<i32>)> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.note.unwrap_or_default(), e.series.map(|s| s.count)))
        .collect();
    list.sort();
    assert_eq!(
        list,
        [
            ("InternalError".to_string(), Some(2)),
            ("ServiceUnavailable".to_string(), None)
        ]
    );
}
