//! Validation at admission: the CEL rules (`x-kubernetes-validations`) the API server enforces
//! on `EcsInstance`, added to the schema kube derives from `api.rs`.
//!
//! One table holds every rule with the message a user sees when `kubectl apply` is refused,
//! so the README, the generated CRD and the tests read the same list. Transition rules
//! (`oldSelf`) need Kubernetes 1.25+; the oldest supported release (1.33, README "Support
//! matrix") has them and validation ratcheting, so an object stored before a rule existed can
//! still be updated as long as the offending field is left alone. The operator's own
//! fingerprint check (`ImmutableFieldChanged`) stays as the fallback for objects admitted
//! before these rules were installed.

use kube::core::CustomResourceExt;
use serde_json::{json, Value};

use crate::api::{EcsAccount, EcsInstance};

/// A CEL rule attached to one schema node.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Schema node, as property names from `openAPIV3Schema` (empty = the root).
    pub at: &'static [&'static str],
    pub rule: &'static str,
    pub message: &'static str,
    /// `fieldPath` shown in the error, relative to the node (None: the node itself).
    pub field_path: Option<&'static str>,
}

/// Fields of `spec.create` that a VM cannot change after it was created (the host name and
/// user data only take effect at the first boot). The others (`instanceName`,
/// `description`, `tags`, `instanceTypeId`) are changed on the VM in place
/// (`spec.updatePolicy`).
pub const IMMUTABLE_CREATE_FIELDS: &[&str] = &[
    "hostName",
    "userDataSecretRef",
    "zoneId",
    "imageId",
    "subnetId",
    "securityGroupIds",
    "systemVolume",
    "dataVolumes",
    "keyPairName",
    "instanceChargeType",
];

pub const RULES: &[Rule] = &[
    Rule {
        at: &["spec"],
        rule: "!(has(self.instanceId) && has(self.create))",
        message: "spec.instanceId (adopt an existing VM) and spec.create (create a VM) are exclusive: set one of them",
        field_path: None,
    },
    Rule {
        at: &["spec"],
        rule: "has(self.instanceId) || has(self.create)",
        message: "set spec.instanceId (adopt an existing VM) or spec.create (create a VM)",
        field_path: None,
    },
    Rule {
        at: &["spec"],
        rule: "has(self.instanceId) == has(oldSelf.instanceId) && (!has(self.instanceId) || self.instanceId == oldSelf.instanceId)",
        message: "spec.instanceId cannot be added, changed or removed: the resource stands for one VM for its whole life; create a new resource to manage another VM",
        field_path: Some(".instanceId"),
    },
    Rule {
        at: &["spec"],
        rule: "has(self.create) == has(oldSelf.create)",
        message: "spec.create cannot be added or removed after the resource was created",
        field_path: Some(".create"),
    },
    Rule {
        at: &["spec"],
        rule: "has(self.region) == has(oldSelf.region) && (!has(self.region) || self.region == oldSelf.region)",
        message: "spec.region cannot be added, changed or removed: a VM cannot move to another region",
        field_path: Some(".region"),
    },
    Rule {
        at: &["spec"],
        rule: "!has(self.managementPolicy) || self.managementPolicy != 'ObserveOnly' || has(self.instanceId)",
        message: "spec.managementPolicy ObserveOnly observes an existing VM: set spec.instanceId (an ObserveOnly resource never creates one)",
        field_path: Some(".managementPolicy"),
    },
    Rule {
        at: &["spec", "create", "tags"],
        rule: "self.all(k, size(k) >= 1 && size(k) <= 128 && k.trim() == k && !k.lowerAscii().startsWith('volc:') && !k.lowerAscii().startsWith('sys:'))",
        message: "spec.create.tags: a key is 1 to 128 characters, does not start or end with a space, and may not start with volc: or sys: (reserved for system tags)",
        field_path: None,
    },
    Rule {
        at: &["spec", "create", "tags"],
        rule: r"self.all(k, k.matches('^[\\p{L}\\p{N} _.:/=+@-]+$'))",
        message: "spec.create.tags: a key may hold only letters, digits, spaces and _ . : / = + - @",
        field_path: None,
    },
    Rule {
        at: &["spec", "create", "tags"],
        rule: "self.all(k, !k.startsWith('ecs.volcengine.io/'))",
        message: "spec.create.tags: keys under ecs.volcengine.io/ are the operator's ownership tags, set by the operator",
        field_path: None,
    },
    Rule {
        at: &["spec", "create", "systemVolume"],
        rule: "(has(self.volumeType) && self.volumeType == 'PTSSD') ? (self.size >= 10 && self.size <= 500) : (self.size >= 20 && self.size <= 2048)",
        message: "spec.create.systemVolume.size: a system disk is 20 to 2048 GiB (PTSSD: 10 to 500), the sizes Volcengine accepts",
        field_path: Some(".size"),
    },
    Rule {
        at: &["spec", "create"],
        rule: "has(self.systemVolume)",
        message: "spec.create.systemVolume is required: Volumes.1 is the system disk of the VM",
        field_path: None,
    },
];

/// One transition rule per immutable creation field, built from `IMMUTABLE_CREATE_FIELDS`.
fn immutable_create_rules() -> Vec<Value> {
    IMMUTABLE_CREATE_FIELDS
        .iter()
        .map(|f| {
            json!({
                "rule": format!("has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})"),
                "message": format!("spec.create.{f} cannot be changed after creation: the VM cannot change it (create a new resource for a different VM)"),
                "fieldPath": format!(".{f}"),
            })
        })
        .collect()
}

fn node<'a>(root: &'a mut Value, at: &[&str]) -> Option<&'a mut Value> {
    at.iter()
        .try_fold(root, |n, p| n.get_mut("properties")?.get_mut(*p))
}

fn push_rules(schema: &mut Value, at: &[&str], rules: Vec<Value>) -> Result<(), String> {
    let n = node(schema, at).ok_or_else(|| format!("no schema node {}", at.join(".")))?;
    let obj = n
        .as_object_mut()
        .ok_or_else(|| format!("schema node {} is not an object", at.join(".")))?;
    let list = obj
        .entry("x-kubernetes-validations")
        .or_insert_with(|| json!([]));
    if let Some(a) = list.as_array_mut() {
        a.extend(rules);
    }
    Ok(())
}

/// The CRD with every rule of `RULES` and the immutable creation fields attached.
pub fn crd() -> Result<Value, String> {
    let mut crd = serde_json::to_value(EcsInstance::crd()).map_err(|e| e.to_string())?;
    let schema = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema")
        .ok_or("CRD has no openAPIV3Schema")?;
    for r in RULES {
        let mut v = json!({"rule": r.rule, "message": r.message});
        if let Some(p) = r.field_path {
            v["fieldPath"] = json!(p);
        }
        push_rules(schema, r.at, vec![v])?;
    }
    push_rules(schema, &["spec", "create"], immutable_create_rules())?;
    Ok(crd)
}

/// Fields this operator relies on that an older CRD does not have: the API server drops
/// unknown fields, so with an older CRD an ObserveOnly resource would silently be managed,
/// and an account binding would be lost.
pub const REQUIRED_FIELDS: &[&str] = &[
    "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/managementPolicy",
    "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/accountRef",
    "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/account",
    // Without them an older schema would prune the update bookkeeping: a VM stopped for a
    // type change would not be known as such, and never started again.
    "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/updatePolicy",
    "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/stoppedForUpdateAt",
    "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/refusedInstanceType",
    "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/lastUpdate",
    "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/updateAttempt",
    "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/managedTagKeys",
];

/// Whether the installed EcsInstance CRD (as JSON) has every field of `REQUIRED_FIELDS`;
/// `Err` names the first one missing.
pub fn check_installed(crd: &Value) -> Result<(), String> {
    for p in REQUIRED_FIELDS {
        if crd.pointer(p).is_none() {
            let field = p.rsplit('/').next().unwrap_or(p);
            return Err(format!("the installed EcsInstance CRD is older than this operator (it has no {field}); install this version's CRD first: kubectl apply -k deploy/crd"));
        }
    }
    Ok(())
}

/// The `EcsAccount` CRD. `default` is the metric and log name of the operator's own
/// credentials, so no account may take it.
pub fn account_crd() -> Result<Value, String> {
    let mut crd = serde_json::to_value(EcsAccount::crd()).map_err(|e| e.to_string())?;
    let schema = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema")
        .ok_or("CRD has no openAPIV3Schema")?;
    let obj = schema.as_object_mut().ok_or("schema is not an object")?;
    obj.insert(
        "x-kubernetes-validations".into(),
        json!([{
            "rule": "self.metadata.name != 'default'",
            "message": "an EcsAccount may not be called default: that is the name of the operator's own credentials (its VOLCENGINE_* environment)",
        }]),
    );
    Ok(crd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_crd_passes_the_installed_check_and_an_older_one_does_not() {
        let crd = crd().unwrap();
        assert_eq!(check_installed(&crd), Ok(()));
        for p in REQUIRED_FIELDS {
            let mut old = crd.clone();
            let (parent, field) = p.rsplit_once('/').unwrap();
            old.pointer_mut(parent)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(field);
            let e = check_installed(&old).unwrap_err();
            assert!(e.contains(field) && e.contains("deploy/crd"), "{e}");
        }
    }

    #[test]
    fn every_rule_lands_on_an_existing_node() {
        let crd = crd().unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let spec = &schema["properties"]["spec"];
        let create = &spec["properties"]["create"];
        let on_spec = spec["x-kubernetes-validations"].as_array().unwrap();
        let on_create = create["x-kubernetes-validations"].as_array().unwrap();
        assert_eq!(on_spec.len(), 6);
        assert_eq!(on_create.len(), 1 + IMMUTABLE_CREATE_FIELDS.len());
        // Every immutable field exists in the schema (a renamed field must not leave a
        // rule that can never fire).
        for f in IMMUTABLE_CREATE_FIELDS {
            assert!(create["properties"][f].is_object(), "no spec.create.{f}");
        }
    }
}
