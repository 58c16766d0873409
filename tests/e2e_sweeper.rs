//! The leak sweeper end to end: a force-removed finalizer leaves a VM that is reported and
//! then deleted; other clusters' VMs, untagged VMs and VMs whose resource lives in another
//! namespace are never touched; a cloud fault during the sweep skips it. The cluster
//! identity is the kube-system uid; delete mode refuses any other; a VM a live resource
//! names by ID is safe whatever uid it carries; refusals are retried under new tokens;
//! flagged regions are swept; the TagFilters limit is survived.

use ecs_test_harness as support;

use ecs_operator::api::EcsInstance;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use support::*;

/// This cluster's derived identity; sweeps every second, a VM is confirmed after 2 s.
fn sweep_args(mode: &'static str) -> [&'static str; 6] {
    [
        "--sweep-interval-secs",
        "1",
        "--sweep-grace-secs",
        "2",
        "--sweep-mode",
        mode,
    ]
}

/// The cluster identity the operator derives: the kube-system Namespace's uid.
async fn cluster_id(client: &kube::Client) -> String {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    api.get("kube-system").await.unwrap().uid().unwrap()
}

/// Ownership tags of a VM created for resource `uid` by cluster `cid`.
fn owned(cid: &str, uid: &str) -> serde_json::Value {
    json!([{"Key": "ecs.volcengine.io/cluster", "Value": cid}, {"Key": "ecs.volcengine.io/uid", "Value": uid}])
}

/// Tag value of an emulator instance (admin view).
fn tag_value(inst: &serde_json::Value, key: &str) -> Option<String> {
    inst["Tags"]
        .as_array()?
        .iter()
        .find(|t| t["Key"] == key)
        .and_then(|t| t["Value"].as_str().map(str::to_string))
}

/// Waits until `n` more leak sweeps finished (whatever their result).
async fn wait_sweeps(op: &Operator, n: f64) {
    op.wait_for_metric(30, "ecs_operator_sweeps_total", n).await;
}

/// The operator's /metrics text (its address is in its log).
async fn scrape(op: &Operator) -> String {
    let log = op.log();
    let addr = log
        .lines()
        .find_map(|l| l.split("serving /metrics").nth(1)?.split("addr=").nth(1))
        .map(|a| a.trim().to_string())
        .expect("metrics address in the log");
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
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
    let cid = cluster_id(&client).await;
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
    create(&api, "web", json!({"create": {"zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": "ecs.g1ie.large", "subnetId": "subnet-1", "securityGroupIds": ["sg-1"], "systemVolume": {"size": 40}}})).await;
    let o = wait_for(30, "created", || async {
        let o = api.get("web").await.ok()?;
        o.status.as_ref()?.instance_id.clone()?;
        (o.condition("Ready")?.status == "True").then_some(o)
    })
    .await;
    let leaked = o.status.unwrap().instance_id.unwrap();
    // No --cluster-id: the VM carries the derived identity, which the operator announces.
    let inst = emu.instance(&leaked).await.unwrap();
    assert_eq!(
        tag_value(&inst, "ecs.volcengine.io/cluster").as_deref(),
        Some(cid.as_str())
    );
    assert!(
        op.log().lines().any(|l| l.contains("cluster identity")
            && l.contains(&cid)
            && l.contains("kube_system_uid")),
        "no identity log line"
    );
    let info =
        format!("ecs_operator_cluster_info{{cluster_id=\"{cid}\",source=\"kube_system_uid\"}} 1");
    let m = scrape(&op).await;
    assert!(m.lines().any(|l| l == info), "{info} not in {m}");
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
    let other_cluster = emu
        .seed(json!({"Tags": owned("c-other", "0000-gone")}))
        .await;
    let old_default = emu
        .seed(json!({"Tags": owned("default", "0000-gone")}))
        .await;
    let untagged = emu.seed(json!({})).await;
    let other_api: Api<EcsInstance> = Api::namespaced(client.clone(), &other_ns);
    let elsewhere = create(
        &other_api,
        "elsewhere",
        json!({"instanceId": "i-placeholder1"}),
    )
    .await;
    let elsewhere_vm = emu
        .seed(json!({"Tags": owned(&cid, &elsewhere.uid().unwrap())}))
        .await;

    // Report mode: a log line naming the VM, no deletion.
    wait_for(30, "leak reported", || async {
        op.log()
            .lines()
            .any(|l| l.contains("leaked VM") && l.contains(&leaked))
            .then_some(())
    })
    .await;
    let log = op.log();
    for id in [&other_cluster, &old_default, &untagged, &elsewhere_vm] {
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
    let metrics = scrape(&op).await;
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
    let out = std::process::Command::new(operator_bin())
        .args([
            "sweep",
            "--dry-run",
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
    for id in [&other_cluster, &old_default, &untagged, &elsewhere_vm] {
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
    let skipped = "ecs_operator_sweeps_total{result=\"skipped_cloud_error\"}";
    let m = scrape(&op).await;
    assert!(
        m.lines().any(|l| l.starts_with(skipped)),
        "{skipped} not in {m}"
    );
    // Three more sweeps (1 s apart), all skipped, and the leak is still there.
    wait_sweeps(&op, 3.0).await;
    assert_eq!(emu.deletions_of(&leaked).await, 0);
    emu.send(reqwest::Method::DELETE, "faults", json!({})).await;
    wait_for(40, "leak deleted", || async {
        (emu.deletions_of(&leaked).await == 1).then_some(())
    })
    .await;
    // Three more sweeps, each of which could have deleted one of these.
    wait_sweeps(&op, 3.0).await;
    for id in [&other_cluster, &old_default, &untagged, &elsewhere_vm] {
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
    let cid = cluster_id(&client).await;
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
    create(&api, "keep", json!({"deletionPolicy": "Orphan", "create": {"zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": "ecs.g1ie.large", "subnetId": "subnet-1", "securityGroupIds": ["sg-1"], "systemVolume": {"size": 40}}})).await;
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
    wait_for_event(&client, &ns, "keep", |t, _, note| {
        t == "Warning" && note.contains("UntagResources")
    })
    .await;

    emu.send(reqwest::Method::DELETE, "faults", json!({})).await;
    wait_for(30, "resource released", || gone(&api, "keep")).await;
    let after = emu.instance(&vm).await.expect("orphaned VM still exists");
    assert_no_ownership_tags(&after);
    assert!(!emu.calls("UntagResources").await.is_empty());

    // A true leak seeded now is deleted by the sweeper; by then the orphan, had it kept
    // its tags, would have been confirmed as a leak too.
    let leak = emu.seed(json!({"Tags": owned(&cid, "0000-gone")})).await;
    wait_for(40, "true leak swept", || async {
        (emu.deletions_of(&leak).await == 1).then_some(())
    })
    .await;
    // Three more sweeps, each of which could have deleted the orphan.
    wait_sweeps(&op, 3.0).await;
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
    create(&api, "lost", json!({"deletionPolicy": "Orphan", "create": {"zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": "ecs.g1ie.large", "subnetId": "subnet-1", "securityGroupIds": ["sg-1"], "systemVolume": {"size": 40}}})).await;
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
    wait_for_event(&client, &ns, "lost", |t, r, note| {
        t == "Warning" && r == "CloudError" && note.contains("InternalError")
    })
    .await;

    emu.send(reqwest::Method::DELETE, "faults", json!({})).await;
    wait_for(30, "resource released", || gone(&api, "lost")).await;
    let inst = emu.instance(&vm).await.expect("orphaned VM still exists");
    assert_no_ownership_tags(&inst);
    assert_eq!(emu.deletions_of(&vm).await, 0);
    op.kill();
}

/// Delete mode acts only on the derived identity: `--cluster-id default` (every earlier
/// installation's value) or any other configured id makes the operator and the sweep
/// command refuse to start; an unreadable kube-system Namespace stops the operator instead of
/// letting it guess.
#[tokio::test(flavor = "multi_thread")]
async fn delete_mode_refuses_an_identity_not_unique_by_construction() {
    let client = client().await;
    let ns = namespace(&client, "e2e-sweep-identity").await;
    let emu = Emulator::start("sweep-identity", &[]);
    let leak = emu
        .seed(json!({"Tags": owned("default", "0000-gone")}))
        .await;
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    for id in ["default", "prod-east"] {
        let mut args = vec!["--cluster-id", id];
        args.extend(sweep_args("delete"));
        let mut op = Operator::start_with_env("sweep-identity", &ns, &emu, &args, &env);
        wait_for(30, "operator exits", || {
            let exited = !op.is_running();
            async move { exited.then_some(()) }
        })
        .await;
        let log = op.log();
        assert!(
            log.contains("refuses the cluster identity") && log.contains(id),
            "{log}"
        );
    }
    // Report mode with the old shared value still runs (it only reports).
    let mut args = vec!["--cluster-id", "default"];
    args.extend(sweep_args("report"));
    let op = Operator::start_with_env("sweep-identity-report", &ns, &emu, &args, &env);
    wait_for(30, "reported", || async {
        op.log()
            .lines()
            .any(|l| l.contains("leaked VM") && l.contains(&leak))
            .then_some(())
    })
    .await;
    drop(op);
    let out = std::process::Command::new(operator_bin())
        .args([
            "sweep",
            "--mode",
            "delete",
            "--cluster-id",
            "default",
            "--grace-secs",
            "0",
        ])
        .env("KUBECONFIG", control_plane())
        .env("VOLCENGINE_ACCESS_KEY", AK)
        .env("VOLCENGINE_SECRET_KEY", SK)
        .env("VOLCENGINE_ENDPOINT", &emu.url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refuses the cluster identity"),
        "{err}"
    );
    assert_eq!(emu.deletions_of(&leak).await, 0);

    // A user that may not read kube-system: no identity, no operator.
    let dir = tempfile::tempdir().unwrap();
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(control_plane()).unwrap()).unwrap();
    for u in kc["users"].as_sequence_mut().unwrap() {
        u["user"]["as"] = "e2e-nobody".into();
    }
    let kc_path = dir.path().join("kubeconfig");
    std::fs::write(&kc_path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
        ("KUBECONFIG", kc_path.to_str().unwrap()),
    ];
    let mut op = Operator::start_with_env("sweep-identity-nobody", &ns, &emu, &[], &env);
    wait_for(30, "operator exits", || {
        let exited = !op.is_running();
        async move { exited.then_some(()) }
    })
    .await;
    let log = op.log();
    assert!(
        log.contains("reading the uid of Namespace kube-system") && log.contains("orbidden"),
        "{log}"
    );
}

/// A VM that still carries an earlier resource's uid (re-import after a forced finalizer
/// removal, a restore, a GitOps rebuild) but that a live resource adopts by spec.instanceId is
/// never deleted, while a true leak in the same sweeps is.
#[tokio::test(flavor = "multi_thread")]
async fn adopted_vm_with_a_stale_uid_is_never_swept() {
    let client = client().await;
    let cid = cluster_id(&client).await;
    let ns = namespace(&client, "e2e-sweep-stale").await;
    let emu = Emulator::start(
        "sweep-stale",
        &["--create-delay-ms", "0", "--delete-delay-ms", "0"],
    );
    let adopted = emu
        .seed(json!({"Tags": owned(&cid, "0000-stale-uid")}))
        .await;
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    create(&api, "reimported", json!({"instanceId": adopted})).await;
    let leak = emu.seed(json!({"Tags": owned(&cid, "0000-gone")})).await;
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    let op = Operator::start_with_env("sweep-stale", &ns, &emu, &sweep_args("delete"), &env);
    wait_for(40, "true leak swept", || async {
        (emu.deletions_of(&leak).await == 1).then_some(())
    })
    .await;
    assert_eq!(
        emu.deletions_of(&adopted).await,
        0,
        "adopted VM was deleted"
    );
    assert!(emu.instance(&adopted).await.is_some());
    drop(op);
}

/// A leak whose VM is STOPPING is refused (InvalidInstanceStatus); a later sweep sends a new
/// ClientToken, so the cloud does not replay the refusal and the VM is deleted once STOPPED.
#[tokio::test(flavor = "multi_thread")]
async fn refused_leak_is_retried_with_a_new_token() {
    let client = client().await;
    let cid = cluster_id(&client).await;
    let ns = namespace(&client, "e2e-sweep-token").await;
    let emu = Emulator::start(
        "sweep-token",
        &["--stop-delay-ms", "6000", "--delete-delay-ms", "0"],
    );
    let leak = emu
        .seed(json!({"Status": "STOPPING", "Tags": owned(&cid, "0000-gone")}))
        .await;
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    let op = Operator::start_with_env("sweep-token", &ns, &emu, &sweep_args("delete"), &env);
    wait_for(60, "leak deleted", || async {
        (emu.deletions_of(&leak).await == 1).then_some(())
    })
    .await;
    drop(op);
    let calls: Vec<_> = emu
        .calls("DeleteInstances")
        .await
        .into_iter()
        .filter(|c| c["params"]["InstanceIds.1"] == leak.as_str())
        .collect();
    let first = &calls[0];
    assert_eq!(
        first["instance_codes"][0], "InvalidInstanceStatus",
        "{first}"
    );
    let deletions = emu.get("deletions").await;
    let accepted = deletions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["instance_id"] == leak.as_str())
        .unwrap();
    assert_ne!(
        accepted["client_token"], first["client_token"],
        "deleted under the refused request's token"
    );
    assert!(
        calls.iter().all(|c| c["replayed"] == false),
        "a refusal was replayed: {calls:?}"
    );
}

/// `--sweep-regions` adds a region no resource names (its last resource was deleted by hand).
#[tokio::test(flavor = "multi_thread")]
async fn leak_in_a_flagged_region_is_swept() {
    let client = client().await;
    let cid = cluster_id(&client).await;
    let ns = namespace(&client, "e2e-sweep-region").await;
    let emu = Emulator::start("sweep-region", &["--delete-delay-ms", "0"]);
    let leak = emu
        .seed(json!({"Region": "cn-shanghai", "Tags": owned(&cid, "0000-gone")}))
        .await;
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    let mut args = vec!["--sweep-regions", "cn-shanghai"];
    args.extend(sweep_args("delete"));
    let op = Operator::start_with_env("sweep-region", &ns, &emu, &args, &env);
    wait_for(40, "leak in cn-shanghai swept", || async {
        (emu.deletions_of(&leak).await == 1).then_some(())
    })
    .await;
    drop(op);
    let regions: std::collections::BTreeSet<String> = emu
        .calls("DescribeInstances")
        .await
        .iter()
        .filter_map(|c| c["region"].as_str().map(str::to_string))
        .collect();
    assert!(
        regions.contains("cn-beijing") && regions.contains("cn-shanghai"),
        "{regions:?}"
    );
}

/// DescribeInstances with TagFilters resolves at most 1,000 instances (the emulator models
/// it, as the real API does, without saying so in the answer). With 1,000 other tagged VMs
/// listed first, the leak is only found by listing the region without TagFilters.
#[tokio::test(flavor = "multi_thread")]
async fn leak_beyond_the_tag_filter_limit_is_found() {
    let client = client().await;
    let cid = cluster_id(&client).await;
    let ns = namespace(&client, "e2e-sweep-limit").await;
    let emu = Emulator::start("sweep-limit", &["--delete-delay-ms", "0"]);
    assert_eq!(emu.get("config").await["tag_filter_limit"], 1000);
    // Tagged with the identity but no uid: listed by the tag filter, never candidates.
    emu.send(
        reqwest::Method::POST,
        "instances/bulk",
        json!({"Count": 1000, "Prefix": "i-aaaa", "Tags": [{"Key": "ecs.volcengine.io/cluster", "Value": cid}]}),
    )
    .await;
    let leak = emu
        .seed(json!({"InstanceId": "i-zzzzleak", "Tags": owned(&cid, "0000-gone")}))
        .await;
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    let mut args = vec!["--rate-limit", "0"];
    args.extend(sweep_args("delete"));
    let op = Operator::start_with_env("sweep-limit", &ns, &emu, &args, &env);
    wait_for(60, "leak beyond the limit swept", || async {
        (emu.deletions_of(&leak).await == 1).then_some(())
    })
    .await;
    drop(op);
    assert_eq!(
        emu.get("deletions").await.as_array().unwrap().len(),
        1,
        "only the leak is deleted"
    );
    let calls = emu.calls("DescribeInstances").await;
    assert!(
        calls
            .iter()
            .any(|c| c["params"].get("TagFilters.1.Key").is_none()
                && c["params"].get("InstanceIds.1").is_none()),
        "no listing without TagFilters"
    );
}

/// A listing that fails on a later page is no listing: the sweep is skipped, and the leak on
/// the page that did arrive is kept (a sweeper acting on part of a listing would delete it).
/// Once the pages answer, the same leak is deleted: the test could have seen a deletion.
#[tokio::test(flavor = "multi_thread")]
async fn a_listing_failing_on_a_later_page_skips_the_sweep() {
    let client = client().await;
    let cid = cluster_id(&client).await;
    let ns = namespace(&client, "e2e-sweep-paged").await;
    let emu = Emulator::start("sweep-paged", &["--delete-delay-ms", "0"]);
    // The leak sorts first, so it is on the first page of 100; 120 more of this cluster's
    // VMs (no uid tag: never candidates) make a second page.
    let leak = "i-0000leak";
    emu.seed(json!({"InstanceId": leak, "Status": "RUNNING", "Tags": owned(&cid, "gone-uid")}))
        .await;
    let filler = json!({"Count": 120, "Prefix": "i-zzfill", "Status": "RUNNING",
        "Tags": [{"Key": "ecs.volcengine.io/cluster", "Value": cid}]});
    emu.send(reqwest::Method::POST, "instances/bulk", filler)
        .await;
    emu.faults("DescribeInstances", json!({"fail_paged": true}))
        .await;
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    let mut op = Operator::start_with_env("sweep-paged", &ns, &emu, &sweep_args("delete"), &env);
    wait_for(30, "sweep skipped", || async {
        op.log().contains("leak sweep skipped").then_some(())
    })
    .await;
    // Three more sweeps, past the grace, each of which saw the leak on its first page.
    wait_sweeps(&op, 3.0).await;
    let failed_pages = emu
        .all_calls("DescribeInstances")
        .await
        .iter()
        .filter(|c| c["fault"] == "failed_page")
        .count();
    assert!(failed_pages >= 3, "{failed_pages} failed pages");
    assert_eq!(
        emu.deletions_of(leak).await,
        0,
        "deleted on a partial listing"
    );
    emu.clear_fault("DescribeInstances").await;
    wait_for(40, "leak deleted once the pages answer", || async {
        (emu.deletions_of(leak).await == 1).then_some(())
    })
    .await;
    op.kill();
}
