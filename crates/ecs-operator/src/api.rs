//! The `EcsInstance` custom resource: spec (what the user wants), status (what we saw and
//! did), and condition helpers.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const FINALIZER: &str = "ecs.volcengine.io/delete-instance";
/// Namespace annotation that sets the default deletion policy for resources in it.
pub const NAMESPACE_POLICY_ANNOTATION: &str = "ecs.volcengine.io/deletion-policy";
/// Escape hatch on an `EcsInstance` being deleted: release the finalizer without any cloud
/// call. The value is the stated reason (README "Releasing a stuck deletion").
pub const RELEASE_ANNOTATION: &str = "ecs.volcengine.io/release-without-delete";
/// Namespace annotation naming the `EcsAccount` its resources use when they name none.
pub const NAMESPACE_ACCOUNT_ANNOTATION: &str = "ecs.volcengine.io/account";
/// `"true"` on an `EcsInstance`: no cloud call for it while set (a deletion waits).
pub const PAUSED_ANNOTATION: &str = "ecs.volcengine.io/paused";
/// The CRD's own name: while it is being deleted every resource is treated as Orphan.
pub const CRD_NAME: &str = "ecsinstances.ecs.volcengine.io";
/// Upper bound of the status counters (`deletionAttempt`, `createGeneration`), in the schema
/// and in the code: they are user-writable, so they must neither overflow nor wrap.
pub const MAX_COUNTER: u32 = 1_000_000;

/// One Volcengine ECS virtual machine. Deleting the resource deletes the VM (unless
/// `deletionPolicy: Orphan`); the finalizer `ecs.volcengine.io/delete-instance` guarantees it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ecs.volcengine.io",
    version = "v1alpha1",
    kind = "EcsInstance",
    plural = "ecsinstances",
    shortname = "ecsi",
    namespaced,
    status = "EcsInstanceStatus",
    printcolumn = r#"{"name":"Instance-ID","type":"string","jsonPath":".status.instanceId"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.instanceStatus"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.privateIp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EcsInstanceSpec {
    /// ID of an existing VM to adopt (for example `i-3tiefmkskq3vj0abcdef`). When set, nothing
    /// is created and the creation fields are ignored. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^i-[a-z0-9]{4,60}$"))]
    pub instance_id: Option<String>,

    /// Region of the VM, for example `cn-beijing`. Defaults to the operator's
    /// `VOLCENGINE_REGION`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2,}(-[a-z0-9]+)+$"))]
    pub region: Option<String>,

    /// What deleting this resource does to the VM: `Delete` (default) deletes it, `Orphan`
    /// leaves it running. Unset: the namespace annotation `ecs.volcengine.io/deletion-policy`,
    /// then the operator's `--default-deletion-policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "deletion_policy_schema")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// Keep the finalizer after the cloud accepted the deletion until DescribeInstances no
    /// longer returns the VM. Off by default: accepted means done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_termination: Option<bool>,

    /// The VM's deletion protection. While it is on, deleting this resource keeps the
    /// finalizer until you turn it off; the operator never turns it off on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_protection: Option<bool>,

    /// The `EcsAccount` (cluster-scoped) whose credentials act for this resource. Unset: the
    /// namespace annotation `ecs.volcengine.io/account`, then the operator's own credentials
    /// (its `VOLCENGINE_*` environment). The account must allow this namespace
    /// (`spec.allowedNamespaces`), else the resource is refused (condition
    /// `AccountNotAllowed`) and never acts. Once the resource has a VM, the account it was
    /// made or adopted in is kept in `status.account`; naming another one later is refused
    /// (`AccountChanged`), since the VM cannot move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_ref: Option<AccountRef>,

    /// `Manage` (default): create, adopt, keep deletion protection and delete as the spec
    /// says. `ObserveOnly`: only read the VM named by `instanceId` and report it; never
    /// create, modify or delete it, and deleting the resource leaves the VM untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "management_policy_schema")]
    pub management_policy: Option<ManagementPolicy>,

    /// Creation parameters, used only when `instanceId` is empty. `instanceName`,
    /// `description`, `tags` and `instanceTypeId` can be changed later: the operator
    /// converges the VM in place (see `updatePolicy`). The API server refuses edits of the
    /// fields a VM cannot change (zone, image, subnet, security groups, disks, key pair,
    /// charge type, host name, user data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<CreateSpec>,

    /// How the operator converges the VM to `spec.create`'s mutable fields when they differ
    /// (an edit of the spec, or a change made in the console): `WhenStopped` (default)
    /// renames, re-describes and re-tags at once and changes the instance type only while
    /// the VM is STOPPED (you stop it); `Restart` also stops a RUNNING VM to change its
    /// type and starts it again; `Never` only reports the difference (condition `Synced`
    /// reason `Drifted`). The default never stops a VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "update_policy_schema")]
    pub update_policy: Option<UpdatePolicy>,

    /// A ConfigMap in this resource's namespace that the operator keeps up to date with the
    /// VM's `instanceId`, `region`, `zoneId`, `privateIp`, `publicIp` and `instanceStatus`,
    /// for workloads to mount or read as environment. Owned by this resource (garbage
    /// collected with it); never holds secrets. A ConfigMap of that name that this resource
    /// does not own is left alone and reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_connection_info_to: Option<ConnectionInfoRef>,
}

fn update_policy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["Never", "WhenStopped", "Restart"]})
}

/// May the operator change the VM in place, and stop it to do so (`spec.updatePolicy`)?
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum UpdatePolicy {
    /// Report differences, change nothing.
    Never,
    /// Change what needs no stop at once; the instance type only while the VM is STOPPED.
    #[default]
    WhenStopped,
    /// As WhenStopped, and stop a RUNNING VM for a type change, then start it again.
    Restart,
}

impl UpdatePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdatePolicy::Never => "Never",
            UpdatePolicy::WhenStopped => "WhenStopped",
            UpdatePolicy::Restart => "Restart",
        }
    }
}

/// Where the VM's addresses are published (`spec.writeConnectionInfoTo`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfoRef {
    /// ConfigMap name, in the resource's namespace.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub name: String,
}

fn management_policy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["Manage", "ObserveOnly"]})
}

/// How much the operator may do to the VM (`spec.managementPolicy`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ManagementPolicy {
    Manage,
    ObserveOnly,
}

/// A reference to a cluster-scoped `EcsAccount`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountRef {
    /// Name of the `EcsAccount`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

// Optional enums: schemars would list `null` among the enum values, which a structural
// schema rejects; the field is simply omitted when unset.
fn deletion_policy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["Delete", "Orphan"]})
}

// An integer with explicit bounds: `format: uint32` (what schemars derives for u32) is not an
// OpenAPI format the API server knows, and 1.37 warns about it.
fn counter_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "minimum": 0, "maximum": MAX_COUNTER})
}

fn volume_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "minimum": 10, "maximum": 32768})
}

/// Per call 20 tags, 4 of them the operator's; ECS does not document a value limit (its
/// sibling APIs say 255 and 256), so the stricter one.
fn tags_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_USER_TAGS,
        "additionalProperties": {"type": "string", "maxLength": 255}
    })
}

/// User tags per resource: 20 per call, less the 4 ownership tags.
pub const MAX_USER_TAGS: usize = 16;

fn ownership_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["Claimed", "Refused"]})
}

/// Whether this resource holds its VM (see `EcsInstanceStatus::ownership`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Ownership {
    Claimed,
    Refused,
}

fn charge_type_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["PostPaid", "PrePaid"]})
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    Delete,
    Orphan,
}

impl std::str::FromStr for DeletionPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Delete" => Ok(DeletionPolicy::Delete),
            "Orphan" => Ok(DeletionPolicy::Orphan),
            other => Err(format!(
                "unknown deletion policy {other:?} (Delete or Orphan)"
            )),
        }
    }
}

/// RunInstances parameters (Volcengine ECS API 2020-04-01).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSpec {
    /// Availability zone, for example `cn-beijing-a`.
    #[schemars(length(min = 1, max = 64))]
    pub zone_id: String,
    /// Image ID, for example `image-ybqi99s7yq8rx7mnk44b`.
    #[schemars(length(min = 1, max = 128))]
    pub image_id: String,
    /// Instance type, for example `ecs.g1ie.large`.
    #[schemars(length(min = 1, max = 64))]
    pub instance_type_id: String,
    /// VM name: 1-128 characters, starting with a letter. Defaults to the resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z\p{Han}][A-Za-z0-9\p{Han}_.\-]{0,127}$"))]
    pub instance_name: Option<String>,
    /// Subnet of the primary network interface.
    #[schemars(length(min = 1, max = 128))]
    pub subnet_id: String,
    /// Security groups of the primary network interface (1 to 5).
    #[schemars(length(min = 1, max = 5))]
    pub security_group_ids: Vec<String>,
    /// System disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_volume: Option<VolumeSpec>,
    /// Data disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 15))]
    pub data_volumes: Vec<VolumeSpec>,
    /// Name of an existing key pair for SSH login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pair_name: Option<String>,
    /// Host name of the guest OS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// Free-text description of the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub description: Option<String>,
    /// `PostPaid` (pay as you go, default) or `PrePaid` (subscription; cannot be deleted
    /// before it expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "charge_type_schema")]
    pub instance_charge_type: Option<ChargeType>,
    /// Extra tags for the VM, at most 16: one TagResources/RunInstances call carries at most
    /// 20, and the operator adds its 4 ownership tags (`ecs.volcengine.io/*`). Keys: 1-128
    /// letters, digits, spaces and `_ . : / = + - @`, not starting with `volc:` or `sys:`
    /// (reserved for system tags); values at most 255 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "tags_schema")]
    pub tags: BTreeMap<String, String>,
    /// User data (cloud-init) read from a Secret in the resource's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_secret_ref: Option<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ChargeType {
    PostPaid,
    PrePaid,
}

impl ChargeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChargeType::PostPaid => "PostPaid",
            ChargeType::PrePaid => "PrePaid",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Disk type, for example `ESSD_PL0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    /// Size in GiB.
    #[schemars(schema_with = "volume_size_schema")]
    pub size: u32,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name, in the resource's namespace.
    pub name: String,
    /// Key in the Secret's data.
    pub key: String,
}

/// An in-place update the cloud accepted (`status.lastUpdate`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastUpdate {
    /// Digest of the differences the update was sent for.
    pub digest: String,
    pub at: Time,
}

/// What the operator observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EcsInstanceStatus {
    /// The VM this resource owns (adopted or created). Written as soon as it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Region the VM lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The `EcsAccount` the VM lives in, recorded before the first cloud call that may
    /// create or claim it (absent: the operator's own credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Last observed VM status (CREATING, RUNNING, STOPPING, STOPPED, DELETING, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_status: Option<String>,
    /// Primary private IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// Public (EIP) address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type_id: Option<String>,
    /// Creation time reported by the cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Deletion protection as observed on the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_protection: Option<bool>,
    /// Counter in the DeleteInstances ClientToken. Bumped after each definitive answer, so a
    /// retry of one request re-sends its token and a new attempt gets a new one. At most
    /// 1,000,000: at the bound the deletion stops (Stalled) instead of re-sending a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "counter_schema")]
    pub deletion_attempt: Option<u32>,
    /// Set before RunInstances is first sent: from then on a VM may exist for this uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_requested: Option<bool>,
    /// Re-creations after the VM vanished (`--on-missing-instance Recreate`); part of the
    /// RunInstances ClientToken. At most 1,000,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "counter_schema")]
    pub create_generation: Option<u32>,
    /// When the latest RunInstances was sent, then answered (RFC 3339); cleared once
    /// DescribeInstances returned the VM. The cloud may not list a new VM for a while
    /// (eventual consistency): until it was seen, and within the operator's
    /// `--instance-appear-window-secs` of this time, a VM it cannot see is still appearing,
    /// never vanished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_instances_at: Option<Time>,
    /// While a deletion waits with backoff (a refusal, a failure, a doubt): when the operator
    /// tries again. Shown by `ecs-operator explain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_retry_at: Option<Time>,
    /// `spec.waitForTermination`: when DeleteInstances was last accepted; the wait for the
    /// VM to disappear is bounded from this time (`--termination-timeout-secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_accepted_at: Option<Time>,
    /// `Claimed`: the VM carries this resource's ownership tags (written by RunInstances, or
    /// by TagResources when adopting). `Refused`: another resource or cluster manages the
    /// VM; this resource never touches it and deleting it leaves the VM alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "ownership_schema")]
    pub ownership: Option<Ownership>,
    /// Hash of `spec.create`'s immutable fields as sent to RunInstances, to detect later
    /// edits (`v2:` prefix; without it, of the whole `spec.create`, as older versions wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_hash: Option<String>,
    /// The user tag keys the operator put on the VM (by RunInstances or TagResources): a
    /// key removed from `spec.create.tags` is removed from the VM only if listed here, so a
    /// tag someone else added in the console is never touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_tag_keys: Vec<String>,
    /// Counter in the ClientTokens of in-place updates (ModifyInstanceAttribute,
    /// ModifyInstanceSpec, StopInstances, StartInstances). Bumped after each definitive
    /// answer, so a retry of a lost answer re-sends its token. At most 1,000,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "counter_schema")]
    pub update_attempt: Option<u32>,
    /// When the operator decided to stop the VM to change its type (`updatePolicy:
    /// Restart`); written before StopInstances is sent, cleared once the operator started it
    /// again. While set, the VM is started again whatever else happens (a refused type, a
    /// changed policy, 15 minutes without the new type showing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_for_update_at: Option<Time>,
    /// The last in-place update the cloud accepted: a digest of the differences it was sent
    /// for, and when. The same differences are not sent again for 2 minutes (the cloud may
    /// show a change late; a change it never shows is re-sent at that pace, not at every poll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<LastUpdate>,
    /// An instance type the cloud refused for good after the operator stopped the VM for
    /// it: the VM was started again and is not stopped for this type again (change
    /// `spec.create.instanceTypeId` to try another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_instance_type: Option<String>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Synced` (and kstatus' `Reconciling`/`Stalled` when true).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl CreateSpec {
    /// Stable fingerprint of the creation parameters a VM cannot change in place (sha256 of
    /// their JSON, 16 hex, `v2:` first): the mutable ones (`instanceName`, `description`,
    /// `tags`, `instanceTypeId`) are blanked, so editing them is an update, not a drift.
    pub fn fingerprint(&self) -> String {
        let immutable = CreateSpec {
            instance_name: None,
            description: None,
            tags: BTreeMap::new(),
            instance_type_id: String::new(),
            ..self.clone()
        };
        format!("{FINGERPRINT_V2}{}", immutable.legacy_fingerprint())
    }

    /// The fingerprint of the whole spec, as versions before in-place updates recorded it.
    pub fn legacy_fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..8])
    }
}

/// Prefix of the fingerprint of the immutable creation fields.
pub const FINGERPRINT_V2: &str = "v2:";

impl EcsInstance {
    /// `spec.managementPolicy: ObserveOnly`.
    pub fn observe_only(&self) -> bool {
        self.spec.management_policy == Some(ManagementPolicy::ObserveOnly)
    }

    /// The annotation `ecs.volcengine.io/paused: "true"` is set.
    pub fn paused(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PAUSED_ANNOTATION))
            .is_some_and(|v| v == "true")
    }

    /// The VM this resource owns: the recorded one wins over the spec (which may have been
    /// edited) so we never delete a VM we did not adopt or create.
    pub fn owned_instance_id(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.instance_id.as_deref())
            .or(self.spec.instance_id.as_deref())
            .filter(|s| !s.is_empty())
    }

    /// `spec.updatePolicy`, defaulted.
    pub fn update_policy(&self) -> UpdatePolicy {
        self.spec.update_policy.unwrap_or_default()
    }

    pub fn deletion_attempt(&self) -> u32 {
        self.status
            .as_ref()
            .and_then(|s| s.deletion_attempt)
            .unwrap_or(0)
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

/// Credentials of one Volcengine account, for the `EcsInstance`s of the namespaces it
/// allows. Cluster-scoped: only a cluster administrator decides which team may act in which
/// account.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ecs.volcengine.io",
    version = "v1alpha1",
    kind = "EcsAccount",
    plural = "ecsaccounts",
    shortname = "ecsa",
    status = "EcsAccountStatus",
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".spec.secretRef.name"}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.region"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EcsAccountSpec {
    /// The Secret holding the key, in the operator's account Secret namespace
    /// (`--account-secret-namespace`, by default the operator's own): data keys
    /// `VOLCENGINE_ACCESS_KEY`, `VOLCENGINE_SECRET_KEY` and optionally
    /// `VOLCENGINE_SESSION_TOKEN`. A change to it is used within seconds, without a restart.
    pub secret_ref: AccountSecretRef,
    /// Region of the resources that name none. Default: the operator's `VOLCENGINE_REGION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2,}(-[a-z0-9]+)+$"))]
    pub region: Option<String>,
    /// OpenAPI endpoint URL. Default: the operator's `VOLCENGINE_ENDPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub endpoint: Option<String>,
    /// The namespaces whose resources may use this account: those listed in `names`, and
    /// those whose labels match `selector`. Neither set: no namespace.
    #[serde(default)]
    pub allowed_namespaces: AllowedNamespaces,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Namespace names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// A label selector on namespaces (as in Kubernetes, `{}` matches every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EcsAccountStatus {
    /// `Ready`: the Secret was read and holds a usable key (reasons `SecretRead`,
    /// `SecretNotFound`, `SecretMalformed`, `SecretUnreadable`, `EndpointInvalid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The Secret's resourceVersion whose key is in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_resource_version: Option<String>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Sets a condition, keeping `lastTransitionTime` unless the status flips.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status_str = if status { "True" } else { "False" };
    let message: String = message.chars().take(1024).collect();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status_str {
            c.last_transition_time = now;
        }
        c.status = status_str.into();
        c.reason = reason.into();
        c.message = message;
        c.observed_generation = generation;
    } else {
        conditions.push(Condition {
            type_: type_.into(),
            status: status_str.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now,
        });
    }
}

/// kstatus reads abnormal-true conditions only while they are true: drop them otherwise.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_changes_only_on_flip() {
        let mut c = Vec::new();
        set_condition(&mut c, "Ready", false, "A", "m", Some(1));
        let t0 = c[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set_condition(&mut c, "Ready", false, "B", "m2", Some(2));
        assert_eq!(c[0].last_transition_time, t0);
        assert_eq!(
            (c[0].reason.as_str(), c[0].observed_generation),
            ("B", Some(2))
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        set_condition(&mut c, "Ready", true, "C", "", Some(2));
        assert_ne!(c[0].last_transition_time, t0);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn recorded_instance_wins_over_spec() {
        let mut r = EcsInstance::new(
            "x",
            EcsInstanceSpec {
                instance_id: Some("i-spec".into()),
                ..Default::default()
            },
        );
        assert_eq!(r.owned_instance_id(), Some("i-spec"));
        r.status = Some(EcsInstanceStatus {
            instance_id: Some("i-recorded".into()),
            ..Default::default()
        });
        assert_eq!(r.owned_instance_id(), Some("i-recorded"));
    }
}
