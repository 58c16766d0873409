//! In-place updates, the acting half: sends the call `update_plan::plan` chose, records
//! its answer in the facts and says what it did (a Normal `Updated` Event with the
//! RequestId). Every call that takes a ClientToken gets one from the persisted
//! `status.updateAttempt`, moved on after each definitive answer.

use std::sync::Arc;

use kube::api::Api;
use kube::ResourceExt;

use super::apply_plan::ApplyFacts;
use super::reasons::{EventNote, Reason};
use super::update_plan::{next_attempt, update_token, UpdateStep};
use super::{status, Context};
use crate::accounts::registry::AccountCloud;
use crate::api::EcsInstance;
use crate::cloud::model::Action;
use crate::cloud::{Called, CloudError, OperationDetail};
use crate::Error;

/// UntagResources takes at most 20 keys a call.
const MAX_KEYS_PER_CALL: usize = 20;

/// Sends one update step for VM `id`.
pub(super) async fn act(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    acct: &Arc<AccountCloud>,
    api: &Api<EcsInstance>,
    f: &mut ApplyFacts,
    id: &str,
    step: UpdateStep,
) -> Result<(), Error> {
    let uid = obj.uid().unwrap_or_default();
    let region = f.region.clone();
    let cloud = &acct.cloud;
    let attempt = f.status.update_attempt.unwrap_or(0);
    let token = |action: &str| update_token(&uid, action, attempt);
    let policy = f
        .update
        .wanted
        .as_ref()
        .map(|w| w.policy.as_str())
        .unwrap_or_default();
    match step {
        UpdateStep::ModifyAttribute { name, description } => {
            let what = changes(&f.update.diff.name, &f.update.diff.description);
            let r = cloud
                .modify_instance_attribute(&region, id.into(), name, description, token("attr"))
                .await;
            next_attempt(&mut f.status, &r);
            let r = r.map(|c| c.request_id);
            note(ctx, obj, Action::ModifyInstanceAttribute, &r, || {
                format!("VM {id}: {what}")
            });
            f.update.attr = Some(r);
        }
        UpdateStep::Tag(tags) => {
            let list: Vec<String> = tags
                .iter()
                .map(|t| format!("{}={:?}", t.key, t.value))
                .collect();
            let r = cloud
                .tag_instances(&region, vec![id.to_string()], tags)
                .await
                .map(|c| c.request_id);
            note(ctx, obj, Action::TagResources, &r, || {
                format!("VM {id}: tags set: {}", list.join(", "))
            });
            f.update.tag = Some(r);
        }
        UpdateStep::Untag(keys) => {
            let mut r = Ok(String::new());
            for chunk in keys.chunks(MAX_KEYS_PER_CALL) {
                r = cloud
                    .untag_instances(&region, vec![id.to_string()], chunk.to_vec())
                    .await
                    .map(|c| c.request_id);
                if r.is_err() {
                    break;
                }
            }
            note(ctx, obj, Action::UntagResources, &r, || {
                format!("VM {id}: tags removed: {}", keys.join(", "))
            });
            f.update.untag = Some(r);
        }
        UpdateStep::MarkStopping => {
            // Written and confirmed before the stop: a restart, or another replica, knows
            // this VM is down because of us and must be started again.
            f.status.stopped_for_update_at =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(f.now));
            status::patch_if_current(api, obj, &f.status).await?;
            f.update.marked_stopping = true;
        }
        UpdateStep::Stop => {
            let r = cloud
                .stop_instances(&region, vec![id.to_string()], token("stop"))
                .await;
            let r = detail(Action::StopInstances, id, r);
            next_attempt(&mut f.status, &r);
            let want = f.update.diff.instance_type.clone().unwrap_or_default().1;
            note(ctx, obj, Action::StopInstances, &r, || {
                format!("stopping VM {id} to change its type to {want} (spec.updatePolicy {policy}); it is started again afterwards")
            });
            f.update.stop = Some(r);
        }
        UpdateStep::ModifySpec(want) => {
            let have = f.update.diff.instance_type.clone().unwrap_or_default().0;
            let r = cloud
                .modify_instance_spec(&region, id.into(), want.clone(), token("spec"))
                .await;
            next_attempt(&mut f.status, &r);
            let r = r.map(|c| c.request_id);
            note(ctx, obj, Action::ModifyInstanceSpec, &r, || {
                format!("VM {id}: instance type {have} -> {want}")
            });
            f.update.spec = Some(r);
        }
        UpdateStep::Start => {
            let r = cloud
                .start_instances(&region, vec![id.to_string()], token("start"))
                .await;
            let r = detail(Action::StartInstances, id, r);
            next_attempt(&mut f.status, &r);
            note(ctx, obj, Action::StartInstances, &r, || {
                format!("starting VM {id} again after its update")
            });
            f.update.start = Some(r);
        }
    }
    Ok(())
}

/// The words of a ModifyInstanceAttribute change.
fn changes(name: &Option<(String, String)>, description: &Option<(String, String)>) -> String {
    let mut out = Vec::new();
    if let Some((have, want)) = name {
        out.push(format!("instanceName {have:?} -> {want:?}"));
    }
    if let Some((have, want)) = description {
        out.push(format!("description {have:?} -> {want:?}"));
    }
    out.join(", ")
}

/// The Normal Event of an accepted update, and the count of every answer.
fn note(
    ctx: &Arc<Context>,
    obj: &EcsInstance,
    action: Action,
    r: &Result<String, CloudError>,
    what: impl FnOnce() -> String,
) {
    ctx.metrics.count_update(action.as_str(), r.is_ok());
    if let Ok(req) = r {
        let msg = format!("{action}: {} (RequestId {req})", what());
        status::event(
            ctx,
            obj,
            EventNote::normal(Reason::Updated, action.as_str(), msg),
        );
    }
}

/// A batch answer's entry for `id`, as the call's result: its error carries the code and
/// the RequestId like any refused call.
pub fn detail(
    action: Action,
    id: &str,
    r: Result<Called<Vec<OperationDetail>>, CloudError>,
) -> Result<String, CloudError> {
    let c = r?;
    match c.value.iter().find(|d| d.instance_id == id) {
        Some(OperationDetail { error: None, .. }) => Ok(c.request_id),
        Some(OperationDetail { error: Some(e), .. }) => Err(CloudError::Api {
            action,
            code: e.code.clone(),
            code_n: None,
            message: e.message.clone(),
            status: 200,
            request_id: c.request_id,
        }),
        None => Err(CloudError::BadResponse {
            action,
            status: 200,
            detail: format!("no OperationDetails entry for {id}"),
            request_id: Some(c.request_id),
        }),
    }
}
