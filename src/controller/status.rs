//! Status writes and Events. Status is written with a merge patch of the whole status
//! under one field manager, and only when it changed, so steady-state reconciles write
//! nothing.

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

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
    match api.patch_status(&obj.name_any(), &pp, &patch).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Publishes an Event without holding up the reconcile; a failed Event is logged, never
/// fatal.
pub fn event(
    ctx: &Context,
    obj: &EcsInstance,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    let recorder = ctx.recorder.clone();
    let reference = obj.object_ref(&());
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    };
    let name = obj.name_any();
    let ns = obj.namespace().unwrap_or_default();
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(namespace = %ns, name = %name, error = %e, "could not publish event");
        }
    });
}
