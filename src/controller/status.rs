//! Status writes and Events. Status is written with a merge patch of the whole status
//! under one field manager, and only when it changed, so steady-state reconciles write
//! nothing.

use kube::api::{Patch, PatchParams};
use std::sync::Arc;

use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::events::Note;
use super::Context;
use crate::api::{EcsInstance, EcsInstanceStatus};
use crate::Error;

pub const FIELD_MANAGER: &str = "ecs-operator";

pub async fn patch(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    status: &EcsInstanceStatus,
) -> Result<(), Error> {
    if obj.status.as_ref() == Some(status) {
        return Ok(());
    }
    let pp = PatchParams::apply(FIELD_MANAGER);
    let patch = Patch::Merge(json!({ "status": status }));
    super::tolerate_gone(api.patch_status(&obj.name_any(), &pp, &patch).await)
}

/// Writes the whole status, clearing fields that are now unset (a merge patch would keep
/// them): a JSON patch replacing `/status`.
pub async fn patch_replace(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    status: &EcsInstanceStatus,
) -> Result<(), Error> {
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/status", "value": status}
    ]))?;
    super::tolerate_gone(
        api.patch_status(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await,
    )
}

/// Publishes an Event without holding up the reconcile; a failed Event is logged, never
/// fatal.
pub fn event(
    ctx: &Arc<Context>,
    obj: &EcsInstance,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    let ns = obj.namespace().unwrap_or_default();
    if ctx.is_terminating(&ns) {
        return;
    }
    let reference = obj.object_ref(&());
    let name = obj.name_any();
    let ctx = ctx.clone();
    let (reason, action) = (reason.to_string(), action.to_string());
    tokio::spawn(async move {
        let ev = Note {
            warning,
            reason: &reason,
            action: &action,
            note: &note,
        };
        match ctx.recorder.publish(&reference, &ev).await {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("terminat") => {
                ctx.mark_terminating(&ns);
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, name = %name, error = %e, "could not publish event")
            }
        }
    });
}
