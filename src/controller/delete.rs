//! The effectful half of the deletion path: resolve the policy, send the (batched)
//! DeleteInstances, apply the decision from `cleanup::decide`, write status and Events.

use std::sync::Arc;

use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::apply::OWNERSHIP_TAGS;
use super::cleanup::{self, Decision, DeleteItem};
use super::ownership::{self, Proof};
use super::{finalizer, status, Context};
use crate::api::{set_condition, DeletionPolicy, EcsInstance};
use crate::cloud::CloudError;
use crate::Error;

/// Ready reason while the operator waits for the VM to disappear (wait-for-termination).
const DELETION_ACCEPTED: &str = "DeletionAccepted";

pub async fn run(obj: &EcsInstance, ctx: &Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<EcsInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = obj.uid().unwrap_or_default();

    let policy = deletion_policy(obj, ctx).await;
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
        return match ctx.describe_one(&region, &instance_id).await {
            Ok(None) => {
                status::event(
                    ctx,
                    obj,
                    false,
                    "Deleted",
                    "Delete",
                    format!("VM {instance_id} is gone"),
                );
                release(&api, obj, ctx, &uid).await
            }
            Ok(Some(inst)) => {
                st.instance_status = Some(inst.status);
                status::patch(&api, obj, &st).await?;
                Ok(Action::requeue(ctx.settings.transition_poll))
            }
            Err(e) => {
                tracing::info!(%instance_id, error = %e, "waiting for termination");
                Ok(Action::requeue(ctx.backoff.next(&uid)))
            }
        };
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
        st.deletion_attempt = Some(attempt + 1);
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
            slow,
        } => {
            if code.contains("DeletionProtection") {
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

/// Whether this resource's VM may still be invisible to the cloud's API (just created).
fn appearing(obj: &EcsInstance, ctx: &Context) -> bool {
    let at = obj
        .status
        .as_ref()
        .and_then(|s| s.run_instances_at.as_ref());
    ownership::appearing(at, ctx.settings.appear_window)
}

/// Current proof that the VM is this resource's: DescribeInstances just now, its tags
/// against this resource's uid and cluster, and the claim recorded in status.
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
        .map(|inst| ownership::tagged_ours(&inst, uid, &ctx.settings.cluster_id));
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
            status::patch(api, obj, &st).await?;
            status::event(ctx, obj, true, OWNERSHIP_UNPROVEN, "Delete", msg);
            Ok(Action::requeue(ctx.backoff.next(uid)))
        }
    }
}

const OWNERSHIP_UNPROVEN: &str = "OwnershipUnproven";

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
        Err(e) if e.code() == "InvalidInstance.NotFound" => {
            format!("deletionPolicy Orphan: VM {id} is already gone")
        }
        Err(e) => {
            let what = format!("releasing VM {id} (UntagResources)");
            return keep_and_retry(api, obj, ctx, uid, &what, &e).await;
        }
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
    let mut st = obj.status.clone().unwrap_or_default();
    let reason = e.class().condition_reason();
    let msg = format!("{what}: {e}");
    set_condition(
        &mut st.conditions,
        "Synced",
        false,
        reason,
        &msg,
        obj.metadata.generation,
    );
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

/// spec.deletionPolicy, else the namespace annotation, else the operator default.
async fn deletion_policy(obj: &EcsInstance, ctx: &Arc<Context>) -> DeletionPolicy {
    if let Some(p) = obj.spec.deletion_policy {
        return p;
    }
    if let Some(ns) = obj.namespace() {
        if let Some(p) = ctx.namespace_policy(&ns).await {
            return p;
        }
    }
    ctx.settings.default_policy
}
