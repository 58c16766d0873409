//! The test harness: one real control plane per test run (scripts/control-plane.sh), and per
//! test its own namespace, its own emulator process (`ecs-emulator`) and its own operator
//! process (`ecs-operator`). Shared by every test binary and the benchmark, compiled once.
//!
//! The binaries are built on first use (`cargo build --bins`, a no-op when they are fresh), so
//! `cargo test --test e2e_delete` never runs a stale operator.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use ecs_operator::api::EcsInstance;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{json, Value};

/// The operator binary (`ECS_OPERATOR_BIN` overrides), built first if needed.
pub fn operator_bin() -> PathBuf {
    binary("ECS_OPERATOR_BIN", "ecs-operator")
}

/// The emulator binary (`ECS_EMULATOR_BIN` overrides), built first if needed.
pub fn emulator_bin() -> PathBuf {
    binary("ECS_EMULATOR_BIN", "ecs-emulator")
}

fn binary(var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let dir = profile_dir();
    build_binaries(&dir);
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found after cargo build",
        path.display()
    );
    path
}

/// target/<profile>, from this test executable's path (target/<profile>/deps/<test>-<hash>).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a directory");
    match deps.file_name().and_then(|n| n.to_str()) {
        Some("deps") => deps.parent().expect("deps has a parent").to_path_buf(),
        _ => deps.to_path_buf(),
    }
}

/// One `cargo build` of the binaries per test process, in the profile of the test itself and
/// with the same feature resolution as the test build (`--workspace --benches` activates the
/// dev-dependencies as `cargo test` does), so a fresh tree is a no-op and never a second build
/// of the dependency tree.
fn build_binaries(profile_dir: &std::path::Path) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(repo())
            .args(["build", "-q", "--workspace", "--bins", "--benches"]);
        if profile != "debug" {
            cmd.args(["--profile", &profile]);
        }
        if let Some(target) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        // `cargo test` runs this process with the package's CARGO_MANIFEST_DIR, CARGO_PKG_*
        // and so on. A build script that declares `rerun-if-env-changed` on one of them (ring
        // does, for CARGO_MANIFEST_DIR) would see a change and rebuild ring, rustls, reqwest
        // and every crate above them (2+ minutes), and the next plain `cargo build` back again.
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(inherited_from_cargo_test) {
                cmd.env_remove(k);
            }
        }
        let st = cmd.status().expect("run cargo build");
        assert!(
            st.success(),
            "cargo build of ecs-operator and ecs-emulator failed"
        );
    });
}
/// Variables cargo sets for the process it runs (a test), not for the cargo it was run by.
fn inherited_from_cargo_test(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

pub const AK: &str = "AKLTe2etest";
pub const SK: &str = "e2e-secret-key";

/// The repository root (this crate lives in crates/ecs-test-harness).
pub fn repo() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.join("../..").canonicalize().unwrap_or(here)
}

pub fn state_dir() -> PathBuf {
    PathBuf::from(std::env::var("ECS_CP_DIR").unwrap_or_else(|_| "/tmp/ecs-cp".into()))
}

pub fn kubeconfig() -> PathBuf {
    state_dir().join("kubeconfig")
}

/// Starts the control plane (if not running) and installs the CRD, once per test binary.
pub fn control_plane() -> PathBuf {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    ONCE.get_or_init(|| {
        let st = Command::new("bash")
            .arg(repo().join("scripts/control-plane.sh"))
            .arg("up")
            .arg(state_dir())
            .status()
            .expect("run control-plane.sh");
        assert!(st.success(), "control plane failed to start");
        let kc = kubeconfig();
        let st = Command::new("kubectl")
            .args(["--kubeconfig", kc.to_str().unwrap(), "apply"])
            .arg("-f")
            .arg(repo().join("crds/ecsinstance.yaml"))
            .arg("-f")
            .arg(repo().join("crds/ecsaccount.yaml"))
            .stdout(Stdio::null())
            .status()
            .expect("kubectl apply crd");
        assert!(st.success(), "CRD install failed");
        let st = Command::new("kubectl")
            .args([
                "--kubeconfig",
                kc.to_str().unwrap(),
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/ecsinstances.ecs.volcengine.io",
                "crd/ecsaccounts.ecs.volcengine.io",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("kubectl wait");
        assert!(st.success(), "CRD not established");
        kc
    })
    .clone()
}

pub async fn client() -> Client {
    let kc = control_plane();
    let cfg = Kubeconfig::read_from(&kc).expect("kubeconfig");
    let cfg = Config::from_custom_kubeconfig(cfg, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

pub fn kubectl(args: &[&str]) -> std::process::Output {
    let kc = control_plane();
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(args)
        .output()
        .expect("kubectl")
}

/// A fresh namespace named after the test, deleted when the guard is dropped (at the end of
/// the test, or while a failed test unwinds).
pub async fn namespace(client: &Client, prefix: &str) -> TestNamespace {
    let name = format!("{prefix}-{}", &uuid_ish()[..8]);
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    TestNamespace { name }
}

/// A test's namespace. Derefs to its name (`&ns` is a `&str` argument, `ns.as_str()` works).
///
/// On drop the EcsInstances still in it lose their finalizer (the test's operator is gone by
/// then, or is about to be: nobody would ever remove it, and the namespace would stay
/// Terminating forever), then the namespace is deleted without waiting for it to go.
/// `ECS_KEEP_NAMESPACES=1` keeps them for a post-mortem.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = String;
    fn deref(&self) -> &String {
        &self.name
    }
}

impl AsRef<str> for TestNamespace {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("ECS_KEEP_NAMESPACES").is_some() {
            return;
        }
        // Drop cannot await, and blocking on the test's own runtime could deadlock a
        // current-thread test: the cleanup runs on its own thread with its own runtime.
        let name = self.name.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(remove_namespace(&name));
            }
        })
        .join();
        if done.is_err() {
            eprintln!("cleanup of namespace {} panicked", self.name);
        }
    }
}

/// Removes every namespace whose name starts with `prefix` (left by an interrupted run: its
/// EcsInstances' finalizers stranded) and waits until they are gone, so their teardown does
/// not load the API server during a measurement. Returns how many there were.
pub async fn remove_leftover_namespaces(prefix: &str) -> usize {
    let client = client().await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    let names = || async {
        // A failed list is not "nothing left": the measurement would run beside a teardown.
        let l = nss.list(&ListParams::default()).await;
        l.expect("list namespaces")
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .filter(|n| n.starts_with(prefix))
            .collect::<Vec<_>>()
    };
    let left = names().await;
    for ns in &left {
        remove_namespace(ns).await;
    }
    if !left.is_empty() {
        wait_for(900, "leftover namespaces gone", || async {
            names().await.is_empty().then_some(())
        })
        .await;
    }
    left.len()
}

/// Strips the EcsInstances' finalizers (a few at a time), then deletes the namespace
/// without waiting. Best effort: a failure leaves a namespace in a per-run control plane.
async fn remove_namespace(ns: &str) {
    let client = client().await;
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), ns);
    let held: Vec<String> = api
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|o| {
            o.metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| !f.is_empty())
        })
        .filter_map(|o| o.metadata.name)
        .collect();
    for chunk in held.chunks(32) {
        let mut set = tokio::task::JoinSet::new();
        for name in chunk {
            let (api, name) = (api.clone(), name.clone());
            let strip = Patch::Merge(json!({"metadata": {"finalizers": null}}));
            set.spawn(async move { api.patch(&name, &PatchParams::default(), &strip).await });
        }
        while set.join_next().await.is_some() {}
    }
    delete_namespace(&client, ns).await;
}

/// How many operators one test may run at once: the cores shared among the tests running
/// side by side (`E2E_THREADS` x `E2E_LANES` from scripts/test.sh, else cargo's
/// `RUST_TEST_THREADS`, else cargo's default: one test per core), at least 1. Operators under test on an overcommitted CPU make every
/// timing in a test slower than the code it tests.
pub fn operator_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    // cargo's own default runs as many tests at once as there are cores.
    let sharing = match (env("E2E_THREADS"), env("E2E_LANES")) {
        (Some(t), Some(l)) => t * l,
        _ => env("RUST_TEST_THREADS").unwrap_or(cores),
    };
    (cores / sharing.max(1)).max(1)
}

pub fn uuid_ish() -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..16)
        .map(|_| format!("{:x}", r.random_range(0..16u8)))
        .collect()
}

fn log_dir() -> PathBuf {
    let d = repo().join("target/e2e-logs");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `Emulator::realistic`: how long a new VM stays invisible after RunInstances.
pub const REALISTIC_LAG_MS: u64 = 800;
/// `Emulator::realistic`: every this many real-API calls, one is throttled.
pub const REALISTIC_THROTTLE_EVERY: u32 = 7;

/// The emulator, as its own process on a free loopback port.
pub struct Emulator {
    child: Child,
    pub url: String,
    http: reqwest::Client,
}

impl Emulator {
    /// With the harness's credentials (`AK`, `SK`).
    pub fn start(name: &str, extra: &[&str]) -> Self {
        Self::start_with(name, AK, SK, extra)
    }

    /// Every realism switch on, as the deletion and lifecycle suites run: `--realism`, a
    /// visibility lag after RunInstances (`REALISTIC_LAG_MS`, by ID and by tag) and ambient
    /// throttling (every `REALISTIC_THROTTLE_EVERY`th call answered with the next throttling
    /// code, 429/503/504, with and without Retry-After). `extra` may set either flag itself.
    /// `calls` leaves the ambient throttles out; `all_calls` has them.
    pub fn realistic(name: &str, extra: &[&str]) -> Self {
        let lag = REALISTIC_LAG_MS.to_string();
        let every = REALISTIC_THROTTLE_EVERY.to_string();
        let mut args: Vec<&str> = extra.to_vec();
        if !extra.contains(&"--visibility-lag-ms") {
            args.extend(["--visibility-lag-ms", &lag]);
        }
        if !extra.contains(&"--throttle-every") {
            args.extend(["--throttle-every", &every]);
        }
        Self::start(name, &args)
    }

    /// With the given credentials; `extra` are further `ecs-emulator` flags. Always with
    /// `--realism` (`null` for empty fields, no `Result` for operation actions): every
    /// end-to-end suite, the soak and the benchmark see answers the real API may give.
    pub fn start_with(name: &str, access_key: &str, secret_key: &str, extra: &[&str]) -> Self {
        let log = std::fs::File::create(log_dir().join(format!("{name}-emulator.log"))).unwrap();
        let mut child = Command::new(emulator_bin())
            .args(["--listen", "127.0.0.1:0", "--access-key", access_key])
            .args(["--secret-key", secret_key, "--realism"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn emulator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "emulator said {line:?}"
        );
        Self {
            child,
            url,
            http: reqwest::Client::new(),
        }
    }

    /// One admin request (`/_emulator/{path}`) that must succeed; its JSON answer (Null if none).
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self
            .http
            .request(method, format!("{}/_emulator/{path}", self.url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/_emulator/{path}", self.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.admin(method, path, Some(body)).await
    }

    /// Seeds one VM and returns its ID.
    pub async fn seed(&self, body: Value) -> String {
        let v = self.send(reqwest::Method::POST, "instances", body).await;
        v["InstanceId"].as_str().expect("InstanceId").to_string()
    }

    /// Changes one VM as the console or the cloud would (`PATCH /_emulator/instances/{id}`,
    /// PascalCase fields: `Status`, `Hold`, `InstanceName`, `Description`, `InstanceTypeId`,
    /// `PrivateIp`, `PublicIp`, `Tags`, ...); panics with the answer unless it is 2xx.
    /// Returns the VM as the admin API shows it.
    pub async fn patch_instance(&self, id: &str, body: Value) -> Value {
        let path = format!("instances/{}", path_segment(id));
        self.send(reqwest::Method::PATCH, &path, body).await
    }

    /// Every VM the emulator holds (deleted ones included until they expire).
    pub async fn instances(&self) -> Vec<Value> {
        self.get("instances")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn instance(&self, id: &str) -> Option<Value> {
        let all = self.get("instances").await;
        all.as_array()
            .unwrap()
            .iter()
            .find(|i| i["InstanceId"] == id)
            .cloned()
    }

    /// Calls of one action that got past ambient throttling (`realistic`), in order.
    pub async fn calls(&self, action: &str) -> Vec<Value> {
        let mut v = self.all_calls(action).await;
        v.retain(|c| c["fault"] != ecs_emulator::AMBIENT_THROTTLE);
        v
    }

    /// The ambient throttles (`realistic`) answered so far, as (action, code) pairs.
    pub async fn ambient_throttles(&self) -> Vec<(String, String)> {
        let v = self.get("calls").await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["fault"] == ecs_emulator::AMBIENT_THROTTLE)
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("action"), s("code"))
            })
            .collect()
    }

    /// Every call of one action, in order, ambient throttles included.
    pub async fn all_calls(&self, action: &str) -> Vec<Value> {
        let v = self.get(&format!("calls?action={action}")).await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Accepted deletions of one VM (each is one real deletion; rolled-back ones, from the
    /// `revert_next_deletions` fault, are not counted).
    pub async fn deletions_of(&self, id: &str) -> usize {
        let v = self.get("deletions").await;
        v.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["instance_id"] == id && d["reverted"] != true)
            .count()
    }

    pub async fn faults(&self, action: &str, body: Value) {
        self.send(reqwest::Method::PUT, &format!("faults/{action}"), body)
            .await;
    }

    pub async fn clear_fault(&self, action: &str) {
        self.admin(reqwest::Method::DELETE, &format!("faults/{action}"), None)
            .await;
    }

    /// Changes the emulator's runtime configuration; returns the whole configuration.
    pub async fn config(&self, body: Value) -> Value {
        self.send(reqwest::Method::PUT, "config", body).await
    }

    /// The VM's status, None once it is gone.
    pub async fn status_of(&self, id: &str) -> Option<String> {
        let r = self
            .http
            .get(format!("{}/_emulator/instances/{id}", self.url))
            .send()
            .await
            .unwrap();
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        let v: Value = r.json().await.unwrap();
        Some(v["Status"].as_str().unwrap_or_default().to_string())
    }

    /// Calls of `action` whose parameters name `id`.
    pub async fn calls_naming(&self, action: &str, id: &str) -> usize {
        self.calls(action)
            .await
            .iter()
            .filter(|c| {
                c["params"]
                    .as_object()
                    .is_some_and(|p| p.values().any(|v| v == id))
            })
            .count()
    }

    /// Adds the key `ak`/`sk` to `account`, creating the account if it does not exist yet
    /// (`POST /_emulator/accounts`). The key signs from the next request on.
    pub async fn add_account_key(&self, account: &str, ak: &str, sk: &str) {
        let body = json!({"name": account, "access_key": ak, "secret_key": sk});
        self.send(reqwest::Method::POST, "accounts", body).await;
    }

    /// Revokes the key `ak` of `account`: from the next request on it gets 401
    /// InvalidAccessKey, as an unknown key does.
    pub async fn revoke_key(&self, account: &str, ak: &str) {
        let path = format!(
            "accounts/{}/keys/{}",
            path_segment(account),
            path_segment(ak)
        );
        self.admin(reqwest::Method::DELETE, &path, None).await;
    }

    /// Seeds one VM in `account` and returns its ID.
    pub async fn seed_in(&self, account: &str, body: Value) -> String {
        let path = format!("instances?account={}", path_segment(account));
        let v = self.send(reqwest::Method::POST, &path, body).await;
        v["InstanceId"].as_str().expect("InstanceId").to_string()
    }

    /// Every VM `account` holds (deleted ones included until they expire).
    pub async fn instances_in(&self, account: &str) -> Vec<Value> {
        let v = self
            .get(&format!("instances?account={}", path_segment(account)))
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Calls of one action (every action when `action` is "") made with a key of `account`
    /// that got past ambient throttling, in order. Calls with an unknown or revoked key
    /// belong to no account: see `calls_with_key`.
    pub async fn calls_in(&self, account: &str, action: &str) -> Vec<Value> {
        let mut v = self
            .get(&calls_path(&[("account", account), ("action", action)]))
            .await;
        let mut v = v.as_array_mut().map(std::mem::take).unwrap_or_default();
        v.retain(|c| c["fault"] != ecs_emulator::AMBIENT_THROTTLE);
        v
    }

    /// How many calls of one action (every action when `action` is "") were signed with
    /// the access key `ak`, ambient throttles excluded; refused ones (an unknown or revoked
    /// key) included.
    pub async fn calls_with_key(&self, ak: &str, action: &str) -> usize {
        let v = self
            .get(&calls_path(&[("access_key", ak), ("action", action)]))
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["fault"] != ecs_emulator::AMBIENT_THROTTLE)
            .count()
    }
}

/// `s` percent-encoded for a URL path segment or query value (account names and access
/// keys are URL-safe already; this keeps any other value intact).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `calls?k=v&...`, leaving out empty values.
fn calls_path(q: &[(&str, &str)]) -> String {
    let q: Vec<String> = q
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", path_segment(v)))
        .collect();
    format!("calls?{}", q.join("&"))
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operator binary, watching one namespace, talking to one emulator.
pub struct Operator {
    child: Option<Child>,
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    runs: usize,
}

/// How to run one operator: `ecs-operator run` with fast backoffs, the harness's credentials
/// and region, any endpoint; every setting can be overridden (a later `env` wins).
#[derive(Clone, Debug)]
pub struct OperatorBuilder {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl OperatorBuilder {
    /// Watches `ns` only.
    pub fn namespace(self, ns: &str) -> Self {
        self.args(&["--namespaces", ns])
    }

    /// `VOLCENGINE_ENDPOINT`.
    pub fn endpoint(self, url: &str) -> Self {
        self.env("VOLCENGINE_ENDPOINT", url)
    }

    pub fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// Sets a flag's value, replacing the one already given (clap refuses a repeated flag).
    pub fn set(mut self, flag: &str, value: &str) -> Self {
        match self.args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value.to_string(),
            _ => self.args.extend([flag.to_string(), value.to_string()]),
        }
        self
    }

    /// Sets (or overrides) one environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn envs(self, env: &[(&str, &str)]) -> Self {
        env.iter().fold(self, |b, (k, v)| b.env(k, v))
    }

    pub fn start(self) -> Operator {
        let mut op = Operator {
            child: None,
            name: self.name,
            args: self.args,
            env: self.env,
            runs: 0,
        };
        op.spawn();
        op
    }

    /// Runs it to its exit (killed after `timeout`, which fails the test): status, stdout,
    /// stderr. For configurations the operator must refuse at startup.
    pub fn run_to_exit(self, timeout: Duration) -> (std::process::ExitStatus, String, String) {
        let mut child = operator_command(&self.args, &self.env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn operator");
        let t = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for the operator") {
                break s;
            }
            if t.elapsed() > timeout {
                let _ = child.kill();
                panic!("{}: the operator did not exit", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().expect("operator output");
        (
            status,
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

/// `ECS_OPERATOR_WRAPPER` (for example `heaptrack -o /tmp/op`) runs the operator under a
/// profiler; the words before the binary are split on whitespace. The harness then stops
/// the wrapper, not the operator: heaptrack leaves its child running, so kill that by hand.
fn operator_command(args: &[String], env: &[(String, String)]) -> Command {
    let wrapper = std::env::var("ECS_OPERATOR_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut cmd = match words.next() {
        Some(first) => {
            let mut c = Command::new(first);
            c.args(words).arg(operator_bin());
            c
        }
        None => Command::new(operator_bin()),
    };
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned());
    cmd
}

impl Operator {
    /// An operator not started yet; see `OperatorBuilder`.
    pub fn builder(name: &str) -> OperatorBuilder {
        let args = [
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--backoff-base-secs",
            "1",
            "--backoff-max-secs",
            "4",
            "--transition-poll-secs",
            "1",
        ];
        OperatorBuilder {
            name: name.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
        }
        .env("KUBECONFIG", &control_plane().to_string_lossy())
        .env("VOLCENGINE_ACCESS_KEY", AK)
        .env("VOLCENGINE_SECRET_KEY", SK)
        .env("VOLCENGINE_REGION", "cn-beijing")
        .env("RUST_LOG", "info,ecs_operator=debug")
    }

    pub fn start(name: &str, ns: &str, emu: &Emulator, extra: &[&str]) -> Self {
        Self::start_with_env(name, ns, emu, extra, &[])
    }

    pub fn start_with_env(
        name: &str,
        ns: &str,
        emu: &Emulator,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::builder(name)
            .namespace(ns)
            .endpoint(&emu.url)
            .args(extra)
            .envs(env)
            .start()
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let log = std::fs::File::create(
            log_dir().join(format!("{}-operator-{}.log", self.name, self.runs)),
        )
        .unwrap();
        let child = operator_command(&self.args, &self.env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn operator");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to clean up, as in a node crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: the graceful path (stop work, release the Lease); waits for the exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(log_dir().join(format!("{}-operator-{}.log", self.name, self.runs)))
            .unwrap_or_default()
    }

    /// Kills it and returns its log.
    pub fn stop(&mut self) -> String {
        self.kill();
        self.log()
    }

    /// Where this run serves /metrics (from its log, text or JSON format), once it does.
    pub fn metrics_addr(&self) -> Option<String> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("serving /metrics"))?;
        let at = line.find("127.0.0.1:")?;
        let addr: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        Some(addr)
    }

    /// The /metrics text, None until the operator serves it.
    pub async fn metrics(&self) -> Option<String> {
        let addr = self.metrics_addr()?;
        let r = reqwest::get(format!("http://{addr}/metrics")).await.ok()?;
        r.text().await.ok()
    }

    /// The sum of every series of one metric (`name` without labels, e.g.
    /// `ecs_operator_reconciles_total`); 0 when it has no series yet, None when the
    /// operator does not answer.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        Some(metric_sum(&self.metrics().await?, name))
    }

    /// Reconciles finished so far, whatever their result.
    pub async fn reconciles(&self) -> Option<f64> {
        self.metric("ecs_operator_reconciles_total").await
    }

    /// Waits until `more` reconciles finished after this call: proof the operator acted
    /// again (on whatever it watches) since the point in question.
    pub async fn wait_reconciles(&self, secs: u64, what: &str, more: f64) {
        let me = self;
        wait_for_progress(secs, what, more, || async move { me.reconciles().await }).await;
    }

    /// Waits until the metric `name` (all series summed) grew by `more` after this call.
    pub async fn wait_for_metric(&self, secs: u64, name: &str, more: f64) -> f64 {
        let me = self;
        let what = format!("{name} to grow by {more}");
        wait_for_progress(secs, &what, more, || async move { me.metric(name).await }).await
    }
}

/// The sum of the samples of `name` (labels ignored) in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn ecsi(name: &str, spec: Value) -> EcsInstance {
    serde_json::from_value(json!({
        "apiVersion": "ecs.volcengine.io/v1alpha1",
        "kind": "EcsInstance",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

pub async fn create(api: &Api<EcsInstance>, name: &str, spec: Value) -> EcsInstance {
    api.create(&PostParams::default(), &ecsi(name, spec))
        .await
        .expect("create EcsInstance")
}

pub async fn delete(api: &Api<EcsInstance>, name: &str) {
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete EcsInstance");
}

/// Polls `f` until it returns Some, or panics with `what` after `secs`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `probe` once as a baseline, then waits until it has grown by at least `by`, or
/// panics after `secs`: "something happened since now", e.g. the operator's reconcile
/// counter or the emulator's calls of one action. A probe answering None (not reachable
/// yet) is retried; the baseline is its first answer.
pub async fn wait_for_progress<F, Fut>(secs: u64, what: &str, by: f64, mut probe: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<f64>>,
{
    let base = wait_for(secs, &format!("a first reading for {what}"), &mut probe).await;
    wait_for(secs, what, || {
        let next = probe();
        async move { next.await.filter(|v| *v >= base + by) }
    })
    .await
}

pub async fn has_finalizer(api: &Api<EcsInstance>, name: &str) -> Option<bool> {
    api.get_opt(name).await.ok()?.map(|o| {
        o.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == ecs_operator::api::FINALIZER)
    })
}

pub async fn gone(api: &Api<EcsInstance>, name: &str) -> Option<()> {
    match api.get_opt(name).await {
        Ok(None) => Some(()),
        _ => None,
    }
}

pub async fn count(api: &Api<EcsInstance>) -> usize {
    api.list(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(usize::MAX)
}

/// Events about one object (core/v1 view of events.k8s.io events). Events are published
/// asynchronously, so this waits until the list stops growing (up to a few seconds).
pub async fn events(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    let mut last: Option<Vec<(String, String, String)>> = None;
    for _ in 0..20 {
        let now = list_events(client, ns, name).await;
        if let Some(prev) = &last {
            if prev.len() == now.len() && !now.is_empty() {
                return now;
            }
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    last.unwrap_or_default()
}

/// Waits (up to 30 s) until an Event about `name` matches `pred(type, reason, note)`: Events
/// are published asynchronously, so each expected one is waited for, not looked for once.
/// Returns every Event about `name` then; panics with those seen if none matched.
pub async fn wait_for_event(
    client: &Client,
    ns: &str,
    name: &str,
    pred: impl Fn(&str, &str, &str) -> bool,
) -> Vec<(String, String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let evs = list_events(client, ns, name).await;
        if evs.iter().any(|(t, r, n)| pred(t, r, n)) {
            return evs;
        }
        if std::time::Instant::now() > deadline {
            panic!("no matching Event about {ns}/{name} within 30 s; seen: {evs:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn list_events(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Deletes a test namespace without waiting (its objects must not hold finalizers nobody
/// will remove, or it stays Terminating; the control plane is per test run anyway).
pub async fn delete_namespace(client: &Client, ns: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let _ = api.delete(ns, &DeleteParams::default()).await;
}

/// A TCP proxy in front of the API server for one replica, which the test can cut: every
/// open connection is dropped and new ones are refused, as in a network partition.
pub struct CutProxy {
    pub port: u16,
    accept: tokio::task::JoinHandle<()>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl CutProxy {
    /// Proxies to the control plane's API server.
    pub async fn to_apiserver() -> Self {
        let text = std::fs::read_to_string(control_plane()).unwrap();
        let server = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: https://"))
            .expect("server in kubeconfig")
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let c2 = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let server = server.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&server).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c2.lock().unwrap().push(h);
            }
        });
        Self {
            port,
            accept,
            conns,
        }
    }

    /// A kubeconfig that reaches the API server through this proxy (same certificate:
    /// the proxy listens on 127.0.0.1 too).
    pub fn kubeconfig(&self, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(control_plane()).unwrap();
        let out: Vec<String> = text
            .lines()
            .map(|l| match l.trim().strip_prefix("server: https://") {
                Some(_) => format!("    server: https://127.0.0.1:{}", self.port),
                None => l.to_string(),
            })
            .collect();
        let p = log_dir().join(format!("{name}-kubeconfig"));
        std::fs::write(&p, out.join("\n")).unwrap();
        p
    }

    /// Drops every connection and refuses new ones (the listener is closed).
    pub fn cut(&self) {
        self.accept.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The emulator in this test process (no binary, no subprocess), on a free loopback port,
/// for the wire tests; stopped when dropped.
pub struct EmulatorServer {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `127.0.0.1:PORT`, as signed in the Host header.
    pub host: String,
    pub http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl EmulatorServer {
    pub async fn start(cfg: ecs_emulator::EmulatorConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(ecs_emulator::serve(listener, cfg, async {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{host}"),
            host,
            http: reqwest::Client::new(),
            _stop: tx,
        }
    }

    /// One admin request, any outcome: its status and JSON answer (Null if none). `body` is
    /// sent as is, with a JSON content type (the admin API must also cope without one: use
    /// `http` directly for that).
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}/_emulator/{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        json_answer(req.send().await.unwrap()).await
    }

    /// One admin request that must succeed (2xx); its JSON answer.
    async fn admin_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.admin(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// As `Emulator::add_account_key`.
    pub async fn add_account_key(&self, account: &str, ak: &str, sk: &str) {
        let body = json!({"name": account, "access_key": ak, "secret_key": sk});
        self.admin_ok("POST", "accounts", Some(body)).await;
    }

    /// As `Emulator::revoke_key`.
    pub async fn revoke_key(&self, account: &str, ak: &str) {
        let path = format!(
            "accounts/{}/keys/{}",
            path_segment(account),
            path_segment(ak)
        );
        self.admin_ok("DELETE", &path, None).await;
    }

    /// As `Emulator::seed_in`.
    pub async fn seed_in(&self, account: &str, body: Value) -> String {
        let path = format!("instances?account={}", path_segment(account));
        let v = self.admin_ok("POST", &path, Some(body)).await;
        v["InstanceId"].as_str().expect("InstanceId").to_string()
    }

    /// As `Emulator::instances_in`.
    pub async fn instances_in(&self, account: &str) -> Vec<Value> {
        let path = format!("instances?account={}", path_segment(account));
        let v = self.admin_ok("GET", &path, None).await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// As `Emulator::calls_in`.
    pub async fn calls_in(&self, account: &str, action: &str) -> Vec<Value> {
        let path = calls_path(&[("account", account), ("action", action)]);
        let mut v = self.admin_ok("GET", &path, None).await;
        let mut v = v.as_array_mut().map(std::mem::take).unwrap_or_default();
        v.retain(|c| c["fault"] != ecs_emulator::AMBIENT_THROTTLE);
        v
    }

    /// As `Emulator::calls_with_key`.
    pub async fn calls_with_key(&self, ak: &str, action: &str) -> usize {
        let path = calls_path(&[("access_key", ak), ("action", action)]);
        let v = self.admin_ok("GET", &path, None).await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["fault"] != ecs_emulator::AMBIENT_THROTTLE)
            .count()
    }
}

/// Status and JSON body of an answer (Null when the body is empty).
pub async fn json_answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, v)
}

/// A TCP proxy in front of the emulator that records each ECS request's action as it
/// arrives. The emulator's call log has a call once it is answered; a call held there (a
/// latency fault) shows up here first, so a test can wait until the operator is inside it.
pub struct CallTap {
    /// The endpoint to give the operator instead of the emulator's.
    pub url: String,
    arrived: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CallTap {
    pub async fn to(emu: &Emulator) -> Self {
        let target = emu
            .url
            .strip_prefix("http://")
            .unwrap_or(&emu.url)
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let arrived = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = arrived.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (target, seen) = (target.clone(), seen.clone());
                tokio::spawn(async move {
                    if let Ok(out) = tokio::net::TcpStream::connect(&target).await {
                        tap_connection(inbound, out, seen).await;
                    }
                });
            }
        });
        Self {
            url,
            arrived,
            accept,
        }
    }

    /// Requests of `action` that reached the emulator so far, answered or not.
    pub fn arrived(&self, action: &str) -> usize {
        self.requests(action).len()
    }

    /// The request lines (`GET /?query HTTP/1.1`) of `action` so far, in arrival order.
    pub fn requests(&self, action: &str) -> Vec<String> {
        self.arrived
            .lock()
            .unwrap()
            .iter()
            .filter(|line| action_of(line) == Some(action))
            .cloned()
            .collect()
    }
}

fn action_of(request_line: &str) -> Option<&str> {
    request_line
        .split("Action=")
        .nth(1)?
        .split(['&', ' '])
        .next()
}

impl Drop for CallTap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies both ways; the request line of each request head read from the client is
/// recorded (when it names an `Action=`) before the bytes are forwarded.
async fn tap_connection(
    inbound: tokio::net::TcpStream,
    out: tokio::net::TcpStream,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut in_r, mut in_w) = inbound.into_split();
    let (mut out_r, mut out_w) = out.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut out_r, &mut in_w).await;
    });
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = in_r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            if let Some(line) = head.lines().next().filter(|l| action_of(l).is_some()) {
                seen.lock().unwrap().push(line.to_string());
            }
            let body = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if pending.len() < end + 4 + body {
                break;
            }
            pending.drain(..end + 4 + body);
        }
        if out_w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    back.abort();
}

/// The waits are what "nothing happened" and "it happened" rest on in every end-to-end test:
/// each must be able to fail. Paused time, so the deadlines cost nothing.
/// A kubeconfig in `dir` with the admin kubeconfig's cluster (server, CA) and `token` (a
/// ServiceAccount's, from the TokenRequest API): the operator then runs with exactly that
/// account's rights.
pub fn token_kubeconfig(dir: &std::path::Path, token: &str) -> PathBuf {
    let admin: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig()).unwrap()).unwrap();
    let cluster = admin["clusters"][0].clone();
    let cluster_name = cluster["name"].as_str().unwrap().to_string();
    let kc = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [serde_json::to_value(&cluster).unwrap()],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster_name, "user": "sa"}}],
        "current-context": "sa",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

/// Deletes a cluster-scoped EcsAccount when the test ends, with its finalizer (the
/// operator that would remove it is gone by then).
pub struct AccountGuard(pub String);

impl Drop for AccountGuard {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "ecsaccount", &self.0, "--wait=false"]);
        let _ = kubectl(&[
            "patch",
            "ecsaccount",
            &self.0,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
}

#[cfg(test)]
mod wait_tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn counter() -> (
        Arc<AtomicU32>,
        impl FnMut() -> std::future::Ready<Option<f64>>,
    ) {
        let n = Arc::new(AtomicU32::new(0));
        let probe = n.clone();
        (n, move || {
            std::future::ready(Some(f64::from(probe.load(Ordering::SeqCst))))
        })
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 5s waiting for the operator to act")]
    async fn progress_that_never_comes_fails_the_wait() {
        let (_n, probe) = counter();
        wait_for_progress(5, "the operator to act", 1.0, probe).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out")]
    async fn progress_short_of_the_amount_fails_the_wait() {
        let (n, probe) = counter();
        n.store(10, Ordering::SeqCst);
        let bump = n.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            bump.fetch_add(2, Ordering::SeqCst);
        });
        // The baseline is 10, taken now: growth by 2 is short of 3.
        wait_for_progress(5, "three more", 3.0, probe).await;
    }

    #[tokio::test(start_paused = true)]
    async fn progress_after_the_baseline_ends_the_wait() {
        let (n, probe) = counter();
        n.store(7, Ordering::SeqCst);
        let bump = n.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            bump.fetch_add(3, Ordering::SeqCst);
        });
        assert_eq!(wait_for_progress(5, "three more", 3.0, probe).await, 10.0);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "a first reading for metrics")]
    async fn an_unreachable_probe_fails_the_wait() {
        wait_for_progress(3, "metrics", 1.0, || std::future::ready(None::<f64>)).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 2s waiting for never")]
    async fn wait_for_fails_at_its_deadline() {
        wait_for(2, "never", || std::future::ready(None::<()>)).await;
    }

    #[test]
    fn the_nested_build_drops_what_cargo_test_set_and_keeps_the_users_settings() {
        for v in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_BIN_EXE_ecs-operator",
            "OUT_DIR",
        ] {
            assert!(inherited_from_cargo_test(v), "{v}");
        }
        for v in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_NET_OFFLINE",
            "CARGO_BUILD_JOBS",
            "PATH",
        ] {
            assert!(!inherited_from_cargo_test(v), "{v}");
        }
    }

    #[test]
    fn metric_sum_adds_every_series_of_one_name_only() {
        let text =
            "# HELP x\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3.5\nx_total_other 100\nx_total 1\n";
        assert_eq!(metric_sum(text, "x_total"), 6.5);
        assert_eq!(metric_sum(text, "y_total"), 0.0);
    }
}
