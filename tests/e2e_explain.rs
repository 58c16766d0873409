//! `ecs-operator explain NAMESPACE/NAME` on deleting resources in each waiting state, against
//! the real API server with a real operator and the emulator: a VM in a transitional state,
//! deletion protection on, the account's credentials refused, a paused resource.

use ecs_test_harness as support;

use ecs_operator::api::{EcsAccount, EcsInstance, PAUSED_ANNOTATION};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use reqwest::Method;
use serde_json::json;
use support::*;

fn explain(target: &str) -> String {
    let out = std::process::Command::new(operator_bin())
        .args(["explain", target])
        .env("KUBECONFIG", control_plane())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "explain {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn condition_reason(api: &Api<EcsInstance>, name: &str, reason: &str) {
    wait_for(
        60,
        &format!("{name}: a condition with reason {reason}"),
        || async {
            let o = api.get(name).await.ok()?;
            o.status?
                .conditions
                .iter()
                .any(|c| c.reason == reason || c.message.contains(reason))
                .then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_says_what_each_deletion_waits_for() {
    let client = client().await;
    let ns = namespace(&client, "e2e-explain").await;
    let keys = namespace(&client, "e2e-explain-keys").await;
    let emu = Emulator::start("explain", &["--create-delay-ms", "0"]);
    // An account whose key the cloud does not know.
    let run = uuid_ish()[..6].to_string();
    let acct = format!("explain-{run}");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "bad-key"},
        "stringData": {"VOLCENGINE_ACCESS_KEY": "AKunknown", "VOLCENGINE_SECRET_KEY": "nope"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &keys)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let account: EcsAccount = serde_json::from_value(json!({
        "apiVersion": "ecs.volcengine.io/v1alpha1", "kind": "EcsAccount",
        "metadata": {"name": acct},
        "spec": {"secretRef": {"name": "bad-key"}, "allowedNamespaces": {"names": [ns.as_str()]}}
    }))
    .unwrap();
    Api::<EcsAccount>::all(client.clone())
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let _guard = AccountGuard(acct.clone());
    let _op = Operator::start(
        "explain",
        &ns,
        &emu,
        &["--resync-secs", "2", "--account-secret-namespace", &keys],
    );
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);

    let busy = emu.seed(json!({"Status": "RUNNING"})).await;
    let guarded = emu.seed(json!({"Status": "RUNNING"})).await;
    let held = emu.seed(json!({"Status": "RUNNING"})).await;
    create(&api, "busy", json!({"instanceId": busy})).await;
    create(
        &api,
        "guarded",
        json!({"instanceId": guarded, "deletionProtection": true}),
    )
    .await;
    create(
        &api,
        "badkey",
        json!({"instanceId": "i-badkey0001", "accountRef": {"name": acct}}),
    )
    .await;
    create(&api, "held", json!({"instanceId": held})).await;
    for name in ["busy", "guarded", "held"] {
        wait_for(60, &format!("{name} Ready"), || async {
            let o = api.get(name).await.ok()?;
            (o.condition("Ready")?.status == "True").then_some(())
        })
        .await;
    }
    wait_for(30, "protection on", || async {
        (emu.instance(&guarded).await?["DeletionProtection"] == true).then_some(())
    })
    .await;
    condition_reason(&api, "badkey", "CloudAuthError").await;
    // The VM busy in a transition the cloud will not delete in; the other paused.
    emu.send(
        Method::PATCH,
        &format!("instances/{busy}"),
        json!({"Status": "STARTING", "Hold": true}),
    )
    .await;
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {PAUSED_ANNOTATION: "true"}}})),
    )
    .await
    .unwrap();
    condition_reason(&api, "held", "Paused").await;
    for name in ["busy", "guarded", "badkey", "held"] {
        delete(&api, name).await;
    }
    condition_reason(&api, "busy", "InvalidInstanceStatus").await;
    condition_reason(&api, "guarded", "OperationDenied.DeletionProtection").await;

    let cases = [
        (
            "busy",
            "Waiting for:  the VM to leave STARTING",
            "wait: the operator retries",
        ),
        (
            "guarded",
            "deletion protection on",
            "\"deletionProtection\":false",
        ),
        (
            "badkey",
            "accept the credentials of account",
            "fix the key of EcsAccount",
        ),
        (
            "held",
            "the resource is paused",
            "ecs.volcengine.io/paused-",
        ),
    ];
    for (name, waits, todo) in cases {
        let text = explain(&format!("{ns}/{name}"));
        println!("--- explain {ns}/{name}\n{text}");
        assert!(text.contains(waits), "{name}: {waits:?} not in:\n{text}");
        assert!(text.contains(todo), "{name}: {todo:?} not in:\n{text}");
        assert!(text.contains("being deleted for"), "{name}:\n{text}");
        assert!(text.contains("ClientToken:  ecsop-del-"), "{name}:\n{text}");
        assert!(
            text.contains("ecs.volcengine.io/release-without-delete"),
            "{name}:\n{text}"
        );
    }
    // The last cloud answer, with its code and RequestId; the next attempt, with backoff.
    let text = explain(&format!("{ns}/guarded"));
    let next = text
        .lines()
        .find(|l| l.starts_with("Next attempt:"))
        .unwrap();
    assert!(
        next.contains("Next attempt: at ") || next.contains("due since"),
        "{next}"
    );
    assert!(explain(&format!("{ns}/held")).contains("Next attempt: none while paused"));
    let last = text
        .lines()
        .find(|l| l.starts_with("Last cloud answer:"))
        .unwrap();
    assert!(
        last.contains("OperationDenied.DeletionProtection") && last.contains("RequestId"),
        "{last}"
    );
    // A bad target is a clear error.
    let out = std::process::Command::new(operator_bin())
        .args(["explain", "no-slash"])
        .env("KUBECONFIG", control_plane())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected NAMESPACE/NAME"));

    // Let the test namespace go: release what is left.
    for name in ["busy", "guarded", "badkey", "held"] {
        let _ = api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
}
