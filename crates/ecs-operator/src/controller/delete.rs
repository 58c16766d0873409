//! The effectful half of the deletion path: it carries out the steps `delete_plan::plan`
//! decides (reads, cloud calls), feeds each answer back, and applies the final report
//! (status, metric, Event, requeue). Every decision is in `delete_plan`; this file reads
//! like the README's deletion diagram because the planner does.

use std::sync::Arc;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::apply::OWNERSHIP_TAGS;
use super::batch::Pace;
use super::cleanup::{self, DeleteItem};
use super::delete_plan::{self, Answer, Blocked, Facts, ReleaseCheck, Report, Step, Then};
use super::ownership::{self, Proof};
use super::policy::{self, Doubt, NsAnnotation, Source};
use super::reasons::EventNote;
use super::{finalizer, status, Context};
use crate::accounts::registry::AccountCloud;
use crate::api::{DeletionPolicy, EcsInstance, EcsInstanceStatus, MAX_COUNTER, RELEASE_ANNOTATION};
use crate::cloud::{CloudError, Instance};
use crate::Error;

/// What a describe after a successful UntagResources shows: any `ecs.volcengine.io/*`
/// ownership key left counts, whatever its value (all four were asked to go).
fn untag_check(seen: Option<&Instance>) -> delete_plan::UntagCheck {
    use delete_plan::UntagCheck;
    match seen {
        None => UntagCheck::NotListed,
        Some(i)
            if i.tags
                .iter()
                .any(|t| OWNERSHIP_TAGS.contains(&t.key.as_str())) =>
        {
            UntagCheck::StillTagged
        }
        Some(_) => UntagCheck::Untagged,
    }
}

pub async fn run(obj: &EcsInstance, ctx: &Arc<Context>) -> Result<Action, Error> {
    // Paused, or no account to act in: the planner holds (after the escape hatch, which
    // needs no account) and says why. No cloud call is made for such a resource.
    let (acct, blocked) = if obj.paused() {
        (ctx.default_account().clone(), Some(Blocked::Paused))
    } else {
        match ctx.accounts.resolve(obj).await {
            Ok(a) => (a, None),
            Err(r) => (ctx.default_account().clone(), Some(Blocked::Account(r))),
        }
    };
    // A deletion may claim, untag or delete in the account: bound to it first, as the apply
    // path is (a crash after a claim must not leave the resource counted as the default's).
    let bound;
    let obj = if blocked.is_none() && crate::accounts::pinned(obj.status.as_ref()).is_none() {
        bound = super::reconcile::bind(obj, ctx, &acct).await?;
        &bound
    } else {
        obj
    };
    let mut x = Exec::new(obj, ctx, acct);
    let s = &ctx.settings;
    let (window, timeout) = (s.appear_window, s.termination_timeout);
    let mut facts = Facts::of(obj, &x.uid, window, timeout, super::ownership::now());
    facts.blocked = blocked;
    loop {
        let step = delete_plan::plan(&facts);
        let answer = match step {
            Step::Done(outcome) => return x.finish(delete_plan::report(&facts, &outcome)).await,
            step => match x.carry_out(step, &facts).await? {
                Ok(answer) => answer,
                // The claim step of the apply path reported on its own.
                Err(action) => return Ok(action),
            },
        };
        let event = facts.absorb(answer);
        x.event(event);
    }
}

/// What the effects of one deletion reconcile need.
struct Exec<'a> {
    obj: &'a EcsInstance,
    ctx: &'a Arc<Context>,
    api: Api<EcsInstance>,
    uid: String,
    region: String,
    /// The account the resource acts in.
    acct: Arc<AccountCloud>,
    /// The object read afresh for the escape hatch (its release removes this one's finalizer).
    fresh: Option<EcsInstance>,
}

impl<'a> Exec<'a> {
    fn new(obj: &'a EcsInstance, ctx: &'a Arc<Context>, acct: Arc<AccountCloud>) -> Self {
        Exec {
            obj,
            ctx,
            api: Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default()),
            uid: obj.uid().unwrap_or_default(),
            region: ctx.region_of(obj, &acct),
            acct,
            fresh: None,
        }
    }

    fn pace(&self) -> Pace {
        self.ctx.pace_of(&self.obj.namespace().unwrap_or_default())
    }

    /// Carries out one step and returns the answer (`Err`: the step ended the reconcile).
    /// One arm per effect in the README's diagram.
    async fn carry_out(
        &mut self,
        step: Step,
        facts: &Facts,
    ) -> Result<Result<Answer, Action>, Error> {
        let (obj, ctx) = (self.obj, self.ctx);
        Ok(Ok(match step {
            Step::ReadReleaseRequest => Answer::Release(self.release_request().await?),
            Step::ResolvePolicy => Answer::Policy(deletion_policy(obj, ctx).await),
            Step::LookUpByUid => {
                let found = super::apply::find_by_uid(&self.acct, &self.region, &self.uid).await;
                Answer::Lookup(found.map(|i| i.map(|i| i.instance_id)))
            }
            Step::CheckOwnership { id } => {
                Answer::Ownership(self.ownership_proof(facts, &id).await)
            }
            Step::Claim { id } => {
                match self.acct.describe_one(&self.region, &id, self.pace()).await {
                    Ok(Some(inst)) => return self.claim(&inst).await.map(Err),
                    Ok(None) => Answer::Claim(Ok(())),
                    Err(e) => Answer::Claim(Err(e)),
                }
            }
            Step::Untag { id } => {
                let keys = OWNERSHIP_TAGS.iter().map(|k| k.to_string()).collect();
                let r = self
                    .acct
                    .cloud
                    .untag_instances(&self.region, vec![id], keys)
                    .await;
                Answer::Untag(r.map(|c| c.request_id))
            }
            Step::CheckGone { id } => Answer::UntagGone(matches!(
                self.acct.describe_one(&self.region, &id, self.pace()).await,
                Ok(None)
            )),
            Step::ConfirmUntag { id } => Answer::UntagCheck(
                self.acct
                    .describe_one(&self.region, &id, self.pace())
                    .await
                    .map(|seen| untag_check(seen.as_ref())),
            ),
            Step::AwaitTermination { id } => {
                let seen = self.acct.describe_one(&self.region, &id, self.pace()).await;
                if let Err(e) = &seen {
                    tracing::info!(%id, error = %e, "waiting for termination");
                }
                Answer::Termination(
                    seen.map(|i| i.map(|i| i.status))
                        .map_err(|e| e.code().to_string()),
                )
            }
            Step::DisableProtection { id } => {
                let r = self
                    .acct
                    .cloud
                    .set_deletion_protection(&self.region, id.clone(), false)
                    .await;
                if let Err(e) = &r {
                    tracing::info!(%id, error = %e, "could not turn deletion protection off");
                }
                Answer::ProtectionOff(r.map(|c| c.request_id).map_err(|e| e.to_string()))
            }
            Step::Delete {
                id,
                attempt,
                announce,
                ..
            } => {
                self.event(announce);
                Answer::Delete(self.delete(id, attempt).await?)
            }
            Step::ObserveBusy { id } => {
                let seen = self.acct.describe_one(&self.region, &id, self.pace()).await;
                Answer::BusyStatus(seen.ok().flatten().map(|i| i.status))
            }
            // Not reached: `run` reports a final step itself.
            Step::Done(_) => return Ok(Err(Action::await_change())),
        }))
    }

    fn event(&self, e: Option<EventNote>) {
        if let Some(e) = e {
            status::event(self.ctx, self.obj, e);
        }
    }

    /// The escape hatch: whether the annotation is honoured (see `release_request`). The
    /// cache drops managedFields: read them fresh.
    async fn release_request(&mut self) -> Result<ReleaseCheck, Error> {
        let Some(fresh) = self.api.get_opt(&self.obj.name_any()).await? else {
            return Ok(ReleaseCheck::Vanished);
        };
        let check = match release_request(&fresh) {
            Ok(who) => ReleaseCheck::Honoured {
                who,
                stated: fresh
                    .annotations()
                    .get(RELEASE_ANNOTATION)
                    .cloned()
                    .unwrap_or_default(),
            },
            Err(why) => ReleaseCheck::Ignored { why },
        };
        self.fresh = Some(fresh);
        Ok(check)
    }

    /// Current proof that the VM is this resource's: DescribeInstances just now, its uid tag
    /// against this resource's uid, and the claim recorded in status.
    async fn ownership_proof(&self, f: &Facts, id: &str) -> Result<Proof, CloudError> {
        let seen = self
            .acct
            .describe_one(&self.region, id, self.pace())
            .await?
            .map(|inst| ownership::seen(&inst, &self.uid));
        Ok(ownership::proof(f.status.ownership, f.appearing, seen))
    }

    /// Adopted, but no claim ever reached the cloud (say the credentials were broken until
    /// now): the same claim-or-refuse step as the apply path, then a fresh look. A claimed
    /// VM is then proven ours and deleted; a refused one is left alone.
    async fn claim(&self, inst: &crate::cloud::Instance) -> Result<Action, Error> {
        let mut st = self.obj.status.clone().unwrap_or_default();
        let (obj, ctx) = (self.obj, self.ctx);
        let next = super::apply::ensure_owned(
            obj,
            ctx,
            &self.acct,
            &self.api,
            &mut st,
            &self.region,
            inst,
        )
        .await?;
        Ok(next.unwrap_or_else(|| Action::requeue(ctx.backoff.next(&self.uid))))
    }

    /// DeleteInstances through the batcher, and what its answer means (`cleanup::decide`).
    async fn delete(&self, id: String, attempt: u32) -> Result<cleanup::Decision, Error> {
        let item = DeleteItem {
            uid: self.uid.clone(),
            attempt,
            instance_id: id.clone(),
        };
        let outcome = self.acct.deleter.submit(self.region.clone(), item).await;
        let outcome = outcome.ok_or(Error::ShuttingDown)?;
        let decision = cleanup::decide(&outcome, &id);
        tracing::info!(namespace = %self.obj.namespace().unwrap_or_default(), name = %self.obj.name_any(),
            instance_id = %id, attempt, decision = decision.code(), "DeleteInstances answered");
        Ok(decision)
    }

    /// Applies a final report: metric, status, Event, then the requeue or the release.
    async fn finish(&self, r: Report) -> Result<Action, Error> {
        let (obj, ctx) = (self.obj, self.ctx);
        if let Some(reason) = r.held {
            if let Some(e) = r.event.as_ref().filter(|e| e.warning) {
                tracing::info!(namespace = ?obj.metadata.namespace, name = %obj.name_any(), reason = reason.as_str(), message = %e.note, "deletion held");
            }
            ctx.metrics.deletion_held(reason.as_str());
        }
        // The next try of a deletion that backs off is written down (for `explain`); in
        // the same status write as the report, which a refusal or failure makes anyway.
        let delay = (r.then == Then::Backoff).then(|| ctx.backoff.next(&self.uid));
        let retry_at = delay.map(|d| {
            let at = super::ownership::now()
                .checked_add(d)
                .unwrap_or_else(|_| super::ownership::now());
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at)
        });
        // Only in a write the report makes anyway (its status differs from the one read,
        // the next try aside): a retry time alone never costs a write, nor writes back a
        // status read from a cache that may lag (a report without a status, LookAgain after
        // a claim wrote the status itself, writes nothing either). Then `explain` says the
        // recorded time is due.
        if let Some(mut st) = r.status.clone() {
            let old = obj.status.clone().unwrap_or_default();
            let changed = EcsInstanceStatus {
                deletion_retry_at: None,
                ..st.clone()
            } != EcsInstanceStatus {
                deletion_retry_at: None,
                ..old
            };
            if changed {
                st.deletion_retry_at = retry_at;
                status::patch(&self.api, obj, &st).await?;
            }
        }
        if r.then == Then::ReleaseFresh {
            let note = r
                .event
                .as_ref()
                .map(|e| e.note.as_str())
                .unwrap_or_default();
            tracing::warn!(namespace = ?obj.metadata.namespace, name = %obj.name_any(), %note, "finalizer released by annotation");
        }
        self.event(r.event);
        Ok(match r.then {
            Then::Backoff => Action::requeue(delay.unwrap_or_else(|| ctx.backoff.next(&self.uid))),
            Then::Slow => Action::requeue(ctx.backoff.slow()),
            Then::Poll => Action::requeue(ctx.settings.transition_poll),
            Then::AwaitChange => Action::await_change(),
            Then::Release => self.release(obj).await?,
            Then::ReleaseFresh => self.release(self.fresh.as_ref().unwrap_or(obj)).await?,
        })
    }

    /// The finalizer goes: the cloud accepted the deletion, said the VM is gone, or there was
    /// never a VM (or the policy is Orphan, or a person asked).
    async fn release(&self, target: &EcsInstance) -> Result<Action, Error> {
        tracing::info!(namespace = ?target.metadata.namespace, name = %target.name_any(), "releasing the resource");
        finalizer::remove(&self.api, target).await?;
        self.ctx.backoff.reset(&self.uid);
        self.ctx.note_unmanaged(&self.uid, None);
        if let Some(ts) = &target.metadata.deletion_timestamp {
            let secs = (super::ownership::now() - ts.0)
                .total(k8s_openapi::jiff::Unit::Second)
                .unwrap_or(0.0);
            self.ctx.metrics.deletion_latency.observe(secs.max(0.0));
        }
        Ok(Action::await_change())
    }
}

/// The effective policy (`policy::resolve`): the CRD's state, spec.deletionPolicy, the
/// namespace annotation (read only when the spec leaves it open), the operator default.
async fn deletion_policy(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
) -> Result<(DeletionPolicy, Source), Doubt> {
    let ns = obj.namespace().unwrap_or_default();
    let crd = ctx.crd_state(ctx.pace_of(&ns)).await;
    let annotation = match obj.spec.deletion_policy {
        Some(_) => NsAnnotation::NotRead,
        None => ctx.namespace_annotation(&ns).await,
    };
    policy::resolve(
        &crd,
        obj.spec.deletion_policy,
        &ns,
        &annotation,
        ctx.settings.default_policy,
    )
}

/// The attempt after a definitive answer. Saturates at the schema's bound; `run` stops
/// before sending the token of the bound itself.
pub fn next_attempt(attempt: u32) -> u32 {
    attempt.saturating_add(1).min(MAX_COUNTER)
}

/// Whether the release annotation is to be honoured, and who set it: only when it was set
/// (by the managedFields entry that owns it) at or after the deletionTimestamp, so an
/// annotation left on a live resource (say, from Git) never silently skips a later deletion.
pub fn release_request(obj: &EcsInstance) -> Result<String, &'static str> {
    let Some(deleting_since) = obj.metadata.deletion_timestamp.as_ref() else {
        return Err("the resource is not being deleted");
    };
    let key = format!("f:{RELEASE_ANNOTATION}");
    let entries = obj.metadata.managed_fields.as_deref().unwrap_or_default();
    let owner = entries.iter().rev().find(|m| {
        m.fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:metadata"))
            .and_then(|m| m.get("f:annotations"))
            .and_then(|a| a.get(&key))
            .is_some()
    });
    let Some(owner) = owner else {
        return Err("no managedFields entry owns it, so when it was set is unknown; set it again");
    };
    let Some(set_at) = owner.time.as_ref() else {
        return Err("its managedFields entry has no time; set it again");
    };
    if set_at.0 < deleting_since.0 {
        return Err("it was set before the deletion began (a leftover, not a request to release this deletion); set it again, with a new value, to release");
    }
    Ok(format!(
        "field manager {:?} ({} at {})",
        owner.manager.as_deref().unwrap_or("unknown"),
        owner.operation.as_deref().unwrap_or("unknown operation"),
        set_at.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
    use k8s_openapi::jiff::Timestamp;

    fn at(s: &str) -> Time {
        Time(s.parse::<Timestamp>().unwrap())
    }

    fn entry(manager: &str, time: Option<&str>, annotation: bool) -> ManagedFieldsEntry {
        let fields = if annotation {
            serde_json::json!({"f:metadata": {"f:annotations": {format!("f:{RELEASE_ANNOTATION}"): {}}}})
        } else {
            serde_json::json!({"f:spec": {"f:instanceId": {}}})
        };
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            time: time.map(at),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    #[test]
    fn release_request_table() {
        let t0 = "2026-12-01T10:00:00Z";
        let before = "2026-12-01T09:59:59Z";
        let after = "2026-12-01T10:00:05Z";
        // (deletionTimestamp, managedFields, honoured)
        let rows: Vec<(Option<&str>, Vec<ManagedFieldsEntry>, bool)> = vec![
            (
                None,
                vec![entry("kubectl-annotate", Some(after), true)],
                false,
            ),
            (Some(t0), vec![], false),
            (Some(t0), vec![entry("kubectl-annotate", None, true)], false),
            (
                Some(t0),
                vec![entry("kubectl-annotate", Some(before), true)],
                false,
            ),
            (
                Some(t0),
                vec![entry("kubectl-annotate", Some(t0), true)],
                true,
            ),
            (
                Some(t0),
                vec![entry("kubectl-annotate", Some(after), true)],
                true,
            ),
            // Another manager's later write does not stand in for the annotation's owner.
            (
                Some(t0),
                vec![
                    entry("gitops", Some(before), true),
                    entry("kubectl-edit", Some(after), false),
                ],
                false,
            ),
        ];
        for (i, (dt, mf, honoured)) in rows.into_iter().enumerate() {
            let mut o = EcsInstance::new("vm", Default::default());
            o.metadata.deletion_timestamp = dt.map(at);
            o.metadata.managed_fields = Some(mf);
            let got = release_request(&o);
            assert_eq!(got.is_ok(), honoured, "row {i}: {got:?}");
            if let Ok(who) = got {
                assert!(
                    who.contains("kubectl-annotate") && who.contains("Update"),
                    "{who}"
                );
            }
        }
    }

    #[test]
    fn attempts_saturate_at_the_bound() {
        assert_eq!(next_attempt(0), 1);
        assert_eq!(next_attempt(MAX_COUNTER - 1), MAX_COUNTER);
        assert_eq!(next_attempt(MAX_COUNTER), MAX_COUNTER);
        assert_eq!(next_attempt(u32::MAX), MAX_COUNTER);
    }
}
