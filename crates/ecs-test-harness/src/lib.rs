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
use kube::api::{Api, DeleteParams, ListParams, PostParams};
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
        let st = cmd.status().expect("run cargo build");
        assert!(
            st.success(),
            "cargo build of ecs-operator and ecs-emulator failed"
        );
    });
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
            .args(["--kubeconfig", kc.to_str().unwrap(), "apply", "-f"])
            .arg(repo().join("crds/ecsinstance.yaml"))
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

/// A fresh namespace named after the test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", &uuid_ish()[..8]);
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
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

/// The emulator, as its own process on a free loopback port.
pub struct Emulator {
    child: Child,
    pub url: String,
    http: reqwest::Client,
}

impl Emulator {
    pub fn start(name: &str, extra: &[&str]) -> Self {
        let log = std::fs::File::create(log_dir().join(format!("{name}-emulator.log"))).unwrap();
        let mut child = Command::new(emulator_bin())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--access-key",
                AK,
                "--secret-key",
                SK,
            ])
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
        let r = self
            .http
            .request(method, format!("{}/_emulator/{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Seeds one VM and returns its ID.
    pub async fn seed(&self, body: Value) -> String {
        let v = self.send(reqwest::Method::POST, "instances", body).await;
        v["InstanceId"].as_str().expect("InstanceId").to_string()
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

    /// Calls of one action, in order.
    pub async fn calls(&self, action: &str) -> Vec<Value> {
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

impl Operator {
    pub fn start(name: &str, ns: &str, emu: &Emulator, extra: &[&str]) -> Self {
        Self::start_with_env(name, ns, emu, extra, &[("VOLCENGINE_SECRET_KEY", SK)])
    }

    pub fn start_with_env(
        name: &str,
        ns: &str,
        emu: &Emulator,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args: Vec<String> = [
            "run",
            "--namespaces",
            ns,
            "--metrics-addr",
            "127.0.0.1:0",
            "--backoff-base-secs",
            "1",
            "--backoff-max-secs",
            "4",
            "--transition-poll-secs",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut e: Vec<(String, String)> = vec![
            (
                "KUBECONFIG".into(),
                control_plane().to_string_lossy().into(),
            ),
            ("VOLCENGINE_ACCESS_KEY".into(), AK.into()),
            ("VOLCENGINE_REGION".into(), "cn-beijing".into()),
            ("VOLCENGINE_ENDPOINT".into(), emu.url.clone()),
            ("RUST_LOG".into(), "info,ecs_operator=debug".into()),
        ];
        e.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut op = Self {
            child: None,
            name: name.into(),
            args,
            env: e,
            runs: 0,
        };
        op.spawn();
        op
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let log = std::fs::File::create(
            log_dir().join(format!("{}-operator-{}.log", self.name, self.runs)),
        )
        .unwrap();
        let child = Command::new(operator_bin())
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().cloned())
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
