//! Thin top level: finalizer first, then route to the deletion or the apply path.

use std::sync::Arc;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use tokio::time::Instant;

use super::{apply, delete, finalizer, hold, status, Context, Unmanaged};
use crate::accounts::{self, registry::AccountCloud};
use crate::api::EcsInstance;
use crate::metrics::ResultLabels;
use crate::Error;

pub async fn reconcile(obj: Arc<EcsInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!("reconcile", namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any());
    let _e = span.enter();
    drop(_e);
    // Losing the lease cancels the reconcile at its next await, not at its end: whatever it
    // would still do (a cloud call, a status write) is left to the new leader.
    let res = tokio::select! {
        biased;
        _ = ctx.gate.closed() => Err(Error::LeaseLost),
        r = route(&obj, &ctx) => r,
    };
    let label = match &res {
        Ok(_) => "ok",
        Err(e) => e.metric_label(),
    };
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabels {
            result: label.into(),
        })
        .inc();
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    res
}

async fn route(obj: &EcsInstance, ctx: &Arc<Context>) -> Result<Action, Error> {
    let has = finalizer::has_finalizer(obj);
    if obj.metadata.deletion_timestamp.is_some() {
        // Without our finalizer the deletion is not ours to act on (it was released already).
        return if has {
            ctx.note_unmanaged(&obj.uid().unwrap_or_default(), unmanaged(obj));
            ctx.note_drift(&obj.uid().unwrap_or_default(), &[]);
            delete::run(obj, ctx).await
        } else {
            Ok(Action::await_change())
        };
    }
    if !has {
        // The finalizer comes before anything else; its patch triggers the next reconcile.
        let api: Api<EcsInstance> =
            Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
        finalizer::add(&api, obj).await?;
        return Ok(Action::await_change());
    }
    ctx.note_unmanaged(&obj.uid().unwrap_or_default(), unmanaged(obj));
    if obj.paused() {
        return hold::paused(obj, ctx).await;
    }
    let acct = match ctx.accounts.resolve(obj).await {
        Ok(acct) => acct,
        Err(refusal) => return hold::refused(obj, ctx, &refusal).await,
    };
    if accounts::pinned(obj.status.as_ref()).is_some() {
        return apply::run(obj, ctx, &acct).await;
    }
    let bound = bind(obj, ctx, &acct).await?;
    apply::run(&bound, ctx, &acct).await
}

/// Records the account in `status.account` before the first call that may create or claim
/// a VM in it: from then on the resource is bound to it (`accounts::pinned`). Guarded by the
/// resourceVersion read (a stale copy binds nothing) and checked: a CRD that predates the
/// field would drop it, and the resource would later count as the default account's.
pub(super) async fn bind(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    acct: &AccountCloud,
) -> Result<EcsInstance, Error> {
    let api: Api<EcsInstance> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let mut st = obj.status.clone().unwrap_or_default();
    st.account = Some(acct.name.as_status());
    let written = status::patch_if_current(&api, obj, &st).await?;
    if written
        .status
        .as_ref()
        .and_then(|s| s.account.as_ref())
        .is_none()
    {
        return Err(Error::OutdatedCrd);
    }
    Ok(written)
}

/// Paused wins over ObserveOnly in the gauge: it stops even the reads.
fn unmanaged(obj: &EcsInstance) -> Option<Unmanaged> {
    if obj.paused() {
        Some(Unmanaged::Paused)
    } else if obj.observe_only() {
        Some(Unmanaged::ObserveOnly)
    } else {
        None
    }
}

pub fn error_policy(obj: Arc<EcsInstance>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any(), error = %err, "reconcile failed");
    Action::requeue(ctx.backoff.next(&obj.uid().unwrap_or_default()))
}
