//! The leak sweeper end to end: a force-removed finalizer leaves a VM that is reported and
//! then deleted; other clusters' VMs, untagged VMs and VMs whose resource lives in another
//! namespace are never touched; a cloud fault during the sweep skips it.

mod support;

use std::time::Duration;

use ecs_operator::api::EcsInstance;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use support::*;

/// This cluster is `c-test`; sweeps every second, a VM is confirmed after 2 s.
fn sweep_args(mode: &'static str) -> [&'static str; 8] {
    [
        "--cluster-id",
        "c-test",
        "--sweep-interval-secs",
        "1",
        "--sweep-grace-secs",
        "2",
        "--sweep-mode",
        mode,
    ]
}

/// Tag keys of an emulator instance (admin view).
fn tag_keys(inst: &serde_json::Value) -> Vec<String> {
    inst["Tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["Key"].as_str().map(str::to_string))
        .collect()
}

fn assert_no_ownership_tags(inst: &serde_json::Value) {
    let keys = tag_keys(inst);
    assert!(
        !keys.iter().any(|k| k.starts_with("ecs.volcengine.io/")),
        "ownership tags left: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sweeper_reports_then_deletes_only_true_leaks() {
    let client = client().await;
    let ns = namespace(&client, "e2e-sweep").await;
    let other_ns = namespace(&client, "e2e-sweep-other").await;
    let emu = Emulator::start(
        "sweep",
        &["--create-delay-ms", "0", "--delete-delay-ms", "0"],
    );
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    let mut op = Operator::start_with_env("sweep", &ns, &emu, &sweep_args("report"), &env);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    create(&api, "web", json!({"create": {"zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": "ecs.g1ie.large", "subnetId": "subnet-1", "securityGroupIds": ["sg-1"]}})).await;
    let o = wait_for(30, "created", || async {
        let o = api.get("web").await.ok()?;
        o.status.as_ref()?.instance_id.clone()?;
        (o.condition("Ready")?.status == "True").then_some(o)
    })
    .await;
    let leaked = o.status.unwrap().instance_id.unwrap();
    // The operator is down; an administrator deletes the resource and force-removes the
    // finalizer: the resource goes, the VM stays.
    op.kill();
    kubectl(&["-n", &ns, "delete", "ecsi", "web", "--wait=false"]);
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_for(20, "resource gone", || gone(&api, "web")).await;
    assert!(emu.instance(&leaked).await.is_some());
    op.restart();

    // VMs that must never be touched.
    let other_cluster = emu.seed(json!({"Tags": [{"Key": "ecs.volcengine.io/cluster", "Value": "c-other"}, {"Key": "ecs.volcengine.io/uid", "Value": "0000-gone"}]})).await;
    let untagged = emu.seed(json!({})).await;
    let other_api: Api<EcsInstance> = Api::namespaced(client.clone(), &other_ns);
    let elsewhere = create(
        &other_api,
        "elsewhere",
        json!({"instanceId": "i-placeholder1"}),
    )
    .await;
    let elsewhere_vm = emu.seed(json!({"Tags": [{"Key": "ecs.volcengine.io/cluster", "Value": "c-test"}, {"Key": "ecs.volcengine.io/uid", "Value": elsewhere.uid().unwrap()}]})).await;

    // Report mode: a log line naming the VM, no deletion.
    wait_for(30, "leak reported", || async {
        op.log()
            .lines()
            .any(|l| l.contains("leaked VM") && l.contains(&leaked))
            .then_some(())
    })
    .await;
    let log = op.log();
    for id in [&other_cluster, &untagged, &elsewhere_vm] {
        assert!(
            !log.lines()
                .any(|l| l.contains("leaked VM") && l.contains(id.as_str())),
            "{id} reported"
        );
    }
    assert_eq!(
        emu.deletions_of(&leaked).await,
        0,
        "report mode deletes nothing"
    );
    // The gauge and a Warning Event on the summary object say the same.
    let addr = log
        .lines()
        .find_map(|l| l.split("serving /metrics").nth(1)?.split("addr=").nth(1))
        .map(|a| a.trim().to_string())
        .expect("metrics address in the log");
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge: f64 = metrics
        .lines()
        .find(|l| l.starts_with("ecs_operator_leaked_instances "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no leaked_instances gauge in {metrics}"));
    assert_eq!(gauge, 1.0, "only the true leak counts");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    let leak_events: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("LeakedInstance"))
        .filter(|e| e.note.as_deref().is_some_and(|n| n.contains(&leaked)))
        .collect();
    assert!(
        !leak_events.is_empty(),
        "no LeakedInstance Event for {leaked}"
    );
    let e = &leak_events[0];
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.metadata.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some(ns.as_str())
    );

    // The command-line dry run prints the same verdicts.
    let out = std::process::Command::new(BIN)
        .args([
            "sweep",
            "--dry-run",
            "--cluster-id",
            "c-test",
            "--grace-secs",
            "0",
            "--sweeps",
            "2",
            "--interval-secs",
            "1",
        ])
        .env("KUBECONFIG", control_plane())
        .env("VOLCENGINE_ACCESS_KEY", AK)
        .env("VOLCENGINE_SECRET_KEY", SK)
        .env("VOLCENGINE_ENDPOINT", &emu.url)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = table
        .lines()
        .find(|l| l.contains(&leaked))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("true") && row.contains(&format!("{ns}/web")),
        "{row}"
    );
    for id in [&other_cluster, &untagged, &elsewhere_vm] {
        assert!(!table.contains(id.as_str()), "{id} listed: {table}");
    }

    // Delete mode, but the cloud fails during sweeps: skipped, nothing guessed.
    op.kill();
    emu.faults(
        "DescribeInstances",
        json!({"error_rate": 1.0, "error_code": "InternalError", "error_status": 500}),
    )
    .await;
    let mut op = Operator::start_with_env("sweep-delete", &ns, &emu, &sweep_args("delete"), &env);
    wait_for(30, "sweep skipped", || async {
        op.log().contains("leak sweep skipped").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(emu.deletions_of(&leaked).await, 0);
    emu.send(reqwest::Method::DELETE, "faults", json!({})).await;
    wait_for(40, "leak deleted", || async {
        (emu.deletions_of(&leaked).await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [&other_cluster, &untagged, &elsewhere_vm] {
        assert_eq!(emu.deletions_of(id).await, 0, "{id} deleted");
    }
    op.kill();
}

/// deletionPolicy Orphan hands the VM over: its ownership tags are removed before the
/// finalizer goes (kept while UntagResources fails), so a sweeper in delete mode leaves it
/// alone while it still deletes a true leak seeded afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn orphaned_vm_is_untagged_and_never_swept() {
    let client = client().await;
    let ns = namespace(&client, "e2e-sweep-orphan").await;
    let emu = Emulator::start(
        "sweep-orphan",
        &["--create-delay-ms", "0", "--delete-delay-ms", "0"],
    );
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    let mut op = Operator::start_with_env("sweep-orphan", &ns, &emu, &sweep_args("delete"), &env);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    create(&api, "keep", json!({"deletionPolicy": "Orphan", "create": {"zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": "ecs.g1ie.large", "subnetId": "subnet-1", "securityGroupIds": ["sg-1"]}})).await;
    let vm = wait_for(30, "created", || async {
        let o = api.get("keep").await.ok()?;
        let id = o.status.as_ref()?.instance_id.clone()?;
        (o.condition("Ready")?.status == "True").then_some(id)
    })
    .await;
    let before = emu.instance(&vm).await.unwrap();
    assert!(tag_keys(&before).contains(&"ecs.volcengine.io/cluster".to_string()));

    // UntagResources fails: the finalizer stays and the resource says why.
    emu.faults(
        "UntagResources",
        json!({"error_rate": 1.0, "error_code": "InternalError", "error_status": 500}),
    )
    .await;
    delete(&api, "keep").await;
    wait_for(30, "untag failure reported", || async {
        let o = api.get("keep").await.ok()?;
        let c = o.condition("Synced")?;
        (c.status == "False" && c.message.contains("UntagResources")).then_some(())
    })
    .await;
    assert_eq!(has_finalizer(&api, "keep").await, Some(true));
    let evs = events(&client, &ns, "keep").await;
    assert!(
        evs.iter()
            .any(|(t, _, note)| t == "Warning" && note.contains("UntagResources")),
        "{evs:?}"
    );

    emu.send(reqwest::Method::DELETE, "faults", json!({})).await;
    wait_for(30, "resource released", || gone(&api, "keep")).await;
    let after = emu.instance(&vm).await.expect("orphaned VM still exists");
    assert_no_ownership_tags(&after);
    assert!(!emu.calls("UntagResources").await.is_empty());

    // A true leak seeded now is deleted by the sweeper; by then the orphan, had it kept
    // its tags, would have been confirmed as a leak too.
    let leak = emu.seed(json!({"Tags": [{"Key": "ecs.volcengine.io/cluster", "Value": "c-test"}, {"Key": "ecs.volcengine.io/uid", "Value": "0000-gone"}]})).await;
    wait_for(40, "true leak swept", || async {
        (emu.deletions_of(&leak).await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(emu.deletions_of(&vm).await, 0, "orphaned VM was deleted");
    assert!(emu.instance(&vm).await.is_some());
    op.kill();
}

/// An orphan whose RunInstances answer was lost (status says "create requested", no ID
/// yet) still loses its tags: the operator finds the VM by its uid tag first, and keeps the
/// finalizer while it cannot look.
#[tokio::test(flavor = "multi_thread")]
async fn orphan_after_a_lost_run_answer_is_found_and_untagged() {
    let client = client().await;
    let ns = namespace(&client, "e2e-sweep-orphan-lost").await;
    let emu = Emulator::start(
        "sweep-orphan-lost",
        &["--create-delay-ms", "0", "--delete-delay-ms", "0"],
    );
    emu.faults("RunInstances", json!({"lose_response_rate": 1.0}))
        .await;
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    let mut op =
        Operator::start_with_env("sweep-orphan-lost", &ns, &emu, &sweep_args("report"), &env);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    create(&api, "lost", json!({"deletionPolicy": "Orphan", "create": {"zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": "ecs.g1ie.large", "subnetId": "subnet-1", "securityGroupIds": ["sg-1"]}})).await;
    // The VM exists, its answer was lost; the operator dies before it looks again (its
    // next look is at least a client retry and a 1 s backoff away).
    let vm = wait_for(30, "VM created, answer lost", || async {
        let all = emu.get("instances").await;
        Some(all.as_array()?.first()?["InstanceId"].as_str()?.to_string())
    })
    .await;
    op.kill();
    let st = api.get("lost").await.unwrap().status.unwrap();
    assert_eq!(
        (st.create_requested, st.instance_id.as_deref()),
        (Some(true), None)
    );
    emu.faults(
        "DescribeInstances",
        json!({"error_rate": 1.0, "error_code": "InternalError", "error_status": 500}),
    )
    .await;
    delete(&api, "lost").await;
    op.restart();
    wait_for(30, "lookup failure reported", || async {
        let o = api.get("lost").await.ok()?;
        let c = o.condition("Synced")?;
        (c.status == "False"
            && c.reason == "CloudError"
            && c.message.contains("looking for this resource's VM")
            && c.message.contains("InternalError")
            && c.message.contains("RequestId"))
        .then_some(())
    })
    .await;
    assert_eq!(
        has_finalizer(&api, "lost").await,
        Some(true),
        "released without knowing whether a VM exists"
    );
    let evs = events(&client, &ns, "lost").await;
    assert!(
        evs.iter().any(|(t, r, note)| t == "Warning"
            && r == "CloudError"
            && note.contains("InternalError")),
        "{evs:?}"
    );

    emu.send(reqwest::Method::DELETE, "faults", json!({})).await;
    wait_for(30, "resource released", || gone(&api, "lost")).await;
    let inst = emu.instance(&vm).await.expect("orphaned VM still exists");
    assert_no_ownership_tags(&inst);
    assert_eq!(emu.deletions_of(&vm).await, 0);
    op.kill();
}
