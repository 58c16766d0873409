//! The apply path as data: observe (what the object and the cloud say, `ApplyFacts`),
//! validate (`drift`, no VM and no spec.create), plan (`plan`: the next step), act
//! (`apply::run`, which feeds each answer back), report (`report`: status, Events, requeue).
//! `plan`, `report` and `drift` are pure: no cloud, no Kubernetes, no clock.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::ownership;
use super::reasons::{Cond, EventNote, Reason};
use super::update_plan::{self, Field, UpdateFacts, UpdateStep};
use crate::api::{
    remove_condition, set_condition, CreateSpec, EcsInstance, EcsInstanceStatus, FINGERPRINT_V2,
    MAX_COUNTER, RELEASE_ANNOTATION,
};
use crate::cloud::{CloudError, Instance};

/// States in which a VM is settled: polled at the resync pace, not the transition pace.
const SETTLED: &[&str] = &["RUNNING", "STOPPED", "ERROR"];

/// What is known about a live resource. The first block comes from the object and the
/// settings; each `Option` after it is the answer to a step, `None` until that step ran.
#[derive(Debug, Clone)]
pub struct ApplyFacts {
    pub generation: Option<i64>,
    /// The status being built (the one read, with the region and the VM filled in).
    pub status: EcsInstanceStatus,
    pub region: String,
    pub has_create: bool,
    /// Why spec.create cannot be sent as it is (`create_problem`); no RunInstances then.
    pub create_problem: Option<&'static str>,
    /// This operator created the VM (spec.create, and a create was recorded).
    pub created_by_us: bool,
    pub spec_protection: Option<bool>,
    pub recreate_missing: bool,
    pub appear_window: Duration,
    pub now: Timestamp,
    /// Immutable fields the spec changed (`drift`).
    pub drift: Vec<String>,
    /// The conditions as read (for "first time" Events).
    pub was_ready: Option<bool>,
    pub had_ready: bool,
    pub synced_reason: Option<String>,
    pub ready_reason: Option<String>,

    /// The VM tagged with this resource's uid, before creating one (a crash after
    /// RunInstances, before the status write).
    pub lookup: Option<Result<Option<String>, CloudError>>,
    /// DescribeInstances of the VM.
    pub observed: Option<Result<Option<Instance>, CloudError>>,
    /// The claim step passed: the VM is this resource's.
    pub owned: bool,
    /// ModifyInstanceAttribute DeletionProtection: its RequestId, or the failure.
    pub protection: Option<Result<String, CloudError>>,
    /// `spec.managementPolicy: ObserveOnly`: read and report only.
    pub observe_only: bool,
    /// In-place updates of the mutable fields: what the spec wants, what differs, and the
    /// answers of this reconcile's update calls.
    pub update: UpdateFacts,
}

impl ApplyFacts {
    pub fn of(
        obj: &EcsInstance,
        region: &str,
        recreate_missing: bool,
        appear_window: Duration,
        now: Timestamp,
    ) -> ApplyFacts {
        let mut status = obj.status.clone().unwrap_or_default();
        status.region.get_or_insert_with(|| region.to_string());
        let drift = drift(obj, &status);
        migrate_create_hash(obj, &mut status);
        let wanted = update_plan::wanted(obj);
        let since = |t: &Time| Duration::try_from(now.duration_since(t.0)).unwrap_or_default();
        let update = UpdateFacts {
            stopped_for: status.stopped_for_update_at.as_ref().map(since),
            type_change_refused: wanted.as_ref().is_some_and(|w| {
                status.refused_instance_type.as_deref() == Some(w.instance_type.as_str())
            }),
            exhausted: status.update_attempt.unwrap_or(0) >= MAX_COUNTER,
            restore_only: !drift.is_empty(),
            wanted,
            ..Default::default()
        };
        if let Some(id) = obj.owned_instance_id() {
            status.instance_id = Some(id.to_string());
        }
        let ready = obj.condition(Cond::Ready.as_str());
        ApplyFacts {
            generation: obj.metadata.generation,
            region: region.to_string(),
            has_create: obj.spec.create.is_some(),
            create_problem: obj.spec.create.as_ref().and_then(create_problem),
            created_by_us: obj.spec.create.is_some() && status.create_hash.is_some(),
            spec_protection: obj.spec.deletion_protection,
            recreate_missing,
            appear_window,
            now,
            drift,
            was_ready: ready.map(|c| c.status == "True"),
            had_ready: ready.is_some(),
            synced_reason: obj
                .condition(Cond::Synced.as_str())
                .map(|c| c.reason.clone()),
            ready_reason: ready.map(|c| c.reason.clone()),
            status,
            lookup: None,
            observed: None,
            owned: false,
            protection: None,
            observe_only: obj.observe_only(),
            update,
        }
    }

    /// Records the DescribeInstances answer, and what differs from the spec.
    pub fn observe(&mut self, r: Result<Option<Instance>, CloudError>) {
        let u = &mut self.update;
        if let (Ok(Some(inst)), Some(w)) = (&r, &u.wanted) {
            u.diff = update_plan::diff(w, inst, &self.status.managed_tag_keys);
            let digest = update_plan::digest(&u.diff);
            u.recently_sent = self.status.last_update.as_ref().is_some_and(|l| {
                let age = self.now.duration_since(l.at.0);
                l.digest == digest
                    && Duration::try_from(age).is_ok_and(|a| a < update_plan::UPDATE_SETTLE)
            });
        }
        if let Ok(Some(inst)) = &r {
            u.vm_status = inst.status.clone();
            u.vm_type = inst.instance_type_id.clone();
            u.vm_tag_keys = inst.tags.iter().map(|t| t.key.clone()).collect();
        }
        self.observed = Some(r);
    }

    fn instance_id(&self) -> Option<&str> {
        self.status.instance_id.as_deref().filter(|s| !s.is_empty())
    }

    /// A RunInstances was sent for this resource (it may still be appearing).
    fn create_sent(&self) -> bool {
        self.status.run_instances_at.is_some() || self.status.create_hash.is_some()
    }

    fn inst(&self) -> Option<&Instance> {
        self.observed.as_ref()?.as_ref().ok()?.as_ref()
    }
}

/// What the CRD's rules reject at admission and the operator still meets in resources stored
/// before them: `Volumes.1` is the system disk, so without one the first data disk would
/// become it.
pub fn create_problem(create: &CreateSpec) -> Option<&'static str> {
    create.system_volume.is_none().then_some(
        "spec.create.systemVolume is required: Volumes.1 is the system disk of the VM, and nothing is created without one",
    )
}

/// A status written before in-place updates fingerprinted the whole `spec.create`. If it
/// still matches, the spec is unchanged: record the new fingerprint and the tags
/// RunInstances wrote as the managed keys. A mismatch cannot say which field changed (the
/// host name and user data were not refused at admission then): it stays, and `drift`
/// keeps reporting it until the spec is put back as it was.
fn migrate_create_hash(obj: &EcsInstance, st: &mut EcsInstanceStatus) {
    let (Some(create), Some(have)) = (obj.spec.create.as_ref(), st.create_hash.as_deref()) else {
        return;
    };
    if have.starts_with(FINGERPRINT_V2) || create.legacy_fingerprint() != have {
        return;
    }
    st.create_hash = Some(create.fingerprint());
    if st.managed_tag_keys.is_empty() {
        st.managed_tag_keys = create.tags.keys().cloned().collect();
    }
}

/// Immutable fields: report a change instead of silently ignoring it or acting on it.
pub fn drift(obj: &EcsInstance, st: &EcsInstanceStatus) -> Vec<String> {
    let mut drift = Vec::new();
    if let (Some(want), Some(have)) = (obj.spec.instance_id.as_deref(), st.instance_id.as_deref()) {
        if want != have {
            drift.push(format!("spec.instanceId changed from {have} to {want}"));
        }
    }
    if let (Some(want), Some(have)) = (obj.spec.region.as_deref(), st.region.as_deref()) {
        if want != have {
            drift.push(format!("spec.region changed from {have} to {want}"));
        }
    }
    if let (Some(create), Some(have)) = (obj.spec.create.as_ref(), st.create_hash.as_deref()) {
        if have.starts_with(FINGERPRINT_V2) && create.fingerprint() != have {
            drift.push("spec.create changed after the VM was created".to_string());
        } else if !have.starts_with(FINGERPRINT_V2) && create.legacy_fingerprint() != have {
            drift.push("spec.create changed after the VM was created, recorded by an operator version without in-place updates, which cannot tell which field changed: put spec.create back as it was when the VM was created, then change the name, description, tags or type again".to_string());
        }
    }
    drift
}

/// The Warning Event of an escape-hatch annotation on a live resource.
pub fn annotation_note(obj: &EcsInstance) -> Option<EventNote> {
    let set = obj
        .metadata
        .annotations
        .as_ref()?
        .contains_key(RELEASE_ANNOTATION);
    set.then(|| EventNote::warning(Reason::ReleaseAnnotationIgnored, "Observe", format!("annotation {RELEASE_ANNOTATION} has no effect while the resource is not being deleted; remove it unless you mean to release this resource without deleting its VM when it is deleted")))
}

/// The next step of a live resource.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyStep {
    /// Before creating: is there a VM tagged with this resource's uid already?
    LookUpByUid,
    /// Adopt the VM an earlier run created for this uid.
    Adopt {
        id: String,
    },
    /// RunInstances (user data, the guarded status write, the call).
    Create,
    Describe {
        id: String,
    },
    /// Seen once: it has appeared; clear `runInstancesAt` (a replacing write).
    MarkSeen,
    /// Claim the VM for this resource, or refuse it (`apply::ensure_owned`).
    EnsureOwned {
        inst: Box<Instance>,
    },
    /// Deletion protection follows the spec in both directions while the resource lives.
    SetProtection {
        id: String,
        want: bool,
    },
    /// Converge a mutable field (`update_plan`).
    Update {
        id: String,
        step: UpdateStep,
    },
    Done(ApplyOutcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Neither spec.instanceId nor spec.create.
    InvalidSpec,
    /// A cloud call failed: condition, Warning Event, backoff.
    Failed(Call),
    /// A VM created moments ago that DescribeInstances does not list yet.
    Appearing,
    /// The VM vanished and the user chose re-creation.
    Recreate,
    /// The VM vanished: report it.
    Missing,
    /// The VM is observed: report what it is doing.
    Observed,
}

/// The cloud call a failure comes from (its name is the Event's action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Lookup,
    Describe,
    Protection,
    Update,
}

fn done(o: ApplyOutcome) -> ApplyStep {
    ApplyStep::Done(o)
}

/// The planner. Pure.
pub fn plan(f: &ApplyFacts) -> ApplyStep {
    let id = match (f.instance_id(), &f.lookup) {
        (Some(id), _) => id.to_string(),
        // ObserveOnly never creates (the schema requires spec.instanceId with it).
        (None, _) if f.observe_only => return done(ApplyOutcome::InvalidSpec),
        (None, _) if !f.has_create => return done(ApplyOutcome::InvalidSpec),
        (None, None) => return ApplyStep::LookUpByUid,
        (None, Some(Err(_))) => return done(ApplyOutcome::Failed(Call::Lookup)),
        (None, Some(Ok(Some(id)))) => return ApplyStep::Adopt { id: id.clone() },
        // A create already sent (before the rule) is left to appear as usual.
        (None, Some(Ok(None))) if f.create_problem.is_some() && !f.create_sent() => {
            return done(ApplyOutcome::InvalidSpec)
        }
        (None, Some(Ok(None))) => return ApplyStep::Create,
    };
    let inst = match &f.observed {
        None => return ApplyStep::Describe { id },
        Some(Err(_)) => return done(ApplyOutcome::Failed(Call::Describe)),
        Some(Ok(None)) => return done(missing(f)),
        Some(Ok(Some(inst))) => inst,
    };
    if f.status.run_instances_at.is_some() {
        return ApplyStep::MarkSeen;
    }
    // ObserveOnly: no claim, no protection change; what was seen is the whole report.
    if f.observe_only {
        return done(ApplyOutcome::Observed);
    }
    // One VM, one owner: claim it (or see that it is ours) before anything else touches it.
    if !f.owned {
        return ApplyStep::EnsureOwned {
            inst: Box::new(inst.clone()),
        };
    }
    // A VM the operator stopped is started again before anything else may hold it.
    if f.update.stopped_by_us() && f.update.vm_status == "STOPPED" {
        if let Some(step) = update_plan::plan(&f.update) {
            return ApplyStep::Update { id, step };
        }
    }
    match (f.spec_protection, &f.protection) {
        (Some(want), None) if inst.deletion_protection.unwrap_or(false) != want => {
            return ApplyStep::SetProtection { id, want }
        }
        (_, Some(Err(_))) => return done(ApplyOutcome::Failed(Call::Protection)),
        _ => {}
    }
    // A resource whose immutable fields were edited is stalled: nothing is converged.
    if !f.drift.is_empty() {
        return done(ApplyOutcome::Observed);
    }
    if let Some(step) = update_plan::plan(&f.update) {
        return ApplyStep::Update { id, step };
    }
    match update_failure(f) {
        Some(_) => done(ApplyOutcome::Failed(Call::Update)),
        None => done(ApplyOutcome::Observed),
    }
}

/// The update call that failed in this reconcile, with its action's name.
fn update_failure(f: &ApplyFacts) -> Option<(&'static str, &CloudError)> {
    f.update.failure()
}

/// DescribeInstances does not list the VM: appearing (never vanished within the window),
/// re-created (the user's choice, for a VM this operator made), or reported.
fn missing(f: &ApplyFacts) -> ApplyOutcome {
    let run_at = f.status.run_instances_at.as_ref();
    if ownership::appearing_at(run_at, f.appear_window, f.now) {
        return ApplyOutcome::Appearing;
    }
    let generation = f.status.create_generation.unwrap_or(0);
    if f.recreate_missing && f.created_by_us && !f.observe_only && generation < MAX_COUNTER {
        ApplyOutcome::Recreate
    } else {
        ApplyOutcome::Missing
    }
}

/// How the status is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// A merge patch, only when the status changed.
    Merge,
    /// Replace the whole status (a merge patch cannot unset a field).
    Replace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyThen {
    Backoff,
    /// Look again soon (`--transition-poll`).
    Poll,
    Resync,
    /// Right away: a re-creation starts.
    Soon,
    AwaitChange,
}

impl ApplyThen {
    pub const SOON: Duration = Duration::from_millis(200);
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApplyReport {
    pub status: EcsInstanceStatus,
    pub write: Write,
    pub events: Vec<EventNote>,
    pub then: ApplyThen,
    /// The resource is healthy: its backoff starts over.
    pub reset_backoff: bool,
    /// The mutable fields that differ from the spec (`None`: not observed now).
    pub drift: Option<Vec<Field>>,
}

fn cond(st: &mut EcsInstanceStatus, f: &ApplyFacts, t: Cond, on: bool, r: Reason, msg: &str) {
    set_condition(
        &mut st.conditions,
        t.as_str(),
        on,
        r.as_str(),
        msg,
        f.generation,
    );
}

fn merge(status: EcsInstanceStatus, events: Vec<EventNote>, then: ApplyThen) -> ApplyReport {
    ApplyReport {
        status,
        write: Write::Merge,
        events,
        then,
        reset_backoff: false,
        drift: None,
    }
}

/// The reporter. Pure.
pub fn report(f: &ApplyFacts, o: ApplyOutcome) -> ApplyReport {
    let id = f.instance_id().unwrap_or_default();
    let mut st = f.status.clone();
    match o {
        ApplyOutcome::InvalidSpec => {
            let msg = f
                .create_problem
                .filter(|_| f.has_create)
                .unwrap_or("set spec.instanceId to adopt a VM, or spec.create to create one");
            for (t, on) in [
                (Cond::Ready, false),
                (Cond::Synced, false),
                (Cond::Stalled, true),
            ] {
                cond(&mut st, f, t, on, Reason::InvalidSpec, msg);
            }
            st.observed_generation = f.generation;
            merge(st, vec![], ApplyThen::AwaitChange)
        }
        ApplyOutcome::Failed(call) => {
            let (what, e) = match (call, &f.lookup, &f.observed, &f.protection) {
                (Call::Lookup, Some(Err(e)), ..) | (Call::Describe, _, Some(Err(e)), _) => {
                    ("DescribeInstances", e)
                }
                (Call::Protection, .., Some(Err(e))) => ("ModifyInstanceAttribute", e),
                (Call::Update, ..) => match update_failure(f) {
                    Some((what, e)) => {
                        let mut r = report_observed(f, st, id);
                        let st = std::mem::take(&mut r.status);
                        return ApplyReport {
                            drift: r.drift,
                            ..failure(f, st, what, e)
                        };
                    }
                    None => return merge(st, vec![], ApplyThen::Backoff),
                },
                // Not reachable from `plan`.
                _ => return merge(st, vec![], ApplyThen::Backoff),
            };
            failure(f, st, what, e)
        }
        ApplyOutcome::Appearing => report_appearing(f, st, id),
        ApplyOutcome::Recreate => {
            // Forget the vanished VM and create a new one with a new token (the old token
            // would replay the old, now deleted, VM).
            let generation = st
                .create_generation
                .unwrap_or(0)
                .saturating_add(1)
                .min(MAX_COUNTER);
            let msg = format!("VM {id} vanished outside Kubernetes; creating a new one (--on-missing-instance Recreate)");
            st.instance_id = None;
            st.create_requested = None;
            st.create_hash = None;
            st.create_generation = Some(generation);
            st.run_instances_at = None;
            st.ownership = None;
            st.instance_status = Some("NotFound".into());
            cond(&mut st, f, Cond::Ready, false, Reason::Recreating, &msg);
            ApplyReport {
                write: Write::Replace,
                ..merge(
                    st,
                    vec![EventNote::warning(Reason::Recreating, "Observe", msg)],
                    ApplyThen::Soon,
                )
            }
        }
        ApplyOutcome::Missing => report_missing(f, st, id),
        ApplyOutcome::Observed => report_observed(f, st, id),
    }
}

/// spec.create cannot be sent (its user data cannot be read): condition, Warning Event,
/// backoff.
pub fn create_refused(f: &ApplyFacts, reason: Reason, msg: String) -> ApplyReport {
    let mut st = f.status.clone();
    for t in [Cond::Ready, Cond::Synced] {
        cond(&mut st, f, t, false, reason, &msg);
    }
    // This generation was seen and answered (with a refusal): without it, a health check
    // that compares observedGeneration with metadata.generation (ours for Argo CD does,
    // after its Degraded rules) reads "waiting for the operator to observe generation N".
    st.observed_generation = f.generation;
    merge(
        st,
        vec![EventNote::warning(reason, "Create", msg)],
        ApplyThen::Backoff,
    )
}

/// The first RunInstances of this generation: the status says a VM may exist from now on.
pub fn record_intent(st: &mut EcsInstanceStatus, create_hash: &str, generation: Option<i64>) {
    if st.create_requested != Some(true) {
        st.create_requested = Some(true);
        st.create_hash = Some(create_hash.to_string());
        let (ready, creating) = (Cond::Ready.as_str(), Reason::Creating.as_str());
        set_condition(
            &mut st.conditions,
            ready,
            false,
            creating,
            "RunInstances sent",
            generation,
        );
    }
}

/// A cloud call failed while applying: condition, Warning Event, backoff. Never fatal.
pub fn failure(
    f: &ApplyFacts,
    mut st: EcsInstanceStatus,
    what: &'static str,
    e: &CloudError,
) -> ApplyReport {
    let reason = Reason::cloud(e.class());
    let msg = format!("{what}: {e}");
    cond(&mut st, f, Cond::Synced, false, reason, &msg);
    if !f.had_ready {
        cond(&mut st, f, Cond::Ready, false, reason, &msg);
    }
    let ev = EventNote {
        warning: true,
        reason,
        action: what,
        note: msg,
    };
    merge(st, vec![ev], ApplyThen::Backoff)
}

/// A VM this resource created moments ago that DescribeInstances does not list yet: it is
/// appearing (eventual consistency), never vanished, and nothing is re-created.
fn report_appearing(f: &ApplyFacts, mut st: EcsInstanceStatus, id: &str) -> ApplyReport {
    let msg = format!(
        "VM {id} was created moments ago and DescribeInstances does not list it yet (eventual consistency); waiting up to {}s after RunInstances",
        f.appear_window.as_secs()
    );
    let r = Reason::InstanceAppearing;
    cond(&mut st, f, Cond::Ready, false, r, &msg);
    cond(&mut st, f, Cond::Synced, true, r, "");
    cond(&mut st, f, Cond::Reconciling, true, r, &msg);
    remove_condition(&mut st.conditions, Cond::Stalled.as_str());
    st.observed_generation = f.generation;
    merge(st, vec![], ApplyThen::Poll)
}

fn report_missing(f: &ApplyFacts, mut st: EcsInstanceStatus, id: &str) -> ApplyReport {
    let msg = format!("VM {id} does not exist in {}; it was deleted outside Kubernetes or never existed. Nothing is re-created (--on-missing-instance Report): delete this resource, or point spec.instanceId at another VM", f.region);
    let r = Reason::InstanceNotFound;
    st.instance_status = Some("NotFound".into());
    cond(&mut st, f, Cond::Ready, false, r, &msg);
    cond(&mut st, f, Cond::Synced, true, Reason::Observed, "");
    cond(&mut st, f, Cond::Stalled, true, r, &msg);
    remove_condition(&mut st.conditions, Cond::Reconciling.as_str());
    st.observed_generation = f.generation;
    let first = f.ready_reason.as_deref() != Some(r.as_str());
    let events = if first {
        vec![EventNote::warning(r, "Observe", msg)]
    } else {
        vec![]
    };
    merge(st, events, ApplyThen::Resync)
}

/// The VM as DescribeInstances shows it (with the protection just set, if any).
fn report_observed(f: &ApplyFacts, mut st: EcsInstanceStatus, id: &str) -> ApplyReport {
    let Some(inst) = f.inst() else {
        return merge(st, vec![], ApplyThen::Backoff);
    };
    let mut events = Vec::new();
    fill_observed(&mut st, inst);
    if let (Some(Ok(_)), Some(want)) = (&f.protection, f.spec_protection) {
        st.deletion_protection = Some(want);
    }
    let running = inst.status == "RUNNING";
    let settled = SETTLED.contains(&inst.status.as_str());
    let ready_msg = format!("VM {id} is {}", inst.status);
    let ready = if running {
        Reason::InstanceRunning
    } else {
        Reason::InstanceNotRunning
    };
    cond(&mut st, f, Cond::Ready, running, ready, &ready_msg);
    update_bookkeeping(f, &mut st);
    let u = &f.update;
    if f.drift.is_empty() && u.diff.is_empty() {
        cond(&mut st, f, Cond::Synced, true, Reason::Observed, "");
        remove_condition(&mut st.conditions, Cond::Stalled.as_str());
    } else if f.drift.is_empty() {
        let r = Reason::Drifted;
        let msg = drift_message(f);
        cond(&mut st, f, Cond::Synced, false, r, &msg);
        remove_condition(&mut st.conditions, Cond::Stalled.as_str());
        if f.synced_reason.as_deref() != Some(r.as_str()) {
            events.push(EventNote::warning(r, "Observe", msg));
        }
    } else {
        let r = Reason::ImmutableFieldChanged;
        let msg = format!(
            "{}; the change is ignored (these fields are immutable)",
            f.drift.join("; ")
        );
        cond(&mut st, f, Cond::Synced, false, r, &msg);
        cond(&mut st, f, Cond::Stalled, true, r, &msg);
        if f.synced_reason.as_deref() != Some(r.as_str()) {
            events.push(EventNote::warning(r, "Update", msg));
        }
    }
    // An update sent is checked soon (the next DescribeInstances must show it); a VM the
    // operator stopped is watched until it runs again, and reads as work in progress
    // (kstatus, Argo CD), not as a VM someone stopped.
    let updating = update_sent(u).is_some() || st.stopped_for_update_at.is_some();
    if updating {
        let msg = format!("updating VM {id} in place ({})", inst.status);
        cond(&mut st, f, Cond::Reconciling, true, Reason::Drifted, &msg);
    } else if settled {
        remove_condition(&mut st.conditions, Cond::Reconciling.as_str());
    } else {
        cond(
            &mut st,
            f,
            Cond::Reconciling,
            true,
            Reason::InstanceTransitioning,
            &ready_msg,
        );
    }
    st.observed_generation = f.generation;
    if running && f.was_ready != Some(true) {
        events.push(EventNote::normal(Reason::Ready, "Observe", ready_msg));
    }
    ApplyReport {
        reset_backoff: true,
        drift: Some(u.diff.fields()),
        ..merge(
            st,
            events,
            if settled && !updating {
                ApplyThen::Resync
            } else {
                ApplyThen::Poll
            },
        )
    }
}

/// The update calls of this reconcile the cloud accepted, as "Action (RequestId r)".
fn update_sent(u: &UpdateFacts) -> Option<String> {
    let sent: Vec<String> = u
        .answers()
        .into_iter()
        .filter_map(|(what, a)| match a {
            Some(Ok(req)) => Some(format!("{what} (RequestId {req})")),
            _ => None,
        })
        .collect();
    (!sent.is_empty()).then(|| sent.join(", "))
}

/// `Drifted`: what differs, what was sent to correct it, and what waits and why.
fn drift_message(f: &ApplyFacts) -> String {
    let u = &f.update;
    let mut msg = format!(
        "the VM differs from the spec: {}",
        u.diff.describe().join("; ")
    );
    if let Some(sent) = update_sent(u) {
        msg.push_str(&format!("; sent {sent}"));
    }
    for w in update_plan::pending_words(u) {
        msg.push_str("; ");
        msg.push_str(&w);
    }
    msg
}

/// The status fields the update calls of this reconcile change: the tag keys the operator
/// manages, the last accepted update, the VM it stopped and started again, a type refused
/// for good.
fn update_bookkeeping(f: &ApplyFacts, st: &mut EcsInstanceStatus) {
    let u = &f.update;
    if let (Some(Ok(_)), Some(w)) = (&u.tag, &u.wanted) {
        st.managed_tag_keys = update_plan::with_spec_keys(&st.managed_tag_keys, w);
    }
    if let Some(Ok(_)) = &u.untag {
        st.managed_tag_keys
            .retain(|k| !u.diff.tags_remove.contains(k));
    }
    // A key neither the spec nor the VM has any more is no longer ours: if someone adds it
    // later, it is theirs.
    if let (Some(w), false) = (&u.wanted, u.vm_status.is_empty()) {
        st.managed_tag_keys
            .retain(|k| w.tags.contains_key(k) || u.vm_tag_keys.contains(k));
    }
    // Stop and start change no field: only the field updates settle (`status.lastUpdate`).
    let accepted = u.answers().into_iter().any(|(what, a)| {
        !matches!(what, "StopInstances" | "StartInstances") && matches!(a, Some(Ok(_)))
    });
    if accepted {
        st.last_update = Some(crate::api::LastUpdate {
            digest: update_plan::digest(&u.diff),
            at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(f.now),
        });
    }
    restart_bookkeeping(u, st);
}

fn restart_bookkeeping(u: &UpdateFacts, st: &mut EcsInstanceStatus) {
    let want = u.diff.instance_type.as_ref().map(|(_, w)| w.clone());
    let started = matches!(u.start, Some(Ok(_)));
    // Started because the type change was refused, or did not show in time: that type is
    // not stopped for again.
    if u.spec_refused() || (started && u.overdue()) {
        if let Some(w) = &want {
            st.refused_instance_type = Some(w.clone());
        }
    }
    let wanted_type = u.wanted.as_ref().map(|w| w.instance_type.as_str());
    let refused_other = st.refused_instance_type.as_deref() != wanted_type;
    if (u.vm_type.is_some() && u.vm_type.as_deref() == wanted_type) || refused_other {
        st.refused_instance_type = None;
    }
    // Started by us: nothing to restore any more. Seen running long after the decision to
    // stop (someone else started it, or the stop never happened): forget it too.
    let running = matches!(u.vm_status.as_str(), "RUNNING" | "STARTING");
    let stale = running && u.stop.is_none() && !u.marked_stopping && u.overdue();
    if started || stale {
        st.stopped_for_update_at = None;
    }
}

fn fill_observed(st: &mut EcsInstanceStatus, inst: &Instance) {
    st.instance_status = Some(inst.status.clone());
    st.private_ip = inst.primary_ip().map(str::to_string);
    st.public_ip = inst.public_ip().map(str::to_string);
    st.zone_id = inst.zone_id.clone();
    st.instance_type_id = inst.instance_type_id.clone();
    st.created_at = inst.created_at.clone();
    st.deletion_protection = inst.deletion_protection;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CreateSpec, EcsInstanceSpec};
    use crate::cloud::model::Action as CloudAction;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const ID: &str = "i-1";

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn err() -> CloudError {
        CloudError::Api {
            action: CloudAction::DescribeInstances,
            code: "InternalError".into(),
            code_n: None,
            message: "m".into(),
            status: 500,
            request_id: "req-e".into(),
        }
    }

    fn create_spec() -> CreateSpec {
        serde_json::from_value(serde_json::json!({
            "zoneId": "z", "imageId": "img", "instanceTypeId": "t", "subnetId": "s",
            "securityGroupIds": ["sg"], "systemVolume": {"size": 40}
        }))
        .unwrap()
    }

    fn obj(instance_id: Option<&str>, create: bool) -> EcsInstance {
        let spec = EcsInstanceSpec {
            instance_id: instance_id.map(str::to_string),
            create: create.then(create_spec),
            ..Default::default()
        };
        let mut o = EcsInstance::new("vm", spec);
        o.metadata.generation = Some(2);
        o
    }

    fn facts(o: &EcsInstance) -> ApplyFacts {
        ApplyFacts::of(o, "r1", false, Duration::from_secs(600), t(0))
    }

    fn inst(status: &str, protection: Option<bool>) -> Instance {
        Instance {
            instance_id: ID.into(),
            status: status.into(),
            deletion_protection: protection,
            ..Default::default()
        }
    }

    /// An adopted VM, described, owned.
    fn seen(status: &str) -> ApplyFacts {
        let mut f = facts(&obj(Some(ID), false));
        f.observed = Some(Ok(Some(inst(status, None))));
        f.owned = true;
        f
    }

    /// Created by this operator, not listed now; `ran`: seconds since RunInstances.
    fn vanished(ran: Option<i64>, recreate: bool, generation: u32) -> ApplyFacts {
        let mut o = obj(None, true);
        o.status = Some(EcsInstanceStatus {
            instance_id: Some(ID.into()),
            create_requested: Some(true),
            create_hash: Some(create_spec().fingerprint()),
            create_generation: Some(generation),
            run_instances_at: ran.map(|s| Time(t(-s))),
            ..Default::default()
        });
        let mut f = facts(&o);
        f.recreate_missing = recreate;
        f.observed = Some(Ok(None));
        f
    }

    fn d(o: ApplyOutcome) -> ApplyStep {
        ApplyStep::Done(o)
    }

    /// One row per branch of the apply path: adopt or create, observe, claim, protection.
    #[test]
    fn apply_plan_table() {
        use ApplyOutcome as O;
        let creating = |lookup: Option<Result<Option<&str>, CloudError>>| {
            let mut f = facts(&obj(None, true));
            f.lookup = lookup.map(|r| r.map(|o| o.map(str::to_string)));
            f
        };
        let no_system_volume = || {
            let mut o = obj(None, true);
            if let Some(c) = o.spec.create.as_mut() {
                c.system_volume = None;
            }
            let mut f = facts(&o);
            f.lookup = Some(Ok(None));
            f
        };
        let adopted = |observed: Option<Result<Option<Instance>, CloudError>>| {
            let mut f = facts(&obj(Some(ID), false));
            f.observed = observed;
            f
        };
        let protection =
            |spec: Option<bool>, vm: Option<bool>, answer: Option<Result<String, CloudError>>| {
                let mut f = seen("RUNNING");
                f.spec_protection = spec;
                f.observed = Some(Ok(Some(inst("RUNNING", vm))));
                f.protection = answer;
                f
            };
        let first_seen = {
            let mut f = seen("RUNNING");
            f.status.run_instances_at = Some(Time(t(-1)));
            f
        };
        let unowned = {
            let mut f = seen("RUNNING");
            f.owned = false;
            f
        };
        let boxed = Box::new(inst("RUNNING", None));
        let observer = |f: ApplyFacts| ApplyFacts {
            observe_only: true,
            ..f
        };
        let set = |want| ApplyStep::SetProtection {
            id: ID.into(),
            want,
        };
        #[rustfmt::skip]
        let rows: Vec<(&str, ApplyFacts, ApplyStep)> = vec![
            ("neither instanceId nor create",           facts(&obj(None, false)),           d(O::InvalidSpec)),
            ("create: look for an earlier run's VM",    creating(None),                     ApplyStep::LookUpByUid),
            ("lookup fails: report, back off",          creating(Some(Err(err()))),         d(O::Failed(Call::Lookup))),
            ("found one: adopt it",                     creating(Some(Ok(Some(ID)))),       ApplyStep::Adopt { id: ID.into() }),
            ("none: create",                            creating(Some(Ok(None))),           ApplyStep::Create),
            ("none, no system volume: nothing created", no_system_volume(),                 d(O::InvalidSpec)),
            ("instanceId: describe",                    adopted(None),                      ApplyStep::Describe { id: ID.into() }),
            ("describe fails: report, back off",        adopted(Some(Err(err()))),          d(O::Failed(Call::Describe))),
            ("not listed, adopted: missing",            adopted(Some(Ok(None))),            d(O::Missing)),
            ("not listed within the window: appearing", vanished(Some(10), true, 0),        d(O::Appearing)),
            ("not listed after the window: missing",    vanished(Some(601), false, 0),      d(O::Missing)),
            ("vanished, Recreate: re-create",           vanished(None, true, 0),            d(O::Recreate)),
            ("vanished, Recreate, generation at bound", vanished(None, true, MAX_COUNTER),  d(O::Missing)),
            ("listed the first time: mark it seen",     first_seen,                         ApplyStep::MarkSeen),
            ("not yet claimed: claim or refuse",        unowned.clone(),                          ApplyStep::EnsureOwned { inst: boxed }),
            ("protection wanted on, VM off: set",       protection(Some(true), None, None), set(true)),
            ("protection wanted off, VM on: set",       protection(Some(false), Some(true), None), set(false)),
            ("protection as wanted: observed",          protection(Some(true), Some(true), None), d(O::Observed)),
            ("protection unset in spec: left alone",    protection(None, Some(true), None), d(O::Observed)),
            ("protection set: observed",                protection(Some(true), None, Some(Ok("req".into()))), d(O::Observed)),
            ("protection call fails: report",           protection(Some(true), None, Some(Err(err()))), d(O::Failed(Call::Protection))),
            // ObserveOnly: describe and report; never create, claim, re-create or protect.
            ("observer without instanceId: nothing",    observer(creating(Some(Ok(None)))), d(O::InvalidSpec)),
            ("observer: describe",                      observer(adopted(None)),            ApplyStep::Describe { id: ID.into() }),
            ("observer, not claimed: observed",         observer(unowned.clone()),          d(O::Observed)),
            ("observer, protection differs: observed",  observer(protection(Some(true), None, None)), d(O::Observed)),
            ("observer, vanished: missing, no re-create", observer(vanished(None, true, 0)), d(O::Missing)),
        ];
        for (what, f, want) in rows {
            assert_eq!(plan(&f), want, "{what}");
        }
    }

    fn conds(r: &ApplyReport) -> Vec<(String, String, String)> {
        r.status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn c(t: &str, s: &str, r: Reason) -> (String, String, String) {
        (t.into(), s.into(), r.as_str().into())
    }

    /// (what, facts, outcome, conditions, Events (warning, reason), requeue, write)
    type Row = (
        &'static str,
        ApplyFacts,
        ApplyOutcome,
        Vec<(String, String, String)>,
        Vec<(bool, Reason)>,
        ApplyThen,
        Write,
    );

    #[test]
    fn apply_report_table() {
        use ApplyOutcome as O;
        use Reason as R;
        let drifted = {
            let mut f = seen("RUNNING");
            f.drift = vec!["spec.region changed from a to b".into()];
            f
        };
        let failed_describe = {
            let mut f = facts(&obj(Some(ID), false));
            f.observed = Some(Err(err()));
            f
        };
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("invalid spec", facts(&obj(None, false)), O::InvalidSpec,
                vec![c("Ready", "False", R::InvalidSpec), c("Synced", "False", R::InvalidSpec), c("Stalled", "True", R::InvalidSpec)], vec![], ApplyThen::AwaitChange, Write::Merge),
            ("describe failed", failed_describe, O::Failed(Call::Describe),
                vec![c("Synced", "False", R::CloudError), c("Ready", "False", R::CloudError)], vec![(true, R::CloudError)], ApplyThen::Backoff, Write::Merge),
            ("appearing", vanished(Some(10), false, 0), O::Appearing,
                vec![c("Ready", "False", R::InstanceAppearing), c("Synced", "True", R::InstanceAppearing), c("Reconciling", "True", R::InstanceAppearing)], vec![], ApplyThen::Poll, Write::Merge),
            ("recreate", vanished(None, true, 0), O::Recreate,
                vec![c("Ready", "False", R::Recreating)], vec![(true, R::Recreating)], ApplyThen::Soon, Write::Replace),
            ("missing", vanished(None, false, 0), O::Missing,
                vec![c("Ready", "False", R::InstanceNotFound), c("Synced", "True", R::Observed), c("Stalled", "True", R::InstanceNotFound)], vec![(true, R::InstanceNotFound)], ApplyThen::Resync, Write::Merge),
            ("running", seen("RUNNING"), O::Observed,
                vec![c("Ready", "True", R::InstanceRunning), c("Synced", "True", R::Observed)], vec![(false, R::Ready)], ApplyThen::Resync, Write::Merge),
            ("stopped", seen("STOPPED"), O::Observed,
                vec![c("Ready", "False", R::InstanceNotRunning), c("Synced", "True", R::Observed)], vec![], ApplyThen::Resync, Write::Merge),
            ("starting", seen("STARTING"), O::Observed,
                vec![c("Ready", "False", R::InstanceNotRunning), c("Synced", "True", R::Observed), c("Reconciling", "True", R::InstanceTransitioning)], vec![], ApplyThen::Poll, Write::Merge),
            ("immutable field changed", drifted, O::Observed,
                vec![c("Ready", "True", R::InstanceRunning), c("Synced", "False", R::ImmutableFieldChanged), c("Stalled", "True", R::ImmutableFieldChanged)], vec![(true, R::ImmutableFieldChanged), (false, R::Ready)], ApplyThen::Resync, Write::Merge),
        ];
        for (what, f, o, want_conds, events, then, write) in rows {
            let r = report(&f, o);
            assert_eq!(conds(&r), want_conds, "{what}");
            let got: Vec<_> = r.events.iter().map(|e| (e.warning, e.reason)).collect();
            assert_eq!(got, events, "{what}");
            assert_eq!((r.then, r.write), (then, write), "{what}");
            assert_eq!(r.reset_backoff, o == O::Observed, "{what}");
        }
    }

    #[test]
    fn apply_report_details() {
        // Recreate forgets the vanished VM and moves to the next token generation.
        let r = report(&vanished(None, true, 4), ApplyOutcome::Recreate);
        assert_eq!(r.status.instance_id, None);
        assert_eq!(r.status.create_generation, Some(5));
        assert_eq!(r.status.create_requested, None);
        assert_eq!(r.status.instance_status.as_deref(), Some("NotFound"));
        // Events said once: Ready on the flip, InstanceNotFound and the drift on the change.
        let mut f = seen("RUNNING");
        set_condition(
            &mut f.status.conditions,
            "Ready",
            true,
            "InstanceRunning",
            "m",
            Some(2),
        );
        f.was_ready = Some(true);
        assert!(report(&f, ApplyOutcome::Observed).events.is_empty());
        let mut f = vanished(None, false, 0);
        f.ready_reason = Some("InstanceNotFound".into());
        assert!(report(&f, ApplyOutcome::Missing).events.is_empty());
        // Protection just set is what the status shows.
        let mut f = seen("RUNNING");
        f.spec_protection = Some(true);
        f.protection = Some(Ok("req".into()));
        assert_eq!(
            report(&f, ApplyOutcome::Observed)
                .status
                .deletion_protection,
            Some(true)
        );
        // A failure keeps an existing Ready condition.
        let mut f = seen("RUNNING");
        f.had_ready = true;
        let r = failure(&f, f.status.clone(), "ModifyInstanceAttribute", &err());
        assert_eq!(conds(&r), vec![c("Synced", "False", Reason::CloudError)]);
        assert_eq!(r.events[0].action, "ModifyInstanceAttribute");
        // Unreadable user data: nothing is sent, the condition says why.
        let f = facts(&obj(None, true));
        let r = create_refused(&f, Reason::UserDataForbidden, "m".into());
        assert_eq!(
            conds(&r),
            vec![
                c("Ready", "False", Reason::UserDataForbidden),
                c("Synced", "False", Reason::UserDataForbidden)
            ]
        );
        assert_eq!((r.events[0].warning, r.then), (true, ApplyThen::Backoff));
        assert_eq!(r.status.observed_generation, f.generation);
        assert!(f.generation.is_some());
        // The intent is recorded once per generation (the hash of the first send stays).
        let mut st = EcsInstanceStatus::default();
        record_intent(&mut st, "h1", Some(1));
        record_intent(&mut st, "h2", Some(1));
        assert_eq!(
            (st.create_requested, st.create_hash.as_deref()),
            (Some(true), Some("h1"))
        );
        assert_eq!(st.conditions[0].reason, "Creating");
    }

    #[test]
    fn drift_names_each_immutable_field() {
        let mut o = obj(Some("i-2"), true);
        o.spec.region = Some("r2".into());
        let st = EcsInstanceStatus {
            instance_id: Some(ID.into()),
            region: Some("r1".into()),
            create_hash: Some("v2:other".into()),
            ..Default::default()
        };
        let d = drift(&o, &st);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(drift(&obj(Some(ID), false), &st).is_empty());
        // The mutable fields are not part of the fingerprint: editing them is no drift.
        let mut o = obj(None, true);
        let st = EcsInstanceStatus {
            create_hash: Some(create_spec().fingerprint()),
            ..Default::default()
        };
        if let Some(c) = o.spec.create.as_mut() {
            c.instance_name = Some("renamed".into());
            c.instance_type_id = "ecs.g3i.xlarge".into();
            c.description = Some("d".into());
            c.tags.insert("team".into(), "b".into());
        }
        assert!(drift(&o, &st).is_empty());
        if let Some(c) = o.spec.create.as_mut() {
            c.host_name = Some("h".into());
        }
        assert_eq!(drift(&o, &st).len(), 1);
    }

    /// A status written before in-place updates (a fingerprint of the whole spec.create)
    /// is moved to the new fingerprint, and RunInstances' tags become the managed keys.
    #[test]
    fn legacy_fingerprints_are_migrated_not_reported() {
        let mut o = obj(None, true);
        if let Some(c) = o.spec.create.as_mut() {
            c.tags.insert("team".into(), "a".into());
        }
        let legacy = o.spec.create.as_ref().unwrap().legacy_fingerprint();
        o.status = Some(EcsInstanceStatus {
            instance_id: Some(ID.into()),
            create_hash: Some(legacy),
            ..Default::default()
        });
        let f = facts(&o);
        assert!(f.drift.is_empty());
        assert_eq!(
            f.status.create_hash,
            Some(o.spec.create.as_ref().unwrap().fingerprint())
        );
        assert_eq!(f.status.managed_tag_keys, vec!["team".to_string()]);
        // Edited since (which field is unknowable): kept, reported, nothing converged.
        if let Some(c) = o.spec.create.as_mut() {
            c.host_name = Some("other".into());
        }
        let f = facts(&o);
        assert_eq!(f.drift.len(), 1, "{:?}", f.drift);
        assert!(f.update.restore_only);
        assert!(!f.status.create_hash.as_deref().unwrap().starts_with("v2:"));
    }

    /// The apply path hands over to the update planner once the VM is observed and owned,
    /// and never for an ObserveOnly resource or one with an edited immutable field.
    #[test]
    fn updates_follow_observation_and_ownership() {
        let mut o = obj(None, true);
        o.status = Some(EcsInstanceStatus {
            instance_id: Some(ID.into()),
            create_hash: Some(create_spec().fingerprint()),
            ..Default::default()
        });
        let renamed_of = |o: &EcsInstance| {
            let mut f = facts(o);
            let mut vm = inst("RUNNING", None);
            vm.instance_name = Some("old".into());
            f.observe(Ok(Some(vm)));
            f.owned = true;
            f
        };
        let renamed = || renamed_of(&o);
        let want = ApplyStep::Update {
            id: ID.into(),
            step: UpdateStep::ModifyAttribute {
                name: Some("vm".into()),
                description: None,
            },
        };
        assert_eq!(plan(&renamed()), want);
        let mut f = renamed();
        f.owned = false;
        assert!(matches!(plan(&f), ApplyStep::EnsureOwned { .. }));
        let mut f = renamed();
        f.drift = vec!["spec.create changed".into()];
        assert_eq!(plan(&f), d(ApplyOutcome::Observed));
        // Sent: the report says Drifted with the RequestId and looks again soon.
        let mut f = renamed();
        f.update.attr = Some(Ok("req-9".into()));
        assert_eq!(plan(&f), d(ApplyOutcome::Observed));
        let r = report(&f, ApplyOutcome::Observed);
        let synced = r
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Synced")
            .unwrap();
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            ("False", "Drifted")
        );
        assert!(
            synced
                .message
                .contains(r#"instanceName is "old" on the VM, the spec says "vm""#),
            "{}",
            synced.message
        );
        assert!(
            synced
                .message
                .contains("ModifyInstanceAttribute (RequestId req-9)"),
            "{}",
            synced.message
        );
        assert_eq!(r.then, ApplyThen::Poll);
        assert_eq!(r.drift, Some(vec![Field::InstanceName]));
        assert!(r
            .events
            .iter()
            .any(|e| e.reason == Reason::Drifted && e.warning));
        // Refused: a failure report (condition, Warning with the code), backoff.
        let mut f = renamed();
        f.update.attr = Some(Err(err()));
        assert_eq!(plan(&f), d(ApplyOutcome::Failed(Call::Update)));
        let r = report(&f, ApplyOutcome::Failed(Call::Update));
        assert_eq!(r.then, ApplyThen::Backoff);
        assert_eq!(r.events[0].action, "ModifyInstanceAttribute");
        assert!(r.events[0].note.contains("req-e"));
        // Under Never: reported, nothing sent, looked at again at the resync pace.
        o.spec.update_policy = Some(crate::api::UpdatePolicy::Never);
        let f = renamed_of(&o);
        assert_eq!(plan(&f), d(ApplyOutcome::Observed));
        let r = report(&f, ApplyOutcome::Observed);
        assert_eq!(r.then, ApplyThen::Resync);
        let synced = r
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Synced")
            .unwrap();
        assert!(synced.message.contains("Never"), "{}", synced.message);
        // ObserveOnly: nothing is managed, nothing drifts.
        o.spec.update_policy = None;
        o.spec.management_policy = Some(crate::api::ManagementPolicy::ObserveOnly);
        let f = renamed_of(&o);
        assert!(f.update.diff.is_empty());
    }

    /// The status bookkeeping of the restart flow.
    #[test]
    fn restart_bookkeeping() {
        let stopped_at = Some(Time(t(-30)));
        let mut f = seen("STOPPED");
        f.status.stopped_for_update_at = stopped_at.clone();
        f.update.stopped_for = Some(Duration::from_secs(30));
        f.update.vm_status = "STOPPED".into();
        f.update.start = Some(Ok("r".into()));
        let r = report(&f, ApplyOutcome::Observed);
        assert_eq!(
            r.status.stopped_for_update_at, None,
            "started: nothing to restore"
        );
        let mut f = seen("RUNNING");
        f.status.stopped_for_update_at = stopped_at.clone();
        f.update.stopped_for = Some(Duration::from_secs(30));
        f.update.vm_status = "RUNNING".into();
        f.update.stop = Some(Ok("r".into()));
        let r = report(&f, ApplyOutcome::Observed);
        assert_eq!(
            r.status.stopped_for_update_at, stopped_at,
            "stop just sent: keep"
        );
        assert_eq!(r.then, ApplyThen::Poll);
        // Still RUNNING a minute after the stop (the cloud shows it late), policy changed:
        // the mark stays, so the VM is started once it shows STOPPED.
        let mut f = seen("RUNNING");
        f.status.stopped_for_update_at = stopped_at.clone();
        f.update.stopped_for = Some(Duration::from_secs(60));
        f.update.vm_status = "RUNNING".into();
        let r = report(&f, ApplyOutcome::Observed);
        assert_eq!(
            r.status.stopped_for_update_at, stopped_at,
            "not shown yet: keep"
        );
        // Running long after: someone else started it; forgotten.
        f.update.stopped_for = Some(update_plan::RESTORE_AFTER);
        let r = report(&f, ApplyOutcome::Observed);
        assert_eq!(r.status.stopped_for_update_at, None);
        // A refusal remembered; a type the cloud did not return does not clear it.
        let mut f = seen("RUNNING");
        f.update.wanted = update_plan::wanted(&obj(None, true));
        f.status.refused_instance_type = Some("t".into());
        f.update.vm_status = "RUNNING".into();
        f.update.vm_type = None;
        let r = report(&f, ApplyOutcome::Observed);
        assert_eq!(r.status.refused_instance_type.as_deref(), Some("t"));
        f.update.vm_type = Some("t".into());
        let r = report(&f, ApplyOutcome::Observed);
        assert_eq!(r.status.refused_instance_type, None, "the type shows: done");
        let mut f = seen("STOPPED");
        f.update.wanted = update_plan::wanted(&obj(None, true));
        f.update.vm_status = "STOPPED".into();
        f.update.diff.instance_type = Some(("a".into(), "t".into()));
        f.update.spec = Some(Err(CloudError::Api {
            action: CloudAction::ModifyInstanceSpec,
            code: "InvalidInstanceTypeId.Malformed".into(),
            code_n: None,
            message: "m".into(),
            status: 400,
            request_id: "r".into(),
        }));
        let r = report(&f, ApplyOutcome::Failed(Call::Update));
        assert_eq!(r.status.refused_instance_type.as_deref(), Some("t"));
    }
}
