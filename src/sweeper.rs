//! Leak sweeper: finds VMs that carry this cluster's identity tag but whose EcsInstance (by
//! the uid in their tag) no longer exists, and reports or deletes them.
//!
//! Safety rules:
//! - only VMs tagged `ecs.volcengine.io/cluster=<this cluster>` with an
//!   `ecs.volcengine.io/uid` tag are considered; untagged VMs and other clusters' VMs never are;
//! - a VM whose uid belongs to any EcsInstance in any namespace is never a candidate;
//! - a VM becomes a candidate only after it was seen leaked in at least two sweeps spanning
//!   more than the grace period (default 30 minutes);
//! - the sweep is skipped, not guessed, when the cluster-wide list of EcsInstances or any
//!   DescribeInstances page fails;
//! - deletion goes through DeleteInstances with a token derived from the VM and the same
//!   OperationDetails handling; deletion protection is honoured (the cloud refuses).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;

use crate::api::EcsInstance;
use crate::cloud::{Cloud, CloudError, DescribeQuery, Instance};
use crate::controller::apply::{TAG_CLUSTER, TAG_NAME, TAG_NAMESPACE, TAG_UID};
use crate::controller::cleanup::{decide, Decision};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SweepMode {
    Report,
    Delete,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("listing EcsInstances failed, sweep skipped: {0}")]
    Kube(#[from] kube::Error),
    #[error("DescribeInstances failed, sweep skipped: {0}")]
    Cloud(#[from] CloudError),
}

/// A VM that looks leaked.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub instance_id: String,
    pub region: String,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub status: String,
    /// Seen leaked long enough, in enough sweeps, to act on.
    pub confirmed: bool,
    pub leaked_for: Duration,
}

/// Memory across sweeps: when each VM was first seen leaked and how many sweeps saw it.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: HashMap<String, (Instant, u32)>,
}

impl Tracker {
    /// Pure step: given this sweep's VMs and the live uids, returns the candidates.
    pub fn observe(
        &mut self,
        cluster_id: &str,
        vms: &[(String, Instance)],
        live_uids: &HashSet<String>,
        grace: Duration,
        now: Instant,
    ) -> Vec<Candidate> {
        let mut leaked_now = HashSet::new();
        let mut out = Vec::new();
        for (region, vm) in vms {
            if vm.tag(TAG_CLUSTER) != Some(cluster_id) {
                continue;
            }
            let Some(uid) = vm.tag(TAG_UID).filter(|u| !u.is_empty()) else {
                continue;
            };
            if live_uids.contains(uid) {
                continue;
            }
            leaked_now.insert(vm.instance_id.clone());
            let entry = self.seen.entry(vm.instance_id.clone()).or_insert((now, 0));
            entry.1 += 1;
            let leaked_for = now.saturating_duration_since(entry.0);
            out.push(Candidate {
                instance_id: vm.instance_id.clone(),
                region: region.clone(),
                uid: uid.to_string(),
                namespace: vm.tag(TAG_NAMESPACE).unwrap_or("").to_string(),
                name: vm.tag(TAG_NAME).unwrap_or("").to_string(),
                status: vm.status.clone(),
                confirmed: entry.1 >= 2 && leaked_for >= grace,
                leaked_for,
            });
        }
        // A VM no longer leaked (its resource came back, or it is gone) starts over.
        self.seen.retain(|id, _| leaked_now.contains(id));
        out
    }
}

/// Every VM carrying this cluster's identity tag in one region, all pages or an error.
pub async fn list_cluster_vms(
    cloud: &dyn Cloud,
    region: &str,
    cluster_id: &str,
) -> Result<Vec<Instance>, CloudError> {
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..10_000 {
        let q = DescribeQuery {
            tag_filters: vec![(TAG_CLUSTER.to_string(), vec![cluster_id.to_string()])],
            max_results: Some(100),
            next_token: next.clone(),
            ..Default::default()
        };
        let page = cloud.describe_instances(region, q).await?.value;
        all.extend(page.instances);
        match page.next_token.filter(|t| !t.is_empty()) {
            Some(t) if Some(&t) != next.as_ref() => next = Some(t),
            _ => return Ok(all),
        }
    }
    Ok(all)
}

/// uids of every EcsInstance in the cluster (all namespaces), and the regions they use.
pub async fn live_resources(
    client: &Client,
    default_region: &str,
) -> Result<(HashSet<String>, Vec<String>), kube::Error> {
    let api: Api<EcsInstance> = Api::all(client.clone());
    let mut uids = HashSet::new();
    let mut regions: BTreeMap<String, ()> = BTreeMap::new();
    regions.insert(default_region.to_string(), ());
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        for o in &page.items {
            if let Some(uid) = o.uid() {
                uids.insert(uid);
            }
            let r = o
                .status
                .as_ref()
                .and_then(|s| s.region.clone())
                .or_else(|| o.spec.region.clone());
            if let Some(r) = r {
                regions.insert(r, ());
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    Ok((uids, regions.into_keys().collect()))
}

/// One sweep: returns all candidates (confirmed or not) and, in delete mode, what happened to
/// the confirmed ones.
pub async fn sweep_once(
    client: &Client,
    cloud: &dyn Cloud,
    tracker: &mut Tracker,
    cluster_id: &str,
    extra_regions: &[String],
    grace: Duration,
    mode: SweepMode,
) -> Result<(Vec<Candidate>, Vec<(String, Decision)>), SweepError> {
    let (uids, mut regions) = live_resources(client, cloud.default_region()).await?;
    for r in extra_regions {
        if !regions.contains(r) {
            regions.push(r.clone());
        }
    }
    let mut vms = Vec::new();
    for region in &regions {
        for vm in list_cluster_vms(cloud, region, cluster_id).await? {
            vms.push((region.clone(), vm));
        }
    }
    // Re-list resources after the cloud listing: a resource created meanwhile is not a leak.
    let (uids_after, _) = live_resources(client, cloud.default_region()).await?;
    let live: HashSet<String> = uids.union(&uids_after).cloned().collect();
    let candidates = tracker.observe(cluster_id, &vms, &live, grace, Instant::now());
    let mut actions = Vec::new();
    if mode == SweepMode::Delete {
        for c in candidates.iter().filter(|c| c.confirmed) {
            let token = format!(
                "ecsop-sweep-{}",
                c.instance_id.chars().take(48).collect::<String>()
            );
            let outcome = cloud
                .delete_instances(&c.region, vec![c.instance_id.clone()], token)
                .await;
            let d = decide(&outcome, &c.instance_id);
            tracing::info!(instance_id = %c.instance_id, uid = %c.uid, decision = d.code(), "sweeper deletion");
            actions.push((c.instance_id.clone(), d));
        }
    }
    Ok((candidates, actions))
}

/// The periodic sweeper inside `run`: reports through metrics, logs and Events (on the
/// operator's namespace, the summary object), and deletes confirmed leaks in delete mode.
#[allow(clippy::too_many_arguments)]
pub async fn run_periodic(
    client: Client,
    cloud: std::sync::Arc<dyn Cloud>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    cluster_id: String,
    summary_namespace: String,
    interval: Duration,
    grace: Duration,
    mode: SweepMode,
    stop: tokio_util::sync::CancellationToken,
) {
    use crate::controller::events::{EventRecorder, Note};
    let recorder = EventRecorder::new(client.clone(), "ecs-operator-sweeper", None);
    // The summary object is the operator's namespace. A Namespace is cluster-scoped, and the
    // API server (1.20) refuses an events.k8s.io Event about an object without a namespace
    // unless it is filed in kube-system; naming the namespace as its own keeps the Event in
    // the operator's namespace, where `kubectl get events -n <it>` shows it.
    let ns_ref = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Namespace".into()),
        name: Some(summary_namespace.clone()),
        namespace: Some(summary_namespace.clone()),
        ..Default::default()
    };
    let mut tracker = Tracker::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match sweep_once(
            &client,
            cloud.as_ref(),
            &mut tracker,
            &cluster_id,
            &[],
            grace,
            mode,
        )
        .await
        {
            Err(e) => tracing::warn!(error = %e, "leak sweep skipped"),
            Ok((candidates, actions)) => {
                let confirmed: Vec<&Candidate> =
                    candidates.iter().filter(|c| c.confirmed).collect();
                metrics.leaked_instances.set(confirmed.len() as i64);
                for c in &confirmed {
                    tracing::warn!(instance_id = %c.instance_id, uid = %c.uid, namespace = %c.namespace,
                        name = %c.name, leaked_secs = c.leaked_for.as_secs(), "leaked VM: its EcsInstance no longer exists");
                    let note = format!("VM {} ({}) was created for EcsInstance {}/{} (uid {}), which no longer exists", c.instance_id, c.region, c.namespace, c.name, c.uid);
                    let ev = Note {
                        warning: true,
                        reason: "LeakedInstance",
                        action: "Sweep",
                        note: &note,
                    };
                    if let Err(e) = recorder.publish(&ns_ref, &ev).await {
                        tracing::warn!(error = %e, "could not publish the LeakedInstance event");
                    }
                }
                for (id, d) in &actions {
                    tracing::info!(instance_id = %id, decision = d.code(), "sweeper acted");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::model::Tag;

    fn vm(id: &str, tags: &[(&str, &str)]) -> (String, Instance) {
        (
            "cn-beijing".into(),
            Instance {
                instance_id: id.into(),
                status: "RUNNING".into(),
                tags: tags
                    .iter()
                    .map(|(k, v)| Tag {
                        key: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn only_this_clusters_tagged_vms_without_a_resource_after_grace_and_two_sweeps() {
        let vms = vec![
            vm("i-leak", &[(TAG_CLUSTER, "c1"), (TAG_UID, "gone")]),
            vm("i-live", &[(TAG_CLUSTER, "c1"), (TAG_UID, "alive")]),
            vm("i-other", &[(TAG_CLUSTER, "c2"), (TAG_UID, "gone2")]),
            vm("i-untagged", &[]),
            vm("i-nouid", &[(TAG_CLUSTER, "c1")]),
        ];
        let live: HashSet<String> = ["alive".to_string()].into();
        let grace = Duration::from_secs(60);
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let c = t.observe("c1", &vms, &live, grace, t0);
        assert_eq!(
            c.iter().map(|c| c.instance_id.as_str()).collect::<Vec<_>>(),
            vec!["i-leak"]
        );
        assert!(!c[0].confirmed, "one sweep is not enough");
        let c = t.observe("c1", &vms, &live, grace, t0 + Duration::from_secs(30));
        assert!(!c[0].confirmed, "grace not over");
        let c = t.observe("c1", &vms, &live, grace, t0 + Duration::from_secs(61));
        assert!(c[0].confirmed);
        // The resource reappears (e.g. restored): the VM starts over.
        let live2: HashSet<String> = ["alive".to_string(), "gone".to_string()].into();
        assert!(t
            .observe("c1", &vms, &live2, grace, t0 + Duration::from_secs(62))
            .is_empty());
        let c = t.observe(
            "c1",
            &vms,
            &live,
            Duration::ZERO,
            t0 + Duration::from_secs(63),
        );
        assert!(!c[0].confirmed, "needs two sweeps again");
    }
}
