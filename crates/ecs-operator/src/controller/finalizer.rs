//! Adding and removing our finalizer with JSON patches guarded by `test` operations, so a
//! concurrent change to the list makes the patch fail instead of clobbering it.

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::{EcsInstance, FINALIZER};
use crate::Error;

pub fn has_finalizer(obj: &EcsInstance) -> bool {
    obj.finalizers().iter().any(|f| f == FINALIZER)
}

pub async fn add(api: &Api<EcsInstance>, obj: &EcsInstance) -> Result<(), Error> {
    let patch = match &obj.metadata.finalizers {
        None => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]),
        Some(list) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ]),
    };
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    Ok(())
}

/// Removes the finalizer. This is the only function that does, and `delete::run` is its
/// only caller, after the cloud accepted the deletion or said the VM is gone (or the
/// resource never had a VM, or its policy is Orphan, or a person asked for the release with
/// the annotation `ecs.volcengine.io/release-without-delete` after the deletion began).
pub(super) async fn remove(api: &Api<EcsInstance>, obj: &EcsInstance) -> Result<(), Error> {
    let Some(idx) = obj.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{idx}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]))?;
    super::tolerate_gone(
        api.patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await,
    )
}
