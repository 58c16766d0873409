//! The rest of a VM's life, end to end: create, crash before the status write, adopt,
//! orphan, deletion protection, prepaid, out-of-band deletion, immutable fields.

use ecs_test_harness as support;

use std::collections::HashSet;
use std::time::Duration;

use ecs_operator::api::EcsInstance;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use support::*;

fn create_spec() -> serde_json::Value {
    json!({"create": {
        "zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": "ecs.g1ie.large",
        "subnetId": "subnet-1", "securityGroupIds": ["sg-1"],
        "systemVolume": {"volumeType": "ESSD_PL0", "size": 40}, "tags": {"team": "web"}
    }})
}

async fn ready(api: &Api<EcsInstance>, name: &str) -> EcsInstance {
    wait_for(40, "Ready", || async {
        let o = api.get(name).await.ok()?;
        (o.condition("Ready")?.status == "True").then_some(o)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn create_observe_delete_with_ownership_tags() {
    let client = client().await;
    let ns = namespace(&client, "e2e-create").await;
    let emu = Emulator::realistic("create", &["--create-delay-ms", "1500"]);
    let _op = Operator::start("create", &ns, &emu, &["--cluster-id", "test-cluster"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    create(&api, "web", create_spec()).await;
    // Lost RunInstances answer on the first try: the retry with the same token must not make a second VM.
    emu.faults("RunInstances", json!({"lose_next": 1})).await;
    let o = ready(&api, "web").await;
    let st = o.status.clone().unwrap();
    let id = st.instance_id.clone().unwrap();
    assert_eq!(st.instance_status.as_deref(), Some("RUNNING"));
    assert!(st.private_ip.is_some() && st.zone_id.as_deref() == Some("cn-beijing-a"));
    let all = emu.get("instances").await;
    assert_eq!(all.as_array().unwrap().len(), 1, "exactly one VM: {all}");
    let vm = emu.instance(&id).await.unwrap();
    let tag = |k: &str| {
        vm["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["Key"] == k)
            .map(|t| t["Value"].as_str().unwrap().to_string())
    };
    assert_eq!(tag("ecs.volcengine.io/uid"), o.uid());
    assert_eq!(
        tag("ecs.volcengine.io/cluster").as_deref(),
        Some("test-cluster")
    );
    assert_eq!(
        tag("ecs.volcengine.io/namespace").as_deref(),
        Some(ns.as_str())
    );
    assert_eq!(tag("ecs.volcengine.io/name").as_deref(), Some("web"));
    assert_eq!(tag("team").as_deref(), Some("web"));
    let runs = emu.all_calls("RunInstances").await;
    let tok = format!("ecsop-run-{}", o.uid().unwrap());
    assert!(
        runs.iter()
            .all(|c| c["params"]["ClientToken"] == tok.as_str()),
        "{runs:?}"
    );
    // kubectl get shows the columns; kubectl wait works.
    let out = kubectl(&["-n", &ns, "get", "ecsi", "web"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&id) && text.contains("RUNNING") && text.contains("True"),
        "{text}"
    );
    let out = kubectl(&[
        "-n",
        &ns,
        "wait",
        "--for=condition=Ready",
        "--timeout=5s",
        "ecsi/web",
    ]);
    assert!(out.status.success());

    delete(&api, "web").await;
    wait_for(30, "gone", || gone(&api, "web")).await;
    assert_eq!(emu.deletions_of(&id).await, 1);
    for want in ["Created", "Ready", "DeletionRequested", "Deleted"] {
        wait_for_event(&client, &ns, "web", |_, r, _| r == want).await;
    }
    // The realistic emulator throttled some of these calls (and the VM still came up once
    // and went once): the realism switches were on.
    let throttled = emu.ambient_throttles().await;
    assert!(!throttled.is_empty(), "no ambient throttle answered");
    println!("ambient throttles: {throttled:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_run_instances_adopts_instead_of_creating_again() {
    let client = client().await;
    let ns = namespace(&client, "e2e-crashrun").await;
    let emu = Emulator::realistic("crashrun", &["--create-delay-ms", "0"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    // No operator yet: the resource exists, and a VM tagged with its uid exists, as if an
    // operator had sent RunInstances and died before writing the instance ID.
    let o = create(&api, "web", create_spec()).await;
    let uid = o.uid().unwrap();
    let id = emu.seed(json!({"Status": "RUNNING", "Tags": [
        {"Key": "ecs.volcengine.io/uid", "Value": uid}, {"Key": "ecs.volcengine.io/cluster", "Value": "default"}
    ]})).await;
    let _op = Operator::start("crashrun", &ns, &emu, &[]);
    let o = ready(&api, "web").await;
    assert_eq!(o.status.unwrap().instance_id.as_deref(), Some(id.as_str()));
    assert!(
        emu.all_calls("RunInstances").await.is_empty(),
        "no second VM"
    );
    wait_for_event(&client, &ns, "web", |_, r, _| r == "Adopted").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn orphan_policy_keeps_the_vm_from_spec_or_namespace_annotation() {
    let client = client().await;
    let ns = namespace(&client, "e2e-orphan").await;
    let emu = Emulator::realistic("orphan", &[]);
    let _op = Operator::start("orphan", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let a = emu.seed(json!({"Status": "RUNNING"})).await;
    let b = emu.seed(json!({"Status": "RUNNING"})).await;
    let c = emu.seed(json!({"Status": "RUNNING"})).await;
    create(
        &api,
        "spec-orphan",
        json!({"instanceId": a, "deletionPolicy": "Orphan"}),
    )
    .await;
    create(&api, "ns-orphan", json!({"instanceId": b})).await;
    create(
        &api,
        "spec-wins",
        json!({"instanceId": c, "deletionPolicy": "Delete"}),
    )
    .await;
    for n in ["spec-orphan", "ns-orphan", "spec-wins"] {
        ready(&api, n).await;
    }
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.patch(
        &ns,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"ecs.volcengine.io/deletion-policy": "Orphan"}}}),
        ),
    )
    .await
    .unwrap();
    for n in ["spec-orphan", "ns-orphan", "spec-wins"] {
        delete(&api, n).await;
    }
    for n in ["spec-orphan", "ns-orphan", "spec-wins"] {
        wait_for(30, n, || gone(&api, n)).await;
    }
    assert_eq!(emu.deletions_of(&a).await, 0);
    assert_eq!(emu.deletions_of(&b).await, 0);
    assert_eq!(
        emu.deletions_of(&c).await,
        1,
        "the resource's own policy wins over the namespace"
    );
    assert!(emu.instance(&a).await.is_some() && emu.instance(&b).await.is_some());
    wait_for_event(&client, &ns, "spec-orphan", |_, r, n| {
        r == "Orphaned" && n.contains(&a)
    })
    .await;
}

/// One adopted VM under `deletionPolicy: Orphan`, Ready, with UntagResources answering
/// success without effect `unapplied` times; then the resource is deleted.
struct OrphanCase {
    client: kube::Client,
    ns: TestNamespace,
    emu: Emulator,
    _op: Operator,
    api: Api<EcsInstance>,
    id: String,
}

async fn orphan_deleted(name: &str, unapplied: u32) -> OrphanCase {
    let client = client().await;
    let ns = namespace(&client, &format!("e2e-{name}")).await;
    let emu = Emulator::realistic(name, &[]);
    let op = Operator::start(name, &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    let spec = json!({"instanceId": id, "deletionPolicy": "Orphan"});
    create(&api, "keep", spec).await;
    ready(&api, "keep").await;
    let fault = json!({ "unapplied_next": unapplied });
    emu.faults("UntagResources", fault).await;
    delete(&api, "keep").await;
    OrphanCase {
        client,
        ns,
        emu,
        _op: op,
        api,
        id,
    }
}

/// An UntagResources success is not proof the tags are gone (an answer without `Result`, a
/// tag index that lags): the orphan is released only once DescribeInstances shows them gone.
/// A VM left with its uid and cluster tags after its resource is gone would look leaked to
/// the sweeper.
#[tokio::test(flavor = "multi_thread")]
async fn an_orphan_is_released_only_once_its_tags_are_seen_gone() {
    let c = orphan_deleted("untag", 1).await;
    wait_for_event(&c.client, &c.ns, "keep", |_, r, _| r == "UntagUnconfirmed").await;
    wait_for(60, "keep gone", || gone(&c.api, "keep")).await;
    let vm = c.emu.instance(&c.id).await.expect("the VM is kept");
    let ours: Vec<_> = vm["Tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["Key"]
                .as_str()
                .is_some_and(|k| k.starts_with("ecs.volcengine.io/"))
        })
        .collect();
    assert!(
        ours.is_empty(),
        "released with ownership tags on the VM: {ours:?}"
    );
    let untags = c.emu.calls("UntagResources").await;
    assert!(
        untags.len() >= 2,
        "sent again after the unconfirmed one: {untags:?}"
    );
    assert_eq!(c.emu.deletions_of(&c.id).await, 0);
}

/// The same, when the untag lands after the describe that was to confirm it (a lagging tag
/// read, or a crash in between): the next look finds no uid tag at all. Under Orphan that is
/// not a lost ownership proof to hold on for good: the operator untags again (idempotent)
/// and releases on the describe after that untag. The VM is kept.
#[tokio::test(flavor = "multi_thread")]
async fn an_orphan_whose_untag_lands_late_is_released() {
    // Every untag answers success and changes nothing, until the test lands one by hand.
    let c = orphan_deleted("untag-late", 1000).await;
    wait_for_event(&c.client, &c.ns, "keep", |_, r, _| r == "UntagUnconfirmed").await;
    let landed_ms = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    let path = format!("instances/{}", c.id);
    c.emu
        .send(reqwest::Method::PATCH, &path, json!({"Tags": []}))
        .await;
    wait_for(60, "keep gone", || gone(&c.api, "keep")).await;
    assert!(c.emu.instance(&c.id).await.is_some(), "the VM is kept");
    assert_eq!(c.emu.deletions_of(&c.id).await, 0);
    assert!(c.emu.all_calls("DeleteInstances").await.is_empty());
    // Released through an untag sent after the tags were gone, not on a read alone.
    let after = c.emu.calls("UntagResources").await;
    let after = after
        .iter()
        .filter(|u| u["at_ms"].as_i64() > Some(landed_ms));
    assert!(
        after.count() >= 1,
        "released without an untag after the tags went"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deletion_protection_blocks_until_the_user_turns_it_off() {
    let client = client().await;
    let ns = namespace(&client, "e2e-protect").await;
    let emu = Emulator::realistic("protect", &[]);
    let op = Operator::start("protect", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    create(
        &api,
        "vm",
        json!({"instanceId": id, "deletionProtection": true}),
    )
    .await;
    wait_for(30, "protection applied", || async {
        let vm = emu.instance(&id).await?;
        (vm["DeletionProtection"] == true).then_some(())
    })
    .await;
    delete(&api, "vm").await;
    wait_for(30, "DeletionRefused", || async {
        let o = api.get("vm").await.ok()?;
        let c = o.condition("Synced")?;
        (c.reason == "DeletionRefused" && c.message.contains("DeletionProtection")).then_some(())
    })
    .await;
    // Proof the operator came back to the refused deletion (twice) and still kept the VM,
    // without turning protection off by itself.
    op.wait_reconciles(30, "two more reconciles of the refused deletion", 2.0)
        .await;
    assert_eq!(has_finalizer(&api, "vm").await, Some(true));
    assert!(emu.instance(&id).await.is_some(), "protected VM kept");
    wait_for_event(&client, &ns, "vm", |t, r, _| {
        t == "Warning" && r == "DeletionRefused"
    })
    .await;
    // The operator never turned protection off by itself.
    assert!(emu
        .calls("ModifyInstanceAttribute")
        .await
        .iter()
        .all(|c| c["params"]["DeletionProtection"] == "true"));
    // The user turns it off in the spec: now the VM is deleted.
    api.patch(
        "vm",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionProtection": false}})),
    )
    .await
    .unwrap();
    wait_for(30, "gone", || gone(&api, "vm")).await;
    assert_eq!(emu.deletions_of(&id).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn prepaid_vm_is_a_terminal_condition_not_a_hot_loop() {
    let client = client().await;
    let ns = namespace(&client, "e2e-prepaid").await;
    let emu = Emulator::realistic("prepaid", &[]);
    let _op = Operator::start("prepaid", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING", "InstanceChargeType": "PrePaid", "ExpiredAt": "2099-01-01T00:00:00Z"})).await;
    create(&api, "vm", json!({"instanceId": id})).await;
    ready(&api, "vm").await;
    delete(&api, "vm").await;
    wait_for(30, "Stalled", || async {
        let o = api.get("vm").await.ok()?;
        (o.condition("Stalled")?.reason == "DeletionRefused").then_some(())
    })
    .await;
    // The operator comes back to it (two more DeleteInstances), but at the slow requeue
    // (the backoff cap, 4 s in tests), not in a hot loop.
    let calls = wait_for_progress(30, "two more DeleteInstances", 2.0, || async {
        Some(emu.calls("DeleteInstances").await.len() as f64)
    })
    .await;
    let at: Vec<i64> = emu
        .calls("DeleteInstances")
        .await
        .iter()
        .filter_map(|c| c["at_ms"].as_i64())
        .collect();
    let gap = at[at.len() - 1] - at[at.len() - 2];
    assert!(
        gap >= 2000,
        "{calls} DeleteInstances, the last two {gap} ms apart"
    );
    assert_eq!(has_finalizer(&api, "vm").await, Some(true));
    // Once the subscription expires the deletion goes through.
    emu.send(
        reqwest::Method::PATCH,
        &format!("instances/{id}"),
        json!({"ExpiredAt": "2020-01-01T00:00:00Z"}),
    )
    .await;
    wait_for(30, "gone", || gone(&api, "vm")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_deleted_outside_kubernetes_is_reported_not_recreated() {
    let client = client().await;
    let ns = namespace(&client, "e2e-oob").await;
    let emu = Emulator::realistic("oob", &[]);
    let op = Operator::start("oob", &ns, &emu, &["--resync-secs", "1"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    create(&api, "web", create_spec()).await;
    let o = ready(&api, "web").await;
    let id = o.status.unwrap().instance_id.unwrap();
    emu.send(
        reqwest::Method::DELETE,
        &format!("instances/{id}"),
        json!({}),
    )
    .await;
    wait_for(30, "InstanceNotFound", || async {
        let o = api.get("web").await.ok()?;
        (o.condition("Ready")?.reason == "InstanceNotFound").then_some(())
    })
    .await;
    // Two more reconciles (the 1 s resync) had the chance to re-create it.
    op.wait_reconciles(30, "two more reconciles after InstanceNotFound", 2.0)
        .await;
    assert_eq!(
        emu.calls("RunInstances").await.len(),
        1,
        "never silently re-created"
    );
    wait_for_event(&client, &ns, "web", |t, r, _| {
        t == "Warning" && r == "InstanceNotFound"
    })
    .await;
    delete(&api, "web").await;
    wait_for(30, "gone", || gone(&api, "web")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn immutable_field_change_is_reported_and_ignored() {
    let client = client().await;
    let ns = namespace(&client, "e2e-immut").await;
    let emu = Emulator::realistic("immut", &[]);
    let _op = Operator::start("immut", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let a = emu.seed(json!({"Status": "RUNNING"})).await;
    let b = emu.seed(json!({"Status": "RUNNING"})).await;
    create(&api, "vm", json!({"instanceId": a})).await;
    ready(&api, "vm").await;
    // The API server refuses the edit (CEL, tests/e2e_admission.rs has every rule).
    let refused = api
        .patch(
            "vm",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"instanceId": b}})),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422
            && s.message.contains("spec.instanceId cannot be added, changed or removed")),
        "{refused:?}"
    );
    // The creation fields a VM can change (name, description, tags, type) are changed in
    // place: tests/e2e_update.rs.
    delete(&api, "vm").await;
    wait_for(30, "gone", || gone(&api, "vm")).await;
    assert_eq!(
        emu.deletions_of(&a).await,
        1,
        "the adopted VM is the one deleted"
    );
    assert_eq!(
        emu.deletions_of(&b).await,
        0,
        "the edited-in VM is untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_for_termination_keeps_the_finalizer_until_the_vm_is_gone() {
    let client = client().await;
    let ns = namespace(&client, "e2e-wait").await;
    let emu = Emulator::realistic("wait", &["--delete-delay-ms", "4000"]);
    let _op = Operator::start("wait", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    create(
        &api,
        "vm",
        json!({"instanceId": id, "waitForTermination": true}),
    )
    .await;
    ready(&api, "vm").await;
    delete(&api, "vm").await;
    wait_for(20, "DeletionAccepted", || async {
        let o = api.get("vm").await.ok()?;
        (o.condition("Ready")?.reason == "DeletionAccepted").then_some(())
    })
    .await;
    assert!(emu.instance(&id).await.is_some(), "still DELETING");
    assert_eq!(has_finalizer(&api, "vm").await, Some(true));
    wait_for(30, "gone", || gone(&api, "vm")).await;
    assert!(emu.instance(&id).await.is_none());
    assert_eq!(emu.deletions_of(&id).await, 1);
}

/// The cloud accepts a deletion and then rolls it back (the VM returns to RUNNING): the
/// operator sees the VM back, re-sends DeleteInstances with a new token, and releases the
/// finalizer only once the VM is gone, deleted once.
#[tokio::test(flavor = "multi_thread")]
async fn a_reverted_deletion_is_sent_again_with_a_new_token() {
    let client = client().await;
    let ns = namespace(&client, "e2e-revert").await;
    let emu = Emulator::realistic("revert", &["--delete-delay-ms", "1500"]);
    let _op = Operator::start("revert", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    create(
        &api,
        "vm",
        json!({"instanceId": id, "waitForTermination": true}),
    )
    .await;
    ready(&api, "vm").await;
    emu.faults("DeleteInstances", json!({"revert_next_deletions": 1}))
        .await;
    delete(&api, "vm").await;
    wait_for(60, "gone", || async {
        let released = gone(&api, "vm").await;
        if released.is_some() {
            // Checked after the release: a VM still there now was there then.
            assert!(
                emu.instance(&id).await.is_none(),
                "finalizer released while the VM exists"
            );
        }
        released
    })
    .await;
    assert!(
        emu.instance(&id).await.is_none(),
        "released only after the VM is gone"
    );
    assert_eq!(emu.deletions_of(&id).await, 1, "deleted once in the end");
    let log = emu.get("deletions").await;
    let mine: Vec<&serde_json::Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["instance_id"] == id.as_str())
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(mine[0]["reverted"], true);
    assert_ne!(mine[0]["client_token"], mine[1]["client_token"], "{mine:?}");
    wait_for_event(&client, &ns, "vm", |t, r, _| {
        t == "Warning" && r == "DeletionReverted"
    })
    .await;
}

/// A VM that stays DELETING past --termination-timeout-secs: Stalled=True with a reason and
/// a Warning Event, the finalizer kept, and the wait goes on until the VM is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_termination_reports_stalled_and_keeps_waiting() {
    let client = client().await;
    let ns = namespace(&client, "e2e-slowterm").await;
    let emu = Emulator::realistic("slowterm", &["--delete-delay-ms", "8000"]);
    let _op = Operator::start("slowterm", &ns, &emu, &["--termination-timeout-secs", "2"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    create(
        &api,
        "vm",
        json!({"instanceId": id, "waitForTermination": true}),
    )
    .await;
    ready(&api, "vm").await;
    delete(&api, "vm").await;
    let stalled = wait_for(20, "Stalled TerminationTimeout", || async {
        let o = api.get("vm").await.ok()?;
        let c = o.condition("Stalled")?;
        (c.status == "True" && c.reason == "TerminationTimeout").then_some(o)
    })
    .await;
    assert!(stalled
        .finalizers()
        .iter()
        .any(|f| f == ecs_operator::api::FINALIZER));
    assert!(emu.instance(&id).await.is_some(), "still DELETING");
    wait_for_event(&client, &ns, "vm", |t, r, _| {
        t == "Warning" && r == "TerminationTimeout"
    })
    .await;
    wait_for(30, "gone", || gone(&api, "vm")).await;
    assert!(emu.instance(&id).await.is_none());
    assert_eq!(emu.deletions_of(&id).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_rejects_malformed_specs() {
    let client = client().await;
    let ns = namespace(&client, "e2e-schema").await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ecs.volcengine.io", "v1alpha1", "EcsInstance"),
        "ecsinstances",
    );
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    for (name, spec) in [
        ("bad-id", json!({"instanceId": "not-an-id"})),
        (
            "bad-policy",
            json!({"instanceId": "i-abcdef12", "deletionPolicy": "Sometimes"}),
        ),
        (
            "small-disk",
            json!({"create": {"zoneId": "z", "imageId": "i", "instanceTypeId": "t", "subnetId": "s", "securityGroupIds": ["sg"], "systemVolume": {"size": -5}}}),
        ),
        (
            "no-sg",
            json!({"create": {"zoneId": "z", "imageId": "i", "instanceTypeId": "t", "subnetId": "s", "securityGroupIds": [], "systemVolume": {"size": 40}}}),
        ),
    ] {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "ecs.volcengine.io/v1alpha1", "kind": "EcsInstance",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        let r = dynamic.create(&Default::default(), &obj).await;
        match r {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{name}: {s:?}"),
            other => panic!("{name} was not rejected: {other:?}"),
        }
    }
    let out = kubectl(&["explain", "ecsinstance.spec"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("deletionPolicy") && text.contains("Orphan"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recreate_option_replaces_a_vanished_vm_with_a_new_token() {
    let client = client().await;
    let ns = namespace(&client, "e2e-recreate").await;
    let emu = Emulator::realistic("recreate", &["--create-delay-ms", "0"]);
    let _op = Operator::start(
        "recreate",
        &ns,
        &emu,
        &["--resync-secs", "1", "--on-missing-instance", "Recreate"],
    );
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let o = create(&api, "web", create_spec()).await;
    let first = ready(&api, "web")
        .await
        .status
        .unwrap()
        .instance_id
        .unwrap();
    emu.send(
        reqwest::Method::DELETE,
        &format!("instances/{first}"),
        json!({}),
    )
    .await;
    let second = wait_for(30, "a new VM", || async {
        let o = api.get("web").await.ok()?;
        let id = o.status.as_ref()?.instance_id.clone()?;
        (id != first && o.condition("Ready")?.status == "True").then_some(id)
    })
    .await;
    assert!(emu.instance(&second).await.is_some());
    let runs = emu.all_calls("RunInstances").await;
    let tokens: HashSet<String> = runs
        .iter()
        .map(|c| c["params"]["ClientToken"].as_str().unwrap().to_string())
        .collect();
    let uid = o.uid().unwrap();
    assert_eq!(
        tokens,
        HashSet::from([format!("ecsop-run-{uid}"), format!("ecsop-run-{uid}-1")])
    );
    wait_for_event(&client, &ns, "web", |_, r, _| r == "Recreating").await;
}

/// Eventual consistency: with `--on-missing-instance Recreate` a VM the cloud does not list
/// yet (visibility lag after RunInstances) is appearing, not vanished: one VM ever, Ready
/// once it shows up.
#[tokio::test(flavor = "multi_thread")]
async fn visibility_lag_never_creates_a_second_vm() {
    let client = client().await;
    let ns = namespace(&client, "e2e-lag").await;
    let emu = Emulator::realistic("lag", &["--create-delay-ms", "0"]);
    emu.send(
        reqwest::Method::PUT,
        "config",
        json!({"visibility_lag_ms": 6000}),
    )
    .await;
    let _op = Operator::start(
        "lag",
        &ns,
        &emu,
        &["--resync-secs", "1", "--on-missing-instance", "Recreate"],
    );
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let o = create(&api, "web", create_spec()).await;
    let uid = o.uid().unwrap();
    // Until Ready (or long after the lag): was the missing VM ever taken for vanished?
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    let mut appearing_seen = false;
    let mut ready_obj = None;
    while std::time::Instant::now() < deadline {
        let o = api.get("web").await.unwrap();
        let ready = o.condition("Ready").cloned();
        appearing_seen |= ready
            .as_ref()
            .is_some_and(|c| c.reason == "InstanceAppearing");
        if ready.is_some_and(|c| c.status == "True") {
            ready_obj = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vms_of_uid = |all: serde_json::Value| {
        all.as_array()
            .unwrap()
            .iter()
            .filter(|vm| {
                vm["Tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["Key"] == "ecs.volcengine.io/uid" && t["Value"] == uid.as_str())
            })
            .count()
    };
    assert_eq!(vms_of_uid(emu.get("instances").await), 1, "one VM ever");
    let o = ready_obj.expect("Ready after the lag");
    assert!(appearing_seen, "InstanceAppearing reported during the lag");
    assert_eq!(emu.get("stats").await["instances"], 1);
    let runs = emu.all_calls("RunInstances").await;
    assert!(
        runs.iter()
            .all(|c| c["params"]["ClientToken"] == format!("ecsop-run-{uid}").as_str()),
        "{runs:?}"
    );
    assert!(o.status.unwrap().instance_id.is_some());
    delete(&api, "web").await;
    wait_for(30, "gone", || gone(&api, "web")).await;
}
