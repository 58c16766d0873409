//! Deterministic simulation of the whole controller: the real `reconcile` (not a copy),
//! driven step by step against the in-memory Kubernetes API and the fake cloud of
//! `ecs_operator::testing`, through seeded random schedules of user actions, cloud
//! behaviour and operator events. After every step the safety invariants are checked; after
//! the schedule, faults stop, the operator gets quiet rounds, and the liveness invariants
//! are checked. A failing seed is shrunk to a minimal schedule and printed with how to
//! replay it.
//!
//!   SIM_SCHEDULES=1000000 cargo test --test simulation   (a longer run)
//!   SIM_SEED=123 cargo test --test simulation            (one seed)
//!
//! What it does not cover: kube-runtime's watcher, reflector and Controller (their queue,
//! debouncing, trigger filter and concurrency limit): the simulation's scheduler picks which
//! resource a replica reconciles and when, and a replica's stale watch cache is modelled by
//! reconciling the version of the previous step. Not modelled either: the leak sweeper,
//! the CRD being deleted, wait-for-termination, user data Secrets, `--on-missing-instance
//! Recreate`, Event content, leader election itself (a lost lease is the gate closing), and
//! HTTP (retries, signing, the rate limiter).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecs_operator::api::{
    CreateSpec, DeletionPolicy, EcsInstance, EcsInstanceSpec, Ownership,
    NAMESPACE_POLICY_ANNOTATION, RELEASE_ANNOTATION,
};
use ecs_operator::cloud::model::Action as CloudAction;
use ecs_operator::controller::{reconcile, Context};
use ecs_operator::testing::{self, clock, FakeCloud, FakeKube, Fault, Vm};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NS: &str = "sim";
const NAMES: [&str; 3] = ["r0", "r1", "r2"];
const REPLICAS: usize = 2;
const STEPS: usize = 32;
const QUIET_ROUNDS: usize = 12;
const TAG_UID: &str = "ecs.volcengine.io/uid";

/// What the schedules exercised, summed over a run (printed, to see the coverage).
static DELETIONS: AtomicUsize = AtomicUsize::new(0);
static RELEASED: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);
/// Resources whose leak matched the known defect described in `check_end`.
static KNOWN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static FORCE_STRICT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Strict by default since the defect is fixed; `SIM_TOLERATE_KNOWN=1` counts it instead
/// (to measure it on an old revision).
fn strict() -> bool {
    FORCE_STRICT.with(|f| f.get()) || std::env::var_os("SIM_TOLERATE_KNOWN").is_none()
}
static REASONS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NsValue {
    Delete,
    Orphan,
    /// Not a policy (`orphan`): the operator must hold.
    Bogus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VmChange {
    /// STOPPING: DeleteInstances answers InvalidInstanceStatus.
    Busy,
    /// RUNNING, unprotected, postpaid.
    Settle,
    Protected,
    Prepaid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloudFault {
    ServerError,
    Throttled,
    LostAnswer,
    Refused,
}

/// One step of a schedule. Resources are named by index into `NAMES`, VMs by index into
/// the cloud's VMs (sorted by ID) at the time of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    // User actions.
    Create {
        r: usize,
        adopt: Option<usize>,
    },
    Delete {
        r: usize,
    },
    SetPolicy {
        r: usize,
        policy: Option<DeletionPolicy>,
    },
    NamespacePolicy {
        value: Option<NsValue>,
    },
    ReleaseAnnotation {
        r: usize,
    },
    ForceRemoveFinalizer {
        r: usize,
    },
    DeleteNamespace,
    // Cloud and API server behaviour.
    Fault {
        action: Option<CloudAction>,
        fault: CloudFault,
    },
    Vm {
        vm: usize,
        change: VmChange,
    },
    Lag {
        calls: u32,
    },
    NamespaceUnreadable {
        on: bool,
    },
    Terminate,
    Tick {
        secs: u64,
    },
    // Operator events.
    Reconcile {
        replica: usize,
        r: usize,
        stale: bool,
    },
    /// Both replicas reconcile at once, interleaving at every await.
    Concurrent {
        r0: usize,
        r1: usize,
    },
    /// The replica dies `after_ms` into a reconcile; a fresh one (no memory) replaces it.
    Crash {
        replica: usize,
        r: usize,
        after_ms: u64,
    },
    /// The replica's mutation gate closes `after_ms` into a reconcile; it is replaced.
    LeaseLoss {
        replica: usize,
        r: usize,
        after_ms: u64,
    },
}

fn random_step(rng: &mut StdRng) -> Step {
    let r = rng.random_range(0..NAMES.len());
    let replica = rng.random_range(0..REPLICAS);
    let actions = [
        None,
        Some(CloudAction::DeleteInstances),
        Some(CloudAction::RunInstances),
        Some(CloudAction::DescribeInstances),
        Some(CloudAction::TagResources),
        Some(CloudAction::UntagResources),
    ];
    match rng.random_range(0..100) {
        0..=9 => Step::Create {
            r,
            adopt: rng.random_bool(0.4).then(|| rng.random_range(0..4)),
        },
        10..=16 => Step::Delete { r },
        17..=19 => Step::SetPolicy {
            r,
            policy: [
                None,
                Some(DeletionPolicy::Delete),
                Some(DeletionPolicy::Orphan),
            ][rng.random_range(0..3)],
        },
        20..=22 => Step::NamespacePolicy {
            value: [
                None,
                Some(NsValue::Delete),
                Some(NsValue::Orphan),
                Some(NsValue::Bogus),
            ][rng.random_range(0..4)],
        },
        23 => Step::ReleaseAnnotation { r },
        24 => Step::ForceRemoveFinalizer { r },
        25 => Step::DeleteNamespace,
        26..=33 => Step::Fault {
            action: actions[rng.random_range(0..actions.len())],
            fault: [
                CloudFault::ServerError,
                CloudFault::Throttled,
                CloudFault::LostAnswer,
                CloudFault::Refused,
            ][rng.random_range(0..4)],
        },
        34..=37 => Step::Vm {
            vm: rng.random_range(0..4),
            change: [
                VmChange::Busy,
                VmChange::Settle,
                VmChange::Protected,
                VmChange::Prepaid,
            ][rng.random_range(0..4)],
        },
        38..=39 => Step::Lag {
            calls: rng.random_range(1..4),
        },
        40..=41 => Step::NamespaceUnreadable {
            on: rng.random_bool(0.5),
        },
        42..=44 => Step::Terminate,
        45..=47 => Step::Tick {
            secs: [1, 30, 700][rng.random_range(0..3)],
        },
        48..=85 => Step::Reconcile {
            replica,
            r,
            stale: rng.random_bool(0.2),
        },
        86..=91 => Step::Concurrent {
            r0: r,
            r1: rng.random_range(0..NAMES.len()),
        },
        92..=95 => Step::Crash {
            replica,
            r,
            after_ms: rng.random_range(0..60),
        },
        _ => Step::LeaseLoss {
            replica,
            r,
            after_ms: rng.random_range(0..60),
        },
    }
}

fn schedule(seed: u64) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut steps = vec![Step::Create { r: 0, adopt: None }];
    steps.extend((1..STEPS).map(|_| random_step(&mut rng)));
    steps
}

/// What the operator could know about the namespace policy at a moment.
#[derive(Debug, Clone)]
struct NsView {
    exists: bool,
    unreadable: bool,
    annotation: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effective {
    Delete,
    Orphan,
    Doubt,
}

fn effective(obj: &EcsInstance, ns: &NsView) -> Effective {
    match obj.spec.deletion_policy {
        Some(DeletionPolicy::Delete) => return Effective::Delete,
        Some(DeletionPolicy::Orphan) => return Effective::Orphan,
        None => {}
    }
    if !ns.exists || ns.unreadable {
        return Effective::Doubt;
    }
    match ns.annotation.as_deref() {
        None | Some("Delete") => Effective::Delete,
        Some("Orphan") => Effective::Orphan,
        Some(_) => Effective::Doubt,
    }
}

/// A resource that left the store, as last seen.
struct Gone {
    last: EcsInstance,
    ns: NsView,
    /// The user let go of it (finalizer removed by hand, or the release annotation).
    let_go: bool,
}

struct Sim {
    kube: FakeKube,
    cloud: Arc<FakeCloud>,
    replicas: Vec<Arc<Context>>,
    /// The store as of the previous step (a lagging watch cache).
    previous: BTreeMap<String, EcsInstance>,
    /// Every resource ever seen, by uid, and whether the user let go of it.
    seen: BTreeMap<String, (EcsInstance, bool)>,
    gone: BTreeMap<String, Gone>,
    /// VMs per owner uid tag, ever.
    vms_of: BTreeMap<String, BTreeSet<String>>,
    deletions_checked: usize,
}

fn spec_create() -> CreateSpec {
    CreateSpec {
        zone_id: "cn-beijing-a".into(),
        image_id: "image-sim".into(),
        instance_type_id: "ecs.g1.large".into(),
        subnet_id: "subnet-sim".into(),
        security_group_ids: vec!["sg-sim".into()],
        system_volume: Some(ecs_operator::api::VolumeSpec {
            volume_type: None,
            size: 40,
        }),
        ..Default::default()
    }
}

impl Sim {
    fn new() -> Self {
        let kube = FakeKube::new();
        kube.create_namespace(NS, &[]);
        let cloud = Arc::new(FakeCloud::new(testing::REGION));
        cloud.add_vm(Vm::running("i-pre0"));
        cloud.add_vm(Vm::running("i-pre1"));
        let replicas = (0..REPLICAS).map(|_| fresh(&kube, &cloud)).collect();
        Self {
            kube,
            cloud,
            replicas,
            previous: BTreeMap::new(),
            seen: BTreeMap::new(),
            gone: BTreeMap::new(),
            vms_of: BTreeMap::new(),
            deletions_checked: 0,
        }
    }

    fn ns_view(&self) -> NsView {
        let st = self.kube.state();
        let n = st.namespaces.get(NS);
        NsView {
            exists: n.is_some(),
            unreadable: st.namespace_faults.contains_key(NS),
            annotation: n.and_then(|n| {
                n["metadata"]["annotations"][NAMESPACE_POLICY_ANNOTATION]
                    .as_str()
                    .map(String::from)
            }),
        }
    }

    fn store(&self) -> BTreeMap<String, EcsInstance> {
        self.kube
            .list()
            .into_iter()
            .map(|o| (o.name_any(), o))
            .collect()
    }

    fn vm_id(&self, i: usize) -> Option<String> {
        let st = self.cloud.state();
        let n = st.vms.len();
        (n > 0).then(|| st.vms.keys().nth(i % n).cloned()).flatten()
    }

    /// Runs one step; returns the objects the replicas reconciled (their view).
    async fn apply(&mut self, step: Step) -> Vec<EcsInstance> {
        let mut views = Vec::new();
        match step {
            Step::Create { r, adopt } => {
                if !self.kube.state().namespaces.contains_key(NS) {
                    self.kube.create_namespace(NS, &[]);
                }
                let mut spec = EcsInstanceSpec::default();
                match adopt {
                    Some(i) => spec.instance_id = self.vm_id(i),
                    None => spec.create = Some(spec_create()),
                }
                if spec.instance_id.is_some() || spec.create.is_some() {
                    self.kube.create_instance(NS, NAMES[r], spec);
                }
            }
            Step::Delete { r } => self.kube.delete_instance(NS, NAMES[r]),
            Step::SetPolicy { r, policy } => {
                self.kube
                    .edit(NS, NAMES[r], |o| o.spec.deletion_policy = policy);
            }
            Step::NamespacePolicy { value } => {
                let v = value.map(|v| match v {
                    NsValue::Delete => "Delete",
                    NsValue::Orphan => "Orphan",
                    NsValue::Bogus => "orphan",
                });
                self.kube
                    .annotate_namespace(NS, NAMESPACE_POLICY_ANNOTATION, v);
            }
            Step::ReleaseAnnotation { r } => {
                self.kube.edit(NS, NAMES[r], |o| {
                    o.annotations_mut()
                        .insert(RELEASE_ANNOTATION.into(), "sim: let it go".into());
                });
            }
            Step::ForceRemoveFinalizer { r } => {
                if let Some(o) = self.kube.get(NS, NAMES[r]) {
                    if let Some(e) = self.seen.get_mut(&o.uid().unwrap_or_default()) {
                        e.1 = true;
                    }
                }
                self.kube.remove_finalizers(NS, NAMES[r]);
            }
            Step::DeleteNamespace => self.kube.delete_namespace(NS),
            Step::Fault { action, fault } => {
                let f = match fault {
                    CloudFault::ServerError => Fault::ServerError,
                    CloudFault::Throttled => Fault::Throttled,
                    CloudFault::LostAnswer => Fault::LostAnswer,
                    CloudFault::Refused => Fault::Refused("InvalidParameter".into()),
                };
                self.cloud.fail_next(action, f);
            }
            Step::Vm { vm, change } => {
                let Some(id) = self.vm_id(vm) else {
                    return views;
                };
                let mut st = self.cloud.state();
                if let Some(v) = st.vms.get_mut(&id).filter(|v| v.status != "DELETING") {
                    match change {
                        VmChange::Busy => v.status = "STOPPING".into(),
                        VmChange::Settle => {
                            v.status = "RUNNING".into();
                            v.deletion_protection = false;
                            v.prepaid = false;
                        }
                        VmChange::Protected => v.deletion_protection = true,
                        VmChange::Prepaid => v.prepaid = true,
                    }
                }
            }
            Step::Lag { calls } => self.cloud.state().lag_new_vms = calls,
            Step::NamespaceUnreadable { on } => {
                let mut st = self.kube.state();
                if on {
                    st.namespace_faults.insert(NS.into(), 503);
                } else {
                    st.namespace_faults.clear();
                }
            }
            Step::Terminate => self.cloud.terminate(),
            Step::Tick { secs } => {
                // The cloud's lag is seconds (the emulator's is 1.5 s), never a whole tick of
                // 30 s or more: a VM still invisible past the appear window is another fault.
                if secs >= 30 {
                    for v in self.cloud.state().vms.values_mut() {
                        v.hidden_for = 0;
                    }
                }
                tokio::time::advance(Duration::from_secs(secs)).await
            }
            Step::Reconcile { replica, r, stale } => {
                let obj = stale
                    .then(|| self.previous.get(NAMES[r]).cloned())
                    .flatten()
                    .or_else(|| self.kube.get(NS, NAMES[r]));
                if let Some(obj) = obj {
                    views.push(obj.clone());
                    let ctx = self.replicas[replica].clone();
                    bounded(reconcile::reconcile(Arc::new(obj), ctx)).await;
                }
            }
            Step::Concurrent { r0, r1 } => {
                let a = self.kube.get(NS, NAMES[r0]);
                let b = self.kube.get(NS, NAMES[r1]);
                views.extend(a.iter().chain(b.iter()).cloned());
                let (c0, c1) = (self.replicas[0].clone(), self.replicas[1].clone());
                let fa = async move {
                    if let Some(a) = a {
                        bounded(reconcile::reconcile(Arc::new(a), c0)).await;
                    }
                };
                let fb = async move {
                    if let Some(b) = b {
                        bounded(reconcile::reconcile(Arc::new(b), c1)).await;
                    }
                };
                futures::join!(fa, fb);
            }
            Step::Crash {
                replica,
                r,
                after_ms,
            }
            | Step::LeaseLoss {
                replica,
                r,
                after_ms,
            } => {
                let ctx = self.replicas[replica].clone();
                if let Some(obj) = self.kube.get(NS, NAMES[r]) {
                    views.push(obj.clone());
                    let gate = ctx.gate.clone();
                    let run = reconcile::reconcile(Arc::new(obj), ctx.clone());
                    let cut = Duration::from_millis(after_ms);
                    if matches!(step, Step::Crash { .. }) {
                        let _ = tokio::time::timeout(cut, run).await;
                    } else {
                        let close = async move {
                            tokio::time::sleep(cut).await;
                            gate.close("sim: lease lost");
                        };
                        futures::join!(bounded(run), close);
                    }
                }
                // A dead process sends nothing more: its leftover tasks meet a closed gate.
                ctx.gate.close("sim: replica replaced");
                self.replicas[replica] = fresh(&self.kube, &self.cloud);
            }
        }
        views
    }

    /// Safety, after every step: each deletion the cloud accepted during the step.
    fn check_deletions(
        &mut self,
        before: &BTreeMap<String, EcsInstance>,
        ns: &NsView,
        views: &[EcsInstance],
    ) -> Result<(), String> {
        let deletions: Vec<_> = self.cloud.state().deletions[self.deletions_checked..].to_vec();
        self.deletions_checked += deletions.len();
        for d in deletions {
            let id = &d.instance_id;
            let uid = d
                .tags
                .iter()
                .find(|t| t.key == TAG_UID)
                .map(|t| t.value.clone())
                .unwrap_or_default();
            for o in before.values() {
                let owns = o.uid().as_deref() == Some(uid.as_str())
                    || o.status.as_ref().is_some_and(|s| {
                        s.instance_id.as_deref() == Some(id)
                            && s.ownership == Some(Ownership::Claimed)
                    });
                if owns && o.metadata.deletion_timestamp.is_none() {
                    return Err(format!(
                        "VM {id} deleted (token {}) while live resource {} owns it",
                        d.token,
                        o.name_any()
                    ));
                }
            }
            let owner = views
                .iter()
                .chain(before.values())
                .find(|o| o.uid().as_deref() == Some(uid.as_str()));
            let Some(owner) = owner else {
                return Err(format!(
                    "VM {id} deleted (token {}) without a resource whose uid it carries (uid tag {uid:?})",
                    d.token
                ));
            };
            if owner.metadata.deletion_timestamp.is_none() {
                return Err(format!(
                    "VM {id} deleted for {} which is not being deleted",
                    owner.name_any()
                ));
            }
            let eff = effective(owner, ns);
            if eff != Effective::Delete {
                return Err(format!(
                    "VM {id} deleted (token {}) for {} whose effective policy is {eff:?} (spec {:?}, namespace {ns:?})",
                    d.token,
                    owner.name_any(),
                    owner.spec.deletion_policy
                ));
            }
        }
        Ok(())
    }

    /// Bookkeeping after every step, and the per-step invariants.
    fn observe(
        &mut self,
        ns_before: &NsView,
        before: &BTreeMap<String, EcsInstance>,
    ) -> Result<(), String> {
        let now = self.store();
        for o in now.values() {
            let uid = o.uid().unwrap_or_default();
            let released = o.annotations().contains_key(RELEASE_ANNOTATION)
                && o.metadata.deletion_timestamp.is_some();
            let e = self.seen.entry(uid).or_insert_with(|| (o.clone(), false));
            e.0 = o.clone();
            e.1 |= released;
        }
        let present: BTreeSet<String> = now.values().filter_map(|o| o.uid()).collect();
        for (uid, (last, let_go)) in &self.seen {
            if !present.contains(uid) && !self.gone.contains_key(uid) {
                // Its last version, and the namespace as the release saw it.
                let last = before
                    .values()
                    .find(|o| o.uid().as_deref() == Some(uid.as_str()))
                    .cloned()
                    .unwrap_or_else(|| last.clone());
                self.gone.insert(
                    uid.clone(),
                    Gone {
                        last,
                        ns: ns_before.clone(),
                        let_go: *let_go,
                    },
                );
            }
        }
        let st = self.cloud.state();
        for vm in st.vms.values() {
            if let Some(uid) = vm.tag(TAG_UID) {
                let set = self.vms_of.entry(uid.to_string()).or_default();
                set.insert(vm.id.clone());
                if set.len() > 1 {
                    return Err(format!("resource uid {uid} has more than one VM: {set:?}"));
                }
            }
        }
        if st.mismatches() > 0 {
            let c = st
                .calls
                .iter()
                .find(|c| c.result == testing::cloud::MISMATCH);
            return Err(format!("IdempotentParameterMismatch: {c:?}"));
        }
        drop(st);
        self.previous = now;
        Ok(())
    }

    /// Faults stop, time passes the appear window, and the operator gets quiet rounds.
    async fn quiesce(&mut self) -> Result<(), String> {
        {
            let mut st = self.cloud.state();
            st.faults.clear();
            st.lag_new_vms = 0;
            for v in st.vms.values_mut() {
                v.hidden_for = 0;
                v.deletion_protection = false;
                v.prepaid = false;
                if v.status != "DELETING" {
                    v.status = "RUNNING".into();
                }
            }
        }
        self.kube.state().namespace_faults.clear();
        tokio::time::advance(Duration::from_secs(700)).await;
        let mut unchanged = 0;
        let mut last = None;
        for _ in 0..QUIET_ROUNDS {
            let before = self.store();
            // Settled: two rounds changed nothing in the store (nor deleted anything).
            let versions: Vec<_> = before.values().map(|o| o.resource_version()).collect();
            let now = (versions, self.cloud.state().deletions.len());
            unchanged = if last.as_ref() == Some(&now) {
                unchanged + 1
            } else {
                0
            };
            if unchanged >= 2 {
                break;
            }
            last = Some(now);
            let ns = self.ns_view();
            let mut views = Vec::new();
            for name in NAMES {
                if let Some(o) = self.kube.get(NS, name) {
                    views.push(o.clone());
                    bounded(reconcile::reconcile(Arc::new(o), self.replicas[0].clone())).await;
                }
            }
            self.cloud.terminate();
            self.check_deletions(&before, &ns, &views)?;
            self.observe(&ns, &before)?;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        Ok(())
    }

    fn count(&self) {
        let st = self.cloud.state();
        DELETIONS.fetch_add(st.deletions.len(), Ordering::Relaxed);
        CALLS.fetch_add(st.calls.len(), Ordering::Relaxed);
        RELEASED.fetch_add(self.gone.len(), Ordering::Relaxed);
        let reasons = self.seen.values().flat_map(|(o, _)| {
            o.status
                .iter()
                .flat_map(|s| s.conditions.iter().map(|c| c.reason.clone()))
        });
        if let Ok(mut r) = REASONS.lock() {
            r.extend(reasons);
        }
    }

    /// Liveness, after the quiet rounds.
    fn check_end(&self) -> Result<(), String> {
        let ns = self.ns_view();
        for o in self.store().values() {
            let why = ["Ready", "Synced"]
                .iter()
                .filter_map(|t| o.condition(t))
                .find(|c| c.status == "False" && !c.reason.is_empty());
            let ready = o.condition("Ready").is_some_and(|c| c.status == "True");
            if !ready && why.is_none() {
                return Err(format!(
                    "{} is not Ready and no condition says why: {:?}",
                    o.name_any(),
                    o.status
                ));
            }
            // Held on purpose, and saying so: the VM lost this resource's tags (an Orphan
            // untag applied before the policy was changed back to Delete), so there is no
            // proof of ownership left; a person decides (README, OwnershipUnproven).
            let unproven = o
                .condition("Synced")
                .is_some_and(|c| c.reason == "OwnershipUnproven");
            if o.metadata.deletion_timestamp.is_some()
                && effective(o, &ns) == Effective::Delete
                && !unproven
            {
                return Err(format!(
                    "{} was deleted with policy Delete but still holds its finalizer after the quiet rounds: {:?}",
                    o.name_any(),
                    o.status.as_ref().map(|s| &s.conditions)
                ));
            }
        }
        let st = self.cloud.state();
        for (uid, g) in &self.gone {
            let refused =
                g.last.status.as_ref().and_then(|s| s.ownership) == Some(Ownership::Refused);
            if g.let_go || refused || effective(&g.last, &g.ns) != Effective::Delete {
                continue;
            }
            // FIXED DEFECT (kept as a check; SIM_TOLERATE_KNOWN=1 counts it instead of failing
            // on an old revision): a DeleteInstances sent during the visibility lag is answered NotFound,
            // the answer is lost, and the retry with the same token after the appear window
            // replays that NotFound: the resource is released as AlreadyGone and its VM
            // leaks. Fixed in delete_plan::plan_delete.
            let token = format!("ecsop-del-{uid}-");
            let known = st
                .not_found_while_lagging
                .iter()
                .any(|t| t.starts_with(&token));
            for vm in st.vms.values() {
                if vm.tag(TAG_UID) == Some(uid) && vm.status != "DELETING" {
                    if known && !strict() {
                        KNOWN.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    return Err(format!(
                        "{} (uid {uid}) was deleted with policy Delete and is gone, but its VM {} was never deleted",
                        g.last.name_any(),
                        vm.id
                    ));
                }
            }
        }
        Ok(())
    }
}

fn fresh(kube: &FakeKube, cloud: &Arc<FakeCloud>) -> Arc<Context> {
    testing::context(kube, cloud.clone(), testing::settings())
}

/// A reconcile that does not finish in 10 simulated minutes is abandoned (a lost lease
/// leaves calls pending for good).
async fn bounded<F: std::future::Future>(f: F) {
    let _ = tokio::time::timeout(Duration::from_secs(600), f).await;
}

/// Runs one schedule; `Err` names the first invariant broken and the step.
fn run(steps: &[Step]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let epoch: Timestamp = "2026-01-01T00:00:00Z".parse().map_err(|e| format!("{e}"))?;
        let _clock = clock::start(epoch);
        let mut sim = Sim::new();
        for (i, step) in steps.iter().enumerate() {
            let before = sim.store();
            let ns = sim.ns_view();
            let views = sim.apply(*step).await;
            // Let spawned work (Events, batches) finish before looking.
            tokio::time::sleep(Duration::from_millis(50)).await;
            sim.check_deletions(&before, &ns, &views)
                .and_then(|()| sim.observe(&ns, &before))
                .map_err(|e| format!("after step {i} {step:?}: {e}"))?;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        sim.quiesce()
            .await
            .map_err(|e| format!("in the quiet rounds: {e}"))?;
        sim.count();
        sim.check_end().map_err(|e| format!("at the end: {e}"))
    })
}

/// Drops steps while the schedule still fails, until no single step can go.
fn shrink(mut steps: Vec<Step>) -> (Vec<Step>, String) {
    let mut err = run(&steps).err().unwrap_or_default();
    loop {
        let mut smaller = false;
        let mut i = 0;
        while i < steps.len() {
            let mut candidate = steps.clone();
            candidate.remove(i);
            match run(&candidate) {
                Err(e) => {
                    steps = candidate;
                    err = e;
                    smaller = true;
                }
                Ok(()) => i += 1,
            }
        }
        if !smaller {
            return (steps, err);
        }
    }
}

fn report(seed: u64) -> String {
    let (steps, err) = shrink(schedule(seed));
    let mut out = format!(
        "seed {seed} fails: {err}\nminimal schedule ({} steps):\n",
        steps.len()
    );
    for (i, s) in steps.iter().enumerate() {
        out.push_str(&format!("  {i:>2}: {s:?}\n"));
    }
    out.push_str(&format!(
        "replay: SIM_SEED={seed} cargo test --test simulation -- --nocapture\n"
    ));
    out
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeded_schedules_keep_every_invariant() {
    if let Some(seed) = env_u64("SIM_SEED") {
        if run(&schedule(seed)).is_err() {
            panic!("{}", report(seed));
        }
        println!("seed {seed} passes: {:?}", schedule(seed));
        return;
    }
    let total = env_u64("SIM_SCHEDULES").unwrap_or(10_000);
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
    // SIM_LIST=1: print every failing seed (no shrinking) instead of stopping at the first.
    let list = std::env::var_os("SIM_LIST").is_some();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let started = std::time::Instant::now();
    let failed: Vec<u64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (first + t..first + total)
                        .step_by(threads as usize)
                        .filter(|seed| match run(&schedule(*seed)) {
                            Err(e) if list => {
                                println!("seed {seed}: {e}");
                                true
                            }
                            r => r.is_err(),
                        })
                        .take(if list { usize::MAX } else { 1 })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    println!(
        "{total} schedules in {:?} on {threads} threads",
        started.elapsed()
    );
    println!(
        "cloud calls {}, VMs deleted {}, resources released {}, known-defect leaks tolerated {} (only with SIM_TOLERATE_KNOWN=1), condition reasons seen: {:?}",
        CALLS.load(Ordering::Relaxed),
        DELETIONS.load(Ordering::Relaxed),
        RELEASED.load(Ordering::Relaxed),
        KNOWN.load(Ordering::Relaxed),
        REASONS.lock().map(|r| r.clone()).unwrap_or_default()
    );
    if let Some(seed) = failed.into_iter().min() {
        panic!("{}", report(seed));
    }
}

/// The same seed gives the same cloud calls: a printed seed replays.
#[test]
fn a_seed_replays_the_same_run() {
    let calls = |seed| {
        let steps = schedule(seed);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let _clock = clock::start("2026-01-01T00:00:00Z".parse().unwrap());
            let mut sim = Sim::new();
            for s in steps {
                sim.apply(s).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            let st = sim.cloud.state();
            st.calls.clone()
        })
    };
    for seed in [1, 2, 3] {
        assert_eq!(calls(seed), calls(seed), "seed {seed}");
    }
}

/// A defect the simulation found (fixed in `delete_plan::plan_delete`): a DeleteInstances
/// answered NotFound during the visibility lag, its answer lost, was retried after the
/// appear window with the same token; the replayed NotFound released the resource and the
/// VM leaked. Now a NotFound for a VM listed in the same reconcile gets a new token.
#[test]
fn a_replayed_lagging_not_found_no_longer_leaks_the_vm() {
    let steps = [
        Step::Fault {
            action: Some(CloudAction::DeleteInstances),
            fault: CloudFault::LostAnswer,
        },
        Step::Create { r: 0, adopt: None },
        Step::Reconcile {
            replica: 0,
            r: 0,
            stale: false,
        },
        Step::Lag { calls: 3 },
        Step::Reconcile {
            replica: 0,
            r: 0,
            stale: false,
        },
        Step::Delete { r: 0 },
        Step::Reconcile {
            replica: 1,
            r: 0,
            stale: false,
        },
    ];
    FORCE_STRICT.with(|f| f.set(true));
    let got = run(&steps);
    FORCE_STRICT.with(|f| f.set(false));
    assert!(got.is_ok(), "{got:?}");
}
