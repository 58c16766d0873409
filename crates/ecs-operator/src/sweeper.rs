//! Leak sweeper: finds VMs that carry this cluster's identity tag but that no live
//! EcsInstance refers to, and reports or deletes them.
//!
//! Safety rules:
//! - only VMs tagged `ecs.volcengine.io/cluster=<this cluster>` with an
//!   `ecs.volcengine.io/uid` tag are considered; untagged VMs and other clusters' VMs never are.
//!   The identity is unique by construction in delete mode (`identity.rs`);
//! - a VM that any EcsInstance in any namespace refers to, by the uid in its tag or by its
//!   instance ID in `spec.instanceId` / `status.instanceId`, is never a candidate;
//! - a VM becomes a candidate only after it was seen leaked in at least two sweeps spanning
//!   more than the grace period (default 30 minutes);
//! - the sweep is skipped, not guessed, when the cluster-wide list of EcsInstances or any
//!   DescribeInstances page fails, or when a listing may be incomplete; a tag-filtered listing
//!   that reaches the documented TagFilters limit (1,000) is redone without TagFilters;
//! - every region that may hold this cluster's VMs is swept: the default one, those named by
//!   resources since startup, and `--sweep-regions`;
//! - deletion goes through DeleteInstances with the same OperationDetails handling; deletion
//!   protection is honoured (the cloud refuses). A definitive answer retires the ClientToken
//!   (see [`Tracker`]), so a refusal is retried later as a new request.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::api::EcsInstance;
use crate::cloud::{Cloud, CloudError, DescribeQuery, Instance};
use crate::controller::apply::{TAG_CLUSTER, TAG_NAME, TAG_NAMESPACE, TAG_UID};
use crate::controller::cleanup::{decide, Decision};

/// DescribeInstances with TagFilters resolves at most this many instances (Volcengine's
/// documented limit); a tag-filtered listing this long may be missing VMs.
pub const TAG_FILTER_LIMIT: usize = 1000;

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
    #[error("DescribeInstances listing of {region} may be incomplete ({why}), sweep skipped")]
    Incomplete { region: String, why: &'static str },
}

impl SweepError {
    /// Bounded metric label (never the message).
    pub fn metric_label(&self) -> &'static str {
        match self {
            SweepError::Kube(_) => "skipped_kube_error",
            SweepError::Cloud(_) => "skipped_cloud_error",
            SweepError::Incomplete { .. } => "skipped_incomplete_listing",
        }
    }
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

/// What the live EcsInstances (every namespace) refer to.
#[derive(Debug, Default, Clone)]
pub struct LiveRefs {
    pub uids: HashSet<String>,
    /// `spec.instanceId` and `status.instanceId` of every resource.
    pub instance_ids: HashSet<String>,
    /// `spec.region` and `status.region` of every resource.
    pub regions: BTreeSet<String>,
}

impl LiveRefs {
    pub fn add(&mut self, o: &EcsInstance) {
        if let Some(uid) = o.uid() {
            self.uids.insert(uid);
        }
        let st = o.status.as_ref();
        let ids = [
            o.spec.instance_id.as_ref(),
            st.and_then(|s| s.instance_id.as_ref()),
        ];
        let regions = [o.spec.region.as_ref(), st.and_then(|s| s.region.as_ref())];
        for id in ids.into_iter().flatten().filter(|i| !i.is_empty()) {
            self.instance_ids.insert(id.clone());
        }
        for r in regions.into_iter().flatten().filter(|r| !r.is_empty()) {
            self.regions.insert(r.clone());
        }
    }

    pub fn extend(&mut self, other: LiveRefs) {
        self.uids.extend(other.uids);
        self.instance_ids.extend(other.instance_ids);
        self.regions.extend(other.regions);
    }

    /// A resource refers to the VM by the uid in its tag or by its instance ID. A VM managed
    /// by a live resource may carry an earlier resource's uid (re-import after a forced
    /// finalizer removal, a restore, a GitOps rebuild): the ID alone protects it. Pure.
    pub fn refers_to(&self, uid: &str, instance_id: &str) -> bool {
        self.uids.contains(uid) || self.instance_ids.contains(instance_id)
    }
}

#[derive(Debug)]
struct Seen {
    first: Instant,
    sweeps: u32,
    /// Sequence number of the DeleteInstances ClientToken in use; None = take a new one.
    token_seq: Option<u64>,
}

/// Memory across sweeps: when each VM was first seen leaked and how many sweeps saw it, the
/// current DeleteInstances token of each, and every region seen.
///
/// Tokens are `ecsop-swp-<hash(nonce, seq, instance id)>`: `nonce` is random per process and
/// `seq` is never reused within it, so a token whose answer was a definitive refusal is never
/// re-sent (the cloud would replay the refusal forever), not even after a restart. A
/// call-level failure keeps the token, so client retries and the next sweep re-send the same
/// request. Nothing is persisted: a restart starts the two-sweep grace over, and a request
/// whose answer was lost in a crash is sent again under a new token, which at worst earns an
/// `InvalidInstance.NotFound` or `InvalidInstanceStatus` for a VM already deleting.
#[derive(Debug)]
pub struct Tracker {
    seen: HashMap<String, Seen>,
    nonce: String,
    next_seq: u64,
    regions: BTreeSet<String>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::with_nonce(hex::encode(rand::random::<[u8; 16]>()))
    }
}

impl Tracker {
    pub fn with_nonce(nonce: String) -> Self {
        Self {
            seen: HashMap::new(),
            nonce,
            next_seq: 0,
            regions: BTreeSet::new(),
        }
    }

    /// Pure step: given this sweep's VMs and what live resources refer to, returns the
    /// candidates.
    pub fn observe(
        &mut self,
        cluster_id: &str,
        vms: &[(String, Instance)],
        live: &LiveRefs,
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
            if live.refers_to(uid, &vm.instance_id) {
                continue;
            }
            leaked_now.insert(vm.instance_id.clone());
            let entry = self.seen.entry(vm.instance_id.clone()).or_insert(Seen {
                first: now,
                sweeps: 0,
                token_seq: None,
            });
            entry.sweeps += 1;
            let leaked_for = now.saturating_duration_since(entry.first);
            out.push(Candidate {
                instance_id: vm.instance_id.clone(),
                region: region.clone(),
                uid: uid.to_string(),
                namespace: vm.tag(TAG_NAMESPACE).unwrap_or("").to_string(),
                name: vm.tag(TAG_NAME).unwrap_or("").to_string(),
                status: vm.status.clone(),
                confirmed: entry.sweeps >= 2 && leaked_for >= grace,
                leaked_for,
            });
        }
        // A VM no longer leaked (its resource came back, or it is gone) starts over.
        self.seen.retain(|id, _| leaked_now.contains(id));
        out
    }

    /// The ClientToken for the next DeleteInstances of a tracked VM.
    pub fn token_for(&mut self, instance_id: &str) -> String {
        let next = &mut self.next_seq;
        let seq = match self.seen.get_mut(instance_id) {
            Some(s) => *s.token_seq.get_or_insert_with(|| {
                *next += 1;
                *next
            }),
            None => {
                *next += 1;
                *next
            }
        };
        let digest = Sha256::digest(format!("{}:{seq}:{instance_id}", self.nonce));
        format!("ecsop-swp-{}", &hex::encode(digest)[..40])
    }

    /// Same rule as for resources: a definitive answer retires the token, a call-level
    /// failure keeps it.
    pub fn record(&mut self, instance_id: &str, d: &Decision) {
        if d.bumps_attempt() {
            if let Some(s) = self.seen.get_mut(instance_id) {
                s.token_seq = None;
            }
        }
    }

    /// Regions to sweep: the default, the flag's, and every region a live resource named in
    /// this or any earlier sweep since startup (a region whose last resource was deleted by
    /// hand is where its leak is).
    pub fn regions_to_sweep(
        &mut self,
        default_region: &str,
        live: &BTreeSet<String>,
        flag: &[String],
    ) -> Vec<String> {
        let given = flag.iter().map(|r| r.trim()).filter(|r| !r.is_empty());
        self.regions.extend(live.iter().cloned());
        self.regions.extend(given.map(str::to_string));
        self.regions.insert(default_region.to_string());
        self.regions.iter().cloned().collect()
    }
}

/// Whether a tag-filtered listing of `n` instances, whose last page reported `total`, may
/// have been cut at the documented limit: it reached the limit, or the cloud counts more
/// than it returned. Pure.
pub fn tag_listing_may_be_truncated(n: usize, total: Option<usize>) -> bool {
    n >= TAG_FILTER_LIMIT || total.is_some_and(|t| t > n)
}

/// Every page of one DescribeInstances listing and the TotalCount of its last page, or an
/// error; never a listing that stopped early (a repeated NextToken, too many pages).
async fn list_pages(
    cloud: &dyn Cloud,
    region: &str,
    tag_filters: Vec<(String, Vec<String>)>,
) -> Result<(Vec<Instance>, Option<usize>), SweepError> {
    let incomplete = |why| SweepError::Incomplete {
        region: region.to_string(),
        why,
    };
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..100_000 {
        let q = DescribeQuery {
            tag_filters: tag_filters.clone(),
            max_results: Some(100),
            next_token: next.clone(),
            ..Default::default()
        };
        let page = cloud.describe_instances(region, q).await?.value;
        all.extend(page.instances);
        match page.next_token.filter(|t| !t.is_empty()) {
            Some(t) if Some(&t) == next.as_ref() => return Err(incomplete("NextToken repeated")),
            Some(t) => next = Some(t),
            None => {
                let total = page.total_count.and_then(|t| usize::try_from(t).ok());
                return Ok((all, total));
            }
        }
    }
    Err(incomplete("too many pages"))
}

/// Every VM carrying this cluster's identity tag in one region, complete or an error. A
/// tag-filtered listing that may have hit the TagFilters limit can be cut short without
/// saying so, so the region is then listed without TagFilters and filtered here; if that
/// listing is short of its own TotalCount the sweep is skipped.
pub async fn list_cluster_vms(
    cloud: &dyn Cloud,
    region: &str,
    cluster_id: &str,
) -> Result<Vec<Instance>, SweepError> {
    let filter = vec![(TAG_CLUSTER.to_string(), vec![cluster_id.to_string()])];
    let (tagged, total) = list_pages(cloud, region, filter).await?;
    if !tag_listing_may_be_truncated(tagged.len(), total) {
        return Ok(tagged);
    }
    tracing::info!(region, tagged = tagged.len(), total = ?total, "tag-filtered listing may be truncated; listing the whole region");
    let (all, total) = list_pages(cloud, region, Vec::new()).await?;
    if total.is_some_and(|t| all.len() < t) {
        return Err(SweepError::Incomplete {
            region: region.to_string(),
            why: "fewer instances than TotalCount",
        });
    }
    Ok(all
        .into_iter()
        .filter(|vm| vm.tag(TAG_CLUSTER) == Some(cluster_id))
        .collect())
}

/// What every EcsInstance in the cluster (all namespaces) refers to.
pub async fn live_resources(client: &Client) -> Result<LiveRefs, kube::Error> {
    let api: Api<EcsInstance> = Api::all(client.clone());
    let mut refs = LiveRefs::default();
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        for o in &page.items {
            refs.add(o);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    Ok(refs)
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
) -> Result<Swept, SweepError> {
    let mut live = live_resources(client).await?;
    let regions = tracker.regions_to_sweep(cloud.default_region(), &live.regions, extra_regions);
    let mut vms = Vec::new();
    // A region whose listing fails (or may be incomplete) is left out of this sweep, not
    // guessed: its VMs are neither candidates nor confirmed. The other regions still count
    // (a VM's references come from Kubernetes, not from other regions), so one resource
    // naming a region that does not exist cannot stop every sweep. All regions failing
    // skips the sweep.
    let mut failed = None;
    let mut listed = 0;
    for region in &regions {
        match list_cluster_vms(cloud, region, cluster_id).await {
            Ok(found) => {
                listed += 1;
                vms.extend(found.into_iter().map(|vm| (region.clone(), vm)));
            }
            Err(e) => {
                tracing::warn!(%region, error = %e, "leak sweep of this region skipped");
                failed = Some(e);
            }
        }
    }
    if let (0, Some(e)) = (listed, failed) {
        return Err(e);
    }
    // Re-list resources after the cloud listing: a resource created meanwhile is not a leak.
    live.extend(live_resources(client).await?);
    let candidates = tracker.observe(cluster_id, &vms, &live, grace, Instant::now());
    let mut actions = Vec::new();
    if mode == SweepMode::Delete {
        for c in candidates.iter().filter(|c| c.confirmed) {
            let token = tracker.token_for(&c.instance_id);
            let outcome = cloud
                .delete_instances(&c.region, vec![c.instance_id.clone()], token.clone())
                .await;
            let d = decide(&outcome, &c.instance_id);
            tracker.record(&c.instance_id, &d);
            tracing::info!(instance_id = %c.instance_id, uid = %c.uid, client_token = %token, decision = d.code(), "sweeper deletion");
            actions.push((c.instance_id.clone(), d));
        }
    }
    Ok((candidates, actions))
}

/// One sweep's candidates and, in delete mode, what happened to the confirmed ones.
pub type Swept = (Vec<Candidate>, Vec<(String, Decision)>);

/// Settings of the periodic sweeper.
#[derive(Debug, Clone)]
pub struct PeriodicConfig {
    /// The effective cluster identity (delete mode: checked unique by construction).
    pub cluster_id: String,
    /// Where the LeakedInstance Events go (the operator's namespace).
    pub summary_namespace: String,
    pub interval: Duration,
    pub grace: Duration,
    pub mode: SweepMode,
    /// `--sweep-regions`.
    pub regions: Vec<String>,
}

/// The periodic sweeper inside `run`: reports through metrics, logs and Events (on the
/// operator's namespace, the summary object), and deletes confirmed leaks in delete mode.
/// Each account with a usable key is swept with its own key and its own tracker: a sweep
/// sees only that account's VMs, so it can never delete another account's.
pub async fn run_periodic(
    client: Client,
    accounts: std::sync::Arc<crate::accounts::registry::Accounts>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    cfg: PeriodicConfig,
    stop: tokio_util::sync::CancellationToken,
) {
    use crate::controller::events::EventRecorder;
    let recorder = EventRecorder::new(client.clone(), "ecs-operator-sweeper", None);
    // The summary object is the operator's namespace. A Namespace is cluster-scoped, and the
    // API server (1.20) refuses an events.k8s.io Event about an object without a namespace
    // unless it is filed in kube-system; naming the namespace as its own keeps the Event in
    // the operator's namespace, where `kubectl get events -n <it>` shows it.
    let ns_ref = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Namespace".into()),
        name: Some(cfg.summary_namespace.clone()),
        namespace: Some(cfg.summary_namespace.clone()),
        ..Default::default()
    };
    let mut trackers: std::collections::HashMap<String, Tracker> = Default::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
        // Accounts side by side: one throttled or slow account does not delay the others'.
        let sweeps = accounts.usable().into_iter().map(|acct| {
            let label = acct.name.label().to_string();
            let mut tracker = trackers.remove(&label).unwrap_or_default();
            let (client, cfg, recorder, ns_ref, metrics) =
                (&client, &cfg, &recorder, &ns_ref, &metrics);
            async move {
                let sweep = sweep_once(
                    client,
                    acct.cloud.as_ref(),
                    &mut tracker,
                    &cfg.cluster_id,
                    &cfg.regions,
                    cfg.grace,
                    cfg.mode,
                )
                .await;
                let leaked = report_sweep(recorder, ns_ref, metrics, &label, sweep).await;
                (label, tracker, leaked)
            }
        });
        let mut leaked = 0;
        for (label, tracker, n) in futures::future::join_all(sweeps).await {
            trackers.insert(label, tracker);
            leaked += n;
        }
        metrics.leaked_instances.set(leaked as i64);
    }
}

/// Metrics, logs and Events of one account's sweep; returns its confirmed leaks.
async fn report_sweep(
    recorder: &crate::controller::events::EventRecorder,
    ns_ref: &k8s_openapi::api::core::v1::ObjectReference,
    metrics: &crate::metrics::Metrics,
    account: &str,
    sweep: Result<Swept, SweepError>,
) -> usize {
    use crate::controller::events::Note;
    let (candidates, actions) = match sweep {
        Err(e) => {
            metrics.sweep(e.metric_label());
            tracing::warn!(%account, error = %e, "leak sweep skipped");
            return 0;
        }
        Ok(x) => x,
    };
    metrics.sweep("ok");
    let confirmed: Vec<&Candidate> = candidates.iter().filter(|c| c.confirmed).collect();
    for c in &confirmed {
        tracing::warn!(%account, instance_id = %c.instance_id, uid = %c.uid, namespace = %c.namespace,
            name = %c.name, leaked_secs = c.leaked_for.as_secs(), "leaked VM: its EcsInstance no longer exists");
        let note = format!("VM {} ({}, account {account}) was created for EcsInstance {}/{} (uid {}), which no longer exists", c.instance_id, c.region, c.namespace, c.name, c.uid);
        let ev = Note {
            warning: true,
            reason: "LeakedInstance",
            action: "Sweep",
            note: &note,
        };
        if let Err(e) = recorder.publish(ns_ref, &ev).await {
            tracing::warn!(error = %e, "could not publish the LeakedInstance event");
        }
    }
    for (id, d) in &actions {
        tracing::info!(%account, instance_id = %id, decision = d.code(), "sweeper acted");
    }
    confirmed.len()
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

    fn live(uids: &[&str], ids: &[&str]) -> LiveRefs {
        LiveRefs {
            uids: uids.iter().map(|s| s.to_string()).collect(),
            instance_ids: ids.iter().map(|s| s.to_string()).collect(),
            regions: BTreeSet::new(),
        }
    }

    /// The cluster-wide Kubernetes list failing, on every page or only after the first (the
    /// live resource on the unread page): every sweep is skipped and nothing is deleted, while
    /// the cloud lists both VMs; once the list answers, the leak goes and the live VM stays.
    /// A sweeper that read a failed list as empty, or kept the pages it read, would delete
    /// the live resource's VM.
    #[tokio::test]
    async fn a_failed_kubernetes_list_skips_the_sweep() {
        use crate::testing::cloud::{FakeCloud, Vm};
        use crate::testing::kube::{FakeKube, ListFault};
        use volcengine_ecs::Action;
        for fault in [ListFault::Every(500), ListFault::LaterPages(500)] {
            let kube = FakeKube::new();
            kube.create_namespace("a", &[]);
            kube.create_namespace("z", &[]);
            // 500 resources fill the first page (live_resources asks for 500 a page).
            for i in 0..500 {
                kube.create_instance("a", &format!("vm-{i:03}"), Default::default())
                    .unwrap();
            }
            let uid = kube
                .create_instance("z", "live", Default::default())
                .unwrap();
            let cloud = FakeCloud::new("cn-beijing");
            let tagged = |id: &str, uid: &str| Vm {
                tags: vec![
                    Tag {
                        key: TAG_CLUSTER.into(),
                        value: "c1".into(),
                    },
                    Tag {
                        key: TAG_UID.into(),
                        value: uid.into(),
                    },
                ],
                ..Vm::running(id)
            };
            cloud.add_vm(tagged("i-live", &uid));
            cloud.add_vm(tagged("i-leak", "gone"));
            let client = kube.client();
            let mut tracker = Tracker::default();
            let sweep = async |t: &mut Tracker| {
                sweep_once(
                    &client,
                    &cloud,
                    t,
                    "c1",
                    &[],
                    Duration::ZERO,
                    SweepMode::Delete,
                )
                .await
                .map(|(_, acted)| acted)
            };
            kube.state().list_fault = Some(fault);
            for _ in 0..3 {
                let r = sweep(&mut tracker).await;
                assert!(matches!(r, Err(SweepError::Kube(_))), "{fault:?}: {r:?}");
            }
            let deletes = cloud.state().calls_of(Action::DeleteInstances).count();
            assert_eq!(deletes, 0, "{fault:?}");
            kube.state().list_fault = None;
            let mut deleted = Vec::new();
            for _ in 0..2 {
                let acted = sweep(&mut tracker).await;
                let acted = acted.unwrap_or_else(|e| panic!("{fault:?}: {e}"));
                deleted.extend(acted.into_iter().map(|(id, _)| id));
            }
            assert_eq!(deleted, vec!["i-leak".to_string()], "{fault:?}");
            assert!(cloud.vm("i-live").is_some(), "{fault:?}");
        }
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
        let live1 = live(&["alive"], &[]);
        let grace = Duration::from_secs(60);
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let c = t.observe("c1", &vms, &live1, grace, t0);
        assert_eq!(
            c.iter().map(|c| c.instance_id.as_str()).collect::<Vec<_>>(),
            vec!["i-leak"]
        );
        assert!(!c[0].confirmed, "one sweep is not enough");
        let c = t.observe("c1", &vms, &live1, grace, t0 + Duration::from_secs(30));
        assert!(!c[0].confirmed, "grace not over");
        let c = t.observe("c1", &vms, &live1, grace, t0 + Duration::from_secs(61));
        assert!(c[0].confirmed);
        // The resource reappears (e.g. restored): the VM starts over.
        let live2 = live(&["alive", "gone"], &[]);
        assert!(t
            .observe("c1", &vms, &live2, grace, t0 + Duration::from_secs(62))
            .is_empty());
        let c = t.observe(
            "c1",
            &vms,
            &live1,
            Duration::ZERO,
            t0 + Duration::from_secs(63),
        );
        assert!(!c[0].confirmed, "needs two sweeps again");
    }

    #[test]
    fn a_vm_referred_to_by_uid_or_instance_id_is_never_a_candidate() {
        // (uid tag on the VM, live uids, live instance ids (spec or status)) -> candidate?
        let cases: &[(&str, &[&str], &[&str], bool)] = &[
            ("gone", &[], &[], true),
            ("gone", &["other"], &["i-other"], true),
            ("alive", &["alive"], &[], false),
            // Re-imported after a forced finalizer removal / restore / GitOps rebuild: the
            // VM still carries the earlier resource's uid, a live resource names its ID.
            ("stale", &["new-uid"], &["i-vm"], false),
            ("stale", &[], &["i-vm"], false),
            ("alive", &["alive"], &["i-vm"], false),
        ];
        for (uid, uids, ids, want) in cases {
            let vms = vec![vm("i-vm", &[(TAG_CLUSTER, "c1"), (TAG_UID, uid)])];
            let mut t = Tracker::default();
            let t0 = Instant::now();
            let refs = live(uids, ids);
            t.observe("c1", &vms, &refs, Duration::ZERO, t0);
            let c = t.observe(
                "c1",
                &vms,
                &refs,
                Duration::ZERO,
                t0 + Duration::from_secs(1),
            );
            assert_eq!(
                c.iter().any(|c| c.confirmed),
                *want,
                "{uid} {uids:?} {ids:?}"
            );
            assert_eq!(!c.is_empty(), *want, "{uid} {uids:?} {ids:?}");
        }
    }

    #[test]
    fn live_refs_take_spec_and_status_instance_ids_and_regions() {
        let o: EcsInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "ecs.volcengine.io/v1alpha1", "kind": "EcsInstance",
            "metadata": {"name": "a", "namespace": "n", "uid": "u1"},
            "spec": {"instanceId": "i-spec", "region": "cn-shanghai"},
            "status": {"instanceId": "i-status", "region": "ap-southeast-1"}
        }))
        .unwrap();
        let mut r = LiveRefs::default();
        r.add(&o);
        assert!(r.refers_to("u1", "i-x"));
        assert!(r.refers_to("x", "i-spec"));
        assert!(r.refers_to("x", "i-status"));
        assert!(!r.refers_to("x", "i-x"));
        assert_eq!(
            r.regions.iter().cloned().collect::<Vec<_>>(),
            vec!["ap-southeast-1".to_string(), "cn-shanghai".to_string()]
        );
    }

    fn refused() -> Decision {
        Decision::NotDeletableYet {
            code: "InvalidInstanceStatus".into(),
            message: String::new(),
            request_id: "r".into(),
        }
    }

    fn call_failed() -> Decision {
        Decision::Retry {
            code: "InternalError".into(),
            message: String::new(),
            request_id: None,
            class: crate::cloud::ErrorClass::Retryable,
            new_token: false,
        }
    }

    #[test]
    fn tokens_change_after_a_definitive_answer_only_and_never_repeat() {
        let vms = vec![vm("i-leak", &[(TAG_CLUSTER, "c1"), (TAG_UID, "gone")])];
        let mut t = Tracker::with_nonce("n1".into());
        let now = Instant::now();
        t.observe("c1", &vms, &LiveRefs::default(), Duration::ZERO, now);
        let a = t.token_for("i-leak");
        assert!(
            a.starts_with("ecsop-swp-")
                && a.len() <= crate::controller::cleanup::MAX_TOKEN_LEN
                && a.is_ascii(),
            "{a}"
        );
        assert_eq!(t.token_for("i-leak"), a, "stable until an answer");
        t.record("i-leak", &call_failed());
        assert_eq!(t.token_for("i-leak"), a, "call-level failure: same request");
        t.record("i-leak", &refused());
        let b = t.token_for("i-leak");
        assert_ne!(b, a, "a refusal is never re-sent");
        // The VM drops out (its resource came back) and leaks again: still a new token.
        t.observe("c1", &vms, &live(&["gone"], &[]), Duration::ZERO, now);
        t.observe("c1", &vms, &LiveRefs::default(), Duration::ZERO, now);
        let c = t.token_for("i-leak");
        assert!(c != a && c != b);
        // Another process (a restart) never re-sends this one's tokens.
        let mut t2 = Tracker::default();
        t2.observe("c1", &vms, &LiveRefs::default(), Duration::ZERO, now);
        let d = t2.token_for("i-leak");
        assert!(![&a, &b, &c].contains(&&d));
    }

    #[test]
    fn regions_are_default_flag_and_every_resource_region_seen() {
        let mut t = Tracker::default();
        let live1: BTreeSet<String> = ["cn-shanghai".to_string()].into();
        assert_eq!(
            t.regions_to_sweep("cn-beijing", &live1, &["ap-southeast-1".into(), " ".into()]),
            vec!["ap-southeast-1", "cn-beijing", "cn-shanghai"]
        );
        // The last resource in cn-shanghai was deleted by hand: keep sweeping it.
        assert_eq!(
            t.regions_to_sweep("cn-beijing", &BTreeSet::new(), &[]),
            vec!["ap-southeast-1", "cn-beijing", "cn-shanghai"]
        );
    }

    #[test]
    fn a_tag_listing_at_the_limit_or_short_of_its_total_is_not_trusted() {
        let cases = [
            (0, None, false),
            (0, Some(0), false),
            (999, Some(999), false),
            // VMs deleted while paging: fewer counted than returned is harmless.
            (999, Some(990), false),
            (1000, Some(1000), true),
            (1001, None, true),
            // The cloud counts more than it resolved.
            (500, Some(501), true),
            (1000, Some(5000), true),
        ];
        for (n, total, want) in cases {
            assert_eq!(
                tag_listing_may_be_truncated(n, total),
                want,
                "{n} {total:?}"
            );
        }
    }
}
