//! `spec.writeConnectionInfoTo`: a ConfigMap in the resource's namespace with what a
//! workload needs to reach the VM (its ID, region, zone, addresses and status), owned by
//! the resource so Kubernetes' garbage collector deletes it with the resource. Written
//! only when its content changes; never holds a secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::reasons::Reason;
use super::status::FIELD_MANAGER;
use crate::api::{EcsInstance, EcsInstanceStatus};

/// Label on every ConfigMap the operator writes, with the resource's uid as value (a
/// name may be longer than a label value's 63 characters; a uid never is).
pub const LABEL: &str = "ecs.volcengine.io/connection-info-of";

/// The ConfigMap's data: every key always present ("" while unknown), so a workload's
/// `configMapKeyRef` never fails on a VM without a public IP. Pure.
pub fn data(st: &EcsInstanceStatus) -> BTreeMap<String, String> {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    BTreeMap::from([
        ("instanceId".to_string(), v(&st.instance_id)),
        ("region".to_string(), v(&st.region)),
        ("zoneId".to_string(), v(&st.zone_id)),
        ("privateIp".to_string(), v(&st.private_ip)),
        ("publicIp".to_string(), v(&st.public_ip)),
        ("instanceStatus".to_string(), v(&st.instance_status)),
    ])
}

/// Why the ConfigMap could not be written (reason and message for the condition).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

/// The ConfigMap already holds these values (keys someone else added are left alone and
/// do not count).
pub fn holds(cm: &ConfigMap, want: &BTreeMap<String, String>) -> bool {
    let data = cm.data.as_ref();
    want.iter()
        .all(|(k, v)| data.and_then(|d| d.get(k)) == Some(v))
}

/// This resource owns the ConfigMap (it created it, or someone handed it over).
pub fn owned_by(cm: &ConfigMap, uid: &str) -> bool {
    cm.owner_references().iter().any(|o| o.uid == uid)
}

fn owner(obj: &EcsInstance) -> Option<OwnerReference> {
    let mut o = obj.controller_owner_ref(&())?;
    // Not blocking: the resource's own finalizer already orders the VM's deletion first.
    o.block_owner_deletion = None;
    Some(o)
}

/// Creates or updates the ConfigMap. `Ok(None)`: written or already current.
pub async fn ensure(
    client: &kube::Client,
    obj: &EcsInstance,
    st: &EcsInstanceStatus,
) -> Result<(), Problem> {
    let Some(target) = obj.spec.write_connection_info_to.as_ref() else {
        return Ok(());
    };
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let want = data(st);
    let uid = obj.uid().unwrap_or_default();
    let failed = |what: &str, e: kube::Error| {
        let hint = match &e {
            kube::Error::Api(s) if s.code == 403 => {
                " (the operator's ClusterRole needs get, create and patch on configmaps: deploy/rbac/cluster-role.yaml)"
            }
            _ => "",
        };
        Problem {
            reason: Reason::ConnectionInfoFailed,
            message: format!("ConfigMap {ns}/{}: {what} failed: {e}{hint}", target.name),
        }
    };
    match api.get_opt(&target.name).await {
        Err(e) => Err(failed("read", e)),
        Ok(Some(cm)) if !owned_by(&cm, &uid) => Err(Problem {
            reason: Reason::ConnectionInfoConflict,
            message: format!(
                "ConfigMap {ns}/{} exists and is not owned by this resource; it is left alone: name another one in spec.writeConnectionInfoTo, or delete it",
                target.name
            ),
        }),
        Ok(Some(cm)) if holds(&cm, &want) => Ok(()),
        Ok(Some(cm)) => {
            // Guarded by the version read: ownership cannot change between the check and
            // the write (a conflict is tried again at the next observation).
            let patch = Patch::Merge(json!({
                "metadata": {"resourceVersion": cm.resource_version()},
                "data": want,
            }));
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.patch(&target.name, &pp, &patch)
                .await
                .map(|_| ())
                .map_err(|e| failed("update", e))
        }
        Ok(None) => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(target.name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(BTreeMap::from([(LABEL.to_string(), uid.clone())])),
                    owner_references: owner(obj).map(|o| vec![o]),
                    ..Default::default()
                },
                data: Some(want),
                ..Default::default()
            };
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.create(&pp, &cm)
                .await
                .map(|_| ())
                .map_err(|e| failed("create", e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_present_and_nothing_secret() {
        let st = EcsInstanceStatus {
            instance_id: Some("i-1".into()),
            private_ip: Some("10.0.0.2".into()),
            ..Default::default()
        };
        let d = data(&st);
        assert_eq!(d["instanceId"], "i-1");
        assert_eq!(d["publicIp"], "");
        assert_eq!(
            d.keys().map(String::as_str).collect::<Vec<_>>(),
            vec![
                "instanceId",
                "instanceStatus",
                "privateIp",
                "publicIp",
                "region",
                "zoneId"
            ]
        );
    }

    #[test]
    fn extra_keys_do_not_make_it_stale() {
        let want = data(&EcsInstanceStatus::default());
        let mut d = want.clone();
        d.insert("added-by-someone".into(), "x".into());
        let cm = ConfigMap {
            data: Some(d),
            ..Default::default()
        };
        assert!(holds(&cm, &want));
        let mut other = want.clone();
        other.insert("instanceId".into(), "i-2".into());
        assert!(!holds(&cm, &other));
    }

    #[test]
    fn ownership_is_by_uid() {
        let mut cm = ConfigMap::default();
        assert!(!owned_by(&cm, "u1"));
        cm.metadata.owner_references = Some(vec![OwnerReference {
            uid: "u1".into(),
            ..Default::default()
        }]);
        assert!(owned_by(&cm, "u1"));
        assert!(!owned_by(&cm, "u2"));
    }
}
