//! The deletion path end to end: the real operator binary, a real kube-apiserver and
//! kube-controller-manager, and the emulator; assertions on Kubernetes objects and on what
//! the cloud saw.

use ecs_test_harness as support;

use std::collections::HashSet;
use std::time::Duration;

use ecs_operator::api::EcsInstance;
use kube::api::{Api, DeleteParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use support::*;

fn token_of(call: &serde_json::Value) -> String {
    call["params"]["ClientToken"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn adopt(api: &Api<EcsInstance>, name: &str, id: &str) -> EcsInstance {
    create(api, name, json!({"instanceId": id})).await;
    wait_for(30, "finalizer and Ready", || async {
        let o = api.get(name).await.ok()?;
        let ready = o.condition("Ready")?.status == "True";
        (ready
            && o.finalizers()
                .iter()
                .any(|f| f == ecs_operator::api::FINALIZER))
        .then_some(o)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_delete_deletes_the_vm_exactly_once() {
    let client = client().await;
    let ns = namespace(&client, "e2e-one").await;
    let emu = Emulator::realistic("one", &["--delete-delay-ms", "200"]);
    let _op = Operator::start("one", &ns, &emu, &[]);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let obj = adopt(&api, "vm", &id).await;
    assert_eq!(
        obj.status.as_ref().unwrap().instance_status.as_deref(),
        Some("RUNNING")
    );
    // Nothing is deleted while the resource lives.
    assert!(emu.all_calls("DeleteInstances").await.is_empty());

    let out = kubectl(&[
        "-n",
        &ns,
        "delete",
        "ecsinstance",
        "vm",
        "--wait=true",
        "--timeout=30s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(gone(&api, "vm").await.is_some());
    let calls = emu.calls("DeleteInstances").await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        token_of(&calls[0]),
        format!("ecsop-del-{}-0", obj.uid().unwrap())
    );
    assert_eq!(calls[0]["params"]["InstanceIds.1"], id.as_str());
    assert_eq!(emu.deletions_of(&id).await, 1);
    wait_for(10, "VM gone from the emulator", || async {
        emu.instance(&id).await.is_none().then_some(())
    })
    .await;
    wait_for_event(&client, &ns, "vm", |_, r, _| r == "DeletionRequested").await;
    wait_for_event(&client, &ns, "vm", |t, r, n| {
        t == "Normal" && r == "Deleted" && n.contains(&id)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_vm_keeps_the_finalizer_until_it_is_stopped() {
    let client = client().await;
    let ns = namespace(&client, "e2e-stopping").await;
    let emu = Emulator::realistic("stopping", &["--stop-delay-ms", "6000"]);
    let _op = Operator::start("stopping", &ns, &emu, &[]);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let obj = adopt(&api, "vm", &id).await;
    // Stop it through the real API path so the state machine runs its STOPPING delay.
    emu.send(
        reqwest::Method::PATCH,
        &format!("instances/{id}"),
        json!({"Status": "STOPPING"}),
    )
    .await;
    delete(&api, "vm").await;

    let pending = wait_for(20, "DeletionPending condition", || async {
        let o = api.get("vm").await.ok()?;
        let c = o.condition("Ready")?;
        (c.reason == "Deleting" && c.message.contains("STOPPING")).then_some(o)
    })
    .await;
    assert_eq!(has_finalizer(&api, "vm").await, Some(true));
    assert!(
        pending.deletion_attempt() >= 1,
        "a definitive answer bumps the attempt"
    );
    let first = emu.calls("DeleteInstances").await;
    assert_eq!(first[0]["instance_codes"][0], "InvalidInstanceStatus");
    assert_eq!(emu.deletions_of(&id).await, 0);

    wait_for(40, "resource gone after the VM stopped", || {
        gone(&api, "vm")
    })
    .await;
    assert_eq!(emu.deletions_of(&id).await, 1, "deleted exactly once");
    let calls = emu.calls("DeleteInstances").await;
    let uid = obj.uid().unwrap();
    // Each new attempt after a definitive answer carried a new token, derived from the uid.
    let tokens: Vec<String> = calls.iter().map(token_of).collect();
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(t, &format!("ecsop-del-{uid}-{i}"), "{tokens:?}");
    }
    assert_eq!(calls.last().unwrap()["instance_codes"][0], "OK");
    wait_for_event(&client, &ns, "vm", |_, r, _| r == "DeletionPending").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_already_gone_releases_the_resource_promptly() {
    let client = client().await;
    let ns = namespace(&client, "e2e-gone").await;
    let emu = Emulator::realistic("gone", &[]);
    let _op = Operator::start("gone", &ns, &emu, &[]);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    adopt(&api, "vm", &id).await;
    emu.send(
        reqwest::Method::DELETE,
        &format!("instances/{id}"),
        json!({}),
    )
    .await;
    let t = std::time::Instant::now();
    delete(&api, "vm").await;
    wait_for(10, "resource gone", || gone(&api, "vm")).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // DescribeInstances (the ownership check before any deletion) already says it is gone:
    // no DeleteInstances without a VM to prove ownership of.
    assert!(emu.all_calls("DeleteInstances").await.is_empty());
    wait_for_event(&client, &ns, "vm", |_, r, _| r == "AlreadyGone").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resource_without_a_vm_is_released_without_a_cloud_call() {
    // A resource whose VM was never made (every RunInstances refused with a terminal code):
    // deleting it looks the VM up by its uid tag, finds none, and releases the resource with
    // no DeleteInstances. (An empty spec, which reached this path before, is now refused at
    // admission: tests/e2e_admission.rs.)
    let client = client().await;
    let ns = namespace(&client, "e2e-novm").await;
    let emu = Emulator::realistic("novm", &[]);
    emu.faults(
        "RunInstances",
        json!({"fail_next": 1000, "error_code": "InvalidParameter", "error_status": 400}),
    )
    .await;
    let _op = Operator::start("novm", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"create": {"zoneId": "cn-beijing-a", "imageId": "image-abc",
        "instanceTypeId": "ecs.g1ie.large", "subnetId": "subnet-1", "securityGroupIds": ["sg-1"],
        "systemVolume": {"size": 40}}});
    create(&api, "empty", spec).await;
    wait_for(20, "RunInstances refused", || async {
        (!emu.calls("RunInstances").await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(has_finalizer(&api, "empty").await, Some(true));
    delete(&api, "empty").await;
    wait_for(20, "resource gone", || gone(&api, "empty")).await;
    assert!(emu.all_calls("DeleteInstances").await.is_empty());
    assert!(emu.instances().await.is_empty(), "no VM was ever made");
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_deletion_deletes_every_vm() {
    let client = client().await;
    let ns = namespace(&client, "e2e-nsdel").await;
    let emu = Emulator::realistic("nsdel", &["--delete-delay-ms", "0"]);
    let _op = Operator::start("nsdel", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let n = 60;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = emu.seed(json!({"Status": "RUNNING"})).await;
        create(&api, &format!("vm-{i}"), json!({"instanceId": id})).await;
        ids.push(id);
    }
    wait_for(60, "all resources Ready", || async {
        let l = api.list(&Default::default()).await.ok()?;
        (l.items
            .iter()
            .filter(|o| o.condition("Ready").is_some_and(|c| c.status == "True"))
            .count()
            == n)
            .then_some(())
    })
    .await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.delete(&ns, &DeleteParams::default()).await.unwrap();
    wait_for(90, "namespace gone", || async {
        matches!(nss.get_opt(&ns).await, Ok(None)).then_some(())
    })
    .await;
    for id in &ids {
        assert_eq!(emu.deletions_of(id).await, 1, "{id}");
    }
    assert!(emu.get("instances").await.as_array().unwrap().is_empty());
    // Deletions arriving together were batched: at least 4 VMs per call on average (one
    // call per VM, as without batching, would be 60).
    let calls = emu.calls("DeleteInstances").await;
    println!("{} DeleteInstances calls for {n} VMs", calls.len());
    assert!(
        calls.len() <= n / 4,
        "{} DeleteInstances calls for {n} VMs",
        calls.len()
    );
    // Under ambient throttling (the realistic emulator): some of these calls were refused
    // as throttled, with several of the codes the SDKs know, and nothing leaked or doubled.
    let throttled = emu.ambient_throttles().await;
    let codes: HashSet<&str> = throttled.iter().map(|(_, c)| c.as_str()).collect();
    assert!(codes.len() >= 3, "ambient throttles: {throttled:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_collection_through_owner_references() {
    let client = client().await;
    let ns = namespace(&client, "e2e-gc").await;
    let emu = Emulator::realistic("gc", &["--delete-delay-ms", "0"]);
    let _op = Operator::start("gc", &ns, &emu, &[]);
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = emu.seed(json!({"Status": "RUNNING"})).await;
        let mut o = ecsi(&format!("child-{i}"), json!({"instanceId": id}));
        o.metadata.owner_references = Some(vec![serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap()
        }))
        .unwrap()]);
        api.create(&PostParams::default(), &o).await.unwrap();
        ids.push(id);
    }
    // An unrelated resource must survive.
    let keep = emu.seed(json!({"Status": "RUNNING"})).await;
    create(&api, "unrelated", json!({"instanceId": keep})).await;
    wait_for(30, "children have finalizers", || async {
        let l = api.list(&Default::default()).await.ok()?;
        l.items
            .iter()
            .all(|o| !o.finalizers().is_empty())
            .then_some(())
    })
    .await;
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait_for(180, "children gone", || async {
        (count(&api).await == 1).then_some(())
    })
    .await;
    for id in &ids {
        assert_eq!(emu.deletions_of(id).await, 1);
    }
    assert_eq!(emu.deletions_of(&keep).await, 0);
    assert!(api.get_opt("unrelated").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn gitops_prune_deletes_the_pruned_vms_only() {
    let client = client().await;
    let ns = namespace(&client, "e2e-prune").await;
    let emu = Emulator::realistic("prune", &["--delete-delay-ms", "0"]);
    let _op = Operator::start("prune", &ns, &emu, &[]);
    let mut ids = Vec::new();
    let mut docs = Vec::new();
    for i in 0..3 {
        let id = emu.seed(json!({"Status": "RUNNING"})).await;
        docs.push(format!("apiVersion: ecs.volcengine.io/v1alpha1\nkind: EcsInstance\nmetadata:\n  name: app-{i}\n  labels: {{app: demo}}\nspec:\n  instanceId: {id}\n"));
        ids.push(id);
    }
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.yaml");
    std::fs::write(&all, docs.join("---\n")).unwrap();
    let out = kubectl(&["-n", &ns, "apply", "-f", all.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    wait_for(30, "finalizers", || async {
        let l = api.list(&Default::default()).await.ok()?;
        (l.items.len() == 3 && l.items.iter().all(|o| !o.finalizers().is_empty())).then_some(())
    })
    .await;
    // The next Git revision keeps only app-0; apply --prune removes the others.
    let one = dir.path().join("one.yaml");
    std::fs::write(&one, &docs[0]).unwrap();
    let out = kubectl(&[
        "-n",
        &ns,
        "apply",
        "-f",
        one.to_str().unwrap(),
        "--prune",
        "-l",
        "app=demo",
        "--prune-allowlist=ecs.volcengine.io/v1alpha1/EcsInstance",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(30, "pruned resources gone", || async {
        (count(&api).await == 1).then_some(())
    })
    .await;
    assert_eq!(emu.deletions_of(&ids[0]).await, 0);
    assert_eq!(emu.deletions_of(&ids[1]).await, 1);
    assert_eq!(emu.deletions_of(&ids[2]).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_then_a_lost_response_retry_with_the_same_token() {
    let client = client().await;
    let ns = namespace(&client, "e2e-retry").await;
    let emu = Emulator::realistic("retry", &[]);
    let _op = Operator::start("retry", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let a = emu.seed(json!({"Status": "RUNNING"})).await;
    let b = emu.seed(json!({"Status": "RUNNING"})).await;
    let oa = adopt(&api, "a", &a).await;
    let ob = adopt(&api, "b", &b).await;

    // a: the first call gets a 500 (not applied); the retry must carry the same token.
    emu.faults(
        "DeleteInstances",
        json!({"fail_next": 1, "error_code": "InternalError", "error_status": 500}),
    )
    .await;
    delete(&api, "a").await;
    wait_for(30, "a gone", || gone(&api, "a")).await;
    let calls = emu.calls("DeleteInstances").await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["status"], 500);
    let ta = format!("ecsop-del-{}-0", oa.uid().unwrap());
    // Every attempt, throttled ones included, carried the one token.
    let every = emu.all_calls("DeleteInstances").await;
    assert!(every.iter().all(|c| token_of(c) == ta), "{every:?}");
    assert_eq!(emu.deletions_of(&a).await, 1);

    // b: the first call is applied but its response is lost; the retry replays it.
    emu.send(reqwest::Method::DELETE, "calls", json!({})).await;
    emu.faults("DeleteInstances", json!({"lose_next": 1})).await;
    delete(&api, "b").await;
    wait_for(30, "b gone", || gone(&api, "b")).await;
    let calls = emu.calls("DeleteInstances").await;
    assert!(calls.len() >= 2, "{calls:?}");
    assert_eq!(calls[0]["lost"], true);
    let tb = format!("ecsop-del-{}-0", ob.uid().unwrap());
    let every = emu.all_calls("DeleteInstances").await;
    assert!(every.iter().all(|c| token_of(c) == tb), "{every:?}");
    assert_eq!(calls[1]["replayed"], true);
    assert_eq!(emu.deletions_of(&b).await, 1, "deleted exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_keep_the_finalizer_and_say_why() {
    let client = client().await;
    let ns = namespace(&client, "e2e-creds").await;
    let emu = Emulator::realistic("creds", &[]);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let mut op = Operator::start_with_env(
        "creds",
        &ns,
        &emu,
        &[],
        &[("VOLCENGINE_SECRET_KEY", "wrong-secret-value")],
    );
    create(&api, "vm", json!({"instanceId": id})).await;
    let o = wait_for(30, "CloudAuthError condition", || async {
        let o = api.get("vm").await.ok()?;
        (o.condition("Synced")?.reason == "CloudAuthError").then_some(o)
    })
    .await;
    assert!(o
        .condition("Synced")
        .unwrap()
        .message
        .contains("SignatureDoesNotMatch"));
    delete(&api, "vm").await;
    wait_for(30, "delete failure condition", || async {
        let o = api.get("vm").await.ok()?;
        let c = o.condition("Ready")?;
        (c.reason == "Deleting" && c.message.contains("SignatureDoesNotMatch")).then_some(())
    })
    .await;
    // The operator retried the deletion twice more since, and still kept everything.
    op.wait_reconciles(30, "two more reconciles of the failing deletion", 2.0)
        .await;
    assert_eq!(
        has_finalizer(&api, "vm").await,
        Some(true),
        "finalizer kept"
    );
    assert!(emu.instance(&id).await.is_some(), "VM untouched");
    wait_for_event(&client, &ns, "vm", |t, r, n| {
        t == "Warning" && r == "CloudAuthError" && n.contains("SignatureDoesNotMatch")
    })
    .await;
    let log = op.log();
    assert!(
        !log.contains("wrong-secret-value"),
        "secret leaked into logs"
    );
    // Fixed credentials: the deletion completes.
    op.kill();
    drop(op);
    let _op = Operator::start("creds-fixed", &ns, &emu, &[]);
    wait_for(30, "resource gone", || gone(&api, "vm")).await;
    assert_eq!(emu.deletions_of(&id).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_killed_mid_deletion_finishes_with_the_same_token() {
    let client = client().await;
    let ns = namespace(&client, "e2e-crash").await;
    let emu = Emulator::realistic("crash", &[]);
    let mut op = Operator::start("crash", &ns, &emu, &["--request-timeout-secs", "30"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    let obj = adopt(&api, "vm", &id).await;
    // The cloud is slow: the operator dies while its DeleteInstances is in flight.
    emu.faults("DeleteInstances", json!({"latency_ms": 3000}))
        .await;
    let described_before = emu.calls("DescribeInstances").await.len();
    delete(&api, "vm").await;
    // The ownership check (DescribeInstances) is answered first; the DeleteInstances that
    // follows is then held 3 s by the emulator. The call log records a call when it is
    // answered, so the check's answer is the last thing observable before the kill.
    wait_for(20, "the ownership check answered", || async {
        (emu.calls("DescribeInstances").await.len() > described_before).then_some(())
    })
    .await;
    // The batcher logs the DeleteInstances batch as it sends it: the call is in flight
    // (held 3 s by the emulator) when the operator dies.
    wait_for(20, "the DeleteInstances batch sent", || async {
        op.log().contains("DeleteInstances batch").then_some(())
    })
    .await;
    op.kill();
    assert_eq!(has_finalizer(&api, "vm").await, Some(true));
    emu.faults("DeleteInstances", json!({})).await;
    op.restart();
    wait_for(40, "resource gone after restart", || gone(&api, "vm")).await;
    // The emulator logs a call when it has answered it: the killed operator's call, held
    // 3 s, may be answered (to nobody) after the restarted operator's call was.
    let calls = wait_for(10, "both DeleteInstances calls logged", || async {
        let calls = emu.calls("DeleteInstances").await;
        (calls.len() >= 2).then_some(calls)
    })
    .await;
    let t = format!("ecsop-del-{}-0", obj.uid().unwrap());
    assert!(
        calls.iter().all(|c| token_of(c) == t),
        "same token across the restart: {calls:?}"
    );
    assert_eq!(emu.deletions_of(&id).await, 1);
}

fn tag_of(vm: &serde_json::Value, key: &str) -> Option<String> {
    vm["Tags"]
        .as_array()?
        .iter()
        .find(|t| t["Key"] == key)
        .and_then(|t| t["Value"].as_str())
        .map(str::to_string)
}

async fn conflict(api: &Api<EcsInstance>, name: &str) -> EcsInstance {
    wait_for(30, "ManagementConflict", || async {
        let o = api.get(name).await.ok()?;
        let synced = o.condition("Synced")?;
        (synced.status == "False" && synced.reason == "ManagementConflict").then_some(o)
    })
    .await
}

/// One VM, one owner: the second resource naming a VM is refused (ManagementConflict) and
/// deleting it leaves the VM to the first; a VM of another cluster is refused too.
#[tokio::test(flavor = "multi_thread")]
async fn two_resources_adopting_one_vm_one_owner() {
    let client = client().await;
    let ns = namespace(&client, "e2e-owner").await;
    let emu = Emulator::realistic("owner", &["--delete-delay-ms", "0"]);
    let _op = Operator::start("owner", &ns, &emu, &["--cluster-id", "c1"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    let first = adopt(&api, "first", &id).await;
    let vm = emu.instance(&id).await.unwrap();
    assert_eq!(
        tag_of(&vm, "ecs.volcengine.io/uid"),
        first.uid(),
        "claimed: {vm}"
    );
    assert_eq!(
        tag_of(&vm, "ecs.volcengine.io/cluster").as_deref(),
        Some("c1")
    );
    assert_eq!(
        tag_of(&vm, "ecs.volcengine.io/name").as_deref(),
        Some("first")
    );
    let tag_call = &emu.calls("TagResources").await[0]["params"];
    assert_eq!(tag_call["ResourceType"], "instance");
    assert_eq!(tag_call["ResourceIds.1"], id.as_str());
    assert_eq!(
        first.status.as_ref().unwrap().ownership,
        Some(ecs_operator::api::Ownership::Claimed)
    );

    create(&api, "second", json!({"instanceId": id})).await;
    let second = conflict(&api, "second").await;
    assert_eq!(second.condition("Ready").unwrap().status, "False");
    assert_eq!(
        second.status.as_ref().unwrap().ownership,
        Some(ecs_operator::api::Ownership::Refused)
    );
    wait_for_event(&client, &ns, "second", |t, r, _| {
        t == "Warning" && r == "ManagementConflict"
    })
    .await;
    // A VM tagged by another cluster is refused too.
    let foreign = emu
        .seed(json!({"Status": "RUNNING", "Tags": [{"Key": "ecs.volcengine.io/cluster", "Value": "c2"}]}))
        .await;
    create(&api, "third", json!({"instanceId": foreign})).await;
    conflict(&api, "third").await;

    delete(&api, "second").await;
    delete(&api, "third").await;
    wait_for(30, "second gone", || gone(&api, "second")).await;
    wait_for(30, "third gone", || gone(&api, "third")).await;
    assert!(emu.all_calls("DeleteInstances").await.is_empty());
    let vm = emu.instance(&id).await.expect("the first's VM stays");
    assert_eq!(tag_of(&vm, "ecs.volcengine.io/uid"), first.uid());
    let vm = emu
        .instance(&foreign)
        .await
        .expect("the other cluster's VM stays");
    assert_eq!(
        tag_of(&vm, "ecs.volcengine.io/uid"),
        None,
        "untouched: {vm}"
    );
    let o = api.get("first").await.unwrap();
    assert_eq!(o.condition("Ready").unwrap().status, "True");
    wait_for_event(&client, &ns, "second", |_, r, _| r == "ReleasedWithoutVM").await;

    delete(&api, "first").await;
    wait_for(30, "first gone", || gone(&api, "first")).await;
    assert_eq!(emu.deletions_of(&id).await, 1);
    assert_eq!(emu.deletions_of(&foreign).await, 0);
    assert_eq!(emu.calls("DeleteInstances").await.len(), 1);
}

/// A VM whose uid tag names a resource that no longer exists is adopted with its tags
/// overwritten, and then deleted by its new owner.
#[tokio::test(flavor = "multi_thread")]
async fn adopting_a_stale_owners_vm_transfers_ownership() {
    let client = client().await;
    let ns = namespace(&client, "e2e-stale").await;
    let emu = Emulator::realistic("stale", &["--delete-delay-ms", "0"]);
    // The stale owner was of this cluster (a VM of another cluster is refused instead).
    let _op = Operator::start("stale", &ns, &emu, &["--cluster-id", "stale-cluster"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu
        .seed(json!({"Status": "RUNNING", "Tags": [
            {"Key": "ecs.volcengine.io/cluster", "Value": "stale-cluster"},
            {"Key": "ecs.volcengine.io/namespace", "Value": "old-ns"},
            {"Key": "ecs.volcengine.io/name", "Value": "old"},
            {"Key": "ecs.volcengine.io/uid", "Value": "00000000-dead-beef-0000-000000000000"},
            {"Key": "team", "Value": "web"}
        ]}))
        .await;
    let o = adopt(&api, "new", &id).await;
    let vm = emu.instance(&id).await.unwrap();
    assert_eq!(tag_of(&vm, "ecs.volcengine.io/uid"), o.uid());
    assert_eq!(
        tag_of(&vm, "ecs.volcengine.io/name").as_deref(),
        Some("new")
    );
    assert_eq!(
        tag_of(&vm, "ecs.volcengine.io/namespace").as_deref(),
        Some(ns.as_str())
    );
    assert_eq!(
        tag_of(&vm, "team").as_deref(),
        Some("web"),
        "other tags kept"
    );
    wait_for_event(&client, &ns, "new", |_, r, _| r == "OwnershipTransferred").await;
    delete(&api, "new").await;
    wait_for(30, "gone", || gone(&api, "new")).await;
    assert_eq!(emu.deletions_of(&id).await, 1);
}

/// Eventual consistency: a VM created moments ago is invisible to the whole API (the
/// emulator's unfavourable case: DeleteInstances says NotFound too). Its deletion keeps the
/// finalizer through those NotFounds and deletes the VM exactly once when it shows up.
#[tokio::test(flavor = "multi_thread")]
async fn deletion_during_the_visibility_lag_deletes_the_vm_once() {
    let client = client().await;
    let ns = namespace(&client, "e2e-lagdel").await;
    let emu = Emulator::realistic(
        "lagdel",
        &[
            "--create-delay-ms",
            "0",
            "--delete-delay-ms",
            "0",
            "--visibility-lag-ms",
            "8000",
        ],
    );
    let _op = Operator::start("lagdel", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    create(
        &api,
        "web",
        json!({"create": {"zoneId": "cn-beijing-a", "imageId": "image-abc",
            "instanceTypeId": "ecs.g1ie.large", "subnetId": "subnet-1", "securityGroupIds": ["sg-1"], "systemVolume": {"size": 40}}}),
    )
    .await;
    let id = wait_for(20, "instance id", || async {
        api.get("web").await.ok()?.status?.instance_id
    })
    .await;
    delete(&api, "web").await;
    // Until the resource is gone: was its finalizer still there after a NotFound?
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut kept_through_not_found = false;
    while let Some(fin) = has_finalizer(&api, "web").await {
        let calls = emu.calls("DeleteInstances").await;
        let not_found = calls
            .iter()
            .any(|c| c["instance_codes"][0] == "InvalidInstance.NotFound");
        kept_through_not_found |= not_found && fin;
        assert!(std::time::Instant::now() < deadline, "not gone after 40s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(emu.deletions_of(&id).await, 1, "deleted exactly once");
    assert!(emu.instance(&id).await.is_none());
    assert!(
        kept_through_not_found,
        "the lag was exercised and NotFound kept the finalizer"
    );
    assert_eq!(emu.calls("RunInstances").await.len(), 1);
}

/// One member of a DeleteInstances batch makes the cloud reject the whole call: the batch is
/// split, every other member is deleted once, and only the poisoned one is held, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn a_poisoned_member_never_holds_back_its_batch() {
    let client = client().await;
    let ns = namespace(&client, "e2e-poison").await;
    let emu = Emulator::realistic("poison", &["--delete-delay-ms", "0"]);
    // A long idle gap so that the five deletions share their batches.
    let _op = Operator::start("poison", &ns, &emu, &["--batch-idle-ms", "500"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = emu.seed(json!({"Status": "RUNNING"})).await;
        adopt(&api, &format!("vm-{i}"), &id).await;
        ids.push(id);
    }
    let bad = ids[2].clone();
    for action in ["DeleteInstances", "DescribeInstances"] {
        emu.faults(action, json!({"poison_ids": [bad]})).await;
    }
    for i in 0..5 {
        delete(&api, &format!("vm-{i}")).await;
    }
    for i in [0, 1, 3, 4] {
        let name = format!("vm-{i}");
        wait_for(30, &format!("{name} gone"), || gone(&api, &name)).await;
    }
    for (i, id) in ids.iter().enumerate() {
        let want = usize::from(i != 2);
        assert_eq!(emu.deletions_of(id).await, want, "vm-{i} {id}");
    }
    // A batch naming the poisoned VM was refused as a whole at least once.
    let refused = emu
        .calls("DescribeInstances")
        .await
        .into_iter()
        .chain(emu.calls("DeleteInstances").await)
        .filter(|c| c["fault"] == "poisoned_id")
        .count();
    assert!(refused >= 1);
    let held = wait_for(20, "poisoned resource says why", || async {
        let o = api.get("vm-2").await.ok()?;
        let c = o.condition("Synced")?;
        (c.status == "False" && c.message.contains("InvalidInstanceId.Malformed")).then_some(o)
    })
    .await;
    assert!(held
        .finalizers()
        .iter()
        .any(|f| f == ecs_operator::api::FINALIZER));
    wait_for_event(&client, &ns, "vm-2", |t, _, n| {
        t == "Warning" && n.contains("InvalidInstanceId.Malformed")
    })
    .await;
    for action in ["DeleteInstances", "DescribeInstances"] {
        emu.send(
            reqwest::Method::DELETE,
            &format!("faults/{action}"),
            json!({}),
        )
        .await;
    }
    wait_for(60, "vm-2 gone once the fault is cleared", || {
        gone(&api, "vm-2")
    })
    .await;
    assert_eq!(emu.deletions_of(&bad).await, 1);
}
