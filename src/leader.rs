//! Leader election over a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the
//! holder reconciles. Standby replicas are ready (they serve probes) but idle. Losing the
//! Lease stops the controller at once and ends the process, so a replica that was partitioned
//! away never acts on a stale view; SIGTERM releases the Lease so a standby takes over
//! without waiting for it to expire.

use std::future::Future;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    pub duration_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("lost the lease {0}; exiting so that only one replica acts")]
    Lost(String),
    #[error("invalid lease duration {0}s (at least 2)")]
    Duration(u64),
}

/// A unique identity: two processes on one host must not share one.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ecs-operator".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Waits for the Lease, then runs `work` (the controller) until `shutdown` fires or the
/// Lease is lost. `on_standby` is called once the replica is connected and waiting.
pub async fn run_as_leader<F, Fut>(
    client: Client,
    cfg: LeaderConfig,
    shutdown: CancellationToken,
    on_standby: impl FnOnce(),
    work: F,
) -> Result<(), LeaderError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    if cfg.duration_secs < 2 {
        return Err(LeaderError::Duration(cfg.duration_secs));
    }
    let grace = (cfg.duration_secs / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, &cfg.lease_name)
        .with_namespace(&cfg.namespace)
        .with_identity(&cfg.identity)
        .with_duration(cfg.duration_secs)
        .with_grace(grace)
        .build()
        .await?;
    let (mut rx, handle) = manager.watch().await;
    on_standby();
    tracing::info!(lease = %cfg.lease_name, identity = %cfg.identity, "waiting for the lease");
    let leading = tokio::select! {
        _ = shutdown.cancelled() => false,
        r = rx.wait_for(|leader| *leader) => r.is_ok(),
    };
    let mut lost = false;
    if leading {
        tracing::info!(lease = %cfg.lease_name, identity = %cfg.identity, "acquired the lease; reconciling");
        let stop = shutdown.child_token();
        let watch_stop = stop.clone();
        let mut rx2 = rx.clone();
        let watcher = tokio::spawn(async move {
            let gone = rx2.wait_for(|leader| !*leader).await.is_ok();
            watch_stop.cancel();
            gone
        });
        work(stop).await;
        lost = !shutdown.is_cancelled();
        watcher.abort();
    }
    // Dropping the receiver makes the manager release the Lease and finish.
    drop(rx);
    match handle.await {
        Ok(Ok(_)) => tracing::info!(lease = %cfg.lease_name, "lease released"),
        Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease"),
        Err(e) => tracing::warn!(error = %e, "lease task"),
    }
    if lost {
        return Err(LeaderError::Lost(cfg.lease_name));
    }
    Ok(())
}
