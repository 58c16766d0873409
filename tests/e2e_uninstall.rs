//! Uninstall safety: deleting the CRD deletes every EcsInstance, and while the CRD is being
//! deleted the operator treats every resource as Orphan. This test deletes the CRD, so it
//! runs on a control plane of its own (ECS_CP_DIR is pointed at a dedicated state dir before
//! the harness starts one) and stops it at the end.

use ecs_test_harness as support;

use std::process::Command;

use ecs_operator::api::{EcsInstance, CRD_NAME};
use kube::api::Api;
use serde_json::json;
use support::*;

fn own_control_plane() -> std::path::PathBuf {
    let base = std::env::var("ECS_CP_DIR").unwrap_or_else(|_| "/tmp/ecs-cp".into());
    let dir = std::path::PathBuf::from(format!("{base}-uninstall"));
    // Before any other thread reads the environment (the harness reads it once).
    std::env::set_var("ECS_CP_DIR", &dir);
    dir
}

struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/control-plane.sh"))
            .arg("down")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_crd_orphans_every_vm() {
    let _down = Down(own_control_plane());
    let client = client().await;
    let ns = namespace(&client, "e2e-uninstall").await;
    let emu = Emulator::start("uninstall", &[]);
    let _op = Operator::start("uninstall", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    create(
        &api,
        "vm",
        json!({"deletionPolicy": "Delete", "create": {
            "zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": "ecs.g1ie.large",
            "subnetId": "subnet-1", "securityGroupIds": ["sg-1"], "systemVolume": {"size": 40}}}),
    )
    .await;
    let id = wait_for(60, "Ready", || async {
        let o = api.get("vm").await.ok()?;
        (o.condition("Ready")?.status == "True").then_some(())?;
        o.status?.instance_id
    })
    .await;
    let tags = |v: serde_json::Value| -> Vec<String> {
        v["Tags"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t["Key"].as_str().map(str::to_string))
            .collect()
    };
    let vm = emu.instance(&id).await.expect("the VM");
    assert!(
        tags(vm).iter().any(|k| k == "ecs.volcengine.io/uid"),
        "created VMs carry ownership tags"
    );

    // Uninstalling the API: the CRD's deletion deletes the resource (policy Delete).
    let out = kubectl(&["delete", "crd", CRD_NAME, "--wait=false"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(60, "the CRD gone", || async {
        let out = kubectl(&["get", "crd", CRD_NAME]);
        (!out.status.success()).then_some(())
    })
    .await;

    let vm = emu.instance(&id).await.expect("the VM must survive");
    let left: Vec<String> = tags(vm)
        .into_iter()
        .filter(|k| k.starts_with("ecs.volcengine.io/"))
        .collect();
    assert!(left.is_empty(), "ownership tags left: {left:?}");
    assert_eq!(emu.deletions_of(&id).await, 0);
    assert!(emu.calls("DeleteInstances").await.is_empty());
    assert_eq!(emu.calls("UntagResources").await.len(), 1);
    wait_for_event(&client, &ns, "vm", |t, r, n| {
        t == "Warning" && r == "CrdDeleting" && n.contains(CRD_NAME)
    })
    .await;
    wait_for_event(&client, &ns, "vm", |_, r, n| {
        r == "Orphaned" && n.contains(&id)
    })
    .await;
}
