//! Status writes and Events. Status is written with a merge patch of the whole status
//! under one field manager, and only when it changed, so steady-state reconciles write
//! nothing.

use kube::api::{Patch, PatchParams};
use std::sync::Arc;

use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::events::Note;
use super::reasons::EventNote;
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
    let patch = Patch::Merge(json!({ "status": merge_status(obj, status) }));
    super::tolerate_gone(api.patch_status(&obj.name_any(), &pp, &patch).await)
}

/// The status as a merge patch body: a field set before and unset now is sent as `null`,
/// which removes it (omitting it would keep the old value: a cleared `runInstancesAt` would
/// stay and keep a never-made VM "appearing").
pub fn merge_status(obj: &EcsInstance, status: &EcsInstanceStatus) -> serde_json::Value {
    let mut body = json!(status);
    let old = obj.status.as_ref().map(|s| json!(s));
    if let (Some(serde_json::Value::Object(old)), Some(new)) = (old, body.as_object_mut()) {
        for k in old.keys() {
            new.entry(k.clone()).or_insert(serde_json::Value::Null);
        }
    }
    body
}

/// Writes the status only if the resource is still at the version `obj` was read at: the
/// resourceVersion in a merge patch is a precondition, and the API server answers 409
/// Conflict to a newer one. Success proves this replica acted on the current version;
/// a conflict or a resource gone is `Error::Stale` (requeue, act on nothing).
pub async fn patch_if_current(
    api: &Api<EcsInstance>,
    obj: &EcsInstance,
    status: &EcsInstanceStatus,
) -> Result<EcsInstance, Error> {
    let body = guarded_body(obj, status).ok_or(Error::Stale)?;
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api
        .patch_status(&obj.name_any(), &pp, &Patch::Merge(body))
        .await
    {
        Ok(written) => Ok(written),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Err(Error::Stale),
        Err(e) => Err(e.into()),
    }
}

/// The merge patch of `patch_if_current`; `None` without a resourceVersion (a patch
/// without one would be unconditional).
pub fn guarded_body(obj: &EcsInstance, status: &EcsInstanceStatus) -> Option<serde_json::Value> {
    let rv = obj.resource_version().filter(|v| !v.is_empty())?;
    Some(json!({ "metadata": { "resourceVersion": rv }, "status": merge_status(obj, status) }))
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

#[cfg(test)]
mod merge_tests {
    use super::*;

    #[test]
    fn a_field_unset_since_the_last_write_is_sent_as_null() {
        let mut obj = EcsInstance::new("x", Default::default());
        obj.status = Some(EcsInstanceStatus {
            instance_id: Some("i-1".into()),
            create_requested: Some(true),
            ..Default::default()
        });
        let new = EcsInstanceStatus {
            instance_id: Some("i-1".into()),
            ..Default::default()
        };
        let body = merge_status(&obj, &new);
        assert_eq!(body["instanceId"], "i-1");
        assert!(body["createRequested"].is_null());
        assert!(body.as_object().unwrap().contains_key("createRequested"));
        // Nothing set before: nothing to clear.
        obj.status = None;
        assert!(!merge_status(&obj, &new)
            .as_object()
            .unwrap()
            .contains_key("createRequested"));
    }
}

/// Publishes an Event without holding up the reconcile; a failed Event is logged, never
/// fatal.
pub fn event(ctx: &Arc<Context>, obj: &EcsInstance, e: EventNote) {
    let EventNote {
        warning,
        reason,
        action,
        note,
    } = e;
    let ns = obj.namespace().unwrap_or_default();
    if ctx.is_terminating(&ns) {
        return;
    }
    // Events wait behind the API client's cap on requests in flight; 10,000 adoptions at
    // once would queue 10,000 of them, each holding its request. Past the backlog a routine
    // Event is dropped and counted, as client-go's broadcaster drops when its queue is full:
    // the condition it accompanies is written anyway. Warnings and the record of a release
    // (the object is gone after it, and its conditions with it) always wait their turn.
    let permit = match ctx.event_backlog.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) if warning || reason.is_release_record() => None,
        Err(_) => {
            ctx.metrics.events_dropped.inc();
            tracing::debug!(namespace = %ns, name = %obj.name_any(), %reason, "event dropped: backlog full");
            return;
        }
    };
    let reference = obj.object_ref(&());
    let name = obj.name_any();
    let ctx = ctx.clone();
    let (reason, action) = (reason.to_string(), action.to_string());
    tokio::spawn(async move {
        let _permit = permit;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// With the API server not answering Events, past the backlog a routine Event is
    /// dropped and counted; warnings and release records still wait their turn, and every
    /// kept Event is written once the API server answers again.
    #[tokio::test]
    async fn a_full_backlog_drops_routine_events_only() {
        use crate::controller::reasons::Reason;
        use crate::controller::EVENT_BACKLOG;
        use crate::testing::{context, settings, FakeCloud, FakeKube, REGION};
        let kube = FakeKube::new();
        kube.create_namespace("team-a", &[]);
        kube.traffic.hold_events(true);
        let ctx = context(&kube, Arc::new(FakeCloud::new(REGION)), settings());
        let mut obj = EcsInstance::new("web", Default::default());
        obj.metadata.namespace = Some("team-a".into());
        obj.metadata.uid = Some("uid-web".into());
        let extra = 30;
        for i in 0..EVENT_BACKLOG + extra {
            let note = EventNote::normal(Reason::Adopted, "Adopt", format!("routine {i}"));
            event(&ctx, &obj, note);
        }
        for i in 0..5 {
            let w = EventNote::warning(Reason::CloudError, "Delete", format!("warning {i}"));
            event(&ctx, &obj, w);
            let d = EventNote::normal(Reason::Deleted, "Delete", format!("deleted {i}"));
            event(&ctx, &obj, d);
        }
        assert_eq!(ctx.metrics.events_dropped.get(), extra as u64);
        kube.traffic.hold_events(false);
        let written = || {
            let st = kube.state();
            let n = st.requests.iter();
            n.filter(|r| r.contains("/apis/events.k8s.io/")).count()
        };
        let want = EVENT_BACKLOG + 10;
        for _ in 0..1000 {
            if written() >= want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(written(), want);
    }

    #[test]
    fn the_guarded_write_carries_the_version_read_or_is_not_made() {
        let mut o = EcsInstance::new("web", Default::default());
        let st = EcsInstanceStatus {
            create_requested: Some(true),
            ..Default::default()
        };
        assert_eq!(guarded_body(&o, &st), None);
        o.metadata.resource_version = Some(String::new());
        assert_eq!(guarded_body(&o, &st), None);
        o.metadata.resource_version = Some("42".into());
        let b = guarded_body(&o, &st).unwrap();
        assert_eq!(b["metadata"]["resourceVersion"], "42");
        assert_eq!(b["status"]["createRequested"], true);
    }
}
