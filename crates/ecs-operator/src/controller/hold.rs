//! A live resource the operator may not act for now: paused by its annotation, or refused
//! an account (`accounts::Refusal`). Conditions and an Event say why; no cloud call is made.

use std::sync::Arc;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::reasons::{Cond, EventNote, Reason};
use super::{status, Context};
use crate::accounts::Refusal;
use crate::api::{remove_condition, set_condition, EcsInstance, PAUSED_ANNOTATION};
use crate::Error;

fn api(obj: &EcsInstance, ctx: &Context) -> Api<EcsInstance> {
    Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default())
}

fn synced_reason(obj: &EcsInstance) -> Option<&str> {
    obj.condition(Cond::Synced.as_str())
        .map(|c| c.reason.as_str())
}

/// `Synced=False Paused`; Ready keeps what was last seen. The annotation's removal
/// triggers the next reconcile (`trigger_hash`).
pub async fn paused(obj: &EcsInstance, ctx: &Arc<Context>) -> Result<Action, Error> {
    let r = Reason::Paused;
    let msg = format!("paused (annotation {PAUSED_ANNOTATION}: \"true\"): no cloud call is made for this resource until the annotation is removed");
    let mut st = obj.status.clone().unwrap_or_default();
    let gen = obj.metadata.generation;
    set_condition(
        &mut st.conditions,
        Cond::Synced.as_str(),
        false,
        r.as_str(),
        &msg,
        gen,
    );
    let first = synced_reason(obj) != Some(r.as_str());
    status::patch(&api(obj, ctx), obj, &st).await?;
    if first {
        status::event(ctx, obj, EventNote::normal(r, "Pause", msg));
    }
    Ok(Action::await_change())
}

/// `Synced=False` and `Ready=False` with the refusal's reason, `Stalled=True` unless it
/// may pass by itself, a Warning Event when the reason is new; retried with backoff (an
/// account or its Secret fixed later is picked up then).
pub async fn refused(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    why: &Refusal,
) -> Result<Action, Error> {
    let r = why.reason();
    let msg = why.message();
    let mut st = obj.status.clone().unwrap_or_default();
    let gen = obj.metadata.generation;
    for t in [Cond::Synced, Cond::Ready] {
        set_condition(&mut st.conditions, t.as_str(), false, r.as_str(), &msg, gen);
    }
    if why.transient() {
        remove_condition(&mut st.conditions, Cond::Stalled.as_str());
    } else {
        set_condition(
            &mut st.conditions,
            Cond::Stalled.as_str(),
            true,
            r.as_str(),
            &msg,
            gen,
        );
    }
    remove_condition(&mut st.conditions, Cond::Reconciling.as_str());
    st.observed_generation = gen;
    let first = synced_reason(obj) != Some(r.as_str());
    status::patch(&api(obj, ctx), obj, &st).await?;
    if first {
        status::event(ctx, obj, EventNote::warning(r, "Account", msg));
    }
    let uid = obj.uid().unwrap_or_default();
    Ok(Action::requeue(ctx.backoff.next(&uid)))
}
