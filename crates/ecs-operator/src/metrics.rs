//! Prometheus metrics (prometheus-client). Label values come from enums and cloud error
//! codes, never from free-form messages, so cardinality stays bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub account: String,
    pub action: String,
    pub code: String,
}

/// One series per account: their number is the number of `EcsAccount`s, which only a
/// cluster administrator can create.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabels {
    pub account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountActionLabels {
    pub account: String,
    pub action: String,
}

/// The cluster identity (one series: its value is fixed at startup).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster_id: String,
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

/// A managed field of the VM (`update_plan::Field`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FieldLabels {
    pub field: String,
}

/// A failed cloud call's kind: `auth` (credentials or permissions), `throttled`, `other`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountClassLabels {
    pub account: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    pub action: String,
    pub result: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub cloud_calls: Family<CallLabels, Counter>,
    pub cloud_call_duration: Family<ActionLabels, Histogram>,
    pub deletion_latency: Histogram,
    pub delete_batch_size: Histogram,
    pub batch_queue_depth: Family<AccountLabels, Gauge>,
    pub throttle_wait_seconds:
        Family<AccountActionLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub account_ready: Family<AccountLabels, Gauge>,
    pub resources_unmanaged: Family<ModeLabels, Gauge>,
    pub leaked_instances: Gauge,
    pub cluster_info: Family<ClusterLabels, Gauge>,
    pub sweeps: Family<ResultLabels, Counter>,
    pub deletions_held: Family<ReasonLabels, Counter>,
    pub events_dropped: Counter,
    pub resources_drifted: Family<FieldLabels, Gauge>,
    pub drift_detected: Family<FieldLabels, Counter>,
    pub updates: Family<UpdateLabels, Counter>,
    pub cloud_errors: Family<AccountClassLabels, Counter>,
    pub leader: Gauge,
    pub resources_deleting: Gauge,
    pub oldest_deletion_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ecs_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        let reconcile_duration = duration_histogram();
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            reconcile_duration.clone(),
        );
        let cloud_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "cloud_calls",
            "ECS API calls (one per HTTP attempt) by action and error code (OK on success)",
            cloud_calls.clone(),
        );
        let cloud_call_duration = Family::<ActionLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "cloud_call_duration_seconds",
            "ECS API call latency by action",
            cloud_call_duration.clone(),
        );
        let deletion_latency = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register(
            "deletion_latency_seconds",
            "From deletionTimestamp to the finalizer removed",
            deletion_latency.clone(),
        );
        let delete_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        registry.register(
            "delete_batch_size",
            "Instance IDs per DeleteInstances call",
            delete_batch_size.clone(),
        );
        let batch_queue_depth = Family::<AccountLabels, Gauge>::default();
        registry.register(
            "batch_queue_depth",
            "Deletions waiting to be sent in a batch, by account",
            batch_queue_depth.clone(),
        );
        let throttle_wait_seconds =
            Family::<AccountActionLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "throttle_wait_seconds",
            "Time spent waiting for the client-side rate limiter, by account and action",
            throttle_wait_seconds.clone(),
        );
        let account_ready = Family::<AccountLabels, Gauge>::default();
        registry.register(
            "account_ready",
            "Whether an EcsAccount's key is usable (1) or not (0: its Secret is missing, malformed or unreadable)",
            account_ready.clone(),
        );
        let resources_unmanaged = Family::<ModeLabels, Gauge>::default();
        registry.register(
            "resources_unmanaged",
            "EcsInstances the operator does not fully manage, by mode: paused (annotation ecs.volcengine.io/paused) or observe_only (spec.managementPolicy)",
            resources_unmanaged.clone(),
        );
        let leaked_instances = Gauge::default();
        registry.register(
            "leaked_instances",
            "VMs with this cluster's identity tag whose EcsInstance no longer exists",
            leaked_instances.clone(),
        );
        let cluster_info = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_info",
            "The cluster identity written as the ecs.volcengine.io/cluster tag (value 1), and where it came from (kube_system_uid or flag)",
            cluster_info.clone(),
        );
        let sweeps = Family::<ResultLabels, Counter>::default();
        registry.register(
            "sweeps",
            "Leak sweeps by result: ok, or skipped_* when a listing failed or may be incomplete (nothing is concluded then)",
            sweeps.clone(),
        );
        let deletions_held = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "deletions_held",
            "Deletion reconciles that kept the VM because something was not known for certain (or a person must act), by reason",
            deletions_held.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Kubernetes Events not published because too many were already waiting to be sent (conditions and metrics still say it)",
            events_dropped.clone(),
        );
        let resources_drifted = Family::<FieldLabels, Gauge>::default();
        registry.register(
            "resources_drifted",
            "EcsInstances whose VM differs from the spec in this managed field (at their last observation)",
            resources_drifted.clone(),
        );
        let drift_detected = Family::<FieldLabels, Counter>::default();
        registry.register(
            "drift_detected",
            "Times a managed field of a VM was found to differ from the spec (counted when it starts to differ)",
            drift_detected.clone(),
        );
        let updates = Family::<UpdateLabels, Counter>::default();
        registry.register(
            "updates",
            "In-place update calls (ModifyInstanceAttribute, TagResources, UntagResources, StopInstances, ModifyInstanceSpec, StartInstances) by result: ok or failed",
            updates.clone(),
        );
        let cloud_errors = Family::<AccountClassLabels, Counter>::default();
        registry.register(
            "cloud_errors",
            "Failed ECS API calls (one per HTTP attempt) by account and kind: auth (credentials or permissions), throttled, other",
            cloud_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica runs the controller (it holds the Lease, or leader election is off), else 0",
            leader.clone(),
        );
        let resources_deleting = Gauge::default();
        registry.register(
            "resources_deleting",
            "EcsInstances being deleted that still carry the operator's finalizer (from the watch cache)",
            resources_deleting.clone(),
        );
        let oldest_deletion_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "oldest_deletion_seconds",
            "Age of the oldest deletion still waiting for the operator (0: none), seconds",
            oldest_deletion_seconds.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_duration,
            cloud_calls,
            cloud_call_duration,
            deletion_latency,
            delete_batch_size,
            batch_queue_depth,
            throttle_wait_seconds,
            account_ready,
            resources_unmanaged,
            leaked_instances,
            cluster_info,
            sweeps,
            deletions_held,
            events_dropped,
            resources_drifted,
            drift_detected,
            updates,
            cloud_errors,
            leader,
            resources_deleting,
            oldest_deletion_seconds,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn cloud_call(&self, account: &str, action: &str, code: &str, seconds: f64) {
        // Codes are short identifiers; cap them anyway so a hostile answer cannot blow up
        // label storage.
        let code: String = code.chars().take(64).collect();
        self.cloud_calls
            .get_or_create(&CallLabels {
                account: account.to_string(),
                action: action.to_string(),
                code,
            })
            .inc();
        self.cloud_call_duration
            .get_or_create(&ActionLabels {
                action: action.to_string(),
            })
            .observe(seconds);
    }

    pub fn set_cluster_identity(&self, cluster_id: &str, source: &'static str) {
        self.cluster_info.clear();
        self.cluster_info
            .get_or_create(&ClusterLabels {
                cluster_id: cluster_id.chars().take(128).collect(),
                source: source.to_string(),
            })
            .set(1);
    }

    pub fn sweep(&self, result: &'static str) {
        self.sweeps
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// `reason` is a fixed condition reason, never error text.
    pub fn deletion_held(&self, reason: &'static str) {
        self.deletions_held
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn throttle_wait(&self, account: &str, action: &str, seconds: f64) {
        if seconds > 0.0 {
            self.throttle_wait_seconds
                .get_or_create(&AccountActionLabels {
                    account: account.to_string(),
                    action: action.to_string(),
                })
                .inc_by(seconds);
        }
    }

    pub fn batch_queue_depth(&self, account: &str, depth: i64) {
        self.batch_queue_depth
            .get_or_create(&AccountLabels {
                account: account.to_string(),
            })
            .set(depth);
    }

    /// `None`: the account is gone, its series too.
    pub fn account_ready(&self, account: &str, ready: Option<bool>) {
        let l = AccountLabels {
            account: account.to_string(),
        };
        match ready {
            Some(r) => {
                self.account_ready.get_or_create(&l).set(i64::from(r));
            }
            None => {
                self.account_ready.remove(&l);
                self.batch_queue_depth.remove(&l);
            }
        }
    }

    /// A failed call by the class the client acts on (`ErrorClass`): a 429 without a code
    /// is throttling, a refused key is auth.
    pub fn cloud_error(&self, account: &str, class: volcengine_ecs::ErrorClass) {
        use volcengine_ecs::ErrorClass;
        let class = match class {
            ErrorClass::Auth => "auth",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Retryable | ErrorClass::Terminal => "other",
        };
        self.cloud_errors
            .get_or_create(&AccountClassLabels {
                account: account.to_string(),
                class: class.to_string(),
            })
            .inc();
    }

    pub fn count_update(&self, action: &str, ok: bool) {
        self.updates
            .get_or_create(&UpdateLabels {
                action: action.to_string(),
                result: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }

    /// `counts`: per field, how many resources differ now; `new`: fields that just started
    /// to differ on some resource.
    pub fn drift(&self, counts: &[(&'static str, i64)], new: &[&'static str]) {
        for (field, n) in counts {
            self.resources_drifted
                .get_or_create(&FieldLabels {
                    field: field.to_string(),
                })
                .set(*n);
        }
        for field in new {
            self.drift_detected
                .get_or_create(&FieldLabels {
                    field: field.to_string(),
                })
                .inc();
        }
    }

    pub fn resources_unmanaged(&self, paused: i64, observe_only: i64) {
        for (mode, n) in [("paused", paused), ("observe_only", observe_only)] {
            self.resources_unmanaged
                .get_or_create(&ModeLabels { mode: mode.into() })
                .set(n);
        }
    }
}

/// The cloud client of one account reports each call and each rate-limiter wait here.
#[derive(Debug)]
pub struct AccountObserver {
    pub account: String,
    pub metrics: std::sync::Arc<Metrics>,
}

impl volcengine_ecs::CallObserver for AccountObserver {
    fn cloud_call(&self, action: &str, code: &str, seconds: f64) {
        self.metrics
            .cloud_call(&self.account, action, code, seconds)
    }

    fn cloud_error(&self, _action: &str, class: volcengine_ecs::ErrorClass) {
        self.metrics.cloud_error(&self.account, class)
    }

    fn throttle_wait(&self, action: &str, seconds: f64) {
        self.metrics.throttle_wait(&self.account, action, seconds)
    }
}
