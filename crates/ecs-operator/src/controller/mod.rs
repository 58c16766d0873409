//! Controller wiring: the shared `Context`, the watch with its event filter, and startup.

pub mod apply;
pub mod apply_plan;
pub mod backoff;
pub mod batch;
pub mod cleanup;
pub mod connection_info;
pub mod delete;
pub mod delete_plan;
pub mod events;
pub mod finalizer;
pub mod hold;
pub mod observe;
pub mod ownership;
pub mod policy;
pub mod reasons;
pub mod reconcile;
pub mod status;
pub mod termination;
pub mod update;
pub mod update_plan;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::{controller, reflector, watcher, Controller, PredicateConfig, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::time::Instant;

use self::backoff::Backoff;
use self::batch::{BatchConfig, Pace};
use self::events::EventRecorder;
use self::policy::{CrdState, Fresh, FreshMap, NsAnnotation};
use crate::accounts::registry::{AccountCloud, Accounts, CloudFactory};
use crate::accounts::AccountName;
use crate::api::{
    DeletionPolicy, EcsInstance, CRD_NAME, NAMESPACE_POLICY_ANNOTATION, PAUSED_ANNOTATION,
    RELEASE_ANNOTATION,
};
use crate::cloud::gated::MutationGate;
use crate::cloud::Cloud;
use crate::metrics::Metrics;

/// Settings the reconciler reads (parsed once at startup).
#[derive(Debug, Clone)]
pub struct Settings {
    pub resync: Duration,
    pub transition_poll: Duration,
    pub default_policy: DeletionPolicy,
    pub cluster_id: String,
    pub concurrency: u16,
    pub batch: BatchConfig,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub namespaces: Vec<String>,
    /// `--on-missing-instance Recreate`: re-create a VM (that this operator created) which
    /// vanished outside Kubernetes, instead of only reporting it.
    pub recreate_missing: bool,
    /// After RunInstances, how long a VM the cloud does not list is still appearing.
    pub appear_window: Duration,
    /// wait-for-termination: how long a VM may stay listed after an accepted deletion
    /// before the resource reports Stalled.
    pub termination_timeout: Duration,
    /// `EcsAccount`s and their Secrets (`None`: only the default account, as in tests that
    /// build a `Context` by hand).
    pub account_manager: Option<crate::accounts::manager::ManagerConfig>,
}

pub struct Context {
    pub client: Client,
    /// Every account the operator acts in: the default one (its environment) and the
    /// `EcsAccount`s, each with its own client and batchers.
    pub accounts: Arc<Accounts>,
    pub recorder: EventRecorder,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    /// Resources that are paused or ObserveOnly (`ecs_operator_resources_unmanaged`).
    unmanaged: std::sync::Mutex<HashMap<String, Unmanaged>>,
    /// The managed fields each resource's VM differs in (`ecs_operator_resources_drifted`).
    drifted: std::sync::Mutex<HashMap<String, Vec<update_plan::Field>>>,
    pub settings: Settings,
    /// Closes when this replica loses (or cannot renew) its Lease: every cloud mutation
    /// is refused from then on and in-flight reconciles are cancelled.
    pub gate: MutationGate,
    ns_annotation: FreshMap<NsAnnotation>,
    crd_state: Fresh<CrdState>,
    /// Namespaces seen terminating (an Event create was refused): Events there are skipped
    /// for a while, since the API server refuses them and they would die with the namespace.
    pub terminating: std::sync::Mutex<HashMap<String, Instant>>,
    /// Events published and not yet answered, at most `EVENT_BACKLOG` (`status::event`).
    pub event_backlog: Arc<tokio::sync::Semaphore>,
    /// The watch caches, once all of them synced (see `all_instances`).
    caches: std::sync::Mutex<Option<Vec<reflector::Store<EcsInstance>>>>,
    /// The cluster-wide LIST `all_instances` falls back to before the caches sync.
    listing: Fresh<Listing>,
}

/// One cluster-wide LIST, shared by the callers that queued up while it ran.
type Listing = Result<Arc<Vec<Arc<EcsInstance>>>, Arc<kube::Error>>;

/// Why a resource is not fully managed (the gauge's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmanaged {
    Paused,
    ObserveOnly,
}

const TERMINATING_TTL: Duration = Duration::from_secs(60);
/// In a namespace being deleted, the namespace and CRD reads of the deletion policy wait this
/// long so concurrent deletions share them (`policy::Fresh::lingering`); a lone deletion
/// reads at once.
const POLICY_READ_LINGER: Duration = Duration::from_millis(50);
/// Events in flight or waiting for the API client; more are dropped and counted.
pub const EVENT_BACKLOG: usize = 256;

impl Context {
    pub fn new(
        client: Client,
        cloud: Arc<dyn Cloud>,
        metrics: Arc<Metrics>,
        settings: Settings,
        gate: MutationGate,
    ) -> Self {
        let default =
            AccountCloud::new(AccountName::Default, cloud, settings.batch, &metrics, None);
        let accounts = Arc::new(Accounts::new(Arc::new(default), None));
        let recorder = EventRecorder::new(
            client.clone(),
            "ecs-operator",
            std::env::var("POD_NAME").ok(),
        );
        Self {
            client,
            accounts,
            recorder,
            metrics,
            unmanaged: std::sync::Mutex::new(HashMap::new()),
            drifted: std::sync::Mutex::new(HashMap::new()),
            backoff: Backoff::new(settings.backoff_base, settings.backoff_max),
            settings,
            gate,
            ns_annotation: FreshMap::lingering(POLICY_READ_LINGER),
            crd_state: Fresh::lingering(POLICY_READ_LINGER),
            terminating: std::sync::Mutex::new(HashMap::new()),
            event_backlog: Arc::new(tokio::sync::Semaphore::new(EVENT_BACKLOG)),
            caches: std::sync::Mutex::new(None),
            listing: Fresh::default(),
        }
    }

    /// With named accounts: clients are built from the `EcsAccount`s by this factory.
    pub fn with_account_factory(mut self, f: Arc<dyn CloudFactory>) -> Self {
        let default = self.accounts.default_account().clone();
        self.accounts = Arc::new(Accounts::new(default, Some(f)));
        self
    }

    /// The operator's default account (its environment's key).
    pub fn default_account(&self) -> &Arc<AccountCloud> {
        self.accounts.default_account()
    }

    pub fn region_of(&self, obj: &EcsInstance, acct: &AccountCloud) -> String {
        obj.status
            .as_ref()
            .and_then(|s| s.region.clone())
            .or_else(|| obj.spec.region.clone())
            .unwrap_or_else(|| acct.default_region().to_string())
    }

    /// Records whether a resource is paused or ObserveOnly (`None`: neither, or gone) and
    /// updates the gauge, so such resources are not forgotten.
    pub fn note_unmanaged(&self, uid: &str, mode: Option<Unmanaged>) {
        let mut m = match self.unmanaged.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let changed = match mode {
            Some(x) => m.insert(uid.to_string(), x) != Some(x),
            None => m.remove(uid).is_some(),
        };
        if changed {
            let count = |x: Unmanaged| m.values().filter(|v| **v == x).count() as i64;
            self.metrics
                .resources_unmanaged(count(Unmanaged::Paused), count(Unmanaged::ObserveOnly));
        }
    }

    /// Records the fields a resource's VM differs in (empty: in sync, or the resource is
    /// gone) and updates the gauge and the counter.
    pub fn note_drift(&self, uid: &str, fields: &[update_plan::Field]) {
        let mut m = match self.drifted.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let before = m.get(uid).cloned().unwrap_or_default();
        if before == fields {
            return;
        }
        let new: Vec<&'static str> = fields
            .iter()
            .filter(|f| !before.contains(f))
            .map(|f| f.as_str())
            .collect();
        if fields.is_empty() {
            m.remove(uid);
        } else {
            m.insert(uid.to_string(), fields.to_vec());
        }
        let counts: Vec<(&'static str, i64)> = update_plan::Field::ALL
            .iter()
            .map(|f| {
                (
                    f.as_str(),
                    m.values().filter(|v| v.contains(f)).count() as i64,
                )
            })
            .collect();
        self.metrics.drift(&counts, &new);
    }

    /// Every EcsInstance in the cluster, all namespaces: the cluster-wide watch cache once it
    /// has synced, else a paged cluster-wide list that started after this call (`Fresh`):
    /// the adoptions that run before the cache syncs (all of them, at an operator's start
    /// with 1,000 resources to adopt) share LISTs instead of sending 1,000 at once, which the
    /// API server answered with 504s.
    pub async fn all_instances(&self) -> Result<Vec<Arc<EcsInstance>>, kube::Error> {
        let caches = match self.caches.lock() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        };
        if let Some(stores) = caches {
            return Ok(stores.iter().flat_map(|s| s.state()).collect());
        }
        let listed = self
            .listing
            .get(|| async { self.list_all().await.map(Arc::new).map_err(Arc::new) })
            .await;
        match listed {
            Ok(items) => Ok(items.to_vec()),
            Err(e) => Err(match e.as_ref() {
                kube::Error::Api(status) => kube::Error::Api(status.clone()),
                other => kube::Error::Service(other.to_string().into()),
            }),
        }
    }

    /// From now on `all_instances` reads these; the last shared LIST (a full copy of the
    /// cluster's resources) is dropped rather than kept for nothing.
    async fn publish_caches(&self, stores: Vec<reflector::Store<EcsInstance>>) {
        match self.caches.lock() {
            Ok(mut c) => *c = Some(stores),
            Err(p) => *p.into_inner() = Some(stores),
        }
        self.listing.clear().await;
    }

    async fn list_all(&self) -> Result<Vec<Arc<EcsInstance>>, kube::Error> {
        let api: Api<EcsInstance> = Api::all(self.client.clone());
        let mut lp = kube::api::ListParams::default().limit(500);
        let mut out = Vec::new();
        loop {
            let page = api.list(&lp).await?;
            out.extend(page.items.into_iter().map(|mut o| {
                ownership_view(&mut o);
                Arc::new(o)
            }));
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
                _ => return Ok(out),
            }
        }
    }

    /// A deletion in a namespace being deleted is part of a wave (see `batch::Pace`).
    pub fn pace_of(&self, ns: &str) -> Pace {
        if self.is_terminating(ns) {
            Pace::Wave
        } else {
            Pace::Unknown
        }
    }

    pub fn is_terminating(&self, ns: &str) -> bool {
        let m = match self.terminating.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.get(ns).is_some_and(|t| t.elapsed() < TERMINATING_TTL)
    }

    pub fn unmark_terminating(&self, ns: &str) {
        let mut m = match self.terminating.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.remove(ns);
    }

    pub fn mark_terminating(&self, ns: &str) {
        let mut m = match self.terminating.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.insert(ns.to_string(), Instant::now());
    }

    /// The namespace's deletion-policy annotation, from a read that started after this call
    /// (see `policy::Fresh`): a namespace of 10,000 deleting resources shares reads, and a
    /// change to the annotation is seen by the next reconcile.
    pub async fn namespace_annotation(&self, ns: &str) -> NsAnnotation {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let fresh = self.ns_annotation.entry(ns);
        fresh
            .get_paced(self.pace_of(ns), || async move {
                match api.get_opt(ns).await {
                    Ok(Some(n)) => {
                        // Seen terminating: no Events there (the API server refuses them),
                        // and its deletions come as a wave.
                        if n.metadata.deletion_timestamp.is_some() {
                            self.mark_terminating(ns);
                        } else {
                            // A namespace of that name alive again (deleted and recreated
                            // within the TTL): its Events must not be skipped.
                            self.unmark_terminating(ns);
                        }
                        match n.annotations().get(NAMESPACE_POLICY_ANNOTATION) {
                            Some(v) => NsAnnotation::Value(v.clone()),
                            None => NsAnnotation::Absent,
                        }
                    }
                    Ok(None) => {
                        self.unmark_terminating(ns);
                        NsAnnotation::NotFound
                    }
                    Err(e) => {
                        tracing::info!(namespace = %ns, error = %e, "namespace not readable");
                        NsAnnotation::Unreadable(e.to_string())
                    }
                }
            })
            .await
    }

    /// Whether the CRD `ecsinstances.ecs.volcengine.io` is being deleted, from a read that
    /// started after this call.
    pub async fn crd_state(&self, pace: Pace) -> CrdState {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        self.crd_state
            .get_paced(pace, || async move {
                match api.get_opt(CRD_NAME).await {
                    Ok(Some(c)) if c.metadata.deletion_timestamp.is_some() => CrdState::Deleting,
                    Ok(Some(_)) => CrdState::Live,
                    Ok(None) => CrdState::Unreadable(format!("{CRD_NAME} not found")),
                    Err(e) => {
                        tracing::info!(error = %e, "CRD not readable");
                        CrdState::Unreadable(e.to_string())
                    }
                }
            })
            .await
    }
}

/// A write to an object that is already gone is done: its deletion finished meanwhile.
pub(crate) fn tolerate_gone<T>(r: Result<T, kube::Error>) -> Result<(), crate::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reconcile on what matters (spec, finalizers, deletion, identity), not on our own status
/// writes: a status write must not restart the deletion before its backoff has passed.
fn trigger_hash(obj: &EcsInstance) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.uid().hash(&mut h);
    obj.metadata.generation.hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    obj.finalizers().hash(&mut h);
    // The escape hatch must act when it is set, not at the next backoff or resync.
    obj.annotations().get(RELEASE_ANNOTATION).hash(&mut h);
    // Unpausing must act at once, not at the next resync.
    obj.annotations().get(PAUSED_ANNOTATION).hash(&mut h);
    Some(h.finish())
}

/// What the cache keeps of an object. managedFields are most of an object's size, and
/// kubectl's last-applied annotation repeats the whole spec; the operator reads neither
/// (its writes are JSON patches of the finalizers and of /status). `None`, not `clear()`:
/// a cleared Vec keeps its buffer.
fn slim(o: &mut EcsInstance) {
    o.metadata.managed_fields = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            o.metadata.annotations = None;
        }
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What `ownership::others` reads of the other resources, and all that the cluster-wide
/// cache and LIST of `all_instances` keep: about a tenth of a slimmed object (their create
/// spec, conditions and labels are never read there). Only for caches no reconcile reads.
fn ownership_view(o: &mut EcsInstance) {
    let m = std::mem::take(&mut o.metadata);
    o.metadata = ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        ..Default::default()
    };
    o.spec = crate::api::EcsInstanceSpec {
        instance_id: o.spec.instance_id.take(),
        management_policy: o.spec.management_policy,
        ..Default::default()
    };
    o.status = o.status.take().map(|s| crate::api::EcsInstanceStatus {
        instance_id: s.instance_id,
        ownership: s.ownership,
        // Whether an EcsAccount being deleted is still in use (accounts::manager).
        account: s.account,
        ..Default::default()
    });
}

/// Runs the controller until `shutdown` resolves. One watch per namespace given, or one
/// cluster-wide watch.
/// (Over 80 lines on purpose: the per-watch wiring — stream, cache, readiness, controller —
/// reads best in one place, and splitting it would scatter the clones it needs.)
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    ready: Arc<std::sync::atomic::AtomicBool>,
) {
    let apis: Vec<Api<EcsInstance>> = if ctx.settings.namespaces.is_empty() {
        vec![Api::all(ctx.client.clone())]
    } else {
        ctx.settings
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(ctx.client.clone(), ns))
            .collect()
    };
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let mut runs = Vec::new();
    if let Some(cfg) = ctx.settings.account_manager.clone() {
        // The namespace cache is in the registry before the first reconcile resolves an
        // account: without it the namespace annotation would be unknown.
        let (reader, writer) = reflector::store();
        ctx.accounts.use_namespace_cache(reader, ctx.client.clone());
        runs.push(tokio::spawn(crate::accounts::manager::run(
            ctx.clone(),
            cfg,
            writer,
            shutdown.clone(),
        )));
    }
    let n = apis.len();
    let synced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::new();
    for api in apis {
        let (reader, writer) = reflector::store();
        readers.push(reader.clone());
        let stream = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(slim)
            .reflect(writer)
            .applied_objects()
            .predicate_filter(trigger_hash, PredicateConfig::default());
        // `all_instances` reads the cache only for the one cluster-wide watch, whose
        // reader is the only one in `readers` then.
        let (ctx, shutdown, ready, synced, readers) = (
            ctx.clone(),
            shutdown.clone(),
            ready.clone(),
            synced.clone(),
            readers.clone(),
        );
        let reader2 = reader.clone();
        let ctx2 = ctx.clone();
        runs.push(tokio::spawn(async move {
            tokio::spawn(async move {
                // The store's readiness signal wakes only its latest waiter (the controller
                // also waits on it), so poll it afresh instead of waiting once.
                loop {
                    let wait = reader2.wait_until_ready();
                    match tokio::time::timeout(Duration::from_millis(200), wait).await {
                        Ok(Ok(())) => break,
                        Ok(Err(_)) => return,
                        Err(_) => continue,
                    }
                }
                tracing::info!("cache synced");
                if synced.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == n {
                    // A namespaced watch's cache is not the cluster's (`watch_cluster_wide`).
                    if ctx2.settings.namespaces.is_empty() {
                        ctx2.publish_caches(readers).await;
                    }
                    ready.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            });
            Controller::for_stream(stream, reader)
                .with_config(controller::Config::default().concurrency(ctx.settings.concurrency))
                .graceful_shutdown_on(shutdown)
                .run(reconcile::reconcile, reconcile::error_policy, ctx)
                .for_each(|res| async move {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "reconcile loop");
                    }
                })
                .await;
        }));
    }
    runs.push(tokio::spawn(deletion_gauges(
        ctx.clone(),
        readers,
        shutdown.clone(),
    )));
    if !ctx.settings.namespaces.is_empty() {
        runs.push(tokio::spawn(watch_cluster_wide(
            ctx.clone(),
            shutdown.clone(),
        )));
    }
    for r in runs {
        let _ = r.await;
    }
}

/// `ecs_operator_resources_deleting` and `ecs_operator_oldest_deletion_seconds`, read off
/// the watch caches every few seconds: what alerts need to see a deletion that waits (a
/// protected VM, an account gone, an outage), whatever the reason.
async fn deletion_gauges(
    ctx: Arc<Context>,
    stores: Vec<reflector::Store<EcsInstance>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let tick = async {
        loop {
            let now = ownership::now();
            let (mut n, mut oldest) = (0i64, 0f64);
            for o in stores.iter().flat_map(|s| s.state()) {
                let Some(ts) = o.metadata.deletion_timestamp.as_ref() else {
                    continue;
                };
                if finalizer::has_finalizer(&o) {
                    n += 1;
                    oldest = oldest.max(now.duration_since(ts.0).as_secs_f64());
                }
            }
            ctx.metrics.resources_deleting.set(n);
            ctx.metrics.oldest_deletion_seconds.set(oldest);
            tokio::time::sleep(DELETION_GAUGE_PERIOD).await;
        }
    };
    tokio::select! {
        _ = tick => {}
        _ = shutdown => {}
    }
}

const DELETION_GAUGE_PERIOD: Duration = Duration::from_secs(5);

/// With `--namespaces`, the ownership check (`apply::ensure_owned`) still needs every
/// EcsInstance in the cluster (another namespace may name the same VM). Without this cache
/// each adoption listed the whole cluster: 1,000 adoptions were 1,000 concurrent paged
/// LISTs, and the API server answered 504 to most of them. One cluster-wide watch costs the
/// memory of the other namespaces' resources instead.
async fn watch_cluster_wide(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (reader, writer) = reflector::store();
    let stream = watcher(
        Api::<EcsInstance>::all(ctx.client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(ownership_view)
    .reflect(writer)
    .applied_objects()
    .for_each(|_| futures::future::ready(()));
    let publish = async {
        if reader.wait_until_ready().await.is_ok() {
            tracing::info!("cluster-wide cache synced");
            ctx.publish_caches(vec![reader.clone()]).await;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = stream => {}
        _ = publish => {}
        _ = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    /// The ownership check decides the same on the projection as on whole objects, for a
    /// resource naming the VM in spec, in status, refused it, or carrying the tag's uid.
    #[test]
    fn the_ownership_view_keeps_what_the_ownership_check_reads() {
        use crate::api::{EcsInstanceStatus, Ownership};
        let full =
            |name: &str, uid: &str, spec: Option<&str>, st: Option<(&str, Option<Ownership>)>| {
                let mut o = EcsInstance::new(name, Default::default());
                o.metadata.namespace = Some("ns".into());
                o.metadata.uid = Some(uid.into());
                o.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
                o.metadata.finalizers = Some(vec![crate::api::FINALIZER.to_string()]);
                o.spec.instance_id = spec.map(str::to_string);
                o.spec.deletion_protection = Some(true);
                o.status = st.map(|(id, own)| EcsInstanceStatus {
                    instance_id: Some(id.into()),
                    ownership: own,
                    private_ip: Some("10.0.0.2".into()),
                    ..Default::default()
                });
                o
            };
        let all = vec![
            full("spec", "u1", Some("i-a"), None),
            full("status", "u2", None, Some(("i-a", None))),
            full(
                "refused",
                "u3",
                Some("i-a"),
                Some(("i-a", Some(Ownership::Refused))),
            ),
            full(
                "tagged",
                "u4",
                Some("i-b"),
                Some(("i-b", Some(Ownership::Claimed))),
            ),
            full("other", "u5", Some("i-c"), None),
        ];
        let viewed: Vec<EcsInstance> = all
            .iter()
            .cloned()
            .map(|mut o| {
                ownership_view(&mut o);
                o
            })
            .collect();
        let boxed = |v: &[EcsInstance]| v.iter().map(|o| Arc::new(o.clone())).collect::<Vec<_>>();
        for (uid, id, tag) in [
            ("u9", "i-a", Some("u4")),
            ("u1", "i-a", None),
            ("u9", "i-c", Some("u3")),
            ("u9", "i-z", None),
        ] {
            assert_eq!(
                super::ownership::others(&boxed(&all), uid, id, tag),
                super::ownership::others(&boxed(&viewed), uid, id, tag),
                "{uid} {id} {tag:?}"
            );
        }
        assert_eq!(viewed[1].metadata.labels, None);
        assert_eq!(viewed[1].status.as_ref().unwrap().private_ip, None);
    }

    #[test]
    fn slim_drops_what_the_operator_never_reads_and_keeps_the_rest() {
        let mut o = EcsInstance::new("web", Default::default());
        o.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default(); 3]);
        o.metadata.finalizers = Some(vec![crate::api::FINALIZER.to_string()]);
        o.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_string(), "{...}".to_string()),
                ("team".to_string(), "a".to_string()),
            ]
            .into(),
        );
        slim(&mut o);
        assert_eq!(o.metadata.managed_fields, None);
        assert_eq!(
            o.metadata.annotations,
            Some([("team".to_string(), "a".to_string())].into())
        );
        assert_eq!(o.finalizers(), [crate::api::FINALIZER]);
        o.metadata.annotations = Some([(LAST_APPLIED.to_string(), String::new())].into());
        slim(&mut o);
        assert_eq!(o.metadata.annotations, None);
    }
}
