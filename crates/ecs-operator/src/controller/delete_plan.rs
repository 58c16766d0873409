//! The deletion path as data. `plan` decides the next step of a deleting resource from what
//! is known (`Facts`); a step that needs an answer (Kubernetes or the cloud) is carried out by
//! `delete::run`, whose answer goes back into `Facts` (`Facts::absorb`) before the next `plan`.
//! A final step (`Step::Done`) is turned into the status change, Event, metric and requeue by
//! `report`. All three are pure: no cloud, no Kubernetes, no clock (`Facts::now` is given).
//! The branches follow the README's deletion diagram, in its order.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{Timestamp, Unit};

use super::cleanup::{self, Decision, RefusalKind};
use super::delete::next_attempt;
use super::ownership::{self, Proof};
use super::policy::{Doubt, Source};
use super::reasons::{Cond, EventNote, Reason};
use super::termination::{self, Next, Seen};
use crate::api::{
    remove_condition, set_condition, DeletionPolicy, EcsInstance, EcsInstanceStatus, CRD_NAME,
    MAX_COUNTER, PAUSED_ANNOTATION, RELEASE_ANNOTATION,
};
use crate::cloud::CloudError;

/// Why a deletion may make no cloud call now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// The annotation `ecs.volcengine.io/paused: "true"`.
    Paused,
    /// No account may act for the resource (`accounts::decide`).
    Account(crate::accounts::Refusal),
}

/// What a fresh read said about the annotation `ecs.volcengine.io/release-without-delete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseCheck {
    /// The resource is gone already: nothing to do.
    Vanished,
    /// Honoured: `who` set it (field manager, operation, time), `stated` is its value.
    Honoured { who: String, stated: String },
    /// Not honoured (see `delete::release_request`); the deletion carries on as usual.
    Ignored { why: &'static str },
}

/// Everything the planner knows. The first block comes from the object and the settings;
/// each `Option` after it is the answer to a step, `None` until that step ran.
#[derive(Debug, Clone)]
pub struct Facts {
    pub uid: String,
    pub generation: Option<i64>,
    /// The status as read (`obj.status`, or empty): the base of every status change.
    pub status: EcsInstanceStatus,
    pub now: Timestamp,
    pub release_annotation: bool,
    /// The VM named in status or spec.
    pub instance_id: Option<String>,
    /// RunInstances was (maybe) sent: the VM may exist though no ID was recorded.
    pub create_requested: bool,
    /// Created within the appear window: the cloud may not list the VM yet.
    pub appearing: bool,
    pub spec_protection: Option<bool>,
    pub wait_for_termination: bool,
    pub termination_timeout: Duration,
    /// `spec.managementPolicy: ObserveOnly`.
    pub observe_only: bool,
    /// Paused, or no account may act for it (set by `delete::run` before planning).
    pub blocked: Option<Blocked>,

    pub release: Option<ReleaseCheck>,
    pub policy: Option<Result<(DeletionPolicy, Source), Doubt>>,
    /// The VM found by its uid tag (the lost-RunInstances lookup): its ID, or not listed.
    pub lookup: Option<Result<Option<String>, CloudError>>,
    pub proof: Option<Result<Proof, CloudError>>,
    /// Adopted but never claimed: the VM was not listed (`Ok`) or the look failed.
    pub claim: Option<Result<(), CloudError>>,
    /// UntagResources: its RequestId, or the failure.
    pub untag: Option<Result<String, CloudError>>,
    /// After an untag failure: whether DescribeInstances no longer returns the VM.
    pub untag_gone: Option<bool>,
    /// After an untag success: what DescribeInstances shows now.
    pub untag_check: Option<Result<UntagCheck, CloudError>>,
    /// wait-for-termination: the VM's state now (`None`: not listed), or the error code.
    pub termination: Option<Result<Option<String>, String>>,
    /// ModifyInstanceAttribute DeletionProtection=false: its RequestId, or the error.
    pub protection_off: Option<Result<String, String>>,
    pub delete: Option<Decision>,
    /// After `InvalidInstanceStatus`: the VM's state if DescribeInstances returned it.
    pub busy_status: Option<Option<String>>,
}

impl Facts {
    /// What the object says. `appear_window` and `termination_timeout` are the settings.
    pub fn of(
        obj: &EcsInstance,
        uid: &str,
        appear_window: Duration,
        termination_timeout: Duration,
        now: Timestamp,
    ) -> Facts {
        let status = obj.status.clone().unwrap_or_default();
        Facts {
            uid: uid.to_string(),
            generation: obj.metadata.generation,
            now,
            release_annotation: obj
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(RELEASE_ANNOTATION)),
            instance_id: obj.owned_instance_id().map(str::to_string),
            create_requested: status.create_requested == Some(true),
            appearing: ownership::appearing_at(
                status.run_instances_at.as_ref(),
                appear_window,
                now,
            ),
            spec_protection: obj.spec.deletion_protection,
            wait_for_termination: obj.spec.wait_for_termination == Some(true),
            termination_timeout,
            observe_only: obj.observe_only(),
            blocked: None,
            status,
            release: None,
            policy: None,
            lookup: None,
            proof: None,
            claim: None,
            untag: None,
            untag_gone: None,
            untag_check: None,
            termination: None,
            protection_off: None,
            delete: None,
            busy_status: None,
        }
    }

    fn attempt(&self) -> u32 {
        self.status.deletion_attempt.unwrap_or(0)
    }

    fn reason_of(&self, c: Cond) -> Option<&str> {
        let c = self
            .status
            .conditions
            .iter()
            .find(|x| x.type_ == c.as_str())?;
        Some(c.reason.as_str())
    }

    /// The deletion was accepted earlier (wait-for-termination): the proof was given then.
    fn accepted(&self) -> bool {
        self.reason_of(Cond::Ready) == Some(Reason::DeletionAccepted.as_str())
    }

    fn policy(&self) -> Option<DeletionPolicy> {
        self.policy.as_ref()?.as_ref().ok().map(|(p, _)| *p)
    }

    /// The VM: the one recorded, or the one the uid lookup found.
    fn vm(&self) -> Option<&str> {
        match (&self.instance_id, &self.lookup) {
            (Some(id), _) | (None, Some(Ok(Some(id)))) => Some(id),
            _ => None,
        }
    }

    fn vm_or_empty(&self) -> String {
        self.vm().unwrap_or_default().to_string()
    }

    /// Time since the deletion was accepted, and the acceptance time to keep (an operator
    /// that did not record it starts the wait now).
    fn waited(&self) -> (Time, Duration) {
        let since = self
            .status
            .deletion_accepted_at
            .clone()
            .unwrap_or(Time(self.now));
        let waited = (self.now - since.0)
            .total(Unit::Second)
            .map_or(Duration::ZERO, |s| Duration::from_secs_f64(s.max(0.0)));
        (since, waited)
    }

    /// The termination state seen, for `termination::decide` and for messages.
    fn seen(&self) -> Option<(Seen<'_>, String)> {
        Some(match self.termination.as_ref()? {
            Ok(None) => (Seen::Gone, String::new()),
            Ok(Some(s)) => (Seen::Listed(s), s.clone()),
            Err(code) => (Seen::Unknown, format!("unknown ({code})")),
        })
    }

    /// Records an answer; returns the Event it calls for on the way (the deletion goes on).
    pub fn absorb(&mut self, answer: Answer) -> Option<EventNote> {
        match answer {
            Answer::Release(r) => {
                let ev = match &r {
                    ReleaseCheck::Ignored { why } => Some(EventNote::warning(
                        Reason::ReleaseAnnotationIgnored,
                        "Delete",
                        format!("annotation {RELEASE_ANNOTATION} ignored: {why}"),
                    )),
                    _ => None,
                };
                self.release = Some(r);
                ev
            }
            Answer::Policy(p) => {
                let crd = matches!(p, Ok((_, Source::CrdDeleting)));
                self.policy = Some(p);
                crd.then(|| EventNote::warning(Reason::CrdDeleting, "Delete", format!("CustomResourceDefinition {CRD_NAME} is being deleted: deletionPolicy Orphan applies to every resource, so the VM is kept (its ownership tags are removed)")))
            }
            Answer::Lookup(r) => set(&mut self.lookup, r),
            Answer::Ownership(r) => set(&mut self.proof, r),
            Answer::Claim(r) => set(&mut self.claim, r),
            Answer::Untag(r) => set(&mut self.untag, r),
            Answer::UntagGone(g) => set(&mut self.untag_gone, g),
            Answer::UntagCheck(c) => set(&mut self.untag_check, c),
            Answer::Termination(r) => set(&mut self.termination, r),
            Answer::ProtectionOff(r) => {
                let ev = r.as_ref().ok().map(|request_id| {
                    EventNote::normal(Reason::DeletionProtectionSet, "Update", format!("deletion protection of VM {} turned off as the spec says (RequestId {request_id})", self.vm_or_empty()))
                });
                self.protection_off = Some(r);
                ev
            }
            Answer::Delete(d) => set(&mut self.delete, d),
            Answer::BusyStatus(s) => set(&mut self.busy_status, s),
        }
    }
}

fn set<T>(slot: &mut Option<T>, v: T) -> Option<EventNote> {
    *slot = Some(v);
    None
}

/// An answer to a step, as `delete::run` got it.
#[derive(Debug, Clone)]
pub enum Answer {
    Release(ReleaseCheck),
    Policy(Result<(DeletionPolicy, Source), Doubt>),
    Lookup(Result<Option<String>, CloudError>),
    Ownership(Result<Proof, CloudError>),
    Claim(Result<(), CloudError>),
    Untag(Result<String, CloudError>),
    UntagGone(bool),
    UntagCheck(Result<UntagCheck, CloudError>),
    Termination(Result<Option<String>, String>),
    ProtectionOff(Result<String, String>),
    Delete(Decision),
    BusyStatus(Option<String>),
}

/// What DescribeInstances shows of a VM after UntagResources answered success.
///
/// A 2xx answer is not proof the tags are gone: some answers carry no `Result` at all, and
/// tags are read through an index that may lag. An orphaned VM that still carries this
/// resource's uid and cluster tags after the resource is gone is a sweeper candidate, so the
/// release waits until the tags are seen gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UntagCheck {
    /// Listed, no `ecs.volcengine.io/*` ownership tag left.
    Untagged,
    /// Listed, and some ownership tag is still there.
    StillTagged,
    /// Not listed: gone.
    NotListed,
}

/// The next step of a deleting resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Read the resource afresh (the cache drops managedFields) to judge the annotation.
    ReadReleaseRequest,
    /// Read the CRD and (when the spec leaves it open) the namespace: `policy::resolve`.
    ResolvePolicy,
    /// RunInstances may have been applied with its answer lost: find the VM by its uid tag.
    LookUpByUid,
    /// DescribeInstances: does the VM carry this resource's uid tag now?
    CheckOwnership {
        id: String,
    },
    /// Adopted but never claimed: describe the VM and run the apply path's claim step.
    Claim {
        id: String,
    },
    /// deletionPolicy Orphan: remove the ownership tags (UntagResources).
    Untag {
        id: String,
    },
    /// The untag failed: is the VM still listed?
    CheckGone {
        id: String,
    },
    /// The untag succeeded: are the ownership tags gone from what DescribeInstances shows?
    ConfirmUntag {
        id: String,
    },
    /// wait-for-termination: describe the VM.
    AwaitTermination {
        id: String,
    },
    /// The user turned protection off in the spec while the deletion waited for it.
    DisableProtection {
        id: String,
    },
    /// DeleteInstances via the batcher; `announce`: the DeletionRequested Event goes first.
    Delete {
        id: String,
        attempt: u32,
        token: String,
        announce: Option<EventNote>,
    },
    /// The VM is busy: describe it, so the condition can say what it is doing.
    ObserveBusy {
        id: String,
    },
    Done(Outcome),
}

/// How this reconcile of the deletion ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The resource is gone already.
    Vanished,
    /// The escape hatch: release without any cloud call.
    ReleasedOnRequest,
    /// Keep the VM: something is not known for certain, or a call failed.
    Hold(Held),
    /// No VM behind this resource.
    NothingToDo,
    /// Paused: no cloud call until the annotation goes.
    Paused,
    /// Refused an account before it ever acted: release, no cloud call.
    NeverActed,
    /// ObserveOnly, never claimed: release, VM untouched, no cloud call.
    Observed,
    /// The VM may not be listed yet; `bump`: the next DeleteInstances needs a new token.
    Appearing { id: Option<String>, bump: bool },
    /// DeleteInstances answered NotFound for a VM DescribeInstances listed in this reconcile:
    /// a replay of an answer recorded while the VM was invisible. Send again, new token.
    NotFoundReplayed { id: String },
    /// DescribeInstances does not list the VM (and it is not appearing).
    Gone,
    /// This resource never held the VM: release, VM untouched.
    NeverOwned,
    /// The claim is recorded but the VM's tags name someone else now.
    Unproven,
    /// The claim step found no VM listed: look again after backoff.
    LookAgain,
    /// deletionPolicy Orphan: untagged, or the VM is gone.
    Orphaned,
    /// deletionPolicy Orphan: UntagResources answered success, yet the tags are still shown.
    UntagUnconfirmed,
    /// wait-for-termination: what the describe means.
    Termination(Next),
    /// `status.deletionAttempt` at its bound: no further DeleteInstances.
    Exhausted,
    /// The cloud accepted the deletion or said the VM is gone: release.
    Released,
    /// Accepted, and the spec asks to wait for the VM to disappear.
    Accepted,
    /// Not deleted (busy, refused, call failed): keep, report, retry.
    Pending,
}

/// What the deletion was held on (each names the answer it comes from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Policy,
    Lookup,
    Proof,
    Claim,
    Untag,
    /// The describe after a successful untag failed.
    UntagCheck,
    /// No account may act for it now (`Blocked::Account`).
    Account,
}

fn done(o: Outcome) -> Step {
    Step::Done(o)
}

/// The planner. Pure; each `return` is one branch of the README's deletion diagram.
pub fn plan(f: &Facts) -> Step {
    // The escape hatch comes first: it must work when nothing else does (no cloud call).
    if f.release_annotation {
        match &f.release {
            None => return Step::ReadReleaseRequest,
            Some(ReleaseCheck::Vanished) => return done(Outcome::Vanished),
            Some(ReleaseCheck::Honoured { .. }) => return done(Outcome::ReleasedOnRequest),
            Some(ReleaseCheck::Ignored { .. }) => {}
        }
    }
    match &f.blocked {
        Some(Blocked::Paused) => return done(Outcome::Paused),
        // Refused before it ever acted: it made or claimed no VM, so there is nothing of
        // its own in any account to delete or release.
        // (A refusal that may pass, the namespace not read yet, is not one.)
        Some(Blocked::Account(r))
            if !r.transient() && crate::accounts::pinned(Some(&f.status)).is_none() =>
        {
            return done(Outcome::NeverActed)
        }
        Some(Blocked::Account(_)) => return done(Outcome::Hold(Held::Account)),
        None => {}
    }
    // ObserveOnly: the VM is never deleted, and never claimed. The ownership look (a read)
    // still runs: a VM carrying this resource's uid tag (claimed while it was managed, or
    // created by it with the answer lost) has its ownership tags removed first, as Orphan
    // does, or the sweeper would later take the kept VM for a leak; any other is left as is.
    let policy = match (&f.policy, f.observe_only) {
        (_, true) => DeletionPolicy::Orphan,
        (None, false) => return Step::ResolvePolicy,
        (Some(Err(_)), false) => return done(Outcome::Hold(Held::Policy)),
        (Some(Ok((p, _))), false) => *p,
    };
    let id = match plan_vm(f) {
        Ok(id) => id.to_string(),
        Err(step) => return step,
    };
    // After an accepted deletion (wait-for-termination) the proof was already given.
    if !f.accepted() {
        if let Some(step) = plan_proof(f, policy, &id) {
            return step;
        }
    }
    if policy == DeletionPolicy::Orphan {
        return plan_orphan(f, id);
    }
    if f.accepted() {
        return match f.seen() {
            None => Step::AwaitTermination { id },
            Some((seen, _)) => {
                let next = termination::decide(seen, f.waited().1, f.termination_timeout);
                done(Outcome::Termination(next))
            }
        };
    }
    // Protection turned off in the spec while the deletion waited for it: the user's
    // decision, so carry it out (the operator never turns protection off by itself).
    if f.spec_protection == Some(false)
        && f.status.deletion_protection == Some(true)
        && f.protection_off.is_none()
    {
        return Step::DisableProtection { id };
    }
    if f.attempt() >= MAX_COUNTER {
        return done(Outcome::Exhausted);
    }
    plan_delete(f, id)
}

/// Which VM: the recorded one, or (create requested, answer maybe lost) the one tagged
/// with this resource's uid. `Err`: the step to take instead.
fn plan_vm(f: &Facts) -> Result<&str, Step> {
    match (&f.instance_id, &f.lookup) {
        (Some(id), _) => Ok(id),
        // Never created, nothing adopted: nothing to delete in the cloud.
        (None, _) if !f.create_requested => Err(done(Outcome::NothingToDo)),
        (None, None) => Err(Step::LookUpByUid),
        (None, Some(Ok(Some(id)))) => Ok(id),
        // Not listed yet is not "never made": keep looking while it may be appearing.
        (None, Some(Ok(None))) if f.appearing => Err(done(Outcome::Appearing {
            id: None,
            bump: false,
        })),
        (None, Some(Ok(None))) => Err(done(Outcome::NothingToDo)),
        (None, Some(Err(_))) => Err(done(Outcome::Hold(Held::Lookup))),
    }
}

/// Current proof of ownership (`ownership::proof`); `None`: proven, go on.
fn plan_proof(f: &Facts, policy: DeletionPolicy, id: &str) -> Option<Step> {
    let id = id.to_string();
    let proof = match &f.proof {
        None => return Some(Step::CheckOwnership { id }),
        Some(Err(_)) => return Some(done(Outcome::Hold(Held::Proof))),
        Some(Ok(p)) => *p,
    };
    Some(match proof {
        Proof::Proven => return None,
        // Untagging needs the VM listed: a NotFound now would leave it tagged.
        Proof::Appearing if policy == DeletionPolicy::Orphan => done(Outcome::Appearing {
            id: Some(id),
            bump: false,
        }),
        Proof::Appearing => return None,
        Proof::Gone => done(Outcome::Gone),
        // An observer never claims: not carrying its uid, the VM is not its to touch.
        Proof::NeverOwned if f.observe_only => done(Outcome::Observed),
        // Adopted, but no claim ever reached the cloud: the apply path's claim step first.
        Proof::NeverOwned if f.status.ownership.is_none() => match &f.claim {
            None => Step::Claim { id },
            Some(Err(_)) => done(Outcome::Hold(Held::Claim)),
            Some(Ok(())) => done(Outcome::LookAgain),
        },
        Proof::NeverOwned => done(Outcome::NeverOwned),
        // Orphan, and no uid tag on the VM at all: this resource's own untag may have landed
        // after the describe meant to confirm it (or before a crash). Untag again and confirm
        // (`plan_orphan`): the untag is idempotent, and only a describe after it that shows
        // none of the keys releases, so a read that merely missed tags still on the VM can
        // never release it tagged (the sweeper would delete it). Holding instead would strand
        // the finalizer for good.
        Proof::Untagged if policy == DeletionPolicy::Orphan => return None,
        Proof::Untagged | Proof::Unproven => done(Outcome::Unproven),
    })
}

/// deletionPolicy Orphan: untag, then release; a VM the cloud says (or shows) is gone
/// counts as released.
fn plan_orphan(f: &Facts, id: String) -> Step {
    match (&f.untag, f.untag_gone) {
        (None, _) => Step::Untag { id },
        (Some(Ok(_)), _) => match &f.untag_check {
            None => Step::ConfirmUntag { id },
            Some(Ok(UntagCheck::Untagged | UntagCheck::NotListed)) => done(Outcome::Orphaned),
            Some(Ok(UntagCheck::StillTagged)) => done(Outcome::UntagUnconfirmed),
            Some(Err(_)) => done(Outcome::Hold(Held::UntagCheck)),
        },
        // Whatever UntagResources said (a NotFound too: the VM was listed with this
        // resource's uid a moment ago, and one service's NotFound is no proof while its tags
        // may still be on it), only a VM that DescribeInstances does not return is gone.
        (Some(Err(_)), None) => Step::CheckGone { id },
        (Some(Err(_)), Some(true)) => done(Outcome::Orphaned),
        (Some(Err(_)), Some(false)) => done(Outcome::Hold(Held::Untag)),
    }
}

/// DeleteInstances, then what its answer (`cleanup::decide`) means.
fn plan_delete(f: &Facts, id: String) -> Step {
    let attempt = f.attempt();
    let Some(d) = &f.delete else {
        let first = attempt == 0 && f.reason_of(Cond::Ready) != Some(Reason::Deleting.as_str());
        let token = cleanup::delete_token(&f.uid, attempt);
        let announce = first.then(|| {
            EventNote::normal(
                Reason::DeletionRequested,
                "Delete",
                format!("deleting VM {id} (ClientToken {token})"),
            )
        });
        return Step::Delete {
            id,
            attempt,
            token,
            announce,
        };
    };
    match d {
        // The cloud may not see a VM this new even for DeleteInstances: NotFound proves
        // nothing yet. A new token next time, or the recorded NotFound would be replayed.
        Decision::AlreadyGone { .. } if f.appearing => done(Outcome::Appearing {
            id: Some(id),
            bump: true,
        }),
        // DescribeInstances listed the VM with our tags moments ago, in this reconcile: a
        // NotFound now is an answer the cloud recorded for this token while the VM was still
        // invisible (its first answer lost) and replays, not news. A new token next time
        // (found by the simulation: the replay released the resource and leaked the VM).
        Decision::AlreadyGone { .. } if matches!(f.proof, Some(Ok(Proof::Proven))) => {
            done(Outcome::NotFoundReplayed { id })
        }
        Decision::Deleted { .. } if f.wait_for_termination => done(Outcome::Accepted),
        d if d.releases_finalizer() => done(Outcome::Released),
        // Say what the VM is doing, so the user knows what we are waiting for.
        Decision::NotDeletableYet { .. } if f.busy_status.is_none() => Step::ObserveBusy { id },
        _ => done(Outcome::Pending),
    }
}

/// What follows a report once status, metric and Event are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Retry after this resource's backoff.
    Backoff,
    /// Retry at the slow pace: only a person or time changes the answer.
    Slow,
    /// Look again soon (`--transition-poll`).
    Poll,
    /// Remove the finalizer (the object as read by the reconcile).
    Release,
    /// Remove the finalizer of the freshly read object (the escape hatch).
    ReleaseFresh,
    /// Nothing more; the next change triggers a reconcile.
    AwaitChange,
}

/// The status change, metric, Event and requeue of an outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The new status to write (`None`: no write).
    pub status: Option<EcsInstanceStatus>,
    /// `ecs_operator_deletions_held{reason}`.
    pub held: Option<Reason>,
    pub event: Option<EventNote>,
    pub then: Then,
}

impl Report {
    fn then(then: Then) -> Report {
        Report {
            status: None,
            held: None,
            event: None,
            then,
        }
    }

    fn release(event: Option<EventNote>) -> Report {
        Report {
            event,
            ..Report::then(Then::Release)
        }
    }
}

/// The reporter. Pure.
pub fn report(f: &Facts, o: &Outcome) -> Report {
    let id = f.vm_or_empty();
    match o {
        Outcome::Vanished => Report::then(Then::AwaitChange),
        Outcome::ReleasedOnRequest => report_on_request(f),
        Outcome::Hold(h) => report_hold(f, *h, &id),
        Outcome::NothingToDo => Report::release(
            (f.policy() == Some(DeletionPolicy::Orphan)).then(|| {
                EventNote::normal(
                    Reason::Orphaned,
                    "Delete",
                    "deletionPolicy Orphan: no VM to leave".into(),
                )
            }),
        ),
        Outcome::Paused => {
            let msg = format!("paused (annotation {PAUSED_ANNOTATION}: \"true\"): no cloud call is made; the deletion of VM {} waits until the annotation is removed", if id.is_empty() { "-" } else { &id });
            let mut st = f.status.clone();
            cond(&mut st, f, Cond::Synced, false, Reason::Paused, &msg);
            cond(&mut st, f, Cond::Ready, false, Reason::Deleting, &msg);
            // Once per paused deletion (a live resource paused earlier has Synced=Paused
            // already, but not Ready=Deleting).
            let first = f.reason_of(Cond::Synced) != Some(Reason::Paused.as_str())
                || f.reason_of(Cond::Ready) != Some(Reason::Deleting.as_str());
            let ev = first.then(|| EventNote::normal(Reason::Paused, "Delete", msg));
            held(st, Reason::Paused, ev, Then::AwaitChange)
        }
        Outcome::NeverActed => {
            let why = match &f.blocked {
                Some(Blocked::Account(r)) => r.message(),
                _ => String::new(),
            };
            Report::release(Some(EventNote::normal(Reason::ReleasedWithoutVm, "Delete", format!("released without any cloud call: this resource never acted in an account ({why}); no VM was made or claimed by it"))))
        }
        Outcome::Observed => Report::release(Some(EventNote::normal(Reason::ObserveOnly, "Delete", format!("managementPolicy ObserveOnly: released without any cloud call; VM {id} is left untouched")))),
        Outcome::Appearing { id, bump } => report_appearing(f, id.as_deref(), *bump),
        Outcome::NotFoundReplayed { id } => report_replayed_not_found(f, id),
        Outcome::Gone => Report::release(Some(EventNote::normal(
            Reason::AlreadyGone,
            "Delete",
            format!("VM {id} does not exist (DescribeInstances does not list it)"),
        ))),
        Outcome::NeverOwned => Report::release(Some(EventNote::normal(Reason::ReleasedWithoutVm, "Delete", format!("this resource never owned VM {id} (its ownership tags name another resource, or none); the VM is left untouched")))),
        Outcome::Unproven => {
            let msg = if f.policy() == Some(DeletionPolicy::Orphan) {
                format!("VM {id} carries another owner's ecs.volcengine.io/uid tag now; deletionPolicy Orphan keeps the VM either way, but those tags are not this resource's to remove, so the finalizer stays. Set the annotation {RELEASE_ANNOTATION} to let go of the resource")
            } else {
                format!("VM {id} no longer carries this resource's ownership tags (ecs.volcengine.io/uid, /cluster), so it is not deleted; the finalizer stays. Restore the tags, or remove the finalizer by hand to let go of the VM")
            };
            let mut st = f.status.clone();
            for t in [Cond::Synced, Cond::Ready] {
                cond(&mut st, f, t, false, Reason::OwnershipUnproven, &msg);
            }
            held(st, Reason::OwnershipUnproven, Some(warn(Reason::OwnershipUnproven, msg)), Then::Backoff)
        }
        Outcome::LookAgain => Report::then(Then::Backoff),
        Outcome::Orphaned => Report::release(Some(EventNote::normal(Reason::Orphaned, "Delete", orphan_note(f, &id)))),
        Outcome::UntagUnconfirmed => {
            let request_id = match &f.untag {
                Some(Ok(r)) => r.as_str(),
                _ => "-",
            };
            let msg = format!("deletionPolicy Orphan: UntagResources answered success (RequestId {request_id}) but DescribeInstances still shows ecs.volcengine.io/* tags on VM {id}; the finalizer stays until they are seen gone (left tagged, the VM would look leaked to the sweeper). UntagResources is sent again after backoff");
            let r = Reason::UntagUnconfirmed;
            let mut st = f.status.clone();
            cond(&mut st, f, Cond::Synced, false, r, &msg);
            cond(&mut st, f, Cond::Ready, false, Reason::Deleting, &msg);
            held(st, r, Some(warn(r, msg)), Then::Backoff)
        }
        Outcome::Termination(next) => report_termination(f, *next, &id),
        Outcome::Exhausted => {
            let msg = format!("status.deletionAttempt reached its limit {MAX_COUNTER}: no further DeleteInstances is sent for VM {id}, which is kept. Delete the VM by hand and set the annotation {RELEASE_ANNOTATION}, or lower status.deletionAttempt to retry");
            let r = Reason::DeletionAttemptsExhausted;
            let mut st = f.status.clone();
            cond(&mut st, f, Cond::Synced, false, r, &msg);
            cond(&mut st, f, Cond::Stalled, true, r, &msg);
            held(st, r, Some(warn(r, msg)), Then::Slow)
        }
        Outcome::Released => {
            let (reason, note) = match &f.delete {
                Some(Decision::AlreadyGone { request_id }) => (Reason::AlreadyGone, format!("VM {id} does not exist (RequestId {request_id})")),
                Some(Decision::Deleted { request_id }) => (Reason::Deleted, format!("VM {id} deleted (RequestId {request_id})")),
                _ => (Reason::Deleted, String::new()),
            };
            Report::release(Some(EventNote::normal(reason, "Delete", note)))
        }
        Outcome::Accepted => {
            let request_id = match &f.delete {
                Some(Decision::Deleted { request_id }) => request_id.as_str(),
                _ => "",
            };
            let note = format!("VM {id} deleted (RequestId {request_id})");
            let mut st = with_protection_change(f);
            st.instance_status = Some(termination::DELETING.into());
            st.deletion_accepted_at = Some(Time(f.now));
            cond(&mut st, f, Cond::Ready, false, Reason::DeletionAccepted, &note);
            write(st, Some(EventNote::normal(Reason::DeletionAccepted, "Delete", note)), Then::Poll)
        }
        Outcome::Pending => report_pending(f, &id),
    }
}

fn cond(st: &mut EcsInstanceStatus, f: &Facts, t: Cond, on: bool, r: Reason, msg: &str) {
    set_condition(
        &mut st.conditions,
        t.as_str(),
        on,
        r.as_str(),
        msg,
        f.generation,
    );
}

fn warn(r: Reason, note: String) -> EventNote {
    EventNote::warning(r, "Delete", note)
}

fn write(st: EcsInstanceStatus, event: Option<EventNote>, then: Then) -> Report {
    Report {
        status: Some(st),
        held: None,
        event,
        then,
    }
}

fn held(st: EcsInstanceStatus, r: Reason, event: Option<EventNote>, then: Then) -> Report {
    Report {
        held: Some(r),
        ..write(st, event, then)
    }
}

/// The status with the user's protection change, once ModifyInstanceAttribute confirmed it.
fn with_protection_change(f: &Facts) -> EcsInstanceStatus {
    let mut st = f.status.clone();
    if matches!(f.protection_off, Some(Ok(_))) {
        st.deletion_protection = Some(false);
    }
    st
}

fn report_on_request(f: &Facts) -> Report {
    let (who, stated) = match &f.release {
        Some(ReleaseCheck::Honoured { who, stated }) => (who.as_str(), stated.as_str()),
        _ => ("unknown", ""),
    };
    let vm = f
        .instance_id
        .as_ref()
        .map(|id| format!("VM {id} was NOT deleted and may still exist, with its ownership tags"))
        .unwrap_or_else(|| "no VM is recorded".into());
    let note = format!("released without any cloud call on request: annotation {RELEASE_ANNOTATION}={stated:?} set by {who} (the audit log names the user); {vm}");
    Report {
        event: Some(warn(Reason::ReleasedWithoutDelete, note)),
        ..Report::then(Then::ReleaseFresh)
    }
}

/// The VM stays because something is not known for certain (or failed): `Synced=False`
/// and a Warning Event say why, the metric counts it, and the resource retries with backoff.
fn report_hold(f: &Facts, h: Held, id: &str) -> Report {
    let failed = |e: &CloudError, what: String| (Reason::cloud(e.class()), format!("{what}: {e}"));
    let (reason, msg) = match (h, &f.policy, &f.lookup, &f.proof, &f.claim, &f.untag) {
        (Held::Policy, Some(Err(d)), ..) => (d.condition_reason(), d.message()),
        (Held::Lookup, _, Some(Err(e)), ..) => failed(e, "looking for this resource's VM before releasing it".into()),
        (Held::Proof, _, _, Some(Err(e)), ..) => failed(e, format!("checking that this resource owns VM {id} before letting go of it (DescribeInstances)")),
        (Held::Claim, _, _, _, Some(Err(e)), _) => failed(e, format!("claiming VM {id} before deleting it (DescribeInstances)")),
        (Held::Untag, .., Some(Err(e))) => failed(e, format!("releasing VM {id} (UntagResources)")),
        (Held::Account, ..) => match &f.blocked {
            Some(Blocked::Account(r)) => (r.reason(), format!("{}; the deletion of VM {id} waits (to let go without deleting it, see the annotation {RELEASE_ANNOTATION})", r.message())),
            _ => (Reason::AccountUnverified, format!("deletion of VM {id} held")),
        },
        (Held::UntagCheck, ..) => match &f.untag_check {
            Some(Err(e)) => failed(e, format!("confirming the ownership tags of VM {id} are gone after UntagResources (DescribeInstances)")),
            _ => (Reason::CloudError, format!("deletion of VM {id} held")),
        },
        // Not reachable from `plan`; still a hold, never a release.
        _ => (Reason::CloudError, format!("deletion of VM {id} held")),
    };
    let mut st = f.status.clone();
    cond(&mut st, f, Cond::Synced, false, reason, &msg);
    // Ready says the same as after a failed DeleteInstances: deleting, and why it waits.
    cond(&mut st, f, Cond::Ready, false, Reason::Deleting, &msg);
    held(st, reason, Some(warn(reason, msg)), Then::Backoff)
}

/// The VM was created moments ago and the cloud does not see it yet: keep the finalizer
/// and look again (a new DeleteInstances token when `bump`).
fn report_appearing(f: &Facts, id: Option<&str>, bump: bool) -> Report {
    let mut st = f.status.clone();
    if bump {
        st.deletion_attempt = Some(f.attempt() + 1);
    }
    let what = id.unwrap_or("this resource's VM");
    let msg = format!("{what} was created moments ago and the cloud does not list it yet (eventual consistency); the deletion waits for it");
    cond(
        &mut st,
        f,
        Cond::Ready,
        false,
        Reason::InstanceAppearing,
        &msg,
    );
    held(st, Reason::InstanceAppearing, None, Then::Poll)
}

/// A NotFound for a VM listed moments ago is the cloud replaying the answer it recorded for
/// this ClientToken while the VM was still invisible: keep the finalizer, send again with a
/// new token, and say so under a reason of its own (it is not the VM appearing).
fn report_replayed_not_found(f: &Facts, id: &str) -> Report {
    let mut st = f.status.clone();
    st.deletion_attempt = Some(f.attempt() + 1);
    let msg = format!("DeleteInstances answered NotFound for VM {id} although DescribeInstances lists it (an answer recorded for this ClientToken while the VM was not yet visible); it is sent again with a new ClientToken");
    cond(
        &mut st,
        f,
        Cond::Ready,
        false,
        Reason::NotFoundReplayed,
        &msg,
    );
    held(st, Reason::NotFoundReplayed, None, Then::Poll)
}

fn orphan_note(f: &Facts, id: &str) -> String {
    match &f.untag {
        Some(Ok(request_id)) => format!(
            "deletionPolicy Orphan: VM {id} left in place, ownership tags removed (RequestId {request_id})"
        ),
        Some(Err(e)) if e.is_instance_not_found() => format!(
            "deletionPolicy Orphan: VM {id} is already gone (UntagResources: {}, RequestId {})",
            e.code(),
            e.request_id().unwrap_or("-")
        ),
        Some(Err(e)) => format!(
            "deletionPolicy Orphan: VM {id} is already gone (DescribeInstances does not return it; UntagResources failed with {})",
            e.code()
        ),
        None => format!("deletionPolicy Orphan: VM {id} left in place"),
    }
}

/// wait-for-termination (`termination::decide`): release once the VM is gone; a VM listed
/// again in another state than DELETING had its deletion rolled back, so the deletion
/// starts over with a new attempt (a new ClientToken, and a fresh ownership proof); past
/// `--termination-timeout-secs` report Stalled and keep looking.
fn report_termination(f: &Facts, next: Next, id: &str) -> Report {
    let (since, waited) = f.waited();
    let observed = f.seen().map(|(_, o)| o).unwrap_or_default();
    let mut st = f.status.clone();
    st.deletion_accepted_at = Some(since);
    match next {
        Next::Release => Report::release(Some(EventNote::normal(
            Reason::Deleted,
            "Delete",
            format!("VM {id} is gone"),
        ))),
        Next::Wait => {
            if matches!(f.termination, Some(Ok(_))) {
                st.instance_status = Some(observed);
            }
            write(st, None, Then::Poll)
        }
        Next::Resend => {
            let r = Reason::DeletionReverted;
            let msg = format!("VM {id} is {observed} again after its deletion was accepted (the cloud rolled it back); DeleteInstances is sent again with a new ClientToken");
            st.instance_status = Some(observed);
            st.deletion_accepted_at = None;
            st.deletion_attempt = Some(next_attempt(f.attempt()));
            if f.reason_of(Cond::Stalled) == Some(Reason::TerminationTimeout.as_str()) {
                remove_condition(&mut st.conditions, Cond::Stalled.as_str());
            }
            cond(&mut st, f, Cond::Ready, false, r, &msg);
            cond(&mut st, f, Cond::Synced, false, r, &msg);
            write(st, Some(warn(r, msg)), Then::Backoff)
        }
        Next::Stalled => {
            let r = Reason::TerminationTimeout;
            let msg = format!("VM {id} is still listed ({observed}) {}s after DeleteInstances was accepted (limit --termination-timeout-secs {}); the finalizer stays and the operator keeps watching for the VM to disappear", waited.as_secs(), f.termination_timeout.as_secs());
            let first = !f.status.conditions.iter().any(|c| {
                c.type_ == Cond::Stalled.as_str() && c.reason == r.as_str() && c.status == "True"
            });
            cond(&mut st, f, Cond::Stalled, true, r, &msg);
            if first {
                held(st, r, Some(warn(r, msg)), Then::Poll)
            } else {
                write(st, None, Then::Poll)
            }
        }
    }
}

/// DeleteInstances did not delete the VM: the attempt moves on after a definitive answer,
/// the conditions say why, and the retry pace follows the kind of answer. (One arm per kind
/// of answer, kept together so the three messages can be compared; about 80 lines.)
fn report_pending(f: &Facts, id: &str) -> Report {
    let Some(d) = &f.delete else {
        return Report::then(Then::Backoff);
    };
    let mut st = with_protection_change(f);
    if d.bumps_attempt() {
        st.deletion_attempt = Some(next_attempt(f.attempt()));
    }
    let (then, warning, reason, msg) = match d {
        Decision::NotDeletableYet {
            code,
            message,
            request_id,
        } => {
            if let Some(Some(s)) = &f.busy_status {
                st.instance_status = Some(s.clone());
            }
            let observed = st
                .instance_status
                .clone()
                .unwrap_or_else(|| "unknown".into());
            let msg = format!("VM {id} is {observed} and cannot be deleted yet ({code}: {message}, RequestId {request_id}); retrying");
            cond(
                &mut st,
                f,
                Cond::Synced,
                true,
                Reason::DeletionPending,
                &msg,
            );
            (Then::Backoff, false, Reason::DeletionPending, msg)
        }
        Decision::Refused {
            code,
            message,
            request_id,
            kind,
        } => {
            if *kind == RefusalKind::Protection {
                st.deletion_protection = Some(true);
            }
            let r = Reason::DeletionRefused;
            let msg = format!(
                "DeleteInstances refused VM {id}: {code}: {message} (RequestId {request_id})"
            );
            cond(&mut st, f, Cond::Synced, false, r, &msg);
            if kind.slow() {
                cond(&mut st, f, Cond::Stalled, true, r, &msg);
            }
            (
                if kind.slow() {
                    Then::Slow
                } else {
                    Then::Backoff
                },
                true,
                r,
                msg,
            )
        }
        Decision::Retry { message, class, .. } => {
            // The message already names the action, the code and the request id.
            let r = Reason::cloud(*class);
            let msg = format!("VM {id}: {message}");
            cond(&mut st, f, Cond::Synced, false, r, &msg);
            (Then::Backoff, true, r, msg)
        }
        Decision::Deleted { .. } | Decision::AlreadyGone { .. } => {
            (Then::Backoff, false, Reason::Deleting, String::new())
        }
    };
    cond(&mut st, f, Cond::Ready, false, Reason::Deleting, &msg);
    st.observed_generation = f.generation;
    let event = EventNote {
        warning,
        reason,
        action: "Delete",
        note: msg,
    };
    write(st, Some(event), then)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeletionPolicy::*, Ownership};
    use crate::cloud::model::Action as CloudAction;
    use crate::cloud::ErrorClass;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use Outcome as O;

    const UID: &str = "u-1";
    const ID: &str = "i-1";

    fn cloud_err(code: &str, status: u16) -> CloudError {
        CloudError::Api {
            action: CloudAction::DescribeInstances,
            code: code.into(),
            code_n: None,
            message: "m".into(),
            status,
            request_id: "req-e".into(),
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// A deleting resource with VM `i-1`, policy not yet read.
    fn base() -> Facts {
        let mut o = EcsInstance::new("vm", Default::default());
        o.metadata.generation = Some(3);
        o.status = Some(EcsInstanceStatus {
            instance_id: Some(ID.into()),
            ownership: Some(Ownership::Claimed),
            ..Default::default()
        });
        Facts::of(
            &o,
            UID,
            Duration::from_secs(600),
            Duration::from_secs(1800),
            t(0),
        )
    }

    fn policy(f: &mut Facts, p: DeletionPolicy) {
        f.policy = Some(Ok((p, Source::Spec)));
    }

    /// Policy Delete and ownership proven: DeleteInstances is next.
    fn proven() -> Facts {
        let mut f = base();
        policy(&mut f, Delete);
        f.proof = Some(Ok(Proof::Proven));
        f
    }

    fn proven_orphan() -> Facts {
        let mut f = proven();
        policy(&mut f, Orphan);
        f
    }

    fn with_ready(f: &mut Facts, reason: Reason) {
        set_condition(
            &mut f.status.conditions,
            "Ready",
            false,
            reason.as_str(),
            "m",
            Some(1),
        );
    }

    fn accepted(observed: Result<Option<&str>, &str>, waited: i64) -> Facts {
        let mut f = proven();
        f.proof = None;
        with_ready(&mut f, Reason::DeletionAccepted);
        f.status.deletion_accepted_at = Some(Time(t(0)));
        f.now = t(waited);
        f.termination = Some(
            observed
                .map(|o| o.map(str::to_string))
                .map_err(str::to_string),
        );
        f
    }

    fn answered(d: Decision) -> Facts {
        let mut f = proven();
        f.delete = Some(d);
        f
    }

    fn deleted() -> Decision {
        Decision::Deleted {
            request_id: "req-d".into(),
        }
    }

    fn gone() -> Decision {
        Decision::AlreadyGone {
            request_id: "req-g".into(),
        }
    }

    fn busy() -> Decision {
        Decision::NotDeletableYet {
            code: cleanup::INVALID_STATUS.into(),
            message: "busy".into(),
            request_id: "req-b".into(),
        }
    }

    fn refused(code: &str) -> Decision {
        Decision::Refused {
            code: code.into(),
            message: "no".into(),
            request_id: "req-r".into(),
            kind: RefusalKind::of(code),
        }
    }

    fn retry() -> Decision {
        Decision::Retry {
            code: "InternalError".into(),
            message: "DeleteInstances failed: InternalError: m (HTTP 500, RequestId req-x)".into(),
            request_id: Some("req-x".into()),
            class: ErrorClass::Retryable,
            new_token: false,
        }
    }

    fn delete_step(attempt: u32, first: bool) -> Step {
        let token = cleanup::delete_token(UID, attempt);
        Step::Delete {
            id: ID.into(),
            attempt,
            announce: first.then(|| {
                EventNote::normal(
                    Reason::DeletionRequested,
                    "Delete",
                    format!("deleting VM {ID} (ClientToken {token})"),
                )
            }),
            token,
        }
    }

    fn id() -> String {
        ID.into()
    }

    fn d(o: Outcome) -> Step {
        Step::Done(o)
    }

    /// One row per branch of the README's deletion diagram, in its order (a table: as long
    /// as the diagram, which is why it is over 80 lines).
    #[test]
    fn deletion_plan_table() {
        let doubt = |d: Doubt| {
            let mut f = base();
            f.policy = Some(Err(d));
            f
        };
        let annotated = |r: Option<ReleaseCheck>| {
            let mut f = base();
            f.release_annotation = true;
            f.release = r;
            f
        };
        let no_vm = |create_requested: bool, p: DeletionPolicy| {
            let mut f = base();
            policy(&mut f, p);
            f.instance_id = None;
            f.create_requested = create_requested;
            f
        };
        let looked_up = |r: Result<Option<&str>, CloudError>, appearing: bool| {
            let mut f = no_vm(true, Delete);
            f.lookup = Some(r.map(|o| o.map(str::to_string)));
            f.appearing = appearing;
            f
        };
        let proof = |p: Result<Proof, CloudError>, pol: DeletionPolicy| {
            let mut f = base();
            policy(&mut f, pol);
            f.proof = Some(p);
            f
        };
        let never_claimed = |claim: Option<Result<(), CloudError>>| {
            let mut f = proof(Ok(Proof::NeverOwned), Delete);
            f.status.ownership = None;
            f.claim = claim;
            f
        };
        let untagged = |r: Result<String, CloudError>, gone: Option<bool>| {
            let mut f = proven_orphan();
            f.untag = Some(r);
            f.untag_gone = gone;
            f
        };
        let untag_seen = |c: Result<UntagCheck, CloudError>| {
            let mut f = untagged(Ok("req-u".into()), None);
            f.untag_check = Some(c);
            f
        };
        let protection =
            |spec: Option<bool>, status: Option<bool>, tried: Option<Result<String, String>>| {
                let mut f = proven();
                f.spec_protection = spec;
                f.status.deletion_protection = status;
                f.protection_off = tried;
                f
            };
        let attempt = |n: u32, ready: Option<Reason>| {
            let mut f = proven();
            f.status.deletion_attempt = Some(n);
            if let Some(r) = ready {
                with_ready(&mut f, r);
            }
            f
        };
        let appearing_answer = |dec: Decision| {
            let mut f = answered(dec);
            f.appearing = true;
            f
        };
        let waiting = |dec: Decision| {
            let mut f = answered(dec);
            f.wait_for_termination = true;
            f
        };
        let nf = || cloud_err("InvalidInstance.NotFound", 404);
        let e500 = || cloud_err("InternalError", 500);
        let honoured = ReleaseCheck::Honoured {
            who: "w".into(),
            stated: "s".into(),
        };
        let ignored = ReleaseCheck::Ignored {
            why: "the resource is not being deleted",
        };
        let ns = || "team-a".to_string();
        let refusal = || crate::accounts::Refusal::NotAllowed {
            name: "a".into(),
            namespace: ns(),
        };
        let blocked = |b: Blocked, acted: bool| {
            let mut f = base();
            if !acted {
                f.status = EcsInstanceStatus::default();
                f.instance_id = None;
            }
            f.blocked = Some(b);
            f
        };
        let blocked_annotated = {
            let mut f = annotated(Some(ReleaseCheck::Honoured {
                who: "w".into(),
                stated: "s".into(),
            }));
            f.blocked = Some(Blocked::Account(refusal()));
            f
        };
        let observer = |ownership: Option<Ownership>, pol: Option<DeletionPolicy>| {
            let mut f = base();
            f.observe_only = true;
            f.status.ownership = ownership;
            if let Some(p) = pol {
                policy(&mut f, p);
            }
            f
        };
        #[rustfmt::skip]
        let rows: Vec<(&str, Facts, Step)> = vec![
            // paused, refused an account, ObserveOnly
            ("paused: no cloud call",                    blocked(Blocked::Paused, true),          d(O::Paused)),
            ("paused, never acted: still no call",       blocked(Blocked::Paused, false),         d(O::Paused)),
            ("refused, acted: keep",                     blocked(Blocked::Account(refusal()), true), d(O::Hold(Held::Account))),
            ("refused, never acted: release, no call",   blocked(Blocked::Account(refusal()), false), d(O::NeverActed)),
            ("unverified, never acted: keep (may pass)", blocked(Blocked::Account(crate::accounts::Refusal::Unverified { name: "a".into(), namespace: ns() }), false), d(O::Hold(Held::Account))),
            ("refused, escape hatch: released",          blocked_annotated,                       d(O::ReleasedOnRequest)),
            ("observer: look at the VM (a read)",        observer(None, None),                    Step::CheckOwnership { id: id() }),
            ("observer, VM not its own: release, untouched", { let mut f = observer(None, None); f.proof = Some(Ok(Proof::NeverOwned)); f }, d(O::Observed)),
            ("observer refused earlier: release",        { let mut f = observer(Some(Ownership::Refused), None); f.proof = Some(Ok(Proof::NeverOwned)); f }, d(O::Observed)),
            ("observer, VM gone: release",               { let mut f = observer(None, None); f.proof = Some(Ok(Proof::Gone)); f }, d(O::Gone)),
            ("observer, look fails: keep",               { let mut f = observer(None, None); f.proof = Some(Err(cloud_err("InternalError", 500))); f }, d(O::Hold(Held::Proof))),
            ("observer, VM carries its uid (answer lost): untag", { let mut f = observer(None, None); f.proof = Some(Ok(Proof::Proven)); f }, Step::Untag { id: id() }),
            ("observer that claimed it: prove, untag",   observer(Some(Ownership::Claimed), None), Step::CheckOwnership { id: id() }),
            ("observer that claimed it, policy Delete: untag", { let mut f = observer(Some(Ownership::Claimed), Some(Delete)); f.proof = Some(Ok(Proof::Proven)); f }, Step::Untag { id: id() }),
            // escape hatch
            ("annotation: read it fresh",                annotated(None),                         Step::ReadReleaseRequest),
            ("annotation honoured: release, no cloud",   annotated(Some(honoured)),               d(O::ReleasedOnRequest)),
            ("annotation ignored: carry on",             annotated(Some(ignored)),                Step::ResolvePolicy),
            ("annotation, resource gone meanwhile",      annotated(Some(ReleaseCheck::Vanished)), d(O::Vanished)),
            // effective policy
            ("policy not read yet",                      base(),                                  Step::ResolvePolicy),
            ("CRD unreadable: keep",                     doubt(Doubt::CrdUnreadable { error: "x".into() }), d(O::Hold(Held::Policy))),
            ("annotation not a policy: keep",            doubt(Doubt::InvalidAnnotation { namespace: ns(), value: "orphan".into() }), d(O::Hold(Held::Policy))),
            ("namespace 404: keep",                      doubt(Doubt::NamespaceNotFound { namespace: ns() }), d(O::Hold(Held::Policy))),
            ("namespace unreadable: keep",               doubt(Doubt::NamespaceUnreadable { namespace: ns(), error: "403".into() }), d(O::Hold(Held::Policy))),
            // no VM ever
            ("never created, Delete: release",           no_vm(false, Delete),                    d(O::NothingToDo)),
            ("never created, Orphan: release",           no_vm(false, Orphan),                    d(O::NothingToDo)),
            // lost RunInstances answer
            ("create requested: look up by uid",         no_vm(true, Delete),                     Step::LookUpByUid),
            ("lookup fails: keep",                       looked_up(Err(e500()), false),           d(O::Hold(Held::Lookup))),
            ("lookup empty while appearing: wait",       looked_up(Ok(None), true),               d(O::Appearing { id: None, bump: false })),
            ("lookup empty after the window: release",   looked_up(Ok(None), false),              d(O::NothingToDo)),
            ("lookup finds the VM: prove ownership",     looked_up(Ok(Some(ID)), false),          Step::CheckOwnership { id: id() }),
            // ownership proof
            ("proof not read yet",                       { let mut f = base(); policy(&mut f, Delete); f }, Step::CheckOwnership { id: id() }),
            ("describe fails: keep",                     proof(Err(e500()), Delete),              d(O::Hold(Held::Proof))),
            ("tags ours: delete",                        proof(Ok(Proof::Proven), Delete),        delete_step(0, true)),
            ("appearing, Delete: delete by ID",          proof(Ok(Proof::Appearing), Delete),     delete_step(0, true)),
            ("appearing, Orphan: wait to untag",         proof(Ok(Proof::Appearing), Orphan),     d(O::Appearing { id: Some(id()), bump: false })),
            ("not listed: release as gone",              proof(Ok(Proof::Gone), Delete),          d(O::Gone)),
            ("never claimed: claim first",               never_claimed(None),                     Step::Claim { id: id() }),
            ("claim's describe fails: keep",             never_claimed(Some(Err(e500()))),        d(O::Hold(Held::Claim))),
            ("claim finds nothing listed: look again",   never_claimed(Some(Ok(()))),             d(O::LookAgain)),
            ("refused earlier: release, VM untouched",   { let mut f = proof(Ok(Proof::NeverOwned), Delete); f.status.ownership = Some(Ownership::Refused); f }, d(O::NeverOwned)),
            ("claim recorded, tags not ours: keep",      proof(Ok(Proof::Unproven), Delete),      d(O::Unproven)),
            ("Orphan, another owner's uid: keep",        proof(Ok(Proof::Unproven), Orphan),      d(O::Unproven)),
            ("Orphan, no uid tag at all: untag again",   proof(Ok(Proof::Untagged), Orphan),      Step::Untag { id: id() }),
            ("Delete, no uid tag at all: keep",          proof(Ok(Proof::Untagged), Delete),      d(O::Unproven)),
            // Orphan
            ("Orphan: untag",                            proven_orphan(),                         Step::Untag { id: id() }),
            ("untagged: confirm the tags are gone",      untagged(Ok("req-u".into()), None),      Step::ConfirmUntag { id: id() }),
            ("untag confirmed: release",                 untag_seen(Ok(UntagCheck::Untagged)),    d(O::Orphaned)),
            ("untagged, VM not listed: release",         untag_seen(Ok(UntagCheck::NotListed)),   d(O::Orphaned)),
            ("untag answered OK, tags still shown: keep", untag_seen(Ok(UntagCheck::StillTagged)), d(O::UntagUnconfirmed)),
            ("untag answered OK, describe fails: keep",  untag_seen(Err(e500())),                 d(O::Hold(Held::UntagCheck))),
            ("untag says not found: is the VM still listed?", untagged(Err(nf()), None),         Step::CheckGone { id: id() }),
            ("untag says not found, VM listed: keep",    untagged(Err(nf()), Some(false)),        d(O::Hold(Held::Untag))),
            ("untag fails: is the VM still listed?",     untagged(Err(e500()), None),             Step::CheckGone { id: id() }),
            ("untag fails, VM not listed: release",      untagged(Err(e500()), Some(true)),       d(O::Orphaned)),
            ("untag fails, VM listed: keep",             untagged(Err(e500()), Some(false)),      d(O::Hold(Held::Untag))),
            ("accepted earlier, now Orphan: untag, no proof", { let mut f = accepted(Ok(Some("DELETING")), 1); policy(&mut f, Orphan); f }, Step::Untag { id: id() }),
            // protection turned off by the user
            ("spec off, VM protected: turn it off",      protection(Some(false), Some(true), None), Step::DisableProtection { id: id() }),
            ("turned off: delete",                       protection(Some(false), Some(true), Some(Ok("req-p".into()))), delete_step(0, true)),
            ("could not turn off: delete anyway",        protection(Some(false), Some(true), Some(Err("x".into()))), delete_step(0, true)),
            ("spec says on: never turned off",           protection(Some(true), Some(true), None), delete_step(0, true)),
            ("spec unset: never turned off",             protection(None, Some(true), None),      delete_step(0, true)),
            // attempts
            ("attempt at the bound: stop",               attempt(MAX_COUNTER, None),              d(O::Exhausted)),
            ("attempt 3: its own token, no announce",    attempt(3, None),                        delete_step(3, false)),
            ("attempt 0 after a failure: no announce",   attempt(0, Some(Reason::Deleting)),      delete_step(0, false)),
            ("last attempt below the bound: sent",       attempt(MAX_COUNTER - 1, None),          delete_step(MAX_COUNTER - 1, false)),
            // DeleteInstances answered (cleanup::decide)
            ("deleted: release",                         answered(deleted()),                     d(O::Released)),
            ("NotFound for a VM listed just now: replay, new token", answered(gone()),           d(O::NotFoundReplayed { id: id() })),
            ("deleted, waitForTermination: accepted",    waiting(deleted()),                      d(O::Accepted)),
            ("same, waitForTermination",                 waiting(gone()),                         d(O::NotFoundReplayed { id: id() })),
            ("NotFound while appearing: no proof",       appearing_answer(gone()),                d(O::Appearing { id: Some(id()), bump: true })),
            ("deleted while appearing: release",         appearing_answer(deleted()),             d(O::Released)),
            ("busy: see what the VM is doing",           answered(busy()),                        Step::ObserveBusy { id: id() }),
            ("busy, observed: keep, retry",              { let mut f = answered(busy()); f.busy_status = Some(Some("STOPPING".into())); f }, d(O::Pending)),
            ("refused (protection): keep",               answered(refused("OperationDenied.DeletionProtection")), d(O::Pending)),
            ("refused (prepaid): keep",                  answered(refused("InvalidChargeType")),  d(O::Pending)),
            ("call failed: keep, same token",            answered(retry()),                       d(O::Pending)),
            // wait-for-termination (termination::decide)
            ("accepted: describe",                       { let mut f = accepted(Ok(None), 1); f.termination = None; f }, Step::AwaitTermination { id: id() }),
            ("accepted, not listed: release",            accepted(Ok(None), 1),                   d(O::Termination(Next::Release))),
            ("accepted, DELETING: wait",                 accepted(Ok(Some("DELETING")), 10),      d(O::Termination(Next::Wait))),
            ("accepted, unreadable: wait",               accepted(Err("InternalError"), 10),      d(O::Termination(Next::Wait))),
            ("accepted, DELETING past the bound: stall", accepted(Ok(Some("DELETING")), 1801),    d(O::Termination(Next::Stalled))),
            ("accepted, RUNNING again: resend",          accepted(Ok(Some("RUNNING")), 10),       d(O::Termination(Next::Resend))),
        ];
        for (what, f, want) in rows {
            assert_eq!(plan(&f), want, "{what}");
        }
    }

    /// What `report` makes of an outcome.
    struct Want {
        then: Then,
        held: Option<Reason>,
        event: Option<(bool, Reason)>,
        conds: &'static [(&'static str, &'static str, Reason)],
        attempt: Option<u32>,
    }

    fn want(then: Then, held: Option<Reason>, event: Option<(bool, Reason)>) -> Want {
        Want {
            then,
            held,
            event,
            conds: &[],
            attempt: None,
        }
    }

    fn conds(st: &EcsInstanceStatus) -> Vec<(String, String, String)> {
        st.conditions
            .iter()
            .map(|c: &Condition| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    /// One row per final outcome (a table; long for that reason).
    #[test]
    fn deletion_report_table() {
        use Reason as R;
        use Then::*;
        let mut doubt = base();
        doubt.policy = Some(Err(Doubt::NamespaceNotFound {
            namespace: "ns".into(),
        }));
        let mut throttled = proven();
        throttled.proof = Some(Err(cloud_err("FlowLimitExceeded", 429)));
        let mut orphan_none = base();
        policy(&mut orphan_none, Orphan);
        orphan_none.instance_id = None;
        let mut untag_failed = proven_orphan();
        untag_failed.untag = Some(Err(cloud_err("InternalError", 500)));
        untag_failed.untag_gone = Some(false);
        let mut untag_unseen = proven_orphan();
        untag_unseen.untag = Some(Ok("req-u".into()));
        untag_unseen.untag_check = Some(Ok(UntagCheck::StillTagged));
        let mut untag_confirmed = untag_unseen.clone();
        untag_confirmed.untag_check = Some(Ok(UntagCheck::Untagged));
        let mut honoured = base();
        honoured.release_annotation = true;
        honoured.release = Some(ReleaseCheck::Honoured {
            who: "w".into(),
            stated: "s".into(),
        });
        let mut exhausted = proven();
        exhausted.status.deletion_attempt = Some(MAX_COUNTER);
        let mut busy_seen = answered(busy());
        busy_seen.status.deletion_attempt = Some(2);
        busy_seen.busy_status = Some(Some("STOPPING".into()));
        let mut stalled_again = accepted(Ok(Some("DELETING")), 2000);
        set_condition(
            &mut stalled_again.status.conditions,
            "Stalled",
            true,
            "TerminationTimeout",
            "m",
            Some(1),
        );
        let mut appearing_gone = answered(gone());
        appearing_gone.appearing = true;
        appearing_gone.status.deletion_attempt = Some(4);
        let mut accepted_off = proven();
        accepted_off.wait_for_termination = true;
        accepted_off.status.deletion_protection = Some(true);
        accepted_off.spec_protection = Some(false);
        accepted_off.protection_off = Some(Ok("req-p".into()));
        accepted_off.delete = Some(deleted());
        let mut paused = proven();
        paused.blocked = Some(Blocked::Paused);
        let mut paused_again = paused.clone();
        for (t, r) in [("Synced", R::Paused), ("Ready", R::Deleting)] {
            set_condition(
                &mut paused_again.status.conditions,
                t,
                false,
                r.as_str(),
                "m",
                Some(1),
            );
        }
        let refusal = crate::accounts::Refusal::NotReady {
            name: "a".into(),
            why: "Secret ecs/a not found".into(),
        };
        let mut refused_acted = proven();
        refused_acted.blocked = Some(Blocked::Account(refusal.clone()));
        let mut refused_never = base();
        refused_never.status = EcsInstanceStatus::default();
        refused_never.instance_id = None;
        refused_never.blocked = Some(Blocked::Account(refusal));
        let mut observer = base();
        observer.observe_only = true;
        observer.proof = Some(Ok(Proof::NeverOwned));
        #[rustfmt::skip]
        let rows: Vec<(&str, Facts, Want)> = vec![
            ("paused",            paused,                     Want { conds: &[("Synced", "False", R::Paused), ("Ready", "False", R::Deleting)], ..want(AwaitChange, Some(R::Paused), Some((false, R::Paused))) }),
            ("paused, reported",  paused_again,               Want { conds: &[("Synced", "False", R::Paused), ("Ready", "False", R::Deleting)], ..want(AwaitChange, Some(R::Paused), None) }),
            ("account refused",   refused_acted,              Want { conds: &[("Synced", "False", R::AccountNotReady), ("Ready", "False", R::Deleting)], ..want(Backoff, Some(R::AccountNotReady), Some((true, R::AccountNotReady))) }),
            ("refused, never acted", refused_never,           want(Release, None, Some((false, R::ReleasedWithoutVm)))),
            ("observer",          observer,                   want(Release, None, Some((false, R::ObserveOnly)))),
            ("escape hatch",      honoured,                   want(ReleaseFresh, None, Some((true, R::ReleasedWithoutDelete)))),
            ("policy doubt",      doubt,                      Want { conds: &[("Synced", "False", R::NamespaceNotFound), ("Ready", "False", R::Deleting)], ..want(Backoff, Some(R::NamespaceNotFound), Some((true, R::NamespaceNotFound))) }),
            ("proof throttled",   throttled,                  Want { conds: &[("Synced", "False", R::CloudThrottled), ("Ready", "False", R::Deleting)], ..want(Backoff, Some(R::CloudThrottled), Some((true, R::CloudThrottled))) }),
            ("no VM, Orphan",     orphan_none,                want(Release, None, Some((false, R::Orphaned)))),
            ("no VM, Delete",     no_vm_delete(),             want(Release, None, None)),
            ("untag failed",      untag_failed,               Want { conds: &[("Synced", "False", R::CloudError), ("Ready", "False", R::Deleting)], ..want(Backoff, Some(R::CloudError), Some((true, R::CloudError))) }),
            ("untag not seen",    untag_unseen,               Want { conds: &[("Synced", "False", R::UntagUnconfirmed), ("Ready", "False", R::Deleting)], ..want(Backoff, Some(R::UntagUnconfirmed), Some((true, R::UntagUnconfirmed))) }),
            ("untag seen",        untag_confirmed,            want(Release, None, Some((false, R::Orphaned)))),
            ("gone at proof",     proof_gone(),               want(Release, None, Some((false, R::AlreadyGone)))),
            ("unproven",          unproven(),                 Want { conds: &[("Synced", "False", R::OwnershipUnproven), ("Ready", "False", R::OwnershipUnproven)], ..want(Backoff, Some(R::OwnershipUnproven), Some((true, R::OwnershipUnproven))) }),
            ("exhausted",         exhausted,                  Want { conds: &[("Synced", "False", R::DeletionAttemptsExhausted), ("Stalled", "True", R::DeletionAttemptsExhausted)], ..want(Slow, Some(R::DeletionAttemptsExhausted), Some((true, R::DeletionAttemptsExhausted))) }),
            ("deleted",           answered(deleted()),        want(Release, None, Some((false, R::Deleted)))),
            ("NotFound, listed",  answered(gone()),           Want { conds: &[("Ready", "False", R::NotFoundReplayed)], attempt: Some(1), ..want(Poll, Some(R::NotFoundReplayed), None) }),
            ("accepted",          accepted_off,               Want { conds: &[("Ready", "False", R::DeletionAccepted)], ..want(Poll, None, Some((false, R::DeletionAccepted))) }),
            ("NotFound appearing", appearing_gone,            Want { conds: &[("Ready", "False", R::InstanceAppearing)], attempt: Some(5), ..want(Poll, Some(R::InstanceAppearing), None) }),
            ("busy",              busy_seen,                  Want { conds: &[("Synced", "True", R::DeletionPending), ("Ready", "False", R::Deleting)], attempt: Some(3), ..want(Backoff, None, Some((false, R::DeletionPending))) }),
            ("protected",         answered(refused("OperationDenied.DeletionProtection")), Want { conds: &[("Synced", "False", R::DeletionRefused), ("Ready", "False", R::Deleting)], attempt: Some(1), ..want(Backoff, None, Some((true, R::DeletionRefused))) }),
            ("prepaid",           answered(refused("InvalidChargeType")), Want { conds: &[("Synced", "False", R::DeletionRefused), ("Stalled", "True", R::DeletionRefused), ("Ready", "False", R::Deleting)], attempt: Some(1), ..want(Slow, None, Some((true, R::DeletionRefused))) }),
            ("call failed",       answered(retry()),          Want { conds: &[("Synced", "False", R::CloudError), ("Ready", "False", R::Deleting)], ..want(Backoff, None, Some((true, R::CloudError))) }),
            ("terminated",        accepted(Ok(None), 5),      want(Release, None, Some((false, R::Deleted)))),
            ("terminating",       accepted(Ok(Some("DELETING")), 5), Want { conds: &[("Ready", "False", R::DeletionAccepted)], ..want(Poll, None, None) }),
            ("reverted",          accepted(Ok(Some("RUNNING")), 5), Want { conds: &[("Ready", "False", R::DeletionReverted), ("Synced", "False", R::DeletionReverted)], attempt: Some(1), ..want(Backoff, None, Some((true, R::DeletionReverted))) }),
            ("stalled",           accepted(Ok(Some("DELETING")), 2000), Want { conds: &[("Ready", "False", R::DeletionAccepted), ("Stalled", "True", R::TerminationTimeout)], ..want(Poll, Some(R::TerminationTimeout), Some((true, R::TerminationTimeout))) }),
            ("stalled, reported", stalled_again,              Want { conds: &[("Ready", "False", R::DeletionAccepted), ("Stalled", "True", R::TerminationTimeout)], ..want(Poll, None, None) }),
        ];
        for (what, f, w) in rows {
            let Step::Done(o) = plan(&f) else {
                panic!("{what}: not a final step: {:?}", plan(&f));
            };
            let r = report(&f, &o);
            assert_eq!(r.then, w.then, "{what}");
            assert_eq!(r.held, w.held, "{what}");
            assert_eq!(
                r.event.as_ref().map(|e| (e.warning, e.reason)),
                w.event,
                "{what}"
            );
            let want_conds: Vec<_> = w
                .conds
                .iter()
                .map(|(t, s, r)| (t.to_string(), s.to_string(), r.as_str().to_string()))
                .collect();
            match &r.status {
                Some(st) => {
                    assert_eq!(conds(st), want_conds, "{what}");
                    if w.attempt.is_some() {
                        assert_eq!(st.deletion_attempt, w.attempt, "{what}");
                    }
                }
                None => assert!(
                    w.conds.is_empty() && w.attempt.is_none(),
                    "{what}: no status written"
                ),
            }
            // A release never writes status; a kept VM always says why (condition or Event).
            if matches!(r.then, Release | ReleaseFresh) {
                assert!(r.status.is_none(), "{what}");
            } else if r.then != Poll {
                assert!(r.status.is_some() || o == O::LookAgain, "{what}");
            }
        }
    }

    fn no_vm_delete() -> Facts {
        let mut f = base();
        policy(&mut f, Delete);
        f.instance_id = None;
        f
    }

    fn proof_gone() -> Facts {
        let mut f = proven();
        f.proof = Some(Ok(Proof::Gone));
        f
    }

    fn unproven() -> Facts {
        let mut f = proven();
        f.proof = Some(Ok(Proof::Unproven));
        f
    }

    #[test]
    fn details_reports_keep() {
        // Protection: the refusal records it; a confirmed turn-off is recorded once accepted.
        let f = answered(refused("OperationDenied.DeletionProtection"));
        let st = report(&f, &O::Pending).status.unwrap();
        assert_eq!(st.deletion_protection, Some(true));
        let mut f = proven();
        f.wait_for_termination = true;
        f.status.deletion_protection = Some(true);
        f.protection_off = Some(Ok("req-p".into()));
        f.delete = Some(deleted());
        let st = report(&f, &O::Accepted).status.unwrap();
        assert_eq!(st.deletion_protection, Some(false));
        assert_eq!(st.instance_status.as_deref(), Some("DELETING"));
        assert_eq!(st.deletion_accepted_at, Some(Time(t(0))));
        // The busy VM's state is named; without a describe, the last one recorded.
        let mut f = answered(busy());
        f.busy_status = Some(Some("STOPPING".into()));
        let r = report(&f, &O::Pending);
        assert!(r
            .event
            .unwrap()
            .note
            .contains("is STOPPING and cannot be deleted yet"));
        f.busy_status = Some(None);
        let r = report(&f, &O::Pending);
        assert!(r.event.unwrap().note.contains("is unknown and cannot"));
        // A rollback retires the accepted time and the TerminationTimeout stall.
        let mut f = accepted(Ok(Some("STOPPED")), 5);
        set_condition(
            &mut f.status.conditions,
            "Stalled",
            true,
            "TerminationTimeout",
            "m",
            Some(1),
        );
        let st = report(&f, &O::Termination(Next::Resend)).status.unwrap();
        assert_eq!(st.deletion_accepted_at, None);
        assert_eq!(st.instance_status.as_deref(), Some("STOPPED"));
        assert!(st.conditions.iter().all(|c| c.type_ != "Stalled"));
        // An accepted deletion without a recorded time starts its wait now.
        let mut f = accepted(Ok(Some("DELETING")), 0);
        f.status.deletion_accepted_at = None;
        let st = report(&f, &O::Termination(Next::Wait)).status.unwrap();
        assert_eq!(st.deletion_accepted_at, Some(Time(t(0))));
    }

    #[test]
    fn answers_on_the_way_publish_their_events() {
        let mut f = base();
        let ev = f.absorb(Answer::Release(ReleaseCheck::Ignored { why: "w" }));
        assert_eq!(
            ev.map(|e| (e.warning, e.reason)),
            Some((true, Reason::ReleaseAnnotationIgnored))
        );
        let ev = f.absorb(Answer::Policy(Ok((Orphan, Source::CrdDeleting))));
        assert_eq!(
            ev.map(|e| (e.warning, e.reason)),
            Some((true, Reason::CrdDeleting))
        );
        assert_eq!(
            f.absorb(Answer::Policy(Ok((Orphan, Source::Namespace)))),
            None
        );
        let ev = f.absorb(Answer::ProtectionOff(Ok("req-p".into())));
        assert_eq!(
            ev.map(|e| (e.warning, e.reason)),
            Some((false, Reason::DeletionProtectionSet))
        );
        assert_eq!(f.absorb(Answer::ProtectionOff(Err("x".into()))), None);
    }

    /// Driving `plan` with scripted answers walks the diagram to its end: no step repeats.
    #[test]
    fn every_answer_moves_the_plan_on() {
        let mut f = base();
        f.release_annotation = true;
        f.spec_protection = Some(false);
        f.status.deletion_protection = Some(true);
        let mut steps = Vec::new();
        let outcome = loop {
            let step = plan(&f);
            assert!(!steps.contains(&step), "repeated {step:?}");
            steps.push(step.clone());
            let answer = match step {
                Step::Done(o) => break o,
                Step::ReadReleaseRequest => Answer::Release(ReleaseCheck::Ignored { why: "w" }),
                Step::ResolvePolicy => Answer::Policy(Ok((Delete, Source::Default))),
                Step::CheckOwnership { .. } => Answer::Ownership(Ok(Proof::Proven)),
                Step::DisableProtection { .. } => Answer::ProtectionOff(Ok("r".into())),
                Step::Delete { .. } => Answer::Delete(busy()),
                Step::ObserveBusy { .. } => Answer::BusyStatus(Some("STOPPING".into())),
                other => panic!("unexpected {other:?}"),
            };
            f.absorb(answer);
        };
        assert_eq!(outcome, O::Pending);
        assert_eq!(steps.len(), 7);
    }

    /// The answers a step can get, for `every_schedule_ends_and_deletes_only_on_proof`.
    fn answers(step: &Step) -> Vec<Answer> {
        let e500 = || cloud_err("InternalError", 500);
        match step {
            Step::ReadReleaseRequest => vec![
                Answer::Release(ReleaseCheck::Vanished),
                Answer::Release(ReleaseCheck::Honoured {
                    who: "w".into(),
                    stated: "s".into(),
                }),
                Answer::Release(ReleaseCheck::Ignored { why: "w" }),
            ],
            Step::ResolvePolicy => vec![
                Answer::Policy(Ok((Delete, Source::Spec))),
                Answer::Policy(Ok((Orphan, Source::CrdDeleting))),
                Answer::Policy(Err(Doubt::NamespaceNotFound {
                    namespace: "n".into(),
                })),
            ],
            Step::LookUpByUid => vec![
                Answer::Lookup(Ok(None)),
                Answer::Lookup(Ok(Some(ID.into()))),
                Answer::Lookup(Err(e500())),
            ],
            Step::CheckOwnership { .. } => {
                let mut v: Vec<Answer> = [
                    Proof::Proven,
                    Proof::Appearing,
                    Proof::Gone,
                    Proof::NeverOwned,
                    Proof::Unproven,
                    Proof::Untagged,
                ]
                .into_iter()
                .map(|p| Answer::Ownership(Ok(p)))
                .collect();
                v.push(Answer::Ownership(Err(e500())));
                v
            }
            Step::Claim { .. } => vec![Answer::Claim(Ok(())), Answer::Claim(Err(e500()))],
            Step::Untag { .. } => vec![
                Answer::Untag(Ok("r".into())),
                Answer::Untag(Err(cloud_err("InvalidInstance.NotFound", 404))),
                Answer::Untag(Err(e500())),
            ],
            Step::CheckGone { .. } => vec![Answer::UntagGone(true), Answer::UntagGone(false)],
            Step::ConfirmUntag { .. } => vec![
                Answer::UntagCheck(Ok(UntagCheck::Untagged)),
                Answer::UntagCheck(Ok(UntagCheck::StillTagged)),
                Answer::UntagCheck(Ok(UntagCheck::NotListed)),
                Answer::UntagCheck(Err(e500())),
            ],
            Step::AwaitTermination { .. } => vec![
                Answer::Termination(Ok(None)),
                Answer::Termination(Ok(Some("DELETING".into()))),
                Answer::Termination(Ok(Some("RUNNING".into()))),
                Answer::Termination(Err("InternalError".into())),
            ],
            Step::DisableProtection { .. } => {
                vec![
                    Answer::ProtectionOff(Ok("r".into())),
                    Answer::ProtectionOff(Err("x".into())),
                ]
            }
            Step::Delete { .. } => [
                deleted(),
                gone(),
                busy(),
                refused("OperationDenied.DeletionProtection"),
                refused("InvalidChargeType"),
                retry(),
            ]
            .into_iter()
            .map(Answer::Delete)
            .collect(),
            Step::ObserveBusy { .. } => {
                vec![
                    Answer::BusyStatus(Some("STOPPING".into())),
                    Answer::BusyStatus(None),
                ]
            }
            Step::Done(_) => vec![],
        }
    }

    /// Walks every schedule of answers; returns how many ended.
    fn walk(f: &Facts, depth: usize) -> usize {
        assert!(depth < 12, "no end after {depth} steps: {f:?}");
        let step = plan(f);
        if let Step::Delete { .. } = step {
            // The safety rule: DeleteInstances only under policy Delete and a current proof
            // (or a VM appearing, whose NotFound is then no proof).
            assert!(matches!(f.policy, Some(Ok((Delete, _)))), "{f:?}");
            let proven = matches!(f.proof, Some(Ok(Proof::Proven | Proof::Appearing)));
            assert!(proven, "{f:?}");
        }
        if let Step::Done(o) = &step {
            let r = report(f, o);
            if matches!(r.then, Then::Release) {
                let why = matches!(
                    o,
                    O::NothingToDo | O::Gone | O::NeverOwned | O::Orphaned | O::Released
                ) || matches!(o, O::Termination(Next::Release));
                assert!(why, "released on {o:?}: {f:?}");
                // An orphan is let go only once its ownership tags are seen gone (or it is).
                if *o == O::Orphaned && matches!(f.untag, Some(Ok(_))) {
                    let seen = matches!(
                        f.untag_check,
                        Some(Ok(UntagCheck::Untagged | UntagCheck::NotListed))
                    );
                    assert!(seen, "orphan released unconfirmed: {f:?}");
                }
            }
            if r.held.is_some() || r.event.as_ref().is_some_and(|e| e.warning) {
                assert!(!matches!(r.then, Then::Release), "{o:?}");
            }
            return 1;
        }
        answers(&step)
            .into_iter()
            .map(|a| {
                let mut g = f.clone();
                g.absorb(a);
                walk(&g, depth + 1)
            })
            .sum()
    }

    /// Every start state and every schedule of answers ends in a report within a few
    /// steps, and never plans a DeleteInstances without policy Delete and current proof.
    #[test]
    fn every_schedule_ends_and_deletes_only_on_proof() {
        let mut ended = 0;
        for bits in 0..(1u32 << 8) {
            let mut f = base();
            let on = |i: u32| bits & (1 << i) != 0;
            f.release_annotation = on(0);
            if on(1) {
                f.instance_id = None;
                f.create_requested = on(2);
            }
            f.appearing = on(3);
            if on(4) {
                with_ready(&mut f, Reason::DeletionAccepted);
            }
            if on(5) {
                f.spec_protection = Some(false);
                f.status.deletion_protection = Some(true);
            }
            f.wait_for_termination = on(6);
            if on(7) {
                f.status.deletion_attempt = Some(MAX_COUNTER);
                f.status.ownership = None;
            }
            ended += walk(&f, 0);
        }
        assert!(ended > 4_000, "{ended}");
    }
}
