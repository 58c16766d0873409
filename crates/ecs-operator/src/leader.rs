//! Leader election over a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the
//! holder reconciles. Standby replicas are ready (they serve probes) but idle. Losing the
//! Lease stops the controller at once and ends the process, so a replica that was partitioned
//! away never acts on a stale view; SIGTERM releases the Lease so a standby takes over
//! without waiting for it to expire.
//!
//! kube-lease-manager reports a loss only when it reads another holder: a replica cut off
//! from the API server keeps believing it leads while its renewals fail. So the leader also
//! reads its Lease itself and closes the mutation gate (`cloud::gated`) `margin` before the
//! Lease's own expiry (renewTime + duration) unless a later renewal was seen: a standby may
//! take over only after that expiry, so by then this replica has stopped mutating.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cloud::gated::MutationGate;

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
    gate: MutationGate,
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
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
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
        let acquired = Instant::now();
        let stop = shutdown.child_token();
        let (watch_stop, watch_gate) = (stop.clone(), gate.clone());
        let mut rx2 = rx.clone();
        let watcher = tokio::spawn(async move {
            let _ = rx2.wait_for(|leader| !*leader).await;
            watch_gate.close("lease lost");
            watch_stop.cancel();
        });
        let guard = tokio::spawn(guard_lease(
            leases,
            cfg.clone(),
            acquired,
            gate.clone(),
            stop.clone(),
        ));
        work(stop).await;
        lost = !shutdown.is_cancelled() || gate.is_closed();
        watcher.abort();
        guard.abort();
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

/// How long before the Lease's expiry this replica stops mutating: half the renewal grace
/// (the manager renews `grace` before expiry, so a healthy renewal is seen well before).
pub fn margin(duration_secs: u64) -> Duration {
    Duration::from_millis((duration_secs / 3).max(1) * 500)
}

/// How long this replica may still mutate, by what `lease` says at `now`: `None` when it
/// is not the holder (any more).
pub fn remaining(lease: &Lease, me: &str, now: Timestamp, margin: Duration) -> Option<Duration> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(me) {
        return None;
    }
    let renewed = spec.renew_time.as_ref()?.0;
    let secs = u64::try_from(spec.lease_duration_seconds?).ok()?;
    let end = renewed + k8s_openapi::jiff::SignedDuration::from_secs(i64::try_from(secs).ok()?);
    let left = Duration::try_from(end.duration_since(now)).unwrap_or(Duration::ZERO);
    Some(left.saturating_sub(margin))
}

/// Closes the gate (and stops the work) when the renewal deadline passes without a renewal
/// seen, or when the Lease names another holder. Reads the Lease every `grace / 4` (at most
/// every second); a failed read keeps the last deadline, which then simply passes.
async fn guard_lease(
    leases: Api<Lease>,
    cfg: LeaderConfig,
    acquired: Instant,
    gate: MutationGate,
    stop: CancellationToken,
) {
    let margin = margin(cfg.duration_secs);
    let every = Duration::from_millis(((cfg.duration_secs / 3).max(1) * 250).min(1000));
    // Until the first read: the manager wrote renewTime before `acquired`.
    let mut deadline = acquired + Duration::from_secs(cfg.duration_secs).saturating_sub(margin);
    let why = loop {
        let read = async {
            tokio::time::sleep(every).await;
            tokio::time::timeout(every, leases.get(&cfg.lease_name)).await
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break "lease renewal deadline passed",
            r = read => match r {
                Ok(Ok(lease)) => match remaining(&lease, &cfg.identity, Timestamp::now(), margin) {
                    Some(left) => deadline = Instant::now() + left,
                    None => break "lease held by another replica",
                },
                Ok(Err(e)) => tracing::warn!(error = %e, "reading the lease"),
                Err(_) => tracing::warn!("reading the lease timed out"),
            },
        }
    };
    gate.close(why);
    stop.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64, duration: Option<i32>) -> Lease {
        let now = Timestamp::from_second(1_000_000).unwrap();
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: Some(MicroTime(
                    now - k8s_openapi::jiff::SignedDuration::from_secs(renewed_secs_ago),
                )),
                lease_duration_seconds: duration,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn remaining_time_follows_the_lease() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let m = Duration::from_millis(500);
        let s = Duration::from_secs;
        let cases = [
            // (holder, renewed ago, duration, expected)
            (Some("me"), 0, Some(4), Some(s(4) - m)),
            (Some("me"), 3, Some(4), Some(s(1) - m)),
            (Some("me"), 4, Some(4), Some(Duration::ZERO)),
            (Some("me"), 60, Some(4), Some(Duration::ZERO)),
            (Some("other"), 0, Some(4), None),
            (None, 0, Some(4), None),
            (Some("me"), 0, None, None),
            (Some("me"), 0, Some(-1), None),
        ];
        for (holder, ago, dur, want) in cases {
            assert_eq!(
                remaining(&lease(holder, ago, dur), "me", now, m),
                want,
                "{holder:?} {ago} {dur:?}"
            );
        }
    }

    #[test]
    fn the_margin_is_half_the_grace() {
        assert_eq!(margin(4), Duration::from_millis(500));
        assert_eq!(margin(15), Duration::from_millis(2500));
    }
}
