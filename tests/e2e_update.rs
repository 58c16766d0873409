//! In-place updates end to end (real API server, emulator): rename and re-tag from the spec,
//! a console change corrected within a resync (or only reported under `updatePolicy:
//! Never`), the instance type under each update policy, an update while the VM is STOPPING,
//! and the outputs ConfigMap (created, updated on an IP change, gone with the resource).

use ecs_test_harness as support;

use ecs_operator::api::EcsInstance;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use reqwest::Method;
use serde_json::{json, Value};
use support::*;

const SMALL: &str = "ecs.g1ie.large";
const BIG: &str = "ecs.g1ie.xlarge";

fn spec(name: &str, policy: Option<&str>) -> Value {
    let mut s = json!({"create": {
        "zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": SMALL,
        "subnetId": "subnet-1", "securityGroupIds": ["sg-1"], "instanceName": name,
        "description": "first", "systemVolume": {"volumeType": "ESSD_PL0", "size": 40},
        "tags": {"team": "web", "tier": "a"}
    }});
    if let Some(p) = policy {
        s["updatePolicy"] = json!(p);
    }
    s
}

async fn ready(api: &Api<EcsInstance>, name: &str) -> (EcsInstance, String) {
    wait_for(60, "Ready", || async {
        let o = api.get(name).await.ok()?;
        let id = o.status.as_ref()?.instance_id.clone()?;
        (o.condition("Ready")?.status == "True").then_some((o, id))
    })
    .await
}

async fn edit(api: &Api<EcsInstance>, name: &str, patch: Value) {
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// The VM as the emulator's admin API shows it.
async fn vm(emu: &Emulator, id: &str) -> Value {
    emu.instance(id).await.expect("the VM exists")
}

fn tag(vm: &Value, key: &str) -> Option<String> {
    vm["Tags"]
        .as_array()?
        .iter()
        .find(|t| t["Key"] == key)
        .and_then(|t| t["Value"].as_str().map(str::to_string))
}

/// A change made outside Kubernetes (the console): admin PATCH of the VM.
async fn console(emu: &Emulator, id: &str, body: Value) {
    emu.send(Method::PATCH, &format!("instances/{id}"), body)
        .await;
}

async fn synced(api: &Api<EcsInstance>, name: &str) -> Option<(String, String, String)> {
    let o = api.get(name).await.ok()?;
    let c = o.condition("Synced")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_synced_true(api: &Api<EcsInstance>, name: &str) {
    wait_for(60, "Synced=True", || async {
        let (s, r, _) = synced(api, name).await?;
        (s == "True" && r == "Observed").then_some(())
    })
    .await
}

async fn config_map(
    cms: &Api<ConfigMap>,
    name: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    cms.get_opt(name).await.ok()??.data
}

#[tokio::test(flavor = "multi_thread")]
async fn rename_retag_console_changes_and_connection_info() {
    let client = client().await;
    let ns = namespace(&client, "e2e-upd-attr").await;
    let emu = Emulator::realistic("upd-attr", &["--create-delay-ms", "0"]);
    let op = Operator::start("upd-attr", &ns, &emu, &["--resync-secs", "2"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut s = spec("web-1", None);
    s["writeConnectionInfoTo"] = json!({"name": "web-conn"});
    let o = create(&api, "web", s).await;
    let uid = o.uid().unwrap();
    let (o, id) = ready(&api, "web").await;
    let st = o.status.clone().unwrap();
    assert_eq!(
        st.managed_tag_keys,
        vec!["team".to_string(), "tier".to_string()]
    );

    // Outputs: the ConfigMap carries the VM's ID and address, owned by the resource.
    let data = wait_for(30, "ConfigMap written", || async {
        let d = config_map(&cms, "web-conn").await?;
        (d.get("instanceStatus").map(String::as_str) == Some("RUNNING")).then_some(d)
    })
    .await;
    assert_eq!(data["instanceId"], id);
    assert_eq!(Some(&data["privateIp"]), st.private_ip.as_ref());
    assert_eq!(data["zoneId"], "cn-beijing-a");
    assert_eq!(data["region"], "cn-beijing");
    let cm = cms.get("web-conn").await.unwrap();
    let owners = cm.owner_references();
    assert!(
        owners.len() == 1 && owners[0].uid == uid && owners[0].kind == "EcsInstance",
        "{owners:?}"
    );

    // Rename, re-describe, re-tag from the spec.
    edit(
        &api,
        "web",
        json!({"spec": {"create": {
            "instanceName": "web-2", "description": "second", "tags": {"team": "web2", "tier": null}
        }}}),
    )
    .await;
    let v = wait_for(30, "renamed and re-tagged", || async {
        let v = vm(&emu, &id).await;
        (v["InstanceName"] == "web-2"
            && v["Description"] == "second"
            && tag(&v, "team").as_deref() == Some("web2")
            && tag(&v, "tier").is_none())
        .then_some(v)
    })
    .await;
    assert_eq!(
        tag(&v, "ecs.volcengine.io/uid"),
        Some(uid.clone()),
        "ownership tags untouched"
    );
    wait_synced_true(&api, "web").await;
    let o = api.get("web").await.unwrap();
    assert_eq!(o.status.unwrap().managed_tag_keys, vec!["team".to_string()]);
    for want in ["ModifyInstanceAttribute", "TagResources", "UntagResources"] {
        wait_for_event(&client, &ns, "web", |t, r, note| {
            t == "Normal" && r == "Updated" && note.starts_with(want) && note.contains("RequestId")
        })
        .await;
    }
    let attrs = emu.calls("ModifyInstanceAttribute").await;
    let prefix = format!("ecsop-attr-{uid}-");
    assert!(
        !attrs.is_empty()
            && attrs.iter().all(|c| c["params"]["ClientToken"]
                .as_str()
                .is_some_and(|t| t.starts_with(&prefix))),
        "{attrs:?}"
    );

    // Changed in the console: the managed fields are corrected within a resync; a tag
    // someone else added is left alone.
    let mut tags: Vec<Value> = v["Tags"].as_array().unwrap().clone();
    for t in tags.iter_mut() {
        if t["Key"] == "team" {
            t["Value"] = json!("console-edit");
        }
    }
    tags.push(json!({"Key": "cost-center", "Value": "42"}));
    console(&emu, &id, json!({"InstanceName": "hacked", "Tags": tags})).await;
    wait_for_event(&client, &ns, "web", |t, r, note| {
        t == "Warning"
            && r == "Drifted"
            && note.contains(r#"instanceName is "hacked" on the VM, the spec says "web-2""#)
    })
    .await;
    wait_for(30, "console change corrected", || async {
        let v = vm(&emu, &id).await;
        (v["InstanceName"] == "web-2" && tag(&v, "team").as_deref() == Some("web2")).then_some(())
    })
    .await;
    wait_synced_true(&api, "web").await;
    assert_eq!(
        tag(&vm(&emu, &id).await, "cost-center").as_deref(),
        Some("42")
    );
    let detected = op
        .metric("ecs_operator_drift_detected_total")
        .await
        .unwrap_or(0.0);
    assert!(detected >= 2.0, "drift counted per field: {detected}");
    let text = op.metrics().await.unwrap();
    assert!(
        text.contains(
            r#"ecs_operator_updates_total{action="ModifyInstanceAttribute",result="ok"}"#
        ),
        "{text}"
    );

    // An address change reaches the ConfigMap.
    console(&emu, &id, json!({"PublicIp": "203.0.113.7"})).await;
    wait_for(30, "public IP published", || async {
        let d = config_map(&cms, "web-conn").await?;
        (d.get("publicIp").map(String::as_str) == Some("203.0.113.7")).then_some(())
    })
    .await;

    // A ConfigMap this resource does not own is never taken over.
    let foreign = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("taken".into()),
            ..Default::default()
        },
        data: Some([("mine".to_string(), "yes".to_string())].into()),
        ..Default::default()
    };
    cms.create(&Default::default(), &foreign).await.unwrap();
    edit(
        &api,
        "web",
        json!({"spec": {"writeConnectionInfoTo": {"name": "taken"}}}),
    )
    .await;
    wait_for(30, "ConnectionInfoConflict", || async {
        let (s, r, _) = synced(&api, "web").await?;
        (s == "False" && r == "ConnectionInfoConflict").then_some(())
    })
    .await;
    wait_for_event(&client, &ns, "web", |t, r, _| {
        t == "Warning" && r == "ConnectionInfoConflict"
    })
    .await;
    assert_eq!(config_map(&cms, "taken").await.unwrap()["mine"], "yes");

    // Deleting the resource deletes the VM, and Kubernetes' garbage collector its ConfigMap.
    delete(&api, "web").await;
    wait_for(60, "gone", || gone(&api, "web")).await;
    assert_eq!(emu.deletions_of(&id).await, 1);
    wait_for(60, "ConfigMap collected", || async {
        cms.get_opt("web-conn").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        config_map(&cms, "taken").await.is_some(),
        "the foreign ConfigMap stays"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_type_under_each_update_policy() {
    let client = client().await;
    let ns = namespace(&client, "e2e-upd-type").await;
    let emu = Emulator::realistic(
        "upd-type",
        &[
            "--create-delay-ms",
            "0",
            "--stop-delay-ms",
            "1500",
            "--start-delay-ms",
            "1500",
        ],
    );
    let _op = Operator::start("upd-type", &ns, &emu, &["--resync-secs", "2"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let mut uids = std::collections::HashMap::new();
    for (name, policy) in [
        ("never", Some("Never")),
        ("stopped", None),
        ("restart", Some("Restart")),
    ] {
        let o = create(&api, name, spec(name, policy)).await;
        uids.insert(name, o.uid().unwrap());
    }
    let mut ids = std::collections::HashMap::new();
    for name in ["never", "stopped", "restart"] {
        ids.insert(name, ready(&api, name).await.1);
    }
    for name in ["never", "stopped", "restart"] {
        edit(
            &api,
            name,
            json!({"spec": {"create": {"instanceTypeId": BIG}}}),
        )
        .await;
    }

    // Restart: stopped (KeepCharging), resized, started again; the status forgets the stop.
    let restart = &ids["restart"];
    wait_for(60, "restart: resized and running", || async {
        let v = vm(&emu, restart).await;
        let o = api.get("restart").await.ok()?;
        (v["InstanceTypeId"] == BIG
            && v["Status"] == "RUNNING"
            && o.status.as_ref()?.stopped_for_update_at.is_none()
            && o.condition("Ready")?.status == "True")
            .then_some(())
    })
    .await;
    wait_synced_true(&api, "restart").await;
    let stops = emu.calls("StopInstances").await;
    let uid = &uids["restart"];
    assert!(
        stops
            .iter()
            .any(|c| c["params"]["StoppedMode"] == "KeepCharging"
                && c["params"]["ClientToken"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("ecsop-stop-{uid}-")))),
        "{stops:?}"
    );
    assert_eq!(
        emu.calls_naming("StartInstances", restart).await,
        1,
        "started once"
    );
    assert_eq!(
        emu.calls_naming("StopInstances", restart).await,
        1,
        "stopped once"
    );
    let specs = emu.calls("ModifyInstanceSpec").await;
    assert!(
        specs.iter().any(|c| c["params"]["InstanceTypeId"] == BIG
            && c["params"]["InstanceId"] == restart.as_str()),
        "{specs:?}"
    );

    // WhenStopped (the default): never stops the VM; says why it waits.
    let stopped = &ids["stopped"];
    wait_for(30, "WhenStopped reports the wait", || async {
        let (s, r, m) = synced(&api, "stopped").await?;
        (s == "False" && r == "Drifted" && m.contains("only while the VM is STOPPED")).then_some(())
    })
    .await;
    assert_eq!(emu.calls_naming("StopInstances", stopped).await, 0);
    assert_eq!(vm(&emu, stopped).await["InstanceTypeId"], SMALL);
    // Stopped by its user: resized, and left stopped.
    console(&emu, stopped, json!({"Status": "STOPPED"})).await;
    wait_for(30, "WhenStopped: resized once stopped", || async {
        (vm(&emu, stopped).await["InstanceTypeId"] == BIG).then_some(())
    })
    .await;
    wait_synced_true(&api, "stopped").await;
    assert_eq!(vm(&emu, stopped).await["Status"], "STOPPED");
    assert_eq!(
        emu.calls_naming("StartInstances", stopped).await,
        0,
        "the user's stop is kept"
    );

    // Never: reported, untouched (the other two resized meanwhile: the operator made progress).
    let never = &ids["never"];
    let (s, r, m) = synced(&api, "never").await.unwrap();
    assert_eq!((s.as_str(), r.as_str()), ("False", "Drifted"), "{m}");
    assert!(
        m.contains(&format!(
            r#"instanceTypeId is "{SMALL}" on the VM, the spec says "{BIG}""#
        )) && m.contains("Never"),
        "{m}"
    );
    assert_eq!(vm(&emu, never).await["InstanceTypeId"], SMALL);
    assert_eq!(emu.calls_naming("ModifyInstanceSpec", never).await, 0);
    assert_eq!(emu.calls_naming("StopInstances", never).await, 0);
    wait_for_event(&client, &ns, "never", |t, r, _| {
        t == "Warning" && r == "Drifted"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_wait_while_stopping_and_never_only_reports() {
    let client = client().await;
    let ns = namespace(&client, "e2e-upd-wait").await;
    let emu = Emulator::realistic("upd-wait", &["--create-delay-ms", "0"]);
    let _op = Operator::start("upd-wait", &ns, &emu, &["--resync-secs", "2"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    create(&api, "busy", spec("busy-1", None)).await;
    create(&api, "watch", spec("watch-1", Some("Never"))).await;
    let (_, busy) = ready(&api, "busy").await;
    let (_, watch) = ready(&api, "watch").await;

    // STOPPING (held there): the rename waits, and says so, then is applied once STOPPED.
    console(&emu, &busy, json!({"Status": "STOPPING", "Hold": true})).await;
    edit(
        &api,
        "busy",
        json!({"spec": {"create": {"instanceName": "busy-2"}}}),
    )
    .await;
    wait_for(30, "the wait is reported", || async {
        let (s, r, m) = synced(&api, "busy").await?;
        (s == "False" && r == "Drifted" && m.contains("waiting for the VM to leave STOPPING"))
            .then_some(())
    })
    .await;
    assert_eq!(
        emu.calls_naming("ModifyInstanceAttribute", &busy).await,
        0,
        "nothing sent while STOPPING"
    );
    assert_eq!(vm(&emu, &busy).await["InstanceName"], "busy-1");
    console(&emu, &busy, json!({"Status": "STOPPED"})).await;
    wait_for(30, "renamed once STOPPED", || async {
        (vm(&emu, &busy).await["InstanceName"] == "busy-2").then_some(())
    })
    .await;
    wait_synced_true(&api, "busy").await;

    // Never: a console rename is reported with both values, never corrected.
    console(&emu, &watch, json!({"InstanceName": "console-name"})).await;
    wait_for(30, "Never reports", || async {
        let (s, r, m) = synced(&api, "watch").await?;
        (s == "False"
            && r == "Drifted"
            && m.contains(r#"instanceName is "console-name" on the VM, the spec says "watch-1""#)
            && m.contains("Never"))
        .then_some(())
    })
    .await;
    wait_for_event(&client, &ns, "watch", |t, r, _| {
        t == "Warning" && r == "Drifted"
    })
    .await;
    assert_eq!(emu.calls_naming("ModifyInstanceAttribute", &watch).await, 0);
    assert_eq!(vm(&emu, &watch).await["InstanceName"], "console-name");
}

/// The sample the README points at is accepted by the API server as written.
#[tokio::test(flavor = "multi_thread")]
async fn the_update_sample_is_valid() {
    let client = client().await;
    let ns = namespace(&client, "e2e-upd-sample").await;
    let sample = repo().join("samples/update.yaml");
    let out = kubectl(&[
        "-n",
        &ns,
        "apply",
        "--dry-run=server",
        "-f",
        &sample.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restart policy, the hard cases: the operator killed right after it stopped the VM (the
/// new process finishes the resize and starts it: `stoppedForUpdateAt` was written before
/// the stop), and a type the cloud refuses (the VM is started again, the type recorded as
/// refused, and the VM is not stopped for it again).
#[tokio::test(flavor = "multi_thread")]
async fn restart_survives_a_crash_and_a_refused_type_never_leaves_the_vm_down() {
    let client = client().await;
    let ns = namespace(&client, "e2e-upd-crash").await;
    let emu = Emulator::realistic(
        "upd-crash",
        &[
            "--create-delay-ms",
            "0",
            "--stop-delay-ms",
            "3000",
            "--start-delay-ms",
            "500",
        ],
    );
    emu.send(
        Method::PUT,
        "config",
        json!({"unavailable_instance_types": ["ecs.g1ie.8xlarge"]}),
    )
    .await;
    let mut op = Operator::start("upd-crash", &ns, &emu, &["--resync-secs", "2"]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    create(&api, "crash", spec("crash", Some("Restart"))).await;
    create(&api, "refused", spec("refused", Some("Restart"))).await;
    let (_, crash) = ready(&api, "crash").await;
    let (_, refused) = ready(&api, "refused").await;

    // Killed while the VM is STOPPING because of it.
    edit(
        &api,
        "crash",
        json!({"spec": {"create": {"instanceTypeId": BIG}}}),
    )
    .await;
    wait_for(30, "the stop was sent", || async {
        (emu.calls_naming("StopInstances", &crash).await > 0).then_some(())
    })
    .await;
    op.kill();
    let o = api.get("crash").await.unwrap();
    assert!(
        o.status.unwrap().stopped_for_update_at.is_some(),
        "recorded before the stop"
    );
    op.restart();
    wait_for(60, "resized and running after the crash", || async {
        let v = vm(&emu, &crash).await;
        (v["InstanceTypeId"] == BIG && v["Status"] == "RUNNING").then_some(())
    })
    .await;
    wait_synced_true(&api, "crash").await;
    assert_eq!(emu.calls_naming("StartInstances", &crash).await, 1);

    // A type the cloud refuses: stopped once, refused, started again, not stopped again.
    edit(
        &api,
        "refused",
        json!({"spec": {"create": {"instanceTypeId": "ecs.g1ie.8xlarge"}}}),
    )
    .await;
    wait_for_event(&client, &ns, "refused", |t, r, note| {
        t == "Warning"
            && r == "CloudError"
            && note.contains("ModifyInstanceSpec")
            && note.contains("ResourceNotFound.InstanceType")
            && note.contains("RequestId")
    })
    .await;
    wait_for(60, "started again with its old type", || async {
        let v = vm(&emu, &refused).await;
        let o = api.get("refused").await.ok()?;
        let st = o.status?;
        (v["Status"] == "RUNNING"
            && v["InstanceTypeId"] == SMALL
            && st.refused_instance_type.as_deref() == Some("ecs.g1ie.8xlarge")
            && st.stopped_for_update_at.is_none())
        .then_some(())
    })
    .await;
    // Several observations later (progress proven by the reconcile counter), no new stop.
    op.wait_reconciles(60, "more reconciles", 10.0).await;
    assert_eq!(
        emu.calls_naming("StopInstances", &refused).await,
        1,
        "stopped once"
    );
    let (s, r, m) = synced(&api, "refused").await.unwrap();
    assert_eq!((s.as_str(), r.as_str()), ("False", "Drifted"), "{m}");
    assert!(m.contains("refused this instance type"), "{m}");
}
