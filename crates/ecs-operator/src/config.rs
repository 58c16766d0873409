//! Every flag in one place. Each flag can also be set from the environment; credentials use
//! the same variable names as Volcengine's own tools.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api::DeletionPolicy;
use crate::cloud::client::{ClientConfig, DEFAULT_ENDPOINT};
use crate::cloud::limiter::RateLimit;
use crate::cloud::signer::{Credentials, Secret};

#[derive(Parser, Debug)]
#[command(
    name = "ecs-operator",
    version,
    about = "Volcengine ECS VMs as Kubernetes EcsInstance resources"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: human-readable text or one JSON object per line. Level: RUST_LOG.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnMissing {
    #[value(name = "Report")]
    Report,
    #[value(name = "Recreate")]
    Recreate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CrdKind {
    /// `EcsInstance` (crds/ecsinstance.yaml).
    Instance,
    /// `EcsAccount` (crds/ecsaccount.yaml).
    Account,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Print a CustomResourceDefinition (YAML): EcsInstance, or EcsAccount with `--kind account`.
    Crd {
        #[arg(long, value_enum, default_value_t = CrdKind::Instance)]
        kind: CrdKind,
    },
    /// Find VMs this cluster created whose EcsInstance no longer exists; print or delete them.
    Sweep(Box<SweepArgs>),
    /// Say in plain words what the operator waits for on one EcsInstance, and what you can
    /// do (`kubectl ecs explain NAMESPACE/NAME` when installed as the kubectl-ecs plugin).
    /// Reads the resource, its namespace and Events with your kubeconfig; changes nothing.
    Explain {
        /// NAMESPACE/NAME of the EcsInstance.
        target: String,
        /// The running operator's --default-deletion-policy (what applies when neither the
        /// resource nor its namespace sets one).
        #[arg(long, default_value = "Delete")]
        default_deletion_policy: crate::api::DeletionPolicy,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Identity of this cluster (the ecs.volcengine.io/cluster tag on the VMs it created).
    /// Default: the uid of the kube-system Namespace. --mode delete accepts only that one.
    #[arg(long, env = "ECS_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Only print the candidates, never delete.
    #[arg(long)]
    pub dry_run: bool,
    /// report or delete (delete acts only on confirmed candidates, and never with --dry-run).
    #[arg(long, value_enum, default_value_t = crate::sweeper::SweepMode::Report)]
    pub mode: crate::sweeper::SweepMode,
    /// A VM must look leaked for this long, across at least two sweeps, to be confirmed.
    #[arg(long, env = "ECS_SWEEP_GRACE_SECS", default_value_t = 1800)]
    pub grace_secs: u64,
    /// Sweeps to run (at least two are needed to confirm a candidate).
    #[arg(long, default_value_t = 2)]
    pub sweeps: u32,
    /// Seconds between sweeps.
    #[arg(long, default_value_t = 5)]
    pub interval_secs: u64,
    /// More regions to look in (the default region and those of existing resources always are).
    #[arg(long, value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Sweep this EcsAccount with its own key (read from its Secret) instead of the
    /// environment's credentials; its region and endpoint, when set, too.
    #[arg(long)]
    pub account: Option<String>,
    /// Where the EcsAccounts' Secrets live (as the operator's --account-secret-namespace).
    #[arg(
        long,
        env = "ECS_ACCOUNT_SECRET_NAMESPACE",
        default_value = "ecs-operator-accounts"
    )]
    pub account_secret_namespace: String,
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

/// How to reach the ECS OpenAPI.
#[derive(Args, Debug, Clone)]
pub struct CloudArgs {
    /// Access key ID.
    #[arg(
        long = "access-key",
        env = "VOLCENGINE_ACCESS_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub access_key: String,
    /// Secret access key (never logged).
    #[arg(long = "secret-key", env = "VOLCENGINE_SECRET_KEY", hide_env_values = true, value_parser = parse_secret, default_value = "")]
    pub secret_key: Secret,
    /// STS session token, sent and signed as X-Security-Token (never logged).
    #[arg(long = "session-token", env = "VOLCENGINE_SESSION_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub session_token: Option<Secret>,
    /// Default region for resources that do not name one.
    #[arg(long, env = "VOLCENGINE_REGION", default_value = "cn-beijing")]
    pub region: String,
    /// OpenAPI endpoint URL. `http://` is accepted only for loopback unless --allow-insecure-http.
    #[arg(long, env = "VOLCENGINE_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// An endpoint for one region, over --endpoint: `REGION=URL`, repeatable (or
    /// comma-separated in the environment). The regions the official SDKs send to
    /// `ecs.<region>.volcengineapi.com` go there by default while --endpoint is the default.
    #[arg(long = "region-endpoint", env = "VOLCENGINE_REGION_ENDPOINTS", value_delimiter = ',', value_parser = parse_region_endpoint)]
    pub region_endpoints: Vec<(String, String)>,
    /// Allow plain http to a non-loopback endpoint (testing only).
    #[arg(long, env = "ECS_ALLOW_INSECURE_HTTP")]
    pub allow_insecure_http: bool,
    /// Per-request timeout, seconds.
    #[arg(long, env = "ECS_REQUEST_TIMEOUT_SECS", default_value_t = 20.0)]
    pub request_timeout_secs: f64,
    /// Connect timeout, seconds.
    #[arg(long, env = "ECS_CONNECT_TIMEOUT_SECS", default_value_t = 5.0)]
    pub connect_timeout_secs: f64,
    /// Attempts per cloud call (retries re-send the same ClientToken).
    #[arg(long, env = "ECS_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Client-side rate limit per region and action, requests per second (0 = none).
    #[arg(long, env = "ECS_RATE_LIMIT", default_value_t = 4.0)]
    pub rate_limit: f64,
    /// Client-side burst per action.
    #[arg(long, env = "ECS_RATE_BURST", default_value_t = 10)]
    pub rate_burst: u32,
}

impl CloudArgs {
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(
            &self.endpoint,
            &self.region,
            Credentials {
                access_key: self.access_key.clone(),
                secret_key: self.secret_key.clone(),
                session_token: self.session_token.clone().filter(|t| !t.is_empty()),
            },
        );
        c.request_timeout = Duration::from_secs_f64(self.request_timeout_secs.max(0.05));
        c.connect_timeout = Duration::from_secs_f64(self.connect_timeout_secs.max(0.05));
        c.max_attempts = self.max_attempts.max(1);
        c.rate_limit = RateLimit {
            rate: self.rate_limit,
            burst: self.rate_burst,
        };
        c.allow_insecure_http = self.allow_insecure_http;
        c.region_endpoints = self.region_endpoints.clone();
        c
    }
}

fn parse_region_endpoint(s: &str) -> Result<(String, String), String> {
    match s.trim().split_once('=') {
        Some((r, u)) if !r.trim().is_empty() && !u.trim().is_empty() => {
            Ok((r.trim().to_string(), u.trim().to_string()))
        }
        _ => Err(format!("{s:?}: expected REGION=URL")),
    }
}

fn parse_namespaces(s: &str) -> Result<String, String> {
    Ok(s.trim().to_string())
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// Namespaces to watch (comma-separated); empty = all namespaces.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',', value_parser = parse_namespaces)]
    pub namespaces: Vec<String>,
    /// Re-observe each VM at least this often, seconds.
    #[arg(long, env = "ECS_RESYNC_SECS", default_value_t = 300)]
    pub resync_secs: u64,
    /// Re-observe a VM in a transitional state (CREATING, STOPPING, ...) this often, seconds.
    #[arg(long, env = "ECS_TRANSITION_POLL_SECS", default_value_t = 5.0)]
    pub transition_poll_secs: f64,
    /// Reconciles in flight at once (0 = unbounded). Batching needs a batch's worth of
    /// deletions in flight (100); more only wait for the API slots (--kube-api-in-flight)
    /// while holding their state: 2,048 held 19 MiB at N = 10,000.
    #[arg(long, env = "ECS_CONCURRENCY", default_value_t = 512)]
    pub concurrency: u16,
    /// Kubernetes API requests in flight at once (each is one connection to the API
    /// server); more wait their turn.
    #[arg(long, env = "ECS_KUBE_API_IN_FLIGHT", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub kube_api_in_flight: u16,
    /// Largest batch of instance IDs per DeleteInstances/DescribeInstances call (1 disables batching).
    #[arg(long, env = "ECS_BATCH_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub batch_size: u16,
    /// A batch holding one request is sent once no request arrived for this long, milliseconds.
    #[arg(long, env = "ECS_BATCH_IDLE_MS", default_value_t = 25)]
    pub batch_idle_ms: u64,
    /// ... or, holding more than one request, for this long (the start of a stream: a
    /// namespace deletion's first requests come a few at a time), milliseconds.
    #[arg(long, env = "ECS_BATCH_STREAM_IDLE_MS", default_value_t = 1000)]
    pub batch_stream_idle_ms: u64,
    /// ... or once its oldest request waited this long, milliseconds.
    #[arg(long, env = "ECS_BATCH_MAX_LINGER_MS", default_value_t = 5000)]
    pub batch_max_linger_ms: u64,
    /// Per-resource retry backoff: first delay, seconds.
    #[arg(long, env = "ECS_BACKOFF_BASE_SECS", default_value_t = 2.0)]
    pub backoff_base_secs: f64,
    /// Per-resource retry backoff: cap, seconds.
    #[arg(long, env = "ECS_BACKOFF_MAX_SECS", default_value_t = 300.0)]
    pub backoff_max_secs: f64,
    /// Deletion policy for resources that set none (the namespace annotation
    /// ecs.volcengine.io/deletion-policy wins over this, spec.deletionPolicy over both).
    #[arg(long, env = "ECS_DEFAULT_DELETION_POLICY", default_value = "Delete")]
    pub default_deletion_policy: DeletionPolicy,
    /// Identity of this cluster, written as the ecs.volcengine.io/cluster tag on every VM it
    /// creates. Default: the uid of the kube-system Namespace (unique per cluster; read at
    /// startup, which fails if it cannot be read). --sweep-mode delete accepts only that one.
    #[arg(long, env = "ECS_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ECS_METRICS_ADDR", default_value = "127.0.0.1:8080")]
    pub metrics_addr: SocketAddr,
    /// Use a coordination.k8s.io Lease so that only one replica reconciles.
    #[arg(long, env = "ECS_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Lease name.
    #[arg(long, env = "ECS_LEASE_NAME", default_value = "ecs-operator-leader")]
    pub lease_name: String,
    /// Lease namespace (defaults to the pod's namespace, else "default").
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Lease duration, seconds.
    #[arg(long, env = "ECS_LEASE_DURATION_SECS", default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// This replica's identity in the Lease (defaults to the hostname plus a random suffix).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// What to do when a VM this operator created vanished outside Kubernetes: Report
    /// (Ready=False InstanceNotFound and a Warning Event; the default) or Recreate (create a
    /// new VM with a new ClientToken). Adopted VMs are only ever reported.
    #[arg(long, env = "ECS_ON_MISSING_INSTANCE", value_enum, default_value_t = OnMissing::Report)]
    pub on_missing_instance: OnMissing,
    /// Eventual consistency: for this long after RunInstances a VM that DescribeInstances does
    /// not return is still appearing (never re-created, and its deletion keeps looking for
    /// it), not vanished. Seconds.
    #[arg(long, env = "ECS_INSTANCE_APPEAR_WINDOW_SECS", default_value_t = 600)]
    pub instance_appear_window_secs: u64,
    /// `spec.waitForTermination`: how long after an accepted DeleteInstances the VM may
    /// still be listed (DELETING) before the resource reports Stalled=True
    /// TerminationTimeout (it keeps its finalizer and keeps waiting). Seconds.
    #[arg(long, env = "ECS_TERMINATION_TIMEOUT_SECS", default_value_t = 1800)]
    pub termination_timeout_secs: u64,
    /// Leak sweeper: seconds between sweeps (0 = off).
    #[arg(long, env = "ECS_SWEEP_INTERVAL_SECS", default_value_t = 0)]
    pub sweep_interval_secs: u64,
    /// Leak sweeper: report (metrics, log, Event) or delete confirmed leaks.
    #[arg(long, env = "ECS_SWEEP_MODE", value_enum, default_value_t = crate::sweeper::SweepMode::Report)]
    pub sweep_mode: crate::sweeper::SweepMode,
    /// Leak sweeper: how long a VM must look leaked (across two or more sweeps) to be confirmed.
    #[arg(long, env = "ECS_SWEEP_GRACE_SECS", default_value_t = 1800)]
    pub sweep_grace_secs: u64,
    /// Leak sweeper: regions to sweep besides the default region and every region named by an
    /// EcsInstance seen since startup (comma-separated). Name regions whose resources are all
    /// gone here, or their leaks are never found.
    #[arg(long, env = "ECS_SWEEP_REGIONS", value_delimiter = ',')]
    pub sweep_regions: Vec<String>,
    /// Namespace of the Secrets `EcsAccount`s name (default: the operator's own,
    /// POD_NAMESPACE). The operator reads only there, one named Secret at a time.
    #[arg(long, env = "ECS_ACCOUNT_SECRET_NAMESPACE")]
    pub account_secret_namespace: Option<String>,
    /// How often each account's Secret is read: a rotated key is used within this long.
    #[arg(long, env = "ECS_ACCOUNT_SECRET_POLL_SECS", default_value_t = 5.0)]
    pub account_secret_poll_secs: f64,
}

/// The namespaces to watch, each once and in the order given (`--namespaces a,a` would
/// otherwise start two controllers reconciling the same objects side by side).
pub fn watched_namespaces(given: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in given.iter().filter(|n| !n.is_empty()) {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

impl RunArgs {
    pub fn backoff(&self) -> (Duration, Duration) {
        (
            Duration::from_secs_f64(self.backoff_base_secs.max(0.01)),
            Duration::from_secs_f64(self.backoff_max_secs.max(self.backoff_base_secs).max(0.01)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_watched_once_each() {
        let given: Vec<String> = ["a", "", "b", "a", "b", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(watched_namespaces(&given), vec!["a", "b", "c"]);
        assert!(watched_namespaces(&[]).is_empty());
    }
}
