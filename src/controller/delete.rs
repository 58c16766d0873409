//! The effectful half of the deletion path: resolve the policy, send the (batched)
//! DeleteInstances, apply the decision from `cleanup::decide`, write status and Events.

use std::sync::Arc;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::apply::OWNERSHIP_TAGS;
use super::cleanup::{self, Decision, DeleteItem};
use super::ownership::{self, Proof};
use super::policy::{self, Doubt, NsAnnotation, Source};
use super::termination::{self, Next, Seen};
use super::{finalizer, status, Context};
use crate::api::{
    remove_condition, set_condition, DeletionPolicy, EcsInstance, CRD_NAME, MAX_COUNTER,
    RELEASE_ANNOTATION,
};
use crate::cloud::CloudError;
use crate::Error;

/// Ready reason while the operator waits for the VM to disappear (wait-for-termination).
const DELETION_ACCEPTED: &str = "DeletionAccepted";

pub async fn run(obj: &EcsInstance, ctx: &Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<EcsInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = obj.uid().unwrap_or_default();

    // The escape hatch comes first: it must work when nothing else does (no cloud call).
    if obj.annotations().contains_key(RELEASE_ANNOTATION) {
        if let Some(action) = release_on_request(&api, obj, ctx, &uid).await? {
            return Ok(action);
        }
    }
    let (policy, source) = match deletion_policy(obj, ctx).await {
        Ok(p) => p,
        Err(doubt) => return hold(&api, obj, ctx, &uid, doubt.reason(), doubt.message()).await,
    };
    if source == Source::CrdDeleting {
        let note = format!("CustomResourceDefinition {CRD_NAME} is being deleted: deletionPolicy Orphan applies to every resource, so the VM is kept (its ownership tags are removed)");
        status::event(ctx, obj, true, "CrdDeleting", "Delete", note);
    }
    let region = ctx.region_of(obj);
    let instance_id = match obj.owned_instance_id() {
        Some(id) => id.to_string(),
        None if obj.status.as_ref().and_then(|s| s.create_requested) == Some(true) => {
            // RunInstances may have been applied with its answer lost: look for our VM (an
            // orphan must lose its ownership tags too, or the sweeper would take it).
            match super::apply::find_by_uid(ctx, &region, &uid).await {
                Ok(Some(inst)) => inst.instance_id,
                // Not listed yet is not "never made": keep looking while it may be appearing.
                Ok(None) if appearing(obj, ctx) => {
                    return still_appearing(&api, obj, ctx, "this resource's VM", None).await
                }
                Ok(None) => return nothing_to_do(&api, obj, ctx, &uid, policy).await,
                Err(e) => {
                    let what = "looking for this resource's VM before releasing it";
                    return keep_and_retry(&api, obj, ctx, &uid, what, &e).await;
                }
            }
        }
        // Never created, nothing adopted: nothing to delete in the cloud.
        None => return nothing_to_do(&api, obj, ctx, &uid, policy).await,
    };
    // After an accepted deletion (wait-for-termination) the proof was already given.
    let accepted = obj
        .condition("Ready")
        .is_some_and(|c| c.reason == DELETION_ACCEPTED);
    let appearing = appearing(obj, ctx);
    if !accepted {
        let proof = match ownership_proof(obj, ctx, &uid, &region, &instance_id, appearing).await {
            Ok(p) => p,
            Err(e) => {
                let what = format!("checking that this resource owns VM {instance_id} before letting go of it (DescribeInstances)");
                return keep_and_retry(&api, obj, ctx, &uid, &what, &e).await;
            }
        };
        match proof {
            Proof::Proven => {}
            Proof::Appearing if policy == DeletionPolicy::Orphan => {
                // Untagging needs the VM listed: a NotFound now would leave it tagged.
                return still_appearing(&api, obj, ctx, &instance_id, None).await;
            }
            Proof::Appearing => {}
            other => return not_proven(&api, obj, ctx, &uid, &instance_id, other).await,
        }
    }
    if policy == DeletionPolicy::Orphan {
        return orphan(&api, obj, ctx, &uid, &region, &instance_id).await;
    }

    let mut st = obj.status.clone().unwrap_or_default();
    let gen = obj.metadata.generation;

    // wait-for-termination: the deletion was accepted earlier; wait until the VM is gone.
    if accepted {
        return wait_for_termination(&api, obj, ctx, &uid, &region, &instance_id).await;
    }

    // The user turned protection off in the spec while the deletion waited for it: that is
    // their decision, so carry it out (the operator never turns protection off by itself).
    if obj.spec.deletion_protection == Some(false) && st.deletion_protection == Some(true) {
        match ctx
            .cloud
            .set_deletion_protection(&region, instance_id.clone(), false)
            .await
        {
            Ok(c) => {
                st.deletion_protection = Some(false);
                status::event(ctx, obj, false, "DeletionProtectionSet", "Update",
                    format!("deletion protection of VM {instance_id} turned off as the spec says (RequestId {})", c.request_id));
            }
            Err(e) => {
                tracing::info!(%instance_id, error = %e, "could not turn deletion protection off")
            }
        }
    }
    let attempt = obj.deletion_attempt();
    if attempt >= MAX_COUNTER {
        return attempts_exhausted(&api, obj, ctx, &instance_id).await;
    }
    if attempt == 0
        && obj
            .condition("Ready")
            .is_none_or(|c| c.reason != "Deleting")
    {
        status::event(
            ctx,
            obj,
            false,
            "DeletionRequested",
            "Delete",
            format!(
                "deleting VM {instance_id} (ClientToken {})",
                cleanup::delete_token(&uid, 0)
            ),
        );
    }
    let item = DeleteItem {
        uid: uid.clone(),
        attempt,
        instance_id: instance_id.clone(),
    };
    let outcome = ctx
        .deleter
        .submit(region.clone(), item)
        .await
        .ok_or(Error::ShuttingDown)?;
    let decision = cleanup::decide(&outcome, &instance_id);
    tracing::info!(namespace = %ns, name = %obj.name_any(), %instance_id, attempt,
        decision = decision.code(), "DeleteInstances answered");
    if appearing && matches!(decision, Decision::AlreadyGone { .. }) {
        // The cloud may not see a VM this new even for DeleteInstances: NotFound proves
        // nothing yet. A new token next time, or the recorded NotFound would be replayed.
        return still_appearing(&api, obj, ctx, &instance_id, Some(attempt + 1)).await;
    }

    if decision.releases_finalizer() {
        let (reason, note) = match &decision {
            Decision::AlreadyGone { request_id } => (
                "AlreadyGone",
                format!("VM {instance_id} does not exist (RequestId {request_id})"),
            ),
            Decision::Deleted { request_id } => (
                "Deleted",
                format!("VM {instance_id} deleted (RequestId {request_id})"),
            ),
            _ => ("Deleted", String::new()),
        };
        if matches!(decision, Decision::Deleted { .. })
            && obj.spec.wait_for_termination == Some(true)
        {
            st.instance_status = Some("DELETING".into());
            st.deletion_accepted_at = Some(Time(Timestamp::now()));
            set_condition(
                &mut st.conditions,
                "Ready",
                false,
                DELETION_ACCEPTED,
                &note,
                gen,
            );
            status::patch(&api, obj, &st).await?;
            status::event(ctx, obj, false, DELETION_ACCEPTED, "Delete", note);
            return Ok(Action::requeue(ctx.settings.transition_poll));
        }
        status::event(ctx, obj, false, reason, "Delete", note);
        return release(&api, obj, ctx, &uid).await;
    }

    if decision.bumps_attempt() {
        st.deletion_attempt = Some(next_attempt(attempt));
    }
    let (delay, warning, reason, msg) = match &decision {
        Decision::NotDeletableYet {
            code,
            message,
            request_id,
        } => {
            // Say what the VM is doing, so the user knows what we are waiting for.
            let observed = match ctx.describe_one(&region, &instance_id).await {
                Ok(Some(inst)) => {
                    st.instance_status = Some(inst.status.clone());
                    inst.status
                }
                _ => st
                    .instance_status
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
            };
            let msg = format!("VM {instance_id} is {observed} and cannot be deleted yet ({code}: {message}, RequestId {request_id}); retrying");
            set_condition(
                &mut st.conditions,
                "Synced",
                true,
                "DeletionPending",
                &msg,
                gen,
            );
            (ctx.backoff.next(&uid), false, "DeletionPending", msg)
        }
        Decision::Refused {
            code,
            message,
            request_id,
            kind,
        } => {
            let slow = &kind.slow();
            if *kind == cleanup::RefusalKind::Protection {
                st.deletion_protection = Some(true);
            }
            let msg = format!("DeleteInstances refused VM {instance_id}: {code}: {message} (RequestId {request_id})");
            set_condition(
                &mut st.conditions,
                "Synced",
                false,
                "DeletionRefused",
                &msg,
                gen,
            );
            if *slow {
                set_condition(
                    &mut st.conditions,
                    "Stalled",
                    true,
                    "DeletionRefused",
                    &msg,
                    gen,
                );
            }
            let delay = if *slow {
                ctx.backoff.slow()
            } else {
                ctx.backoff.next(&uid)
            };
            (delay, true, "DeletionRefused", msg)
        }
        Decision::Retry { message, class, .. } => {
            // The message already names the action, the code and the request id.
            let reason = class.condition_reason();
            let msg = format!("VM {instance_id}: {message}");
            set_condition(&mut st.conditions, "Synced", false, reason, &msg, gen);
            (ctx.backoff.next(&uid), true, reason, msg)
        }
        Decision::Deleted { .. } | Decision::AlreadyGone { .. } => {
            (Duration::ZERO, false, "", String::new())
        }
    };
    set_condition(&mut st.conditions, "Ready", false, "Deleting", &msg, gen);
    st.observed_generation = gen;
    status::patch(&api, obj, &st).await?;
    status::event(ctx, obj, warning, reason, "Delete", msg);
    Ok(Action::requeue(delay))
}

/// wait-for-termination, after an accepted DeleteInstances (`termination::decide`): release
/// once the VM is gone; a VM listed again in another state than DELETING had its deletion
/// rolled back, so the deletion starts over with a new attempt (a new ClientToken, and a
/// fresh ownership proof); past `--termination-timeout-secs` report Stalled and keep looking.
async fn wait_for_termination(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    uid: &str,
    region: &str,
    id: &str,
) -> Result<Action, Error> {
    let mut st = obj.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    // Accepted by an operator that did not record the time: the wait starts now.
    let since = st.deletion_accepted_at.clone().unwrap_or(Time(now));
    let waited = (now - since.0)
        .total(k8s_openapi::jiff::Unit::Second)
        .map_or(Duration::ZERO, |s| Duration::from_secs_f64(s.max(0.0)));
    st.deletion_accepted_at = Some(since);
    let described = ctx.describe_one(region, id).await;
    let seen = match &described {
        Ok(None) => Seen::Gone,
        Ok(Some(inst)) => Seen::Listed(&inst.status),
        Err(_) => Seen::Unknown,
    };
    let observed = match &described {
        Ok(Some(inst)) => inst.status.clone(),
        Ok(None) => String::new(),
        Err(e) => format!("unknown ({})", e.code()),
    };
    let gen = obj.metadata.generation;
    match termination::decide(seen, waited, ctx.settings.termination_timeout) {
        Next::Release => {
            let note = format!("VM {id} is gone");
            status::event(ctx, obj, false, "Deleted", "Delete", note);
            release(api, obj, ctx, uid).await
        }
        Next::Wait => {
            if let Err(e) = &described {
                tracing::info!(%id, error = %e, "waiting for termination");
            } else {
                st.instance_status = Some(observed);
            }
            status::patch(api, obj, &st).await?;
            Ok(Action::requeue(ctx.settings.transition_poll))
        }
        Next::Resend => {
            let reason = "DeletionReverted";
            let msg = format!("VM {id} is {observed} again after its deletion was accepted (the cloud rolled it back); DeleteInstances is sent again with a new ClientToken");
            st.instance_status = Some(observed);
            st.deletion_accepted_at = None;
            st.deletion_attempt = Some(next_attempt(obj.deletion_attempt()));
            if obj
                .condition("Stalled")
                .is_some_and(|c| c.reason == TERMINATION_TIMEOUT)
            {
                remove_condition(&mut st.conditions, "Stalled");
            }
            set_condition(&mut st.conditions, "Ready", false, reason, &msg, gen);
            set_condition(&mut st.conditions, "Synced", false, reason, &msg, gen);
            status::patch(api, obj, &st).await?;
            status::event(ctx, obj, true, reason, "Delete", msg);
            Ok(Action::requeue(ctx.backoff.next(uid)))
        }
        Next::Stalled => {
            let msg = format!("VM {id} is still listed ({observed}) {}s after DeleteInstances was accepted (limit --termination-timeout-secs {}); the finalizer stays and the operator keeps watching for the VM to disappear", waited.as_secs(), ctx.settings.termination_timeout.as_secs());
            let first = obj
                .condition("Stalled")
                .is_none_or(|c| c.reason != TERMINATION_TIMEOUT || c.status != "True");
            set_condition(
                &mut st.conditions,
                "Stalled",
                true,
                TERMINATION_TIMEOUT,
                &msg,
                gen,
            );
            status::patch(api, obj, &st).await?;
            if first {
                ctx.metrics.deletion_held(TERMINATION_TIMEOUT);
                status::event(ctx, obj, true, TERMINATION_TIMEOUT, "Delete", msg);
            }
            Ok(Action::requeue(ctx.settings.transition_poll))
        }
    }
}

const TERMINATION_TIMEOUT: &str = "TerminationTimeout";

/// Whether this resource's VM may still be invisible to the cloud's API (just created).
fn appearing(obj: &EcsInstance, ctx: &Context) -> bool {
    let at = obj
        .status
        .as_ref()
        .and_then(|s| s.run_instances_at.as_ref());
    ownership::appearing(at, ctx.settings.appear_window)
}

/// Current proof that the VM is this resource's: DescribeInstances just now, its uid tag
/// against this resource's uid, and the claim recorded in status.
async fn ownership_proof(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    uid: &str,
    region: &str,
    id: &str,
    appearing: bool,
) -> Result<Proof, CloudError> {
    let seen = ctx
        .describe_one(region, id)
        .await?
        .map(|inst| ownership::carries_our_uid(&inst, uid));
    let recorded = obj.status.as_ref().and_then(|s| s.ownership);
    Ok(ownership::proof(recorded, appearing, seen))
}

/// The VM is not (provably) this resource's, or is gone: nothing is deleted.
async fn not_proven(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    uid: &str,
    id: &str,
    proof: Proof,
) -> Result<Action, Error> {
    match proof {
        Proof::Gone => {
            let note = format!("VM {id} does not exist (DescribeInstances does not list it)");
            status::event(ctx, obj, false, "AlreadyGone", "Delete", note);
            release(api, obj, ctx, uid).await
        }
        Proof::NeverOwned if recorded_none(obj) => {
            // Adopted, but no claim ever reached the cloud (say the credentials were broken
            // until now): the same claim-or-refuse step as the apply path, then a fresh look.
            // A claimed VM is then proven ours and deleted; a refused one is left alone.
            let region = ctx.region_of(obj);
            let inst = match ctx.describe_one(&region, id).await {
                Ok(Some(inst)) => inst,
                Ok(None) => return Ok(Action::requeue(ctx.backoff.next(uid))),
                Err(e) => {
                    let what = format!("claiming VM {id} before deleting it (DescribeInstances)");
                    return keep_and_retry(api, obj, ctx, uid, &what, &e).await;
                }
            };
            let mut st = obj.status.clone().unwrap_or_default();
            let next = super::apply::ensure_owned(obj, ctx, api, &mut st, &region, &inst).await?;
            Ok(next.unwrap_or_else(|| Action::requeue(ctx.backoff.next(uid))))
        }
        Proof::NeverOwned => {
            let note = format!("this resource never owned VM {id} (its ownership tags name another resource, or none); the VM is left untouched");
            status::event(ctx, obj, false, "ReleasedWithoutVM", "Delete", note);
            release(api, obj, ctx, uid).await
        }
        _ => {
            let mut st = obj.status.clone().unwrap_or_default();
            let gen = obj.metadata.generation;
            let msg = format!("VM {id} no longer carries this resource's ownership tags (ecs.volcengine.io/uid, /cluster), so it is not deleted; the finalizer stays. Restore the tags, or remove the finalizer by hand to let go of the VM");
            for t in ["Synced", "Ready"] {
                set_condition(&mut st.conditions, t, false, OWNERSHIP_UNPROVEN, &msg, gen);
            }
            ctx.metrics.deletion_held(OWNERSHIP_UNPROVEN);
            status::patch(api, obj, &st).await?;
            status::event(ctx, obj, true, OWNERSHIP_UNPROVEN, "Delete", msg);
            Ok(Action::requeue(ctx.backoff.next(uid)))
        }
    }
}

const OWNERSHIP_UNPROVEN: &str = "OwnershipUnproven";

/// No ownership verdict was ever recorded (neither `Claimed` nor `Refused`).
fn recorded_none(obj: &EcsInstance) -> bool {
    obj.status.as_ref().and_then(|s| s.ownership).is_none()
}

/// The VM was created moments ago and the cloud does not see it yet: keep the finalizer
/// and look again (a new DeleteInstances token when `next_attempt` is given).
async fn still_appearing(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    what: &str,
    next_attempt: Option<u32>,
) -> Result<Action, Error> {
    let mut st = obj.status.clone().unwrap_or_default();
    if next_attempt.is_some() {
        st.deletion_attempt = next_attempt;
    }
    let msg = format!("{what} was created moments ago and the cloud does not list it yet (eventual consistency); the deletion waits for it");
    ctx.metrics.deletion_held("InstanceAppearing");
    let gen = obj.metadata.generation;
    set_condition(
        &mut st.conditions,
        "Ready",
        false,
        "InstanceAppearing",
        &msg,
        gen,
    );
    status::patch(api, obj, &st).await?;
    Ok(Action::requeue(ctx.settings.transition_poll))
}

/// deletionPolicy Orphan: the VM stays, but first loses this cluster's ownership tags, so
/// that no leak sweeper (ours, in delete mode) ever takes it for a leak and deletes it. The
/// finalizer stays until the cloud confirms the untagging or says the VM is gone.
async fn orphan(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    uid: &str,
    region: &str,
    id: &str,
) -> Result<Action, Error> {
    let keys = OWNERSHIP_TAGS.iter().map(|k| k.to_string()).collect();
    let note = match ctx
        .cloud
        .untag_instances(region, vec![id.to_string()], keys)
        .await
    {
        Ok(c) => format!(
            "deletionPolicy Orphan: VM {id} left in place, ownership tags removed (RequestId {})",
            c.request_id
        ),
        Err(e) if e.is_instance_not_found() => format!(
            "deletionPolicy Orphan: VM {id} is already gone (UntagResources: {}, RequestId {})",
            e.code(),
            e.request_id().unwrap_or("-")
        ),
        // Whatever UntagResources said, a VM that DescribeInstances does not return is gone.
        Err(e) => match ctx.describe_one(region, id).await {
            Ok(None) => format!(
                "deletionPolicy Orphan: VM {id} is already gone (DescribeInstances does not return it; UntagResources failed with {})",
                e.code()
            ),
            _ => {
                let what = format!("releasing VM {id} (UntagResources)");
                return keep_and_retry(api, obj, ctx, uid, &what, &e).await;
            }
        },
    };
    status::event(ctx, obj, false, "Orphaned", "Delete", note);
    release(api, obj, ctx, uid).await
}

/// A cloud call the release depends on failed: the finalizer stays, `Synced=False` and a
/// Warning Event carry the cloud's code and RequestId, and the resource backs off.
async fn keep_and_retry(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    uid: &str,
    what: &str,
    e: &CloudError,
) -> Result<Action, Error> {
    hold(
        api,
        obj,
        ctx,
        uid,
        e.class().condition_reason(),
        format!("{what}: {e}"),
    )
    .await
}

/// The VM stays because something is not known for certain (or failed): `Synced=False`
/// and a Warning Event say why, the metric counts it, and the resource retries with backoff.
async fn hold(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    uid: &str,
    reason: &'static str,
    msg: String,
) -> Result<Action, Error> {
    tracing::info!(namespace = ?obj.metadata.namespace, name = %obj.name_any(), reason, message = %msg, "deletion held");
    ctx.metrics.deletion_held(reason);
    let mut st = obj.status.clone().unwrap_or_default();
    let gen = obj.metadata.generation;
    set_condition(&mut st.conditions, "Synced", false, reason, &msg, gen);
    // Ready says the same as after a failed DeleteInstances: deleting, and why it waits.
    set_condition(&mut st.conditions, "Ready", false, "Deleting", &msg, gen);
    status::patch(api, obj, &st).await?;
    status::event(ctx, obj, true, reason, "Delete", msg);
    Ok(Action::requeue(ctx.backoff.next(uid)))
}

/// There is no VM behind this resource: the finalizer goes without a cloud call.
async fn nothing_to_do(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    uid: &str,
    policy: DeletionPolicy,
) -> Result<Action, Error> {
    tracing::info!(namespace = ?obj.metadata.namespace, name = %obj.name_any(), "no VM behind this resource; releasing it");
    if policy == DeletionPolicy::Orphan {
        let note = "deletionPolicy Orphan: no VM to leave".to_string();
        status::event(ctx, obj, false, "Orphaned", "Delete", note);
    }
    release(api, obj, ctx, uid).await
}

/// The finalizer goes: the cloud accepted the deletion, said the VM is gone, or there was
/// never a VM (or the policy is Orphan).
async fn release(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    uid: &str,
) -> Result<Action, Error> {
    finalizer::remove(api, obj).await?;
    ctx.backoff.reset(uid);
    if let Some(ts) = &obj.metadata.deletion_timestamp {
        let secs = (k8s_openapi::jiff::Timestamp::now() - ts.0)
            .total(k8s_openapi::jiff::Unit::Second)
            .unwrap_or(0.0);
        ctx.metrics.deletion_latency.observe(secs.max(0.0));
    }
    Ok(Action::await_change())
}

/// The effective policy (`policy::resolve`): the CRD's state, spec.deletionPolicy, the
/// namespace annotation (read only when the spec leaves it open), the operator default.
async fn deletion_policy(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
) -> Result<(DeletionPolicy, Source), Doubt> {
    let crd = ctx.crd_state().await;
    let ns = obj.namespace().unwrap_or_default();
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

/// `status.deletionAttempt` reached its bound (a million definitive refusals, or a status
/// edited by hand). Re-sending the last token would only replay its refusal, and a wrapped
/// counter would re-send old tokens: stop, keep the VM, and say what a person can do.
async fn attempts_exhausted(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    instance_id: &str,
) -> Result<Action, Error> {
    let msg = format!("status.deletionAttempt reached its limit {MAX_COUNTER}: no further DeleteInstances is sent for VM {instance_id}, which is kept. Delete the VM by hand and set the annotation {RELEASE_ANNOTATION}, or lower status.deletionAttempt to retry");
    let mut st = obj.status.clone().unwrap_or_default();
    let gen = obj.metadata.generation;
    let reason = "DeletionAttemptsExhausted";
    set_condition(&mut st.conditions, "Synced", false, reason, &msg, gen);
    set_condition(&mut st.conditions, "Stalled", true, reason, &msg, gen);
    status::patch(api, obj, &st).await?;
    ctx.metrics.deletion_held(reason);
    status::event(ctx, obj, true, reason, "Delete", msg);
    Ok(Action::requeue(ctx.backoff.slow()))
}

/// The escape hatch: a person asked (annotation `ecs.volcengine.io/release-without-delete`)
/// to let the resource go without deleting its VM. No cloud call. Kubernetes does not record
/// who set an annotation; the managedFields entry that owns it names the field manager and
/// the time, and the audit log names the user. `None`: not honoured, carry on as usual.
async fn release_on_request(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    uid: &str,
) -> Result<Option<Action>, Error> {
    // The cache drops managedFields: read them fresh.
    let Some(fresh) = api.get_opt(&obj.name_any()).await? else {
        return Ok(Some(Action::await_change()));
    };
    let who = match release_request(&fresh) {
        Ok(who) => who,
        Err(why) => {
            let note = format!("annotation {RELEASE_ANNOTATION} ignored: {why}");
            status::event(ctx, obj, true, "ReleaseAnnotationIgnored", "Delete", note);
            return Ok(None);
        }
    };
    let stated = fresh
        .annotations()
        .get(RELEASE_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    let vm = obj
        .owned_instance_id()
        .map(|id| format!("VM {id} was NOT deleted and may still exist, with its ownership tags"))
        .unwrap_or_else(|| "no VM is recorded".into());
    let note = format!("released without any cloud call on request: annotation {RELEASE_ANNOTATION}={stated:?} set by {who} (the audit log names the user); {vm}");
    tracing::warn!(namespace = ?obj.metadata.namespace, name = %obj.name_any(), %note, "finalizer released by annotation");
    status::event(ctx, obj, true, "ReleasedWithoutDelete", "Delete", note);
    release(api, &fresh, ctx, uid).await.map(Some)
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
