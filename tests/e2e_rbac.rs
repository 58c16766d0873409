//! The deploy/ manifests on the real control plane: the kustomization passes a server-side
//! dry run; the operator, running with a token of the deployed ServiceAccount (not admin),
//! creates, observes and deletes VMs, reads a namespace's deletion policy, reads user data
//! only where the opt-in RoleBinding exists, publishes Events and holds its Lease, without
//! one "forbidden"; and the ServiceAccount can do exactly what deploy/rbac lists, nothing more.

use ecs_test_harness as support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ecs_operator::api::EcsInstance;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::{SelfSubjectRulesReview, SelfSubjectRulesReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::{json, Value};
use support::*;

const SYSTEM_NS: &str = "ecs-operator-system";
/// Where the EcsAccounts' Secrets live (deploy/rbac/account-secrets-role.yaml).
const ACCOUNTS_NS: &str = "ecs-operator-accounts";
const SA_USER: &str = "system:serviceaccount:ecs-operator-system:ecs-operator";
const LEASE: &str = "ecs-operator-leader";
const USER_DATA: &str = "#cloud-config\nruncmd: [echo hello]\n";

fn deploy(p: &str) -> PathBuf {
    repo().join("deploy").join(p)
}

/// kubectl as admin; panics with stderr unless it succeeds.
fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn client_from(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path).unwrap();
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

type Grant = (String, String, String); // (API group, resource, verb)

fn grants(rules: &[(&str, &str, &[&str])]) -> BTreeSet<Grant> {
    rules
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

/// What deploy/rbac/cluster-role.yaml grants everywhere.
fn cluster_grants() -> BTreeSet<Grant> {
    grants(&[
        (
            "ecs.volcengine.io",
            "ecsinstances",
            &["get", "list", "watch", "patch", "update"],
        ),
        (
            "ecs.volcengine.io",
            "ecsinstances/status",
            &["get", "patch", "update"],
        ),
        ("ecs.volcengine.io", "ecsinstances/finalizers", &["update"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        ("", "namespaces", &["get", "list", "watch"]),
        ("", "configmaps", &["get", "create", "patch"]),
        (
            "ecs.volcengine.io",
            "ecsaccounts",
            &["get", "list", "watch", "patch"],
        ),
        ("ecs.volcengine.io", "ecsaccounts/status", &["get", "patch"]),
        // Restricted to the one name (see named_grants in `effective`).
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions/ecsinstances.ecs.volcengine.io",
            &["get"],
        ),
    ])
}

/// The ServiceAccount's own view of its rules in `ns` (SelfSubjectRulesReview, what
/// `kubectl auth can-i --list` shows), minus what every authenticated user may do.
async fn effective(sa: &Client, ns: &str) -> BTreeSet<Grant> {
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(ns.into()),
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectRulesReview> = Api::all(sa.clone());
    let out = api
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectRulesReview");
    let st = out.status.expect("review status");
    assert!(!st.incomplete, "incomplete rules review: {st:?}");
    // Discovery and health URLs (system:discovery, system:public-info-viewer): read-only.
    for r in &st.non_resource_rules {
        assert_eq!(r.verbs, vec!["get".to_string()], "{r:?}");
    }
    let mut set = BTreeSet::new();
    for r in &st.resource_rules {
        // A rule limited by resourceNames is recorded as "resource/name", one per name.
        let names = r.resource_names.clone().unwrap_or_default();
        for g in r.api_groups.as_deref().unwrap_or_default() {
            for res in r.resources.as_deref().unwrap_or_default() {
                for v in &r.verbs {
                    assert!(v != "*" && res != "*" && g != "*", "wildcard: {r:?}");
                    if names.is_empty() {
                        set.insert((g.clone(), res.clone(), v.clone()));
                    }
                    for n in &names {
                        set.insert((g.clone(), format!("{res}/{n}"), v.clone()));
                    }
                }
            }
        }
    }
    // system:basic-user: every authenticated user may ask what it may do (and, from 1.28,
    // who it is); from 1.33 every authenticated user may read ClusterTrustBundles.
    set.retain(|(g, r, v)| {
        let review = g == "authorization.k8s.io"
            && (r == "selfsubjectaccessreviews" || r == "selfsubjectrulesreviews")
            && v == "create";
        let whoami = g == "authentication.k8s.io" && r == "selfsubjectreviews" && v == "create";
        let bundles = g == "certificates.k8s.io"
            && r == "clustertrustbundles"
            && ["get", "list", "watch"].contains(&v.as_str());
        !(review || whoami || bundles)
    });
    set
}

/// `kubectl auth can-i` as the ServiceAccount. Anything but a plain "yes" or "no" (an
/// error, a server that did not answer) fails the test instead of reading as "no".
fn can_i(verb: &str, resource: &str, ns: &str) -> bool {
    let out = kubectl(&["auth", "can-i", verb, resource, "-n", ns, "--as", SA_USER]);
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {verb} {resource} -n {ns}: {other:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A JSON value as a Lua 5.1 table literal (what Argo CD hands a health script).
fn lua_literal(v: &Value) -> String {
    fn string(s: &str) -> String {
        let mut out = String::from("\"");
        for b in s.bytes() {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b' '..=b'~' => out.push(b as char),
                _ => out.push_str(&format!("\\{b:03}")),
            }
        }
        out.push('"');
        out
    }
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(a) => format!(
            "{{{}}}",
            a.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("[{}] = {}", string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// deploy/argocd/health.lua on an object as the API server returns it: (status, message).
fn argocd_health(obj: &Value) -> (String, String) {
    let mut child = Command::new("lua5.1")
        .args(["tests/argocd/health_test.lua", "--eval"])
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lua5.1 not found: apt-get install lua5.1 (scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lua_literal(obj).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "health.lua: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (s, m) = text
        .trim_end()
        .split_once('\t')
        .expect("status<TAB>message");
    (s.to_string(), m.to_string())
}

fn create_spec(with_user_data: bool) -> Value {
    let mut c = json!({
        "zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": "ecs.g1ie.large",
        "subnetId": "subnet-1", "securityGroupIds": ["sg-1"], "systemVolume": {"size": 40},
    });
    if with_user_data {
        c["userDataSecretRef"] = json!({"name": "init", "key": "cloud-init"});
    }
    json!({"create": c, "deletionPolicy": "Delete"})
}

async fn user_data_secret(client: &Client, ns: &str) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "init"},
        "stringData": {"cloud-init": USER_DATA},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

async fn ready(api: &Api<EcsInstance>, name: &str) -> EcsInstance {
    wait_for(60, &format!("{name} Ready"), || async {
        let o = api.get(name).await.ok()?;
        (o.condition("Ready")?.status == "True").then_some(o)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_works_with_exactly_the_deployed_rbac() {
    let admin = client().await;

    // The identity and its permissions, for real (idempotent; cluster-scoped objects stay).
    kubectl_ok(&["apply", "-k", deploy("rbac").to_str().unwrap()]);
    // The whole base passes the API server's validation and admission (nothing is stored).
    let dry = kubectl_ok(&[
        "apply",
        "-k",
        repo().join("deploy").to_str().unwrap(),
        "--dry-run=server",
    ]);
    for kind in [
        "deployment.apps/ecs-operator",
        "service/ecs-operator-metrics",
        "clusterrolebinding.rbac.authorization.k8s.io/ecs-operator",
    ] {
        assert!(dry.contains(kind), "{kind} missing from:\n{dry}");
    }
    // The CRD has its own kustomization, so `kubectl delete -k deploy/` never deletes it.
    let crd = "customresourcedefinition.apiextensions.k8s.io/ecsinstances.ecs.volcengine.io";
    assert!(!dry.contains(crd), "the CRD must not be in deploy/:\n{dry}");
    let dry_crd = kubectl_ok(&[
        "apply",
        "-k",
        deploy("crd").to_str().unwrap(),
        "--dry-run=server",
    ]);
    assert!(dry_crd.contains(crd), "{dry_crd}");

    // ns: user data allowed (the example RoleBinding), deletion policy Orphan by annotation.
    // ns2: no RoleBinding, so its Secrets are out of reach.
    let ns = namespace(&admin, "e2e-rbac").await;
    let ns2 = namespace(&admin, "e2e-rbac-nosecret").await;
    let dir = tempfile::tempdir().unwrap();
    let binding = std::fs::read_to_string(repo().join("deploy/user-data-rolebinding.example.yaml"))
        .unwrap()
        .replace("namespace: my-namespace", &format!("namespace: {ns}"));
    let binding_path = dir.path().join("user-data-rolebinding.yaml");
    std::fs::write(&binding_path, binding).unwrap();
    kubectl_ok(&["apply", "-f", binding_path.to_str().unwrap()]);
    Api::<Namespace>::all(admin.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                ecs_operator::api::NAMESPACE_POLICY_ANNOTATION: "Orphan"}}})),
        )
        .await
        .unwrap();
    user_data_secret(&admin, &ns).await;
    user_data_secret(&admin, &ns2).await;

    // A token of the ServiceAccount (TokenRequest API, as `kubectl create token` asks for
    // it) in a kubeconfig of its own.
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": [], "expirationSeconds": 3600}
    }))
    .unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), SYSTEM_NS)
        .create_token_request("ecs-operator", &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .map(|s| s.token)
        .expect("a token in the TokenRequest status");
    let sa_kubeconfig = token_kubeconfig(dir.path(), &token);
    let sa = client_from(&sa_kubeconfig).await;

    // Exactly the listed rules: everywhere, plus the Lease in its namespace, plus Secrets
    // only where the opt-in RoleBinding exists.
    let base = cluster_grants();
    assert_eq!(effective(&sa, "default").await, base);
    assert_eq!(effective(&sa, &ns2).await, base);
    let mut with_secrets = base.clone();
    with_secrets.insert(("".into(), "secrets".into(), "get".into()));
    assert_eq!(effective(&sa, &ns).await, with_secrets);
    let mut with_lease = base.clone();
    with_lease.extend(grants(&[(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update", "patch"],
    )]));
    assert_eq!(effective(&sa, SYSTEM_NS).await, with_lease);
    // Account keys: get, in their own namespace only; never listed or watched.
    let mut with_keys = base.clone();
    with_keys.insert(("".into(), "secrets".into(), "get".into()));
    assert_eq!(effective(&sa, ACCOUNTS_NS).await, with_keys);
    let listing = kubectl_ok(&["auth", "can-i", "--list", "-n", &ns, "--as", SA_USER]);
    eprintln!("kubectl auth can-i --list -n {ns} --as {SA_USER}:\n{listing}");
    for (verb, res, where_) in [
        ("delete", "ecsinstances.ecs.volcengine.io", ns.as_str()),
        ("create", "ecsinstances.ecs.volcengine.io", ns.as_str()),
        ("list", "secrets", ns.as_str()),
        ("get", "secrets", ns2.as_str()),
        ("get", "secrets", SYSTEM_NS),
        ("list", "secrets", ACCOUNTS_NS),
        ("watch", "secrets", ACCOUNTS_NS),
        ("create", "secrets", ACCOUNTS_NS),
        ("create", "ecsaccounts.ecs.volcengine.io", "default"),
        ("delete", "ecsaccounts.ecs.volcengine.io", "default"),
        ("create", "events", ns.as_str()), // kubectl maps "events" to the core ("") API
        ("create", "leases.coordination.k8s.io", ns.as_str()),
        ("delete", "leases.coordination.k8s.io", SYSTEM_NS),
        ("delete", "namespaces", "default"),
        ("patch", "namespaces", "default"),
        (
            "list",
            "customresourcedefinitions.apiextensions.k8s.io",
            "default",
        ),
        (
            "delete",
            "customresourcedefinitions.apiextensions.k8s.io",
            "default",
        ),
        ("get", "pods", SYSTEM_NS),
        ("list", "configmaps", ns.as_str()),
        ("watch", "configmaps", ns.as_str()),
        ("delete", "configmaps", ns.as_str()),
    ] {
        assert!(
            !can_i(verb, res, where_),
            "{SA_USER} may {verb} {res} in {where_}"
        );
    }
    assert!(can_i("get", "secrets", &ns));
    assert!(can_i("get", "secrets", ACCOUNTS_NS));
    assert!(can_i("create", "events.events.k8s.io", &ns2));

    // The operator binary with that kubeconfig (later env entries win over the harness's
    // admin KUBECONFIG), leader election in ecs-operator-system, watching ns and ns2.
    // An account whose key lives in ecs-operator-accounts, for a resource of ns.
    let run = uuid_ish()[..6].to_string();
    let (acct, key, acct_ak) = (
        format!("rbac-{run}"),
        format!("rbac-key-{run}"),
        format!("AKrbac{run}"),
    );
    let emu = Emulator::start(
        "rbac",
        &[
            "--create-delay-ms",
            "500",
            "--account",
            &format!("team:{acct_ak}:SKrbac"),
        ],
    );
    let account_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": key},
        "stringData": {"VOLCENGINE_ACCESS_KEY": acct_ak, "VOLCENGINE_SECRET_KEY": "SKrbac"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), ACCOUNTS_NS)
        .create(&PostParams::default(), &account_secret)
        .await
        .unwrap();
    let account: ecs_operator::api::EcsAccount = serde_json::from_value(json!({
        "apiVersion": "ecs.volcengine.io/v1alpha1", "kind": "EcsAccount",
        "metadata": {"name": acct},
        "spec": {"secretRef": {"name": key}, "allowedNamespaces": {"names": [ns.as_str()]}}
    }))
    .unwrap();
    Api::<ecs_operator::api::EcsAccount>::all(admin.clone())
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let pod = format!("ecs-operator-e2e-{}", &uuid_ish()[..6]);
    let kc = sa_kubeconfig.to_str().unwrap();
    let mut op = Operator::start_with_env(
        "rbac",
        &ns,
        &emu,
        &[
            "--namespaces",
            &ns2,
            "--leader-elect",
            "--account-secret-namespace",
            ACCOUNTS_NS,
        ],
        &[
            ("VOLCENGINE_SECRET_KEY", SK),
            ("KUBECONFIG", kc),
            ("POD_NAME", &pod),
            ("POD_NAMESPACE", SYSTEM_NS),
        ],
    );

    // Create (RunInstances with the user data from the Secret), observe (Ready).
    let api: Api<EcsInstance> = Api::namespaced(admin.clone(), &ns);
    let mut web_spec = create_spec(true);
    web_spec["writeConnectionInfoTo"] = json!({"name": "web-conn"});
    create(&api, "web", web_spec).await;
    let kept_id = emu.seed(json!({"Status": "RUNNING"})).await;
    create(&api, "kept", json!({"instanceId": kept_id})).await;
    create(&api, "teamvm", json!({"instanceId": emu.seed_in("team", json!({"Status": "RUNNING"})).await, "accountRef": {"name": acct}})).await;
    let web = ready(&api, "web").await;
    ready(&api, "kept").await;
    // The account's key was read with the ServiceAccount's rights, and used.
    let teamvm = ready(&api, "teamvm").await;
    assert_eq!(
        teamvm.status.as_ref().unwrap().account.as_deref(),
        Some(acct.as_str())
    );
    assert!(emu.calls_with_key(&acct_ak, "DescribeInstances").await > 0);
    let lease: Lease = Api::namespaced(admin.clone(), SYSTEM_NS)
        .get(LEASE)
        .await
        .expect("the Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(pod.as_str())
    );
    let web_id = web.status.as_ref().unwrap().instance_id.clone().unwrap();
    // The outputs ConfigMap, written with the ServiceAccount's rights (owner reference
    // included).
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let cm = wait_for(30, "the outputs ConfigMap", || async {
        cms.get_opt("web-conn").await.ok()?
    })
    .await;
    assert_eq!(
        cm.data.as_ref().and_then(|d| d.get("instanceId")),
        Some(&web_id)
    );
    let runs = emu.calls("RunInstances").await;
    use base64::Engine;
    let want = base64::engine::general_purpose::STANDARD.encode(USER_DATA);
    assert!(
        runs.iter()
            .any(|c| c["params"]["UserData"] == want.as_str()),
        "{runs:?}"
    );

    // The Argo CD health check on what the operator really wrote.
    let web_json = serde_json::to_value(api.get("web").await.unwrap()).unwrap();
    let (health, message) = argocd_health(&web_json);
    assert_eq!(health, "Healthy", "{message}: {web_json}");
    assert!(message.contains(&web_id), "{message}");

    // Without the RoleBinding the user data cannot be read, so nothing is created there.
    let api2: Api<EcsInstance> = Api::namespaced(admin.clone(), &ns2);
    let web2 = create(&api2, "web2", create_spec(true)).await;
    // The read was attempted: the error is logged (and, should the operator report it in a
    // condition one day, that counts too).
    wait_for(30, "a forbidden Secret read in ns2", || async {
        let logged = op
            .log()
            .lines()
            .any(|l| l.contains("forbidden") && l.contains("secrets") && l.contains(ns2.as_str()));
        let o = api2.get("web2").await.ok()?;
        let reported = ["Ready", "Synced"].iter().any(|t| {
            o.condition(t)
                .is_some_and(|c| c.status == "False" && c.message.contains("init"))
        });
        (logged || reported).then_some(())
    })
    .await;
    let web2_token = format!("ecsop-run-{}", web2.uid().unwrap());
    assert!(
        !emu.calls("RunInstances")
            .await
            .iter()
            .any(|c| c["params"]["ClientToken"] == web2_token.as_str()),
        "a VM was created without the user data"
    );
    // Argo CD shows a resource whose VM cannot be made until a human binds the role as
    // Degraded (not "Progressing: waiting for the operator", which it showed while the
    // refusal left status.observedGeneration unset).
    let web2_json = serde_json::to_value(api2.get("web2").await.unwrap()).unwrap();
    let (health2, message2) = argocd_health(&web2_json);
    assert_eq!(
        health2, "Degraded",
        "Argo CD health of web2: {health2} ({message2})"
    );
    assert!(message2.contains("UserDataForbidden"), "{message2}");

    // Delete: the VM goes (spec.deletionPolicy Delete); the namespace annotation (Orphan)
    // was readable, so "kept" leaves its VM in place.
    delete(&api, "web").await;
    delete(&api, "kept").await;
    delete(&api2, "web2").await;
    delete(&api, "teamvm").await;
    wait_for(60, "teamvm gone", || gone(&api, "teamvm")).await;
    let _ = kubectl(&["delete", "ecsaccount", &acct, "--wait=false"]);
    let _ = kubectl(&["delete", "secret", &key, "-n", ACCOUNTS_NS, "--wait=false"]);
    wait_for(60, "web gone", || gone(&api, "web")).await;
    wait_for(60, "kept gone", || gone(&api, "kept")).await;
    wait_for(60, "web2 gone", || gone(&api2, "web2")).await;
    assert_eq!(emu.deletions_of(&web_id).await, 1);
    wait_for(10, "web's VM gone from the emulator", || async {
        emu.instance(&web_id).await.is_none().then_some(())
    })
    .await;
    assert!(
        emu.instance(&kept_id).await.is_some(),
        "the Orphan policy from the namespace annotation was not applied"
    );
    assert_eq!(emu.deletions_of(&kept_id).await, 0);

    // Events went through events.k8s.io with the ServiceAccount's rights.
    let evs = events(&admin, &ns, "web").await;
    for reason in ["Created", "Ready", "Deleted"] {
        assert!(evs.iter().any(|(_, r, _)| r == reason), "{reason}: {evs:?}");
    }
    let evs = events(&admin, &ns, "kept").await;
    assert!(evs.iter().any(|(_, r, _)| r == "Orphaned"), "{evs:?}");

    // SIGTERM releases the Lease; the log shows no permission problem except the one above.
    let status = op.terminate();
    let log = op.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}\n{log}"
    );
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("forbidden") || l.contains("unauthorized")
        })
        .filter(|l| !(l.contains("secrets") && l.contains(ns2.as_str())))
        .collect();
    assert!(
        denied.is_empty(),
        "permission errors:\n{}",
        denied.join("\n")
    );
    assert!(!log.contains("could not publish event"), "{log}");
    assert!(!log.contains("namespace not readable"), "{log}");
    assert!(!log.contains("CRD not readable"), "{log}");
    assert!(!log.contains("deletion held"), "{log}");
}
