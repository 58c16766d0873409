//! Validation at admission: each CEL rule of `src/admission.rs` rejects a bad object or edit
//! through `kubectl`, on the real API server, with the message users see. A good edit next to
//! each bad one is accepted, so a rule that rejects everything fails here too.

use ecs_test_harness as support;

use serde_json::{json, Value};
use support::*;

fn manifest(ns: &str, name: &str, spec: &Value) -> String {
    json!({
        "apiVersion": "ecs.volcengine.io/v1alpha1",
        "kind": "EcsInstance",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
    .to_string()
}

/// `kubectl apply -f -` with the manifest on stdin; (accepted, stderr).
fn apply(ns: &str, name: &str, spec: &Value) -> (bool, String) {
    use std::io::Write;
    let kc = control_plane();
    let mut child = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest(ns, name, spec).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn create_spec() -> Value {
    json!({"create": {
        "zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": "ecs.g1ie.large",
        "subnetId": "subnet-1", "securityGroupIds": ["sg-1"],
        "systemVolume": {"volumeType": "ESSD_PL0", "size": 40}
    }})
}

#[track_caller]
fn rejected(ns: &str, name: &str, spec: Value, message: &str) {
    let (ok, err) = apply(ns, name, &spec);
    assert!(!ok, "{name}: accepted, expected rejection ({message})");
    assert!(
        err.contains(message),
        "{name}: rejected without the expected message {message:?}: {err}"
    );
    println!("rejected as expected: {}", err.trim());
}

#[track_caller]
fn accepted(ns: &str, name: &str, spec: Value) {
    let (ok, err) = apply(ns, name, &spec);
    assert!(ok, "{name}: rejected, expected acceptance: {err}");
}

#[tokio::test]
async fn cel_rules_reject_bad_objects_at_creation() {
    let c = client().await;
    let ns = namespace(&c, "adm-new").await;
    let mut both = create_spec();
    both["instanceId"] = json!("i-abcd1234");
    rejected(&ns, "both", both, "are exclusive: set one of them");
    rejected(
        &ns,
        "neither",
        json!({"deletionPolicy": "Delete"}),
        "set spec.instanceId (adopt an existing VM) or spec.create",
    );
    let mut no_system = create_spec();
    no_system["create"]
        .as_object_mut()
        .unwrap()
        .remove("systemVolume");
    rejected(
        &ns,
        "no-system",
        no_system,
        "spec.create.systemVolume is required",
    );
    let mut small = create_spec();
    small["create"]["systemVolume"] = json!({"volumeType": "ESSD_PL0", "size": 10});
    rejected(
        &ns,
        "small-system",
        small,
        "a system disk is 20 to 2048 GiB",
    );
    let mut ptssd = create_spec();
    ptssd["create"]["systemVolume"] = json!({"volumeType": "PTSSD", "size": 10});
    accepted(&ns, "ptssd-system", ptssd);
    accepted(&ns, "good-create", create_spec());
    accepted(&ns, "good-adopt", json!({"instanceId": "i-abcd1234"}));
    tag_rules(&ns);
}

/// Tags the cloud would refuse are refused at admission: a reserved prefix, a character
/// outside the documented set, the operator's own keys, more than 16 (20 per call, 4 of them
/// the operator's), a value over 255 characters.
fn tag_rules(ns: &str) {
    let with_tags = |tags: Value| {
        let mut s = create_spec();
        s["create"]["tags"] = tags;
        s
    };
    let reserved = "may not start with volc: or sys:";
    rejected(
        ns,
        "tag-volc",
        with_tags(json!({"volc:owner": "a"})),
        reserved,
    );
    rejected(ns, "tag-sys", with_tags(json!({"SYS:x": "a"})), reserved);
    rejected(
        ns,
        "tag-long",
        with_tags(json!({"k".repeat(129): "a"})),
        reserved,
    );
    rejected(
        ns,
        "tag-char",
        with_tags(json!({"team#1": "a"})),
        "a key may hold only letters, digits, spaces",
    );
    rejected(
        ns,
        "tag-ours",
        with_tags(json!({"ecs.volcengine.io/uid": "x"})),
        "are the operator's ownership tags",
    );
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    rejected(
        ns,
        "tag-many",
        with_tags(Value::Object(many)),
        "must have at most 16",
    );
    rejected(
        ns,
        "tag-value",
        with_tags(json!({"team": "v".repeat(256)})),
        "may not be more than 255",
    );
    accepted(
        ns,
        "tag-good",
        with_tags(json!({"team": "a", "cost-center/eu": "x=1", "项目": "b", "owner@x": ""})),
    );
}

#[tokio::test]
async fn cel_rules_reject_edits_of_immutable_fields() {
    let c = client().await;
    let ns = namespace(&c, "adm-edit").await;

    accepted(&ns, "adopt", json!({"instanceId": "i-abcd1234"}));
    rejected(
        &ns,
        "adopt",
        json!({"instanceId": "i-ffff9999"}),
        "spec.instanceId cannot be added, changed or removed",
    );
    // A mutable field next to it is accepted.
    accepted(
        &ns,
        "adopt",
        json!({"instanceId": "i-abcd1234", "deletionPolicy": "Orphan"}),
    );

    accepted(&ns, "made", create_spec());
    let mut zone = create_spec();
    zone["create"]["zoneId"] = json!("cn-beijing-b");
    rejected(
        &ns,
        "made",
        zone,
        "spec.create.zoneId cannot be changed after creation",
    );
    let mut disk = create_spec();
    disk["create"]["systemVolume"]["size"] = json!(80);
    rejected(
        &ns,
        "made",
        disk,
        "spec.create.systemVolume cannot be changed after creation",
    );
    let mut region = create_spec();
    region["region"] = json!("cn-shanghai");
    rejected(
        &ns,
        "made",
        region,
        "spec.region cannot be added, changed or removed",
    );
    let mut described = create_spec();
    described["create"]["description"] = json!("edited in Git");
    accepted(&ns, "made", described);
    // The fields converged in place are accepted; the host name only applies at first boot.
    let mut resized = create_spec();
    resized["create"]["instanceTypeId"] = json!("ecs.g1ie.xlarge");
    resized["create"]["instanceName"] = json!("renamed");
    resized["create"]["tags"] = json!({"team": "b"});
    resized["updatePolicy"] = json!("Restart");
    accepted(&ns, "made", resized.clone());
    let mut host = resized.clone();
    host["create"]["hostName"] = json!("new-host");
    rejected(
        &ns,
        "made",
        host,
        "spec.create.hostName cannot be changed after creation",
    );
    let mut policy = resized;
    policy["updatePolicy"] = json!("Always");
    rejected(&ns, "made", policy, "Unsupported value: \"Always\"");
}
