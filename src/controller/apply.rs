//! The apply path: adopt or create the VM, observe it, keep deletion protection as the
//! spec says, and report what we saw.

use std::sync::Arc;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::ownership::{self, Facts, Verdict};
use super::{status, Context};
use crate::api::{
    remove_condition, set_condition, EcsInstance, EcsInstanceStatus, Ownership, MAX_COUNTER,
    RELEASE_ANNOTATION,
};
use crate::cloud::model::{Tag, VolumeSpec};
use crate::cloud::{CloudError, DescribeQuery, Instance, RunInstancesRequest};
use crate::Error;

pub const TAG_CLUSTER: &str = "ecs.volcengine.io/cluster";
pub const TAG_NAMESPACE: &str = "ecs.volcengine.io/namespace";
pub const TAG_NAME: &str = "ecs.volcengine.io/name";
pub const TAG_UID: &str = "ecs.volcengine.io/uid";
/// The tags that mark a VM as owned by a resource of this cluster.
pub const OWNERSHIP_TAGS: [&str; 4] = [TAG_CLUSTER, TAG_NAMESPACE, TAG_NAME, TAG_UID];

/// ClientToken of a resource's RunInstances: a retry or a restart after a lost answer re-sends
/// it, and the cloud answers with the same VM instead of a second one. `generation` counts
/// re-creations after the VM vanished (`--on-missing-instance Recreate`); 0 for the first.
pub fn run_token(uid: &str, generation: u32) -> String {
    let uid: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    if generation == 0 {
        format!("ecsop-run-{uid}")
    } else {
        format!("ecsop-run-{uid}-{generation}")
    }
}

const TRANSITIONAL_OK: &[&str] = &["RUNNING", "STOPPED", "ERROR"];

pub async fn run(obj: &EcsInstance, ctx: &Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<EcsInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = obj.uid().unwrap_or_default();
    let gen = obj.metadata.generation;
    let mut st = obj.status.clone().unwrap_or_default();
    let region = ctx.region_of(obj);
    st.region.get_or_insert_with(|| region.clone());
    if obj.annotations().contains_key(RELEASE_ANNOTATION) {
        let note = format!("annotation {RELEASE_ANNOTATION} has no effect while the resource is not being deleted; remove it unless you mean to release this resource without deleting its VM when it is deleted");
        status::event(ctx, obj, true, "ReleaseAnnotationIgnored", "Observe", note);
    }

    // Immutable fields: report a change instead of silently ignoring it or acting on it.
    let mut drift = Vec::new();
    if let (Some(want), Some(have)) = (obj.spec.instance_id.as_deref(), st.instance_id.as_deref()) {
        if want != have {
            drift.push(format!("spec.instanceId changed from {have} to {want}"));
        }
    }
    if let (Some(want), Some(have)) = (obj.spec.region.as_deref(), st.region.as_deref()) {
        if want != have {
            drift.push(format!("spec.region changed from {have} to {want}"));
        }
    }
    if let (Some(create), Some(have)) = (obj.spec.create.as_ref(), st.create_hash.as_deref()) {
        if create.fingerprint() != have {
            drift.push("spec.create changed after the VM was created".to_string());
        }
    }

    let instance_id = match obj.owned_instance_id() {
        Some(id) => id.to_string(),
        None => match create_or_adopt(obj, ctx, &api, &mut st, &region, &uid).await? {
            Step::Have(id) => id,
            Step::Wait(action) => return Ok(action),
        },
    };
    st.instance_id = Some(instance_id.clone());

    let observed = match ctx.describe_one(&region, &instance_id).await {
        Ok(o) => o,
        Err(e) => return cloud_failure(obj, ctx, &api, st, "DescribeInstances", e).await,
    };
    let Some(mut inst) = observed else {
        if ownership::appearing(st.run_instances_at.as_ref(), ctx.settings.appear_window) {
            return appearing(obj, ctx, &api, st, &instance_id).await;
        }
        let created_by_us = obj.spec.create.is_some() && st.create_hash.is_some();
        let generation = st.create_generation.unwrap_or(0);
        if ctx.settings.recreate_missing && created_by_us && generation < MAX_COUNTER {
            // The user chose re-creation: forget the vanished VM and create a new one with a
            // new token (the old token would replay the old, now deleted, VM).
            let generation = generation.saturating_add(1).min(MAX_COUNTER);
            let msg = format!("VM {instance_id} vanished outside Kubernetes; creating a new one (--on-missing-instance Recreate)");
            st.instance_id = None;
            st.create_requested = None;
            st.create_hash = None;
            st.create_generation = Some(generation);
            st.run_instances_at = None;
            st.ownership = None;
            st.instance_status = Some("NotFound".into());
            set_condition(&mut st.conditions, "Ready", false, "Recreating", &msg, gen);
            status::patch_replace(&api, obj, &st).await?;
            status::event(ctx, obj, true, "Recreating", "Observe", msg);
            return Ok(Action::requeue(std::time::Duration::from_millis(200)));
        }
        let msg = format!("VM {instance_id} does not exist in {region}; it was deleted outside Kubernetes or never existed. Nothing is re-created (--on-missing-instance Report): delete this resource, or point spec.instanceId at another VM");
        let was = obj.condition("Ready").map(|c| c.reason.clone());
        st.instance_status = Some("NotFound".into());
        set_condition(
            &mut st.conditions,
            "Ready",
            false,
            "InstanceNotFound",
            &msg,
            gen,
        );
        set_condition(&mut st.conditions, "Synced", true, "Observed", "", gen);
        set_condition(
            &mut st.conditions,
            "Stalled",
            true,
            "InstanceNotFound",
            &msg,
            gen,
        );
        remove_condition(&mut st.conditions, "Reconciling");
        st.observed_generation = gen;
        status::patch(&api, obj, &st).await?;
        if was.as_deref() != Some("InstanceNotFound") {
            status::event(ctx, obj, true, "InstanceNotFound", "Observe", msg);
        }
        return Ok(Action::requeue(ctx.settings.resync));
    };

    // Seen once: it has appeared, and from now on a VM the cloud does not list has vanished.
    // (A merge patch cannot unset a field: replace the status.)
    if st.run_instances_at.take().is_some() {
        status::patch_replace(&api, obj, &st).await?;
    }

    // One VM, one owner: claim it (or see that it is ours) before anything else touches it.
    if let Some(action) = ensure_owned(obj, ctx, &api, &mut st, &region, &inst).await? {
        return Ok(action);
    }

    // Deletion protection follows the spec in both directions while the resource lives.
    if let Some(want) = obj.spec.deletion_protection {
        if inst.deletion_protection.unwrap_or(false) != want {
            match ctx
                .cloud
                .set_deletion_protection(&region, instance_id.clone(), want)
                .await
            {
                Ok(c) => {
                    inst.deletion_protection = Some(want);
                    status::event(
                        ctx,
                        obj,
                        false,
                        "DeletionProtectionSet",
                        "Update",
                        format!(
                            "deletion protection of VM {instance_id} set to {want} (RequestId {})",
                            c.request_id
                        ),
                    )
                }
                Err(e) => {
                    return cloud_failure(obj, ctx, &api, st, "ModifyInstanceAttribute", e).await
                }
            }
        }
    }

    let was_ready = obj.condition("Ready").map(|c| c.status == "True");
    fill_observed(&mut st, &inst, obj.spec.deletion_protection);
    let running = inst.status == "RUNNING";
    let settled = TRANSITIONAL_OK.contains(&inst.status.as_str());
    let ready_msg = format!("VM {instance_id} is {}", inst.status);
    set_condition(
        &mut st.conditions,
        "Ready",
        running,
        if running {
            "InstanceRunning"
        } else {
            "InstanceNotRunning"
        },
        &ready_msg,
        gen,
    );
    if drift.is_empty() {
        set_condition(&mut st.conditions, "Synced", true, "Observed", "", gen);
        remove_condition(&mut st.conditions, "Stalled");
    } else {
        let msg = format!(
            "{}; the change is ignored (these fields are immutable)",
            drift.join("; ")
        );
        set_condition(
            &mut st.conditions,
            "Synced",
            false,
            "ImmutableFieldChanged",
            &msg,
            gen,
        );
        set_condition(
            &mut st.conditions,
            "Stalled",
            true,
            "ImmutableFieldChanged",
            &msg,
            gen,
        );
        if obj
            .condition("Synced")
            .is_none_or(|c| c.reason != "ImmutableFieldChanged")
        {
            status::event(ctx, obj, true, "ImmutableFieldChanged", "Update", msg);
        }
    }
    if settled {
        remove_condition(&mut st.conditions, "Reconciling");
    } else {
        set_condition(
            &mut st.conditions,
            "Reconciling",
            true,
            "InstanceTransitioning",
            &ready_msg,
            gen,
        );
    }
    st.observed_generation = gen;
    status::patch(&api, obj, &st).await?;
    if running && was_ready != Some(true) {
        status::event(ctx, obj, false, "Ready", "Observe", ready_msg);
    }
    ctx.backoff.reset(&uid);
    Ok(Action::requeue(if settled {
        ctx.settings.resync
    } else {
        ctx.settings.transition_poll
    }))
}

fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(super::ownership::now())
}

/// A VM this resource created moments ago that DescribeInstances does not list yet: it is
/// appearing (eventual consistency), never vanished, and nothing is re-created.
async fn appearing(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    api: &Api<EcsInstance>,
    mut st: EcsInstanceStatus,
    id: &str,
) -> Result<Action, Error> {
    let gen = obj.metadata.generation;
    let msg = format!(
        "VM {id} was created moments ago and DescribeInstances does not list it yet (eventual consistency); waiting up to {}s after RunInstances",
        ctx.settings.appear_window.as_secs()
    );
    set_condition(
        &mut st.conditions,
        "Ready",
        false,
        "InstanceAppearing",
        &msg,
        gen,
    );
    set_condition(
        &mut st.conditions,
        "Synced",
        true,
        "InstanceAppearing",
        "",
        gen,
    );
    set_condition(
        &mut st.conditions,
        "Reconciling",
        true,
        "InstanceAppearing",
        &msg,
        gen,
    );
    remove_condition(&mut st.conditions, "Stalled");
    st.observed_generation = gen;
    status::patch(api, obj, &st).await?;
    Ok(Action::requeue(ctx.settings.transition_poll))
}

/// Claims the VM for this resource, or refuses it. `None`: the VM is ours, go on.
pub(super) async fn ensure_owned(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    api: &Api<EcsInstance>,
    st: &mut EcsInstanceStatus,
    region: &str,
    inst: &Instance,
) -> Result<Option<Action>, Error> {
    let uid = obj.uid().unwrap_or_default();
    let cluster = ctx.settings.cluster_id.as_str();
    let id = inst.instance_id.as_str();
    let verdict = if ownership::tagged_ours(inst, &uid, cluster) {
        Verdict::Ours
    } else {
        // Only here (adoption, or a claim lost) is the whole cluster's list needed.
        let all = ctx.all_instances().await?;
        let others = ownership::others(&all, &uid, id, inst.tag(TAG_UID));
        ownership::decide(&Facts {
            uid: &uid,
            cluster,
            tag_cluster: inst.tag(TAG_CLUSTER),
            tag_uid: inst.tag(TAG_UID),
            others: &others,
        })
    };
    let conflict = match verdict {
        Verdict::Ours => {
            st.ownership = Some(Ownership::Claimed);
            return Ok(None);
        }
        Verdict::Claim { stale_owner } => {
            return claim(obj, ctx, api, st, region, id, stale_owner)
                .await
                .map(Some);
        }
        Verdict::Conflict(c) => c,
    };
    let gen = obj.metadata.generation;
    let msg = conflict.message(id);
    st.ownership = Some(Ownership::Refused);
    st.instance_status = None;
    for (t, v) in [("Ready", false), ("Synced", false), ("Stalled", true)] {
        set_condition(&mut st.conditions, t, v, MANAGEMENT_CONFLICT, &msg, gen);
    }
    remove_condition(&mut st.conditions, "Reconciling");
    st.observed_generation = gen;
    status::patch(api, obj, st).await?;
    if obj
        .condition("Synced")
        .is_none_or(|c| c.reason != MANAGEMENT_CONFLICT)
    {
        status::event(ctx, obj, true, MANAGEMENT_CONFLICT, "Adopt", msg);
    }
    // Re-checked at every resync: once the other owner lets go, this resource may claim it.
    Ok(Some(Action::requeue(ctx.settings.resync)))
}

pub const MANAGEMENT_CONFLICT: &str = "ManagementConflict";

/// Writes this resource's identity tags on the VM (TagResources). Ready comes only from
/// the next reconcile, which sees the tags through DescribeInstances.
async fn claim(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    api: &Api<EcsInstance>,
    st: &mut EcsInstanceStatus,
    region: &str,
    id: &str,
    stale_owner: Option<String>,
) -> Result<Action, Error> {
    let uid = obj.uid().unwrap_or_default();
    let ns = obj.namespace().unwrap_or_default();
    let tags = ownership::claim_tags(&ctx.settings.cluster_id, &ns, &obj.name_any(), &uid);
    let c = match ctx
        .cloud
        .tag_instances(region, vec![id.to_string()], tags)
        .await
    {
        Ok(c) => c,
        Err(e) => return cloud_failure(obj, ctx, api, st.clone(), "TagResources", e).await,
    };
    st.ownership = Some(Ownership::Claimed);
    let gen = obj.metadata.generation;
    let msg = format!(
        "VM {id} claimed for this resource (RequestId {})",
        c.request_id
    );
    set_condition(&mut st.conditions, "Synced", true, "Claimed", &msg, gen);
    status::patch(api, obj, st).await?;
    let (reason, note) = match stale_owner {
        Some(old) => (
            "OwnershipTransferred",
            format!("{msg}; its previous owner (uid {old}) no longer exists"),
        ),
        None => ("Claimed", msg),
    };
    status::event(ctx, obj, false, reason, "Adopt", note);
    Ok(Action::requeue(std::time::Duration::from_millis(100)))
}

fn fill_observed(st: &mut EcsInstanceStatus, inst: &Instance, _want_protection: Option<bool>) {
    st.instance_status = Some(inst.status.clone());
    st.private_ip = inst.primary_ip().map(str::to_string);
    st.public_ip = inst.public_ip().map(str::to_string);
    st.zone_id = inst.zone_id.clone();
    st.instance_type_id = inst.instance_type_id.clone();
    st.created_at = inst.created_at.clone();
    st.deletion_protection = inst.deletion_protection;
}

/// A cloud call failed while applying: condition, Warning Event, backoff. Never fatal.
async fn cloud_failure(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    api: &Api<EcsInstance>,
    mut st: EcsInstanceStatus,
    what: &str,
    e: CloudError,
) -> Result<Action, Error> {
    let gen = obj.metadata.generation;
    let reason = e.class().condition_reason();
    let msg = format!("{what}: {e}");
    set_condition(&mut st.conditions, "Synced", false, reason, &msg, gen);
    if obj.condition("Ready").is_none() {
        set_condition(&mut st.conditions, "Ready", false, reason, &msg, gen);
    }
    status::patch(api, obj, &st).await?;
    status::event(ctx, obj, true, reason, what, msg);
    Ok(Action::requeue(
        ctx.backoff.next(&obj.uid().unwrap_or_default()),
    ))
}

/// The VM carrying this resource's uid tag, if any (paged; there is at most one).
pub async fn find_by_uid(
    ctx: &Arc<Context>,
    region: &str,
    uid: &str,
) -> Result<Option<Instance>, CloudError> {
    let q = DescribeQuery {
        tag_filters: vec![(TAG_UID.to_string(), vec![uid.to_string()])],
        max_results: Some(100),
        ..Default::default()
    };
    let r = ctx.cloud.describe_instances(region, q).await?;
    Ok(r.value
        .instances
        .into_iter()
        .find(|i| i.tag(TAG_UID) == Some(uid)))
}

/// Either the VM to observe, or what to do while there is none (condition already set).
enum Step {
    Have(String),
    Wait(Action),
}

/// Adopts the VM an earlier run created for this uid, or creates one.
async fn create_or_adopt(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    api: &Api<EcsInstance>,
    st: &mut EcsInstanceStatus,
    region: &str,
    uid: &str,
) -> Result<Step, Error> {
    let gen = obj.metadata.generation;
    let Some(create) = obj.spec.create.clone() else {
        let msg = "set spec.instanceId to adopt a VM, or spec.create to create one";
        set_condition(&mut st.conditions, "Ready", false, "InvalidSpec", msg, gen);
        set_condition(&mut st.conditions, "Synced", false, "InvalidSpec", msg, gen);
        set_condition(&mut st.conditions, "Stalled", true, "InvalidSpec", msg, gen);
        st.observed_generation = gen;
        status::patch(api, obj, st).await?;
        return Ok(Step::Wait(Action::await_change()));
    };
    // A VM for this uid may already exist: a crash after RunInstances, before the status write.
    match find_by_uid(ctx, region, uid).await {
        Ok(Some(inst)) => {
            st.instance_id = Some(inst.instance_id.clone());
            st.create_requested = Some(true);
            st.ownership = Some(Ownership::Claimed);
            status::patch(api, obj, st).await?;
            status::event(ctx, obj, false, "Adopted", "Create",
                format!("found VM {} tagged with this resource's uid; adopted it instead of creating another", inst.instance_id));
            return Ok(Step::Have(inst.instance_id));
        }
        Ok(None) => {}
        Err(e) => {
            return Ok(Step::Wait(
                cloud_failure(obj, ctx, api, st.clone(), "DescribeInstances", e).await?,
            ));
        }
    }
    let user_data = match &create.user_data_secret_ref {
        None => None,
        Some(r) => {
            let ns = obj.namespace().unwrap_or_default();
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
            let problem = match secrets.get_opt(&r.name).await {
                Ok(s) => match s.and_then(|s| s.data).and_then(|d| d.get(&r.key).cloned()) {
                    Some(bytes) => Ok(base64::engine::general_purpose::STANDARD.encode(bytes.0)),
                    None => Err(("UserDataNotFound", format!("user data Secret {ns}/{} key {} not found", r.name, r.key))),
                },
                Err(kube::Error::Api(e)) if e.code == 403 => Err(("UserDataForbidden", format!(
                    "the operator may not read Secret {ns}/{} (user data): bind the ClusterRole ecs-operator-user-data in this namespace (see deploy/rbac)",
                    r.name
                ))),
                Err(e) => return Err(e.into()),
            };
            match problem {
                Ok(data) => Some(data),
                Err((reason, msg)) => {
                    set_condition(&mut st.conditions, "Ready", false, reason, &msg, gen);
                    set_condition(&mut st.conditions, "Synced", false, reason, &msg, gen);
                    status::patch(api, obj, st).await?;
                    status::event(ctx, obj, true, reason, "Create", msg);
                    return Ok(Step::Wait(Action::requeue(ctx.backoff.next(uid))));
                }
            }
        }
    };
    let mut tags: Vec<Tag> = create
        .tags
        .iter()
        .map(|(k, v)| Tag {
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    for (k, v) in [
        (TAG_CLUSTER, ctx.settings.cluster_id.clone()),
        (TAG_NAMESPACE, obj.namespace().unwrap_or_default()),
        (TAG_NAME, obj.name_any()),
        (TAG_UID, uid.to_string()),
    ] {
        tags.retain(|t| t.key != k);
        tags.push(Tag {
            key: k.to_string(),
            value: v,
        });
    }
    let mut volumes = Vec::new();
    if let Some(v) = &create.system_volume {
        volumes.push(VolumeSpec {
            volume_type: v.volume_type.clone(),
            size: v.size,
            delete_with_instance: None,
        });
    }
    for v in &create.data_volumes {
        volumes.push(VolumeSpec {
            volume_type: v.volume_type.clone(),
            size: v.size,
            delete_with_instance: Some(true),
        });
    }
    let req = RunInstancesRequest {
        zone_id: create.zone_id.clone(),
        image_id: create.image_id.clone(),
        instance_type_id: create.instance_type_id.clone(),
        instance_name: create
            .instance_name
            .clone()
            .unwrap_or_else(|| obj.name_any()),
        subnet_id: create.subnet_id.clone(),
        security_group_ids: create.security_group_ids.clone(),
        volumes,
        key_pair_name: create.key_pair_name.clone(),
        host_name: create.host_name.clone(),
        description: create.description.clone(),
        user_data,
        instance_charge_type: create.instance_charge_type.map(|c| c.as_str().to_string()),
        deletion_protection: obj.spec.deletion_protection,
        tags,
        client_token: run_token(uid, st.create_generation.unwrap_or(0)),
    };
    // Persist the intent first: from here on a VM may exist, so deletion must look for it
    // (and, while the cloud may not list it yet, keep looking: `run_instances_at`).
    if st.create_requested != Some(true) {
        st.create_requested = Some(true);
        st.create_hash = Some(create.fingerprint());
        set_condition(
            &mut st.conditions,
            "Ready",
            false,
            "Creating",
            "RunInstances sent",
            gen,
        );
    }
    st.run_instances_at = Some(now());
    // Guarded by the resourceVersion read: only a replica that acts on the current version
    // of the resource (not a stale cache, not a resource since deleted or changed) creates.
    status::patch_if_current(api, obj, st).await?;
    match ctx.cloud.run_instances(region, req).await {
        Ok(c) => {
            let Some(id) = c.value.first().cloned() else {
                let e = CloudError::BadResponse {
                    action: crate::cloud::model::Action::RunInstances,
                    status: 200,
                    detail: "no InstanceIds".into(),
                    request_id: Some(c.request_id),
                };
                return Ok(Step::Wait(
                    cloud_failure(obj, ctx, api, st.clone(), "RunInstances", e).await?,
                ));
            };
            st.instance_id = Some(id.clone());
            st.ownership = Some(Ownership::Claimed);
            st.run_instances_at = Some(now());
            status::patch(api, obj, st).await?;
            status::event(
                ctx,
                obj,
                false,
                "Created",
                "Create",
                format!("RunInstances created VM {id} (RequestId {})", c.request_id),
            );
            Ok(Step::Have(id))
        }
        Err(e) => {
            // A refused request created nothing (an earlier attempt that was applied would be
            // replayed as a success for this token, not refused): no VM is appearing.
            // (`obj` predates the guarded write above, so a merge patch cannot clear it.)
            if e.class() == crate::cloud::ErrorClass::Terminal {
                st.run_instances_at = None;
                status::patch_replace(api, obj, st).await?;
            }
            Ok(Step::Wait(
                cloud_failure(obj, ctx, api, st.clone(), "RunInstances", e).await?,
            ))
        }
    }
}
