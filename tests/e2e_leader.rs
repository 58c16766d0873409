//! Two replicas with leader election on the real control plane: only the holder reconciles;
//! the leader killed mid-run is replaced within the lease duration; SIGTERM releases the Lease.

mod support;

use std::time::Duration;

use ecs_operator::api::EcsInstance;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;
use support::*;

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("ecs-operator-leader")
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let client = client().await;
    let ns = namespace(&client, "e2e-leader").await;
    let emu = Emulator::start("leader", &["--delete-delay-ms", "0"]);
    let args = |id: &'static str| -> Vec<&'static str> {
        vec![
            "--leader-elect",
            "--lease-duration-secs",
            "4",
            "--identity",
            id,
        ]
    };
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    let mut a = Operator::start_with_env("leader-a", &ns, &emu, &args("replica-a"), &env);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let first = wait_for(30, "a leader", || holder(&leases)).await;
    assert_eq!(first, "replica-a");
    let mut b = Operator::start_with_env("leader-b", &ns, &emu, &args("replica-b"), &env);

    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = emu.seed(json!({"Status": "RUNNING"})).await;
        create(&api, &format!("vm-{i}"), json!({"instanceId": id})).await;
        ids.push(id);
    }
    wait_for(30, "all adopted", || async {
        let l = api.list(&Default::default()).await.ok()?;
        l.items
            .iter()
            .all(|o| o.condition("Ready").is_some_and(|c| c.status == "True"))
            .then_some(())
    })
    .await;
    // The standby made no cloud calls: a's log has them, b's none.
    assert!(!b.log().contains("cloud call ok"), "standby reconciled");
    assert!(b.is_running());

    // Delete half, kill the leader in the middle of it, delete the rest.
    for i in 0..10 {
        delete(&api, &format!("vm-{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.kill();
    for i in 10..20 {
        delete(&api, &format!("vm-{i}")).await;
    }
    let t = std::time::Instant::now();
    wait_for(30, "b leads", || async {
        (holder(&leases).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    let takeover = t.elapsed();
    assert!(
        takeover < Duration::from_secs(10),
        "takeover took {takeover:?}"
    );
    wait_for(60, "all resources gone", || async {
        (count(&api).await == 0).then_some(())
    })
    .await;
    for id in &ids {
        assert_eq!(emu.deletions_of(id).await, 1, "{id} deleted exactly once");
    }
    assert!(b.log().contains("acquired the lease"));

    // SIGTERM releases the Lease: a new replica takes over well before it would expire.
    let mut c = Operator::start_with_env("leader-c", &ns, &emu, &args("replica-c"), &env);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = b.terminate().expect("b exited");
    assert!(st.success(), "graceful exit: {st:?}");
    assert!(b.log().contains("lease released"), "{}", b.log());
    wait_for(10, "c leads", || async {
        (holder(&leases).await.as_deref() == Some("replica-c")).then_some(())
    })
    .await;
    assert!(c.is_running());
}
