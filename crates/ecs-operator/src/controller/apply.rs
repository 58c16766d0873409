//! The apply path: adopt or create the VM, observe it, keep deletion protection as the
//! spec says, and report what we saw.

use std::sync::Arc;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::batch::Pace;
use crate::accounts::registry::AccountCloud;

use super::apply_plan::{self, ApplyFacts, ApplyReport, ApplyStep, ApplyThen, Write};
use super::ownership::{self, Facts, Verdict};
use super::reasons::{Cond, EventNote, Reason};
use super::{status, Context};
use crate::api::{
    remove_condition, set_condition, CreateSpec, EcsInstance, EcsInstanceStatus, Ownership,
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
    // The schema bounds the counter; an object stored before it was is bounded here, so
    // the token stays within `cleanup::MAX_TOKEN_LEN` (the README's one number).
    match generation.min(crate::api::MAX_COUNTER) {
        0 => format!("ecsop-run-{uid}"),
        g => format!("ecsop-run-{uid}-{g}"),
    }
}

pub async fn run(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    acct: &Arc<AccountCloud>,
) -> Result<Action, Error> {
    let api: Api<EcsInstance> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let uid = obj.uid().unwrap_or_default();
    let region = ctx.region_of(obj, acct);
    let s = &ctx.settings;
    let mut f = ApplyFacts::of(
        obj,
        &region,
        s.recreate_missing,
        s.appear_window,
        super::ownership::now(),
    );
    event(ctx, obj, apply_plan::annotation_note(obj));
    // The account is recorded before the first call that may create or claim a VM in it:
    // from then on the resource is bound to it (`accounts::pinned`).
    loop {
        match apply_plan::plan(&f) {
            ApplyStep::Done(outcome) => {
                let report = apply_plan::report(&f, outcome);
                return finish(obj, ctx, &api, report).await;
            }
            ApplyStep::LookUpByUid => {
                let found = find_by_uid(acct, &region, &uid).await;
                f.lookup = Some(found.map(|i| i.map(|i| i.instance_id)));
            }
            ApplyStep::Adopt { id } => adopt(obj, ctx, &api, &mut f.status, id).await?,
            ApplyStep::Create => {
                if let Some(action) = create(obj, ctx, acct, &api, &mut f, &uid).await? {
                    return Ok(action);
                }
            }
            ApplyStep::Describe { id } => {
                f.observe(acct.describe_one(&region, &id, Pace::Unknown).await);
                f.now = super::ownership::now();
            }
            ApplyStep::Update { id, step } => {
                super::update::act(obj, ctx, acct, &api, &mut f, &id, step).await?
            }
            // Seen once: from now on a VM the cloud does not list has vanished.
            ApplyStep::MarkSeen => {
                f.status.run_instances_at = None;
                status::patch_replace(&api, obj, &f.status).await?;
            }
            ApplyStep::EnsureOwned { inst } => {
                if let Some(action) =
                    ensure_owned(obj, ctx, acct, &api, &mut f.status, &region, &inst).await?
                {
                    return Ok(action);
                }
                f.owned = true;
            }
            ApplyStep::SetProtection { id, want } => {
                let r = acct
                    .cloud
                    .set_deletion_protection(&region, id.clone(), want)
                    .await;
                if let Ok(c) = &r {
                    let note = format!(
                        "deletion protection of VM {id} set to {want} (RequestId {})",
                        c.request_id
                    );
                    event(
                        ctx,
                        obj,
                        Some(EventNote::normal(
                            Reason::DeletionProtectionSet,
                            "Update",
                            note,
                        )),
                    );
                }
                f.protection = Some(r.map(|c| c.request_id));
            }
        }
    }
}

fn event(ctx: &Arc<Context>, obj: &EcsInstance, e: Option<EventNote>) {
    if let Some(e) = e {
        status::event(ctx, obj, e);
    }
}

/// Applies a report: the status write, the Events, the requeue.
async fn finish(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    api: &Api<EcsInstance>,
    mut r: ApplyReport,
) -> Result<Action, Error> {
    let uid = obj.uid().unwrap_or_default();
    if let Some(fields) = &r.drift {
        ctx.note_drift(&uid, fields);
    }
    // Every report that knows the VM (also a VM gone missing: its status says NotFound).
    publish_connection_info(obj, ctx, &mut r).await;
    match r.write {
        Write::Merge => status::patch(api, obj, &r.status).await?,
        Write::Replace => status::patch_replace(api, obj, &r.status).await?,
    }
    for e in r.events {
        event(ctx, obj, Some(e));
    }
    if r.reset_backoff {
        ctx.backoff.reset(&uid);
    }
    Ok(match r.then {
        ApplyThen::Backoff => Action::requeue(ctx.backoff.next(&uid)),
        ApplyThen::Poll => Action::requeue(ctx.settings.transition_poll),
        ApplyThen::Resync => Action::requeue(ctx.settings.resync),
        ApplyThen::Soon => Action::requeue(ApplyThen::SOON),
        ApplyThen::AwaitChange => Action::await_change(),
    })
}

/// Writes `spec.writeConnectionInfoTo` from the status just observed. A failure does not
/// stop the reconcile: `Synced` says it (unless it already says something worse) with a
/// Warning Event the first time, and the next observation tries again.
async fn publish_connection_info(obj: &EcsInstance, ctx: &Arc<Context>, r: &mut ApplyReport) {
    if r.status.instance_id.is_none() {
        return;
    }
    let Err(p) = super::connection_info::ensure(&ctx.client, obj, &r.status).await else {
        return;
    };
    let synced = Cond::Synced.as_str();
    let in_sync = r
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == synced && c.status == "True");
    if !in_sync {
        return;
    }
    let before = obj.condition(synced);
    let first = before.is_none_or(|c| c.reason != p.reason.as_str());
    set_condition(
        &mut r.status.conditions,
        synced,
        false,
        p.reason.as_str(),
        &p.message,
        obj.metadata.generation,
    );
    // The report set Synced=True first: the condition did not really flip, keep its time
    // (and so write nothing when nothing changed).
    if let (Some(b), Some(c)) = (
        before.filter(|b| b.status == "False"),
        r.status.conditions.iter_mut().find(|c| c.type_ == synced),
    ) {
        c.last_transition_time = b.last_transition_time.clone();
    }
    if first {
        r.events.push(EventNote::warning(
            p.reason,
            "WriteConnectionInfo",
            p.message,
        ));
    }
}

fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(super::ownership::now())
}

/// Claims the VM for this resource, or refuses it. `None`: the VM is ours, go on.
pub(super) async fn ensure_owned(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    acct: &Arc<AccountCloud>,
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
            return claim(obj, ctx, acct, api, st, region, id, stale_owner)
                .await
                .map(Some);
        }
        Verdict::Conflict(c) => c,
    };
    let gen = obj.metadata.generation;
    let msg = conflict.message(id);
    let r = Reason::ManagementConflict;
    st.ownership = Some(Ownership::Refused);
    st.instance_status = None;
    for (t, v) in [
        (Cond::Ready, false),
        (Cond::Synced, false),
        (Cond::Stalled, true),
    ] {
        set_condition(&mut st.conditions, t.as_str(), v, r.as_str(), &msg, gen);
    }
    remove_condition(&mut st.conditions, Cond::Reconciling.as_str());
    st.observed_generation = gen;
    status::patch(api, obj, st).await?;
    if obj
        .condition(Cond::Synced.as_str())
        .is_none_or(|c| c.reason != r.as_str())
    {
        event(ctx, obj, Some(EventNote::warning(r, "Adopt", msg)));
    }
    // Re-checked at every resync: once the other owner lets go, this resource may claim it.
    Ok(Some(Action::requeue(ctx.settings.resync)))
}

/// Writes this resource's identity tags on the VM (TagResources). Ready comes only from
/// the next reconcile, which sees the tags through DescribeInstances.
#[allow(clippy::too_many_arguments)]
async fn claim(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    acct: &Arc<AccountCloud>,
    api: &Api<EcsInstance>,
    st: &mut EcsInstanceStatus,
    region: &str,
    id: &str,
    stale_owner: Option<String>,
) -> Result<Action, Error> {
    let uid = obj.uid().unwrap_or_default();
    let ns = obj.namespace().unwrap_or_default();
    let tags = ownership::claim_tags(&ctx.settings.cluster_id, &ns, &obj.name_any(), &uid);
    let c = match acct
        .cloud
        .tag_instances(region, vec![id.to_string()], tags)
        .await
    {
        Ok(c) => c,
        Err(e) => return cloud_failure(obj, ctx, api, st.clone(), "TagResources", &e).await,
    };
    st.ownership = Some(Ownership::Claimed);
    let gen = obj.metadata.generation;
    let msg = format!(
        "VM {id} claimed for this resource (RequestId {})",
        c.request_id
    );
    let r = Reason::Claimed;
    set_condition(
        &mut st.conditions,
        Cond::Synced.as_str(),
        true,
        r.as_str(),
        &msg,
        gen,
    );
    status::patch(api, obj, st).await?;
    let (reason, note) = match stale_owner {
        Some(old) => (
            Reason::OwnershipTransferred,
            format!("{msg}; its previous owner (uid {old}) no longer exists"),
        ),
        None => (r, msg),
    };
    event(ctx, obj, Some(EventNote::normal(reason, "Adopt", note)));
    Ok(Action::requeue(std::time::Duration::from_millis(100)))
}

/// A cloud call failed while applying: condition, Warning Event, backoff. Never fatal.
async fn cloud_failure(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    api: &Api<EcsInstance>,
    st: EcsInstanceStatus,
    what: &'static str,
    e: &CloudError,
) -> Result<Action, Error> {
    let s = &ctx.settings;
    let f = ApplyFacts::of(
        obj,
        "",
        s.recreate_missing,
        s.appear_window,
        super::ownership::now(),
    );
    finish(obj, ctx, api, apply_plan::failure(&f, st, what, e)).await
}

/// The VM carrying this resource's uid tag, if any (paged; there is at most one).
pub async fn find_by_uid(
    acct: &AccountCloud,
    region: &str,
    uid: &str,
) -> Result<Option<Instance>, CloudError> {
    let q = DescribeQuery {
        tag_filters: vec![(TAG_UID.to_string(), vec![uid.to_string()])],
        max_results: Some(100),
        ..Default::default()
    };
    let r = acct.cloud.describe_instances(region, q).await?;
    Ok(r.value
        .instances
        .into_iter()
        .find(|i| i.tag(TAG_UID) == Some(uid)))
}

/// Adopts the VM an earlier run created for this uid (a crash after RunInstances, before
/// the status write) instead of creating another.
async fn adopt(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    api: &Api<EcsInstance>,
    st: &mut EcsInstanceStatus,
    id: String,
) -> Result<(), Error> {
    st.instance_id = Some(id.clone());
    st.create_requested = Some(true);
    st.ownership = Some(Ownership::Claimed);
    if let Some(create) = obj.spec.create.as_ref() {
        st.managed_tag_keys = managed_keys(&st.managed_tag_keys, create);
    }
    status::patch(api, obj, st).await?;
    let note = format!(
        "found VM {id} tagged with this resource's uid; adopted it instead of creating another"
    );
    event(
        ctx,
        obj,
        Some(EventNote::normal(Reason::Adopted, "Create", note)),
    );
    Ok(())
}

/// The managed tag keys with those of spec.create (sorted, once each).
fn managed_keys(have: &[String], create: &CreateSpec) -> Vec<String> {
    let mut keys: Vec<String> = have.to_vec();
    keys.extend(create.tags.keys().filter(|k| !have.contains(k)).cloned());
    keys.sort();
    keys
}

/// Creates the VM: user data, the intent written first (guarded by the resourceVersion
/// read), then RunInstances. `None`: created, its ID is in the status; `Some`: what to do
/// meanwhile (the condition is already written).
async fn create(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    acct: &Arc<AccountCloud>,
    api: &Api<EcsInstance>,
    f: &mut ApplyFacts,
    uid: &str,
) -> Result<Option<Action>, Error> {
    let Some(create) = obj.spec.create.as_ref() else {
        return Ok(Some(Action::await_change()));
    };
    let user_data = match user_data(obj, ctx, create).await? {
        Ok(data) => data,
        Err((reason, msg)) => {
            let report = apply_plan::create_refused(f, reason, msg);
            return finish(obj, ctx, api, report).await.map(Some);
        }
    };
    let token = run_token(uid, f.status.create_generation.unwrap_or(0));
    let req = run_request(obj, create, &ctx.settings.cluster_id, uid, user_data, token);
    let st = &mut f.status;
    // Persist the intent first: from here on a VM may exist, so deletion must look for it
    // (and, while the cloud may not list it yet, keep looking: `run_instances_at`).
    apply_plan::record_intent(st, &create.fingerprint(), f.generation);
    // RunInstances writes the spec's tags: from now on they are the operator's to remove.
    st.managed_tag_keys = managed_keys(&st.managed_tag_keys, create);
    st.run_instances_at = Some(now());
    // Guarded by the resourceVersion read: only a replica that acts on the current version
    // of the resource (not a stale cache, not a resource since deleted or changed) creates.
    status::patch_if_current(api, obj, st).await?;
    let e = match acct.cloud.run_instances(&f.region, req).await {
        Ok(c) => match c.value.first().cloned() {
            Some(id) => {
                st.instance_id = Some(id.clone());
                st.ownership = Some(Ownership::Claimed);
                st.run_instances_at = Some(now());
                status::patch(api, obj, st).await?;
                let note = format!("RunInstances created VM {id} (RequestId {})", c.request_id);
                event(
                    ctx,
                    obj,
                    Some(EventNote::normal(Reason::Created, "Create", note)),
                );
                return Ok(None);
            }
            None => CloudError::BadResponse {
                action: crate::cloud::model::Action::RunInstances,
                status: 200,
                detail: "no InstanceIds".into(),
                request_id: Some(c.request_id),
            },
        },
        Err(e) => {
            // A refused request created nothing (an earlier attempt that was applied would be
            // replayed as a success for this token, not refused): no VM is appearing.
            // (`obj` predates the guarded write above, so a merge patch cannot clear it.)
            if e.class() == crate::cloud::ErrorClass::Terminal {
                st.run_instances_at = None;
                status::patch_replace(api, obj, st).await?;
            }
            e
        }
    };
    let report = apply_plan::failure(f, f.status.clone(), "RunInstances", &e);
    finish(obj, ctx, api, report).await.map(Some)
}

/// The user data, base64, from the Secret spec.create names; `Err`: why it cannot be read
/// (reason and message for the condition).
async fn user_data(
    obj: &EcsInstance,
    ctx: &Arc<Context>,
    create: &CreateSpec,
) -> Result<Result<Option<String>, (Reason, String)>, Error> {
    let Some(r) = &create.user_data_secret_ref else {
        return Ok(Ok(None));
    };
    let ns = obj.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(match secrets.get_opt(&r.name).await {
        Ok(s) => match s.and_then(|s| s.data).and_then(|d| d.get(&r.key).cloned()) {
            Some(bytes) => encode_user_data(&bytes.0).map(Some).map_err(|m| {
                (Reason::UserDataTooLarge, format!("user data Secret {ns}/{} key {}: {m}", r.name, r.key))
            }),
            None => Err((Reason::UserDataNotFound, format!("user data Secret {ns}/{} key {} not found", r.name, r.key))),
        },
        Err(kube::Error::Api(e)) if e.code == 403 => Err((Reason::UserDataForbidden, format!(
            "the operator may not read Secret {ns}/{} (user data): bind the ClusterRole ecs-operator-user-data in this namespace (see deploy/rbac)",
            r.name
        ))),
        Err(e) => return Err(e.into()),
    })
}

/// User data as RunInstances takes it: base64 of at most `MAX_USER_DATA` bytes before
/// encoding (the limit Volcengine documents). Refused here rather than by the cloud, with
/// the size in the message.
pub fn encode_user_data(raw: &[u8]) -> Result<String, String> {
    if raw.len() > MAX_USER_DATA {
        return Err(format!(
            "{} bytes, more than the {MAX_USER_DATA} bytes (16 KiB, before base64) the cloud accepts",
            raw.len()
        ));
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(raw))
}

pub const MAX_USER_DATA: usize = 16 * 1024;

/// The RunInstances request of spec.create, with this resource's identity tags. Pure.
pub fn run_request(
    obj: &EcsInstance,
    create: &CreateSpec,
    cluster_id: &str,
    uid: &str,
    user_data: Option<String>,
    client_token: String,
) -> RunInstancesRequest {
    let mut tags: Vec<Tag> = create
        .tags
        .iter()
        .map(|(k, v)| Tag {
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    for (k, v) in [
        (TAG_CLUSTER, cluster_id.to_string()),
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
    let system_volume = create.system_volume.as_ref().map(|v| VolumeSpec {
        volume_type: v.volume_type.clone(),
        size: v.size,
        delete_with_instance: None,
    });
    let data_volumes = create
        .data_volumes
        .iter()
        .map(|v| VolumeSpec {
            volume_type: v.volume_type.clone(),
            size: v.size,
            delete_with_instance: Some(true),
        })
        .collect();
    RunInstancesRequest {
        zone_id: create.zone_id.clone(),
        image_id: create.image_id.clone(),
        instance_type_id: create.instance_type_id.clone(),
        instance_name: create
            .instance_name
            .clone()
            .unwrap_or_else(|| obj.name_any()),
        subnet_id: create.subnet_id.clone(),
        security_group_ids: create.security_group_ids.clone(),
        system_volume,
        data_volumes,
        key_pair_name: create.key_pair_name.clone(),
        host_name: create.host_name.clone(),
        description: create.description.clone(),
        user_data,
        instance_charge_type: create.instance_charge_type.map(|c| c.as_str().to_string()),
        deletion_protection: obj.spec.deletion_protection,
        tags,
        client_token,
    }
}

#[cfg(test)]
mod tests {
    /// Every token the operator sends fits the one bound the README states
    /// (`cleanup::MAX_TOKEN_LEN`), whatever the uid and generation.
    #[test]
    fn run_tokens_fit_the_token_bound() {
        use crate::controller::cleanup::MAX_TOKEN_LEN;
        let longest = run_token(&"x".repeat(100), u32::MAX);
        assert!(longest.len() <= MAX_TOKEN_LEN, "{longest}");
        assert_eq!(run_token("3f25-uid", 0), "ecsop-run-3f25-uid");
        assert_eq!(run_token("3f25-uid", 2), "ecsop-run-3f25-uid-2");
    }

    use super::*;

    #[test]
    fn user_data_is_at_most_16_kib_before_encoding() {
        let at_limit = vec![b'x'; MAX_USER_DATA];
        let encoded = encode_user_data(&at_limit).unwrap();
        assert_eq!(encoded.len(), MAX_USER_DATA.div_ceil(3) * 4);
        let over = vec![b'x'; MAX_USER_DATA + 1];
        let e = encode_user_data(&over).unwrap_err();
        assert!(e.contains("16385 bytes") && e.contains("16 KiB"), "{e}");
    }
}
