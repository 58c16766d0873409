//! volcengine-ecs-operator: Volcengine ECS virtual machines as Kubernetes `EcsInstance`
//! resources. See README.md for the design.

pub mod accounts;
pub mod admission;
pub mod api;
pub mod cloud;
pub mod config;
pub mod controller;
pub mod explain;
pub mod identity;
pub mod kube_client;
pub mod leader;
pub mod metrics;
pub mod server;
pub mod sweeper;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// Errors of a reconcile. Cloud answers the controller understands are not errors: they
/// become conditions and requeues. These are the failures left over.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Cloud(#[from] cloud::CloudError),
    #[error("serialization: {0}")]
    Serde(#[from] serde_json::Error),
    #[error("the operator is shutting down")]
    ShuttingDown,
    /// This replica lost its Lease (or could not renew it): its reconciles are cancelled.
    #[error("this replica no longer holds the lease")]
    LeaseLost,
    /// A write guarded by the resource's resourceVersion found a newer version: this
    /// replica acted on a stale view, so it requeues instead of acting.
    #[error("the resource changed since it was read (409 Conflict)")]
    Stale,
    /// The EcsInstance CRD in the cluster is older than this operator: it drops fields the
    /// operator relies on (status.account). Install the CRD of this version.
    #[error("the EcsInstance CRD in the cluster is older than this operator (status.account was dropped): kubectl apply -k deploy/crd")]
    OutdatedCrd,
}

impl Error {
    /// Bounded metric label (never the message).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_error",
            Error::Cloud(_) => "cloud_error",
            Error::Serde(_) => "serialization_error",
            Error::ShuttingDown => "shutting_down",
            Error::LeaseLost => "lease_lost",
            Error::Stale => "stale",
            Error::OutdatedCrd => "outdated_crd",
        }
    }
}
