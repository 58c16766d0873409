//! The Helm chart (charts/ecs-operator) on the real API server: `helm lint`; `helm template`
//! renders exactly the objects of the kustomize base (and of deploy/monitoring when
//! monitoring is on); `helm install` of a uniquely named release whose ServiceAccount's own
//! token runs the operator through adopt, outputs ConfigMap and delete without a single
//! "forbidden" (and may do nothing more); `helm upgrade` changes the Deployment;
//! `helm uninstall` leaves the CRD, the EcsInstances and every VM.

use ecs_test_harness as support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use ecs_operator::api::EcsInstance;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use support::*;

fn helm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HELM_BIN") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("helm"))
                .find(|f| f.is_file())
        })
        .expect("helm (scripts/test.sh builds helm.sh/helm/v3 with Go into the cache)")
}

fn helm(args: &[&str]) -> String {
    let mut cmd = Command::new(helm_bin());
    cmd.args(args);
    // Offline rendering assumes Kubernetes 1.20 unless told; the chart needs 1.33+.
    if args.first() == Some(&"template") {
        cmd.args(["--kube-version", "1.37.0"]);
    }
    let out = cmd
        .env("KUBECONFIG", control_plane())
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("e2e-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("e2e-helm-config"),
        )
        .env("HELM_DATA_HOME", std::env::temp_dir().join("e2e-helm-data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chart() -> String {
    repo()
        .join("charts/ecs-operator")
        .to_string_lossy()
        .into_owned()
}

/// Objects of a multi-document YAML stream by (kind, namespace, name).
fn objects(yaml: &str) -> BTreeMap<(String, String, String), Value> {
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => panic!("not YAML: {e}"),
        };
        if v.is_null() {
            continue;
        }
        let key = (
            v["kind"].as_str().unwrap_or_default().to_string(),
            v["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        assert!(out.insert(key.clone(), v).is_none(), "{key:?} twice");
    }
    out
}

fn kustomize(dir: &str) -> BTreeMap<(String, String, String), Value> {
    let out = kubectl(&["kustomize", repo().join(dir).to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    objects(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn the_chart_renders_the_kustomize_base() {
    helm(&["lint", &chart()]);
    let rendered = objects(&helm(&[
        "template",
        "ecs-operator",
        &chart(),
        "-n",
        "ecs-operator-system",
    ]));
    let mut base = kustomize("deploy");
    // The release namespace is Helm's (`--create-namespace`), not the chart's.
    base.remove(&(
        "Namespace".into(),
        String::new(),
        "ecs-operator-system".into(),
    ));
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>()
    );
    for (k, v) in &base {
        assert_eq!(
            &rendered[k], v,
            "{k:?} differs between the chart and deploy/"
        );
    }
    let monitored = objects(&helm(&[
        "template",
        "ecs-operator",
        &chart(),
        "-n",
        "ecs-operator-system",
        "--set",
        "monitoring.serviceMonitor=true,monitoring.prometheusRule=true",
    ]));
    let mut with_monitoring = base.clone();
    with_monitoring.extend(kustomize("deploy/monitoring"));
    assert_eq!(
        monitored, with_monitoring,
        "monitoring on: chart vs deploy/ + deploy/monitoring"
    );
    // The threshold is a value.
    let lowered = helm(&[
        "template",
        "ecs-operator",
        &chart(),
        "-n",
        "ecs-operator-system",
        "--set",
        "monitoring.prometheusRule=true,alerts.deletionStuckSeconds=600",
    ]);
    assert!(
        lowered.contains("max(ecs_operator_oldest_deletion_seconds) > 600"),
        "{lowered}"
    );
}

fn can_i(user: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let out = kubectl(&["auth", "can-i", verb, resource, "-n", ns, "--as", user]);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test(flavor = "multi_thread")]
async fn install_upgrade_uninstall_on_the_api_server() {
    let admin = client().await;
    let run = uuid_ish()[..6].to_string();
    let name = format!("ecs-op-h{run}");
    let sys = namespace(&admin, "e2e-helm-sys").await;
    let keys = format!("e2e-helm-keys-{run}");
    let work = namespace(&admin, "e2e-helm").await;
    let set = format!("nameOverride={name},accounts.secretNamespace={keys},replicas=1");
    helm(&["install", &name, &chart(), "-n", &sys, "--set", &set]);

    // The release's ServiceAccount, with its own token, runs the operator.
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), &sys)
        .create_token_request(&name, &PostParams::default(), &request)
        .await
        .expect("the chart's ServiceAccount")
        .status
        .unwrap()
        .token;
    let dir = tempfile::tempdir().unwrap();
    let kc = token_kubeconfig(dir.path(), &token);
    let user = format!("system:serviceaccount:{sys}:{name}");
    for (verb, res, ns) in [
        ("list", "secrets", work.as_str()),
        ("get", "secrets", work.as_str()),
        ("delete", "configmaps", work.as_str()),
        ("create", "ecsinstances.ecs.volcengine.io", work.as_str()),
        (
            "delete",
            "customresourcedefinitions.apiextensions.k8s.io",
            "default",
        ),
    ] {
        assert!(
            !can_i(&user, verb, res, ns),
            "{user} may {verb} {res} in {ns}"
        );
    }
    assert!(can_i(&user, "get", "secrets", &keys));
    let emu = Emulator::start("helm", &["--create-delay-ms", "0"]);
    let lease = format!("{name}-leader");
    let mut op = Operator::start_with_env(
        "helm",
        &work,
        &emu,
        &[
            "--leader-elect",
            "--lease-name",
            &lease,
            "--account-secret-namespace",
            &keys,
        ],
        &[
            ("KUBECONFIG", kc.to_str().unwrap()),
            ("POD_NAME", "helm-e2e"),
            ("POD_NAMESPACE", &sys),
        ],
    );
    let api: Api<EcsInstance> = Api::namespaced(admin.clone(), &work);
    let gone_vm = emu.seed(json!({"Status": "RUNNING"})).await;
    let kept_vm = emu.seed(json!({"Status": "RUNNING"})).await;
    create(
        &api,
        "doomed",
        json!({"instanceId": gone_vm, "writeConnectionInfoTo": {"name": "doomed-conn"}}),
    )
    .await;
    create(&api, "kept", json!({"instanceId": kept_vm})).await;
    for n in ["doomed", "kept"] {
        wait_for(60, &format!("{n} Ready"), || async {
            let o = api.get(n).await.ok()?;
            (o.condition("Ready")?.status == "True").then_some(())
        })
        .await;
    }
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &work);
    wait_for(30, "outputs ConfigMap", || async {
        cms.get_opt("doomed-conn").await.ok()?
    })
    .await;
    delete(&api, "doomed").await;
    wait_for(60, "doomed gone", || gone(&api, "doomed")).await;
    assert_eq!(emu.deletions_of(&gone_vm).await, 1);
    let log = op.stop();
    assert!(
        !log.contains("forbidden"),
        "the chart's RBAC is not enough:\n{log}"
    );

    // Upgrade: a value reaches the Deployment.
    helm(&[
        "upgrade",
        &name,
        &chart(),
        "-n",
        &sys,
        "--set",
        &format!("{set},sweeper.intervalSecs=600"),
    ]);
    let dep = kubectl(&["-n", &sys, "get", "deployment", &name, "-o", "json"]);
    let dep: Value = serde_json::from_slice(&dep.stdout).unwrap();
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--sweep-interval-secs") && args.contains("600"),
        "{args}"
    );

    // Uninstall: the operator's objects go; the CRD, the resources and the VMs stay.
    helm(&["uninstall", &name, "-n", &sys]);
    let sas = Api::<ServiceAccount>::namespaced(admin.clone(), &sys);
    wait_for(30, "the release's ServiceAccount gone", || async {
        sas.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    let crd = kubectl(&["get", "crd", "ecsinstances.ecs.volcengine.io"]);
    assert!(crd.status.success(), "the CRD must survive helm uninstall");
    assert!(
        api.get_opt("kept").await.unwrap().is_some(),
        "EcsInstances survive"
    );
    assert!(emu.instance(&kept_vm).await.is_some(), "VMs survive");
    assert_eq!(emu.deletions_of(&kept_vm).await, 0);
    // The accounts namespace the release made is left to the test run's teardown.
    let _ = kubectl(&["delete", "namespace", &keys, "--wait=false"]);
    // Let the test namespace go.
    let _ = kubectl(&[
        "-n",
        &work,
        "patch",
        "ecsi",
        "kept",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
}
