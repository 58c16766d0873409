//! Many accounts, end to end on the real API server and an emulator holding several
//! accounts (each with its own keys and its own VMs): resources of two namespaces act each in
//! its own account (one by `spec.accountRef`, one by the namespace annotation), a namespace
//! the account does not allow is refused and never acts, a resource of account A cannot see or
//! touch a VM of account B; a key rotated in the Secret while deletions run (no failed
//! deletion, no restart); a revoked key holds the deletion (released only by the escape
//! hatch); an ObserveOnly resource's deletion leaves its VM untouched; a paused resource
//! makes no cloud call until it is unpaused.

use ecs_test_harness as support;

use std::collections::BTreeMap;

use ecs_operator::api::{
    EcsAccount, EcsInstance, NAMESPACE_ACCOUNT_ANNOTATION, PAUSED_ANNOTATION, RELEASE_ANNOTATION,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use support::*;

fn create_spec(account: Option<&str>) -> Value {
    let mut spec = json!({"create": {
        "zoneId": "cn-beijing-a", "imageId": "image-1", "instanceTypeId": "ecs.g1.large",
        "subnetId": "subnet-1", "securityGroupIds": ["sg-1"],
        "systemVolume": {"size": 40}
    }});
    if let Some(a) = account {
        spec["accountRef"] = json!({"name": a});
    }
    spec
}

async fn put_secret(client: &kube::Client, ns: &str, name: &str, ak: &str, sk: &str) -> String {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut data = BTreeMap::new();
    data.insert("VOLCENGINE_ACCESS_KEY".to_string(), ak.to_string());
    data.insert("VOLCENGINE_SECRET_KEY".to_string(), sk.to_string());
    let s = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(data),
        ..Default::default()
    };
    let pp = PatchParams::apply("e2e").force();
    let mut v = serde_json::to_value(&s).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    api.patch(name, &pp, &Patch::Apply(&v))
        .await
        .unwrap()
        .resource_version()
        .unwrap()
}

/// An EcsAccount named `name` (cluster-scoped, so made unique per run by the caller).
async fn account(client: &kube::Client, name: &str, secret: &str, allowed: Value) -> AccountGuard {
    let api: Api<EcsAccount> = Api::all(client.clone());
    let a: EcsAccount = serde_json::from_value(json!({
        "apiVersion": "ecs.volcengine.io/v1alpha1", "kind": "EcsAccount",
        "metadata": {"name": name},
        "spec": {"secretRef": {"name": secret}, "allowedNamespaces": allowed}
    }))
    .unwrap();
    api.create(&PostParams::default(), &a).await.unwrap();
    AccountGuard(name.to_string())
}

async fn account_ready(client: &kube::Client, name: &str) -> (String, String, Option<String>) {
    let api: Api<EcsAccount> = Api::all(client.clone());
    let a = api.get(name).await.unwrap();
    let st = a.status.unwrap_or_default();
    let c = st.conditions.iter().find(|c| c.type_ == "Ready");
    (
        c.map(|c| c.status.clone()).unwrap_or_default(),
        c.map(|c| c.reason.clone()).unwrap_or_default(),
        st.secret_resource_version,
    )
}

async fn wait_account(client: &kube::Client, name: &str, status: &str, reason: &str) {
    wait_for(
        30,
        &format!("EcsAccount {name} Ready={status} {reason}"),
        || async {
            let (s, r, _) = account_ready(client, name).await;
            (s == status && r == reason).then_some(())
        },
    )
    .await;
}

async fn condition(
    api: &Api<EcsInstance>,
    name: &str,
    t: &str,
) -> Option<(String, String, String)> {
    let o = api.get(name).await.ok()?;
    let c = o.condition(t)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_condition(
    api: &Api<EcsInstance>,
    name: &str,
    t: &str,
    status: &str,
    reason: &str,
) -> String {
    wait_for(40, &format!("{name} {t}={status} {reason}"), || async {
        let (s, r, m) = condition(api, name, t).await?;
        (s == status && r == reason).then_some(m)
    })
    .await
}

async fn ready(api: &Api<EcsInstance>, name: &str) -> EcsInstance {
    wait_for(40, &format!("{name} Ready"), || async {
        let o = api.get(name).await.ok()?;
        (o.condition("Ready")?.status == "True").then_some(o)
    })
    .await
}

async fn label_namespace(client: &kube::Client, ns: &str, patch: Value) {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": patch})),
        )
        .await
        .unwrap();
}

/// Accepted deletions of one VM of `account`.
async fn deletions_in(emu: &Emulator, account: &str, id: &str) -> usize {
    let v = emu.get(&format!("deletions?account={account}")).await;
    v.as_array()
        .unwrap()
        .iter()
        .filter(|d| d["instance_id"] == id && d["reverted"] != true)
        .count()
}

/// Sum of `ecs_operator_cloud_calls_total` series whose labels contain all of `want`.
fn calls_metric(text: &str, want: &[&str]) -> f64 {
    metric(text, "ecs_operator_cloud_calls_total", want)
}

/// Sum of the series of `name` whose labels contain all of `want`.
fn metric(text: &str, name: &str, want: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_teams_act_each_in_its_own_account_and_cannot_borrow_another() {
    let client = client().await;
    let run = &uuid_ish()[..6];
    let (acct_a, acct_b) = (format!("team-a-{run}"), format!("team-b-{run}"));
    let ns_a = namespace(&client, "e2e-acct-a").await;
    let ns_b = namespace(&client, "e2e-acct-b").await;
    let ns_c = namespace(&client, "e2e-acct-c").await;
    let keys = namespace(&client, "e2e-acct-keys").await;
    let (ak_a, ak_b) = (format!("AKa{run}"), format!("AKb{run}"));
    let emu = Emulator::start(
        "accounts",
        &[
            "--account",
            &format!("team-a:{ak_a}:SKa"),
            "--account",
            &format!("team-b:{ak_b}:SKb"),
        ],
    );
    put_secret(&client, &keys, "key-a", &ak_a, "SKa").await;
    put_secret(&client, &keys, "key-b", &ak_b, "SKb").await;
    // Team a's account allows namespaces labelled for it; team b's names its namespace.
    label_namespace(
        &client,
        &ns_a,
        json!({"labels": {"e2e-team": format!("a-{run}")}}),
    )
    .await;
    label_namespace(
        &client,
        &ns_b,
        json!({"annotations": {NAMESPACE_ACCOUNT_ANNOTATION: acct_b}}),
    )
    .await;
    let _ga = account(
        &client,
        &acct_a,
        "key-a",
        json!({"selector": {"matchLabels": {"e2e-team": format!("a-{run}")}}}),
    )
    .await;
    let _gb = account(&client, &acct_b, "key-b", json!({"names": [ns_b.as_str()]})).await;
    let op = Operator::start(
        "accounts",
        &ns_a,
        &emu,
        &[
            "--namespaces",
            &ns_b,
            "--namespaces",
            &ns_c,
            "--account-secret-namespace",
            &keys,
        ],
    );
    wait_account(&client, &acct_a, "True", "SecretRead").await;
    wait_account(&client, &acct_b, "True", "SecretRead").await;

    let api_a: Api<EcsInstance> = Api::namespaced(client.clone(), &ns_a);
    let api_b: Api<EcsInstance> = Api::namespaced(client.clone(), &ns_b);
    let api_c: Api<EcsInstance> = Api::namespaced(client.clone(), &ns_c);
    // b's VM, which a resource of team a names: it must never see or touch it.
    let b_vm = emu.seed_in("team-b", json!({"Status": "RUNNING"})).await;
    create(&api_a, "vm", create_spec(Some(&acct_a))).await;
    create(
        &api_a,
        "peek",
        json!({"instanceId": b_vm, "accountRef": {"name": acct_a}}),
    )
    .await;
    create(&api_b, "vm", create_spec(None)).await;
    create(&api_c, "vm", create_spec(Some(&acct_a))).await;

    let a = ready(&api_a, "vm").await;
    let b = ready(&api_b, "vm").await;
    let id = |o: &EcsInstance| o.status.as_ref().unwrap().instance_id.clone().unwrap();
    let (id_a, id_b) = (id(&a), id(&b));
    assert_eq!(
        a.status.as_ref().unwrap().account.as_deref(),
        Some(acct_a.as_str())
    );
    assert_eq!(
        b.status.as_ref().unwrap().account.as_deref(),
        Some(acct_b.as_str())
    );
    let held = |v: Vec<Value>, id: &str| v.iter().any(|i| i["InstanceId"] == id);
    assert!(held(emu.instances_in("team-a").await, &id_a));
    assert!(held(emu.instances_in("team-b").await, &id_b));
    assert!(!held(emu.instances_in("team-a").await, &id_b));
    assert!(!held(emu.instances_in("default").await, &id_a));

    // Namespace c may not use team a's account: refused, no cloud call on its behalf.
    let msg = wait_condition(&api_c, "vm", "Synced", "False", "AccountNotAllowed").await;
    assert!(
        msg.contains(&acct_a) && msg.contains(ns_c.as_str()),
        "{msg}"
    );
    wait_for_event(&client, &ns_c, "vm", |t, r, _| {
        t == "Warning" && r == "AccountNotAllowed"
    })
    .await;
    let c = api_c.get("vm").await.unwrap();
    assert_eq!(c.status.as_ref().and_then(|s| s.account.clone()), None);
    // A resource of account a naming b's VM sees nothing (as if it did not exist).
    wait_condition(&api_a, "peek", "Ready", "False", "InstanceNotFound").await;

    // Every RunInstances was signed with the key of its own account, none with the default.
    assert_eq!(emu.calls_with_key(&ak_a, "RunInstances").await, 1);
    assert_eq!(emu.calls_with_key(&ak_b, "RunInstances").await, 1);
    assert_eq!(emu.calls_with_key(AK, "RunInstances").await, 0);
    let m = op.metrics().await.unwrap();
    assert!(
        calls_metric(
            &m,
            &[&format!("account=\"{acct_a}\""), "RunInstances", "OK"]
        ) >= 1.0,
        "{m}"
    );

    // Team a's account throttled on every DescribeInstances (Retry-After 2 s): its calls
    // wait, team b's do not (its own client, limiters and batchers).
    emu.faults(
        "DescribeInstances",
        json!({"account": "team-a", "throttle_rate": 1.0, "retry_after_secs": 2}),
    )
    .await;
    let slow_vm = emu.seed_in("team-a", json!({"Status": "RUNNING"})).await;
    let quick_vm = emu.seed_in("team-b", json!({"Status": "RUNNING"})).await;
    let orphan = |id: &str, acct: Option<&str>| {
        let mut v = json!({"instanceId": id, "deletionPolicy": "Orphan"});
        if let Some(a) = acct {
            v["accountRef"] = json!({"name": a});
        }
        v
    };
    create(&api_a, "slow", orphan(&slow_vm, Some(&acct_a))).await;
    create(&api_b, "quick", orphan(&quick_vm, None)).await;
    ready(&api_b, "quick").await;
    wait_for(30, "team a throttled", || async {
        let m = op.metrics().await?;
        // Throttled, and its limiter paused for the Retry-After (calls waited over 1 s).
        let a = format!("account=\"{acct_a}\"");
        let waited = metric(&m, "ecs_operator_throttle_wait_seconds_total", &[&a]);
        (metric(
            &m,
            "ecs_operator_cloud_calls_total",
            &[&a, "FlowLimitExceeded"],
        ) > 0.0
            && waited > 1.0)
            .then_some(())
    })
    .await;
    let m = op.metrics().await.unwrap();
    // Acquiring a free token is measured too (microseconds): "never waited" is well below
    // the 2 s team a's limiter was paused for.
    let b_waited = metric(
        &m,
        "ecs_operator_throttle_wait_seconds_total",
        &[&format!("account=\"{acct_b}\"")],
    );
    assert!(
        b_waited < 0.1,
        "team b waited {b_waited} s for a rate limiter:\n{m}"
    );
    assert_eq!(
        metric(
            &m,
            "ecs_operator_cloud_calls_total",
            &[&format!("account=\"{acct_b}\""), "FlowLimitExceeded"]
        ),
        0.0
    );
    assert_ne!(
        condition(&api_a, "slow", "Ready")
            .await
            .map(|c| c.0)
            .as_deref(),
        Some("True")
    );
    emu.clear_fault("DescribeInstances").await;
    ready(&api_a, "slow").await;

    // A malformed Secret: the account says so, and is fixed without a restart.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &keys);
    secrets
        .patch(
            "key-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"VOLCENGINE_SECRET_KEY": null}})),
        )
        .await
        .unwrap();
    wait_account(&client, &acct_b, "False", "SecretMalformed").await;
    // ... and so does a resource that would use it: a condition, no cloud call, no crash.
    create(&api_b, "broke", create_spec(None)).await;
    let msg = wait_condition(&api_b, "broke", "Synced", "False", "AccountNotReady").await;
    assert!(
        msg.contains("VOLCENGINE_SECRET_KEY") && !msg.contains("SKb"),
        "{msg}"
    );
    put_secret(&client, &keys, "key-b", &ak_b, "SKb").await;
    wait_account(&client, &acct_b, "True", "SecretRead").await;
    ready(&api_b, "broke").await;

    // An account in use is kept while resources are bound to it (finalizer), and a new
    // resource may not start using it meanwhile.
    let accounts: Api<EcsAccount> = Api::all(client.clone());
    accounts
        .delete(&acct_a, &DeleteParams::default())
        .await
        .unwrap();
    create(&api_a, "late", create_spec(Some(&acct_a))).await;
    let msg = wait_condition(&api_a, "late", "Synced", "False", "AccountNotReady").await;
    assert!(msg.contains("being deleted"), "{msg}");
    let still = accounts.get(&acct_a).await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    assert!(still
        .finalizers()
        .iter()
        .any(|f| f == "ecs.volcengine.io/account-in-use"));

    // Deleting: each VM in its own account; the refused resources go without a cloud call;
    // the peeking resource never held b's VM, which stays.
    let all = [
        (&api_a, "vm"),
        (&api_b, "vm"),
        (&api_c, "vm"),
        (&api_a, "peek"),
        (&api_a, "slow"),
        (&api_b, "quick"),
        (&api_a, "late"),
        (&api_b, "broke"),
    ];
    for (api, n) in all {
        delete(api, n).await;
    }
    for (api, n) in all {
        wait_for(40, &format!("{n} gone"), || gone(api, n)).await;
    }
    wait_for(30, "both VMs deleted", || async {
        (emu.status_of(&id_a).await.is_none_or(|s| s == "DELETING")
            && emu.status_of(&id_b).await.is_none_or(|s| s == "DELETING"))
        .then_some(())
    })
    .await;
    assert_eq!(emu.calls_with_key(&ak_a, "DeleteInstances").await, 1);
    assert!((1..=2).contains(&emu.calls_with_key(&ak_b, "DeleteInstances").await));
    assert_eq!(emu.status_of(&b_vm).await.as_deref(), Some("RUNNING"));
    assert_eq!(emu.calls_naming("DeleteInstances", &b_vm).await, 0);
    assert_eq!(emu.calls_naming("TagResources", &b_vm).await, 0);
    // The Orphan ones are kept, each untagged in its own account.
    for v in [&slow_vm, &quick_vm] {
        assert_eq!(emu.status_of(v).await.as_deref(), Some("RUNNING"));
    }
    assert_eq!(emu.calls_with_key(&ak_a, "UntagResources").await, 1);
    // Nothing is bound to team a's account any more: it goes.
    wait_for(30, "team a's account gone", || async {
        accounts
            .get_opt(&acct_a)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(emu.calls_with_key(&ak_b, "UntagResources").await, 1);
    wait_for_event(&client, &ns_c, "vm", |_, r, n| {
        r == "ReleasedWithoutVM" && n.contains("never acted")
    })
    .await;
    drop(op);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotated_during_deletions_needs_no_restart_and_a_revoked_key_holds() {
    let client = client().await;
    let run = &uuid_ish()[..6];
    let acct = format!("rot-{run}");
    let ns = namespace(&client, "e2e-acct-rot").await;
    let (old, new) = (format!("AKold{run}"), format!("AKnew{run}"));
    // Deletions last: each waits (waitForTermination) 10 s for its VM to go, so the rotation
    // lands while they run (the Secret is read every second here).
    let emu = Emulator::start(
        "rotation",
        &[
            "--account",
            &format!("team-r:{old}:SKold"),
            "--delete-delay-ms",
            "10000",
        ],
    );
    put_secret(&client, &ns, "key", &old, "SKold").await;
    let _g = account(&client, &acct, "key", json!({"names": [ns.as_str()]})).await;
    let mut op = Operator::start(
        "rotation",
        &ns,
        &emu,
        &[
            "--account-secret-namespace",
            &ns,
            "--account-secret-poll-secs",
            "1",
        ],
    );
    let pid = op.pid();
    wait_account(&client, &acct, "True", "SecretRead").await;
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let n = 12;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = emu.seed_in("team-r", json!({"Status": "RUNNING"})).await;
        create(
            &api,
            &format!("vm-{i}"),
            json!({"instanceId": id, "accountRef": {"name": acct}, "waitForTermination": true}),
        )
        .await;
        ids.push(id);
    }
    for i in 0..n {
        ready(&api, &format!("vm-{i}")).await;
    }
    for i in 0..n {
        delete(&api, &format!("vm-{i}")).await;
    }
    // Deletions are under way with the old key ...
    wait_for(30, "DeleteInstances with the old key", || async {
        (emu.calls_with_key(&old, "DeleteInstances").await > 0).then_some(())
    })
    .await;
    // ... when the key is rotated: the new key is added to the account, the Secret changed,
    // and once the operator reports the new Secret in use, the old key is revoked.
    emu.add_account_key("team-r", &new, "SKnew").await;
    let rv = put_secret(&client, &ns, "key", &new, "SKnew").await;
    wait_for(30, "the new Secret in use", || async {
        (account_ready(&client, &acct).await.2.as_deref() == Some(rv.as_str())).then_some(())
    })
    .await;
    emu.revoke_key("team-r", &old).await;
    for i in 0..n {
        let name = format!("vm-{i}");
        wait_for(60, &format!("{name} gone"), || gone(&api, &name)).await;
    }
    for id in &ids {
        assert_eq!(emu.status_of(id).await, None, "{id} deleted");
        assert_eq!(
            deletions_in(&emu, "team-r", id).await,
            1,
            "{id} deleted once"
        );
    }
    assert!(
        emu.calls_with_key(&new, "DescribeInstances").await > 0,
        "the new key was used"
    );
    assert_eq!(op.pid(), pid, "no restart");
    assert!(op.is_running());
    let m = op.metrics().await.unwrap();
    assert_eq!(
        calls_metric(&m, &["InvalidAccessKey"]),
        0.0,
        "no call failed for the key:\n{m}"
    );

    // Now the key in use is revoked (and not replaced): a deletion holds, the VM stays.
    let kept = emu.seed_in("team-r", json!({"Status": "RUNNING"})).await;
    create(
        &api,
        "kept",
        json!({"instanceId": kept, "accountRef": {"name": acct}}),
    )
    .await;
    ready(&api, "kept").await;
    emu.revoke_key("team-r", &new).await;
    delete(&api, "kept").await;
    let msg = wait_condition(&api, "kept", "Synced", "False", "CloudAuthError").await;
    assert!(msg.contains("InvalidAccessKey"), "{msg}");
    wait_for_event(&client, &ns, "kept", |t, r, _| {
        t == "Warning" && r == "CloudAuthError"
    })
    .await;
    assert_eq!(has_finalizer(&api, "kept").await, Some(true));
    assert_eq!(emu.status_of(&kept).await.as_deref(), Some("RUNNING"));
    // The documented way out: the escape hatch, no cloud call; the VM is left.
    api.patch(
        "kept",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {RELEASE_ANNOTATION: "key revoked; VM handed to team r"}}})),
    )
    .await
    .unwrap();
    wait_for(30, "kept released", || gone(&api, "kept")).await;
    assert_eq!(emu.status_of(&kept).await.as_deref(), Some("RUNNING"));
    assert_eq!(deletions_in(&emu, "team-r", &kept).await, 0);
    op.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn observe_only_leaves_the_vm_and_paused_makes_no_call_until_unpaused() {
    let client = client().await;
    let ns = namespace(&client, "e2e-acct-modes").await;
    let emu = Emulator::start("modes", &[]);
    let op = Operator::start("modes", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);

    // ObserveOnly: read and reported, never claimed; its deletion leaves the VM untouched.
    let watched = emu.seed(json!({"Status": "RUNNING"})).await;
    create(&api, "watched", json!({"instanceId": watched, "managementPolicy": "ObserveOnly", "deletionProtection": true})).await;
    let o = ready(&api, "watched").await;
    assert_eq!(
        o.status.as_ref().unwrap().ownership,
        None,
        "an observer claims nothing"
    );
    wait_for(20, "observe_only gauge", || async {
        let m = op.metrics().await?;
        m.lines()
            .any(|l| l == "ecs_operator_resources_unmanaged{mode=\"observe_only\"} 1")
            .then_some(())
    })
    .await;
    delete(&api, "watched").await;
    wait_for(30, "watched gone", || gone(&api, "watched")).await;
    wait_for_event(&client, &ns, "watched", |_, r, _| r == "ObserveOnly").await;
    assert_eq!(emu.status_of(&watched).await.as_deref(), Some("RUNNING"));
    for action in [
        "DeleteInstances",
        "TagResources",
        "UntagResources",
        "ModifyInstanceAttribute",
    ] {
        assert_eq!(emu.calls_naming(action, &watched).await, 0, "{action}");
    }

    // Paused: no cloud call for it while the annotation is set, even to delete it.
    let vm = emu.seed(json!({"Status": "RUNNING"})).await;
    create(&api, "held", json!({"instanceId": vm})).await;
    ready(&api, "held").await;
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {PAUSED_ANNOTATION: "true"}}})),
    )
    .await
    .unwrap();
    wait_condition(&api, "held", "Synced", "False", "Paused").await;
    let before: usize = {
        let mut n = 0;
        for a in [
            "DescribeInstances",
            "DeleteInstances",
            "TagResources",
            "ModifyInstanceAttribute",
        ] {
            n += emu.calls_naming(a, &vm).await;
        }
        n
    };
    api.delete("held", &DeleteParams::default()).await.unwrap();
    // Progress, not a sleep: the deletion was reconciled and reported as paused.
    wait_for_event(&client, &ns, "held", |_, r, n| {
        r == "Paused" && n.contains("deletion")
    })
    .await;
    let m = op.metrics().await.unwrap();
    assert!(
        m.lines()
            .any(|l| l == "ecs_operator_resources_unmanaged{mode=\"paused\"} 1"),
        "{m}"
    );
    let mut after = 0;
    for a in [
        "DescribeInstances",
        "DeleteInstances",
        "TagResources",
        "ModifyInstanceAttribute",
    ] {
        after += emu.calls_naming(a, &vm).await;
    }
    assert_eq!(after, before, "a cloud call was made for a paused resource");
    assert_eq!(has_finalizer(&api, "held").await, Some(true));
    assert_eq!(emu.status_of(&vm).await.as_deref(), Some("RUNNING"));
    // Unpaused: the deletion completes.
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {PAUSED_ANNOTATION: null}}})),
    )
    .await
    .unwrap();
    wait_for(30, "held gone", || gone(&api, "held")).await;
    assert_eq!(emu.deletions_of(&vm).await, 1);
}

/// `ecs-operator sweep --account NAME` sweeps with that EcsAccount's key: it lists the
/// account's leak and never sees another account's.
#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_command_sweeps_one_account_with_its_own_key() {
    let client = client().await;
    let run = &uuid_ish()[..6];
    let acct = format!("sweep-{run}");
    let keys = namespace(&client, "e2e-acct-sweep").await;
    let ak = format!("AKsw{run}");
    let emu = Emulator::start(
        "account-sweep",
        &[
            "--account",
            &format!("team-s:{ak}:SKs"),
            "--account",
            "team-t:AKt:SKt",
        ],
    );
    let cid = format!("e2e-sweep-{run}");
    let tags = json!([{"Key": "ecs.volcengine.io/cluster", "Value": cid},
                      {"Key": "ecs.volcengine.io/uid", "Value": "0000-gone"}]);
    let mine = emu.seed_in("team-s", json!({"Tags": tags})).await;
    let theirs = emu.seed_in("team-t", json!({"Tags": tags})).await;
    put_secret(&client, &keys, "key", &ak, "SKs").await;
    let _g = account(&client, &acct, "key", json!({})).await;
    let out = std::process::Command::new(operator_bin())
        .args([
            "sweep",
            "--account",
            &acct,
            "--account-secret-namespace",
            &keys,
        ])
        .args([
            "--cluster-id",
            &cid,
            "--grace-secs",
            "0",
            "--interval-secs",
            "0",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUBECONFIG", control_plane())
        .env("VOLCENGINE_ENDPOINT", &emu.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&mine), "{stdout}");
    assert!(
        !stdout.contains(&theirs),
        "another account's VM was seen:\n{stdout}"
    );
    assert!(emu.calls_with_key(&ak, "DescribeInstances").await > 0);
    assert_eq!(emu.calls_with_key("AKt", "").await, 0);
    assert!(!stdout.contains("SKs") && !stderr.contains("SKs"));
}
