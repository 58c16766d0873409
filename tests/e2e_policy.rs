//! Safety under ambiguity, end to end: a namespace deletion-policy annotation the operator
//! does not recognise keeps the VM until it is fixed, and the release-without-delete escape
//! hatch lets a stuck deletion go without any cloud call.

use ecs_test_harness as support;

use ecs_operator::api::{EcsInstance, NAMESPACE_POLICY_ANNOTATION, RELEASE_ANNOTATION};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use support::*;

async fn annotate_namespace(client: &kube::Client, ns: &str, value: &str) {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {NAMESPACE_POLICY_ANNOTATION: value}}}),
            ),
        )
        .await
        .unwrap();
}

async fn adopted(api: &Api<EcsInstance>, name: &str, id: &str) {
    create(api, name, json!({"instanceId": id})).await;
    wait_for(30, "finalizer and Ready", || async {
        let o = api.get(name).await.ok()?;
        (o.condition("Ready")?.status == "True" && !o.finalizers().is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unrecognised_namespace_policy_keeps_the_vm_until_it_is_fixed() {
    let client = client().await;
    let ns = namespace(&client, "e2e-badpolicy").await;
    let emu = Emulator::start("badpolicy", &[]);
    let op = Operator::start("badpolicy", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    adopted(&api, "vm", &id).await;
    // A typo: the old code took any unrecognised value for "no annotation", i.e. Delete.
    annotate_namespace(&client, &ns, "orphan").await;
    delete(&api, "vm").await;

    let o = wait_for(30, "InvalidDeletionPolicy condition", || async {
        let o = api.get("vm").await.ok()?;
        let c = o.condition("Synced")?;
        (c.status == "False" && c.reason == "InvalidDeletionPolicy").then_some(o)
    })
    .await;
    let msg = &o.condition("Synced").unwrap().message;
    assert!(
        msg.contains(ns.as_str())
            && msg.contains(NAMESPACE_POLICY_ANNOTATION)
            && msg.contains("\"orphan\""),
        "{msg}"
    );
    // Progress, not a sleep: the operator re-checked (held the deletion again) at least twice.
    wait_for(30, "the deletion re-checked", || async {
        let held = op
            .log()
            .lines()
            .filter(|l| l.contains("deletion held") && l.contains("InvalidDeletionPolicy"))
            .count();
        (held >= 3).then_some(())
    })
    .await;
    assert_eq!(has_finalizer(&api, "vm").await, Some(true));
    assert!(emu.calls("DeleteInstances").await.is_empty());
    assert!(emu.calls("UntagResources").await.is_empty());
    assert!(emu.instance(&id).await.is_some());
    wait_for_event(&client, &ns, "vm", |t, r, n| {
        t == "Warning" && r == "InvalidDeletionPolicy" && n.contains("orphan")
    })
    .await;

    // Fixed to Delete: picked up by the next retry, and the VM is deleted exactly once.
    annotate_namespace(&client, &ns, "Delete").await;
    wait_for(30, "resource gone", || gone(&api, "vm")).await;
    assert_eq!(emu.deletions_of(&id).await, 1);
    assert_eq!(emu.calls("DeleteInstances").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn release_annotation_frees_a_stuck_deletion_without_a_cloud_call() {
    let client = client().await;
    let ns = namespace(&client, "e2e-release").await;
    let emu = Emulator::start("release", &[]);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    // Broken credentials: the emulator accepts only its own keys.
    let mut op = Operator::start_with_env(
        "release",
        &ns,
        &emu,
        &[],
        &[("VOLCENGINE_SECRET_KEY", "wrong-secret-value")],
    );
    create(
        &api,
        "vm",
        json!({"instanceId": id, "deletionPolicy": "Delete"}),
    )
    .await;
    wait_for(30, "finalizer", || async {
        has_finalizer(&api, "vm").await.filter(|h| *h)
    })
    .await;
    delete(&api, "vm").await;
    wait_for(30, "deletion stuck on the credentials", || async {
        let o = api.get("vm").await.ok()?;
        let c = o.condition("Ready")?;
        (c.reason == "Deleting" && c.message.contains("SignatureDoesNotMatch")).then_some(())
    })
    .await;
    // Stop the operator so that the call count below cannot race an in-flight retry: the
    // reconcile that sees the annotation is then the restarted operator's first.
    op.kill();
    let before = emu.get("calls").await.as_array().unwrap().len();
    assert!(before > 0);
    let out = kubectl(&[
        "-n",
        &ns,
        "annotate",
        "ecsinstance",
        "vm",
        &format!("{RELEASE_ANNOTATION}=credentials revoked, VM deleted by hand (ticket 42)"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    op.restart();
    wait_for(30, "resource released", || gone(&api, "vm")).await;

    let after = emu.get("calls").await.as_array().unwrap().len();
    assert_eq!(after, before, "a cloud call after the annotation");
    assert!(emu.instance(&id).await.is_some(), "the VM is untouched");
    assert_eq!(emu.deletions_of(&id).await, 0);
    let evs = wait_for_event(&client, &ns, "vm", |t, r, _| {
        t == "Warning" && r == "ReleasedWithoutDelete"
    })
    .await;
    assert!(
        evs.iter().any(|(t, r, n)| t == "Warning"
            && r == "ReleasedWithoutDelete"
            && n.contains("kubectl-annotate")
            && n.contains("ticket 42")
            && n.contains(&id)),
        "{evs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn orphan_of_a_vm_describe_no_longer_returns_is_released() {
    let client = client().await;
    let ns = namespace(&client, "e2e-orphan-gone").await;
    let emu = Emulator::start("orphan-gone", &[]);
    let _op = Operator::start("orphan-gone", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    create(
        &api,
        "vm",
        json!({"instanceId": id, "deletionPolicy": "Orphan"}),
    )
    .await;
    wait_for(30, "finalizer and Ready", || async {
        let o = api.get("vm").await.ok()?;
        (o.condition("Ready")?.status == "True" && !o.finalizers().is_empty()).then_some(())
    })
    .await;
    // The VM is deleted by hand, and UntagResources answers with an error that is not a
    // not-found code: DescribeInstances decides.
    emu.send(
        reqwest::Method::DELETE,
        &format!("instances/{id}"),
        json!({}),
    )
    .await;
    emu.faults(
        "UntagResources",
        json!({"fail_next": 1000, "error_code": "InternalError", "error_status": 500}),
    )
    .await;
    delete(&api, "vm").await;
    wait_for(30, "resource released", || gone(&api, "vm")).await;
    // DescribeInstances (the ownership check before any untagging) no longer lists the VM:
    // that confirms it is gone, whatever UntagResources would have answered.
    wait_for_event(&client, &ns, "vm", |_, r, n| {
        (r == "Orphaned" && n.contains("already gone"))
            || (r == "AlreadyGone" && n.contains("does not exist"))
    })
    .await;
}

/// A ClusterRole with every rule of `deploy/rbac/cluster-role.yaml` except reading
/// Namespaces, bound to a user the operator then impersonates: its namespace reads fail
/// (403) while everything else works.
async fn namespace_blind_user(client: &kube::Client, tag: &str, with_namespaces: bool) -> String {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::api::PostParams;
    let user = format!("nsblind-{tag}");
    let text = std::fs::read_to_string(repo().join("deploy/rbac/cluster-role.yaml")).unwrap();
    // The file holds the ClusterRole, then its binding.
    let first = text.split("\n---").next().unwrap();
    let mut role: serde_json::Value = serde_yaml::from_str(first).unwrap();
    if !with_namespaces {
        role["rules"]
            .as_array_mut()
            .unwrap()
            .retain(|r| !r["resources"].to_string().contains("\"namespaces\""));
    }
    role["metadata"] = json!({"name": user});
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role: ClusterRole = serde_json::from_value(role).unwrap();
    let pp = PatchParams::apply("e2e").force();
    roles.patch(&user, &pp, &Patch::Apply(&role)).await.unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await;
    user
}

/// The admin kubeconfig, impersonating `user`.
fn impersonating_kubeconfig(dir: &std::path::Path, user: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(control_plane()).unwrap();
    let mut kc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    kc["users"][0]["user"]["as"] = json!(user);
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_namespace_keeps_the_vm_until_it_can_be_read() {
    let client = client().await;
    let ns = namespace(&client, "e2e-nsread").await;
    let emu = Emulator::start("nsread", &[]);
    // Namespaces readable at first: a resource binds to its account only once it has read
    // its namespace (the account annotation), so the VM is adopted with them.
    let user = namespace_blind_user(&client, &ns, true).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = impersonating_kubeconfig(dir.path(), &user);
    let op = Operator::start_with_env(
        "nsread",
        &ns,
        &emu,
        &["--cluster-id", "e2e-nsread"],
        &[
            ("KUBECONFIG", kc.to_str().unwrap()),
            ("VOLCENGINE_SECRET_KEY", SK),
        ],
    );
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = emu.seed(json!({"Status": "RUNNING"})).await;
    adopted(&api, "vm", &id).await;
    namespace_blind_user(&client, &ns, false).await;
    delete(&api, "vm").await;

    // The namespace cannot be read (403): that is doubt, not "no annotation" (Delete).
    wait_for(30, "NamespaceUnreadable condition", || async {
        let o = api.get("vm").await.ok()?;
        let c = o.condition("Synced")?;
        (c.status == "False" && c.reason == "NamespaceUnreadable").then_some(())
    })
    .await;
    wait_for_event(&client, &ns, "vm", |t, r, _| {
        t == "Warning" && r == "NamespaceUnreadable"
    })
    .await;
    // Progress, not a sleep: the operator retried the read and held again, three times.
    wait_for(60, "three held deletions", || async {
        let held = op
            .log()
            .lines()
            .filter(|l| l.contains("deletion held") && l.contains("NamespaceUnreadable"))
            .count();
        (held >= 3).then_some(())
    })
    .await;
    assert_eq!(has_finalizer(&api, "vm").await, Some(true));
    assert_eq!(emu.deletions_of(&id).await, 0, "VM kept while in doubt");
    assert!(emu.calls("DeleteInstances").await.is_empty());

    // The permission is restored: the deletion completes, exactly once.
    namespace_blind_user(&client, &ns, true).await;
    wait_for(60, "resource gone", || gone(&api, "vm")).await;
    assert_eq!(emu.deletions_of(&id).await, 1);
}
