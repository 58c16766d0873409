//! Wire types of the ECS OpenAPI (Version 2020-04-01): the response envelope, per-action
//! results, and request builders that flatten to query parameters as the official SDK does
//! (1-based `Name.N`, nested `Name.N.Field.M`, lowercase booleans, unset fields omitted).

use serde::{Deserialize, Deserializer, Serialize};

/// `null` reads as the empty value: the API and both official SDKs send and accept `null`
/// for an empty list, object or string (Terraform guards `Result.Instances == nil`), and one
/// `null` must not fail a whole answer.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub const API_VERSION: &str = "2020-04-01";
pub const SERVICE: &str = "ecs";

/// The ECS actions this project speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    RunInstances,
    DescribeInstances,
    DeleteInstances,
    DeleteInstance,
    StopInstances,
    StartInstances,
    ModifyInstanceAttribute,
    UntagResources,
    TagResources,
    ModifyInstanceSpec,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::RunInstances,
        Action::DescribeInstances,
        Action::DeleteInstances,
        Action::DeleteInstance,
        Action::StopInstances,
        Action::StartInstances,
        Action::ModifyInstanceAttribute,
        Action::UntagResources,
        Action::TagResources,
        Action::ModifyInstanceSpec,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::RunInstances => "RunInstances",
            Action::DescribeInstances => "DescribeInstances",
            Action::DeleteInstances => "DeleteInstances",
            Action::DeleteInstance => "DeleteInstance",
            Action::StopInstances => "StopInstances",
            Action::StartInstances => "StartInstances",
            Action::ModifyInstanceAttribute => "ModifyInstanceAttribute",
            Action::UntagResources => "UntagResources",
            Action::TagResources => "TagResources",
            Action::ModifyInstanceSpec => "ModifyInstanceSpec",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Actions whose answer carries only the common parameters: a 2xx answer without
    /// `Result` (or with `"Result": null`) is their success, as both SDKs read it.
    pub fn result_optional(self) -> bool {
        matches!(
            self,
            Action::ModifyInstanceAttribute
                | Action::UntagResources
                | Action::TagResources
                | Action::DeleteInstance
        )
    }

    /// Whether the action changes state (and so takes a ClientToken).
    pub fn is_mutating(self) -> bool {
        !matches!(self, Action::DescribeInstances)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"ResponseMetadata": {...}, "Result": {...}}`
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Envelope<T> {
    pub response_metadata: Option<ResponseMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ResponseMetadata {
    #[serde(default, deserialize_with = "null_as_default")]
    pub request_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub action: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub service: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiErrorBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ApiErrorBody {
    #[serde(rename = "CodeN", skip_serializing_if = "Option::is_none")]
    pub code_n: Option<i64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub code: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: String,
}

/// One entry of `OperationDetails`: absent or null `Error` means this instance succeeded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct OperationDetail {
    #[serde(default, deserialize_with = "null_as_default")]
    pub instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct OperationError {
    #[serde(default, deserialize_with = "null_as_default")]
    pub code: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct OperationDetailsResult {
    #[serde(default, deserialize_with = "null_as_default")]
    pub operation_details: Vec<OperationDetail>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RunInstancesResult {
    #[serde(default, deserialize_with = "null_as_default")]
    pub instance_ids: Vec<String>,
}

/// `Result: {}` of single-instance actions; tolerate any fields.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct EmptyResult {}

/// ModifyInstanceSpec's answer (Go SDK `ModifyInstanceSpecOutput`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ModifyInstanceSpecResult {
    #[serde(default, deserialize_with = "null_as_default")]
    pub instance_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub order_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstancesResult {
    #[serde(default, deserialize_with = "null_as_default")]
    pub instances: Vec<Instance>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub total_count: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    #[serde(default, deserialize_with = "null_as_default")]
    pub key: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInterface {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_ip_address: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub security_group_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct EipAddress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}

/// `Result.Instances[].Volumes[]` of DescribeInstances (Go SDK
/// `VolumeForDescribeInstancesOutput`: only `VolumeId`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeRef {
    #[serde(default, deserialize_with = "null_as_default")]
    pub volume_id: String,
}

/// `Result.Instances[]` of DescribeInstances (the fields the operator reads).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    #[serde(default, deserialize_with = "null_as_default")]
    pub instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pair_name: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eip_address: Option<EipAddress>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<Tag>,
    /// The VM's disks, as DescribeInstances gives them: IDs only, the system disk first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub volumes: Vec<VolumeRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_protection: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_charge_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<String>,
}

impl Instance {
    /// The primary interface's address: the interface whose `Type` is `primary` (the order
    /// of interfaces is not documented). Only an answer that types no interface at all
    /// falls back to the first one.
    pub fn primary_ip(&self) -> Option<&str> {
        let nics = &self.network_interfaces;
        let primary = if nics.iter().any(|n| n.r#type.is_some()) {
            nics.iter().find(|n| n.r#type.as_deref() == Some("primary"))
        } else {
            nics.first()
        };
        primary?
            .primary_ip_address
            .as_deref()
            .filter(|s| !s.is_empty())
    }
    pub fn public_ip(&self) -> Option<&str> {
        self.eip_address
            .as_ref()?
            .ip_address
            .as_deref()
            .filter(|s| !s.is_empty())
    }
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }
}

/// Builds flat query parameters the way the SDK flattens request structs.
#[derive(Debug, Default, Clone)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set(&mut self, key: impl Into<String>, value: impl ToString) -> &mut Self {
        self.0.push((key.into(), value.to_string()));
        self
    }
    pub fn opt(&mut self, key: &str, value: Option<impl ToString>) -> &mut Self {
        if let Some(v) = value {
            self.set(key, v);
        }
        self
    }
    /// `Name.1=a&Name.2=b`
    pub fn list<S: std::fmt::Display>(&mut self, prefix: &str, values: &[S]) -> &mut Self {
        for (i, v) in values.iter().enumerate() {
            self.set(format!("{prefix}.{}", i + 1), v);
        }
        self
    }
    pub fn into_vec(self) -> Vec<(String, String)> {
        self.0
    }
}

/// DescribeInstances filters (the ones the operator uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescribeQuery {
    pub instance_ids: Vec<String>,
    /// `TagFilters.N.Key` with `TagFilters.N.Values.M`.
    pub tag_filters: Vec<(String, Vec<String>)>,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

impl DescribeQuery {
    pub fn to_params(&self) -> Params {
        let mut p = Params::new();
        p.list("InstanceIds", &self.instance_ids);
        for (i, (k, vals)) in self.tag_filters.iter().enumerate() {
            p.set(format!("TagFilters.{}.Key", i + 1), k);
            p.list(&format!("TagFilters.{}.Values", i + 1), vals);
        }
        p.opt("MaxResults", self.max_results);
        p.opt(
            "NextToken",
            self.next_token.as_deref().filter(|t| !t.is_empty()),
        );
        p
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub volume_type: Option<String>,
    pub size: u32,
    pub delete_with_instance: Option<bool>,
}

/// RunInstances parameters. Network settings are nested under `NetworkInterfaces.1.*`:
/// the API has no top-level SubnetId or SecurityGroupIds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunInstancesRequest {
    pub zone_id: String,
    pub image_id: String,
    pub instance_type_id: String,
    pub instance_name: String,
    pub subnet_id: String,
    pub security_group_ids: Vec<String>,
    /// Sent as `Volumes.1`: the system disk is always the first volume.
    pub system_volume: Option<VolumeSpec>,
    /// Sent from `Volumes.2` on, whether or not a system volume is given, so a data disk
    /// can never become the system disk.
    pub data_volumes: Vec<VolumeSpec>,
    pub key_pair_name: Option<String>,
    pub host_name: Option<String>,
    pub description: Option<String>,
    pub user_data: Option<String>,
    pub instance_charge_type: Option<String>,
    pub deletion_protection: Option<bool>,
    pub tags: Vec<Tag>,
    pub client_token: String,
}

impl RunInstancesRequest {
    pub fn to_params(&self) -> Params {
        let mut p = Params::new();
        p.set("ZoneId", &self.zone_id)
            .set("ImageId", &self.image_id)
            .set("InstanceTypeId", &self.instance_type_id)
            .set("InstanceName", &self.instance_name)
            .set("Count", 1)
            .set("NetworkInterfaces.1.SubnetId", &self.subnet_id)
            .list(
                "NetworkInterfaces.1.SecurityGroupIds",
                &self.security_group_ids,
            );
        let numbered = self.system_volume.iter().map(|v| (1, v)).chain(
            self.data_volumes
                .iter()
                .enumerate()
                .map(|(i, v)| (i + 2, v)),
        );
        for (n, v) in numbered {
            p.opt(&format!("Volumes.{n}.VolumeType"), v.volume_type.as_deref())
                .set(format!("Volumes.{n}.Size"), v.size)
                .opt(
                    &format!("Volumes.{n}.DeleteWithInstance"),
                    v.delete_with_instance,
                );
        }
        for (i, t) in self.tags.iter().enumerate() {
            p.set(format!("Tags.{}.Key", i + 1), &t.key)
                .set(format!("Tags.{}.Value", i + 1), &t.value);
        }
        p.opt("KeyPairName", self.key_pair_name.as_deref())
            .opt("HostName", self.host_name.as_deref())
            .opt("Description", self.description.as_deref())
            .opt("UserData", self.user_data.as_deref())
            .opt("InstanceChargeType", self.instance_charge_type.as_deref())
            .opt("DeletionProtection", self.deletion_protection)
            .set("ClientToken", &self.client_token);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_instances_flattens_like_the_sdk() {
        let r = RunInstancesRequest {
            zone_id: "cn-beijing-a".into(),
            image_id: "image-abc".into(),
            instance_type_id: "ecs.g1.large".into(),
            instance_name: "k8s-node".into(),
            subnet_id: "subnet-1".into(),
            security_group_ids: vec!["sg-1".into(), "sg-2".into()],
            system_volume: Some(VolumeSpec {
                volume_type: Some("ESSD_PL0".into()),
                size: 40,
                delete_with_instance: None,
            }),
            tags: vec![Tag {
                key: "owner".into(),
                value: "my operator".into(),
            }],
            deletion_protection: Some(true),
            client_token: "tok-3".into(),
            ..Default::default()
        };
        let q = crate::signer::canonical_query(&r.to_params().into_vec());
        assert_eq!(
            q,
            "ClientToken=tok-3&Count=1&DeletionProtection=true&ImageId=image-abc&InstanceName=k8s-node&InstanceTypeId=ecs.g1.large&NetworkInterfaces.1.SecurityGroupIds.1=sg-1&NetworkInterfaces.1.SecurityGroupIds.2=sg-2&NetworkInterfaces.1.SubnetId=subnet-1&Tags.1.Key=owner&Tags.1.Value=my%20operator&Volumes.1.Size=40&Volumes.1.VolumeType=ESSD_PL0&ZoneId=cn-beijing-a"
        );
    }

    /// Data disks start at `Volumes.2`, with or without a system volume: the first data
    /// disk used to be sent as `Volumes.1`, the system disk, when none was given.
    #[test]
    fn data_volumes_never_take_the_system_disks_place() {
        let data = |size| VolumeSpec {
            volume_type: Some("ESSD_PL0".into()),
            size,
            delete_with_instance: Some(true),
        };
        let mut r = RunInstancesRequest {
            data_volumes: vec![data(100), data(200)],
            ..Default::default()
        };
        let sizes = |r: &RunInstancesRequest| -> Vec<(String, String)> {
            r.to_params()
                .into_vec()
                .into_iter()
                .filter(|(k, _)| k.starts_with("Volumes.") && k.ends_with(".Size"))
                .collect()
        };
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            sizes(&r),
            pairs(&[("Volumes.2.Size", "100"), ("Volumes.3.Size", "200")])
        );
        r.system_volume = Some(data(40));
        assert_eq!(
            sizes(&r),
            pairs(&[
                ("Volumes.1.Size", "40"),
                ("Volumes.2.Size", "100"),
                ("Volumes.3.Size", "200")
            ])
        );
    }

    #[test]
    fn describe_flattens_tag_filters() {
        let q = DescribeQuery {
            instance_ids: vec!["i-abc".into(), "i-def".into()],
            tag_filters: vec![("owner".into(), vec!["a".into(), "b".into()])],
            max_results: Some(50),
            next_token: Some("tok".into()),
        };
        let got = crate::signer::canonical_query(&q.to_params().into_vec());
        // Same parameters the official SDK sent (shared/volcengine/sdk_raw_requests.txt).
        assert_eq!(got, "InstanceIds.1=i-abc&InstanceIds.2=i-def&MaxResults=50&NextToken=tok&TagFilters.1.Key=owner&TagFilters.1.Values.1=a&TagFilters.1.Values.2=b");
    }

    #[test]
    fn parses_partial_failure_operation_details() {
        let body = r#"{"ResponseMetadata":{"RequestId":"r1","Action":"DeleteInstances","Version":"2020-04-01","Service":"ecs","Region":"cn-beijing"},
            "Result":{"OperationDetails":[{"InstanceId":"i-abc","Error":null},{"InstanceId":"i-def","Error":{"Code":"InvalidInstance.NotFound","Message":"demo"}},{"InstanceId":"i-x"}]}}"#;
        let e: Envelope<OperationDetailsResult> = serde_json::from_str(body).unwrap();
        let d = e.result.unwrap().operation_details;
        assert_eq!(d.len(), 3);
        assert!(d[0].error.is_none() && d[2].error.is_none());
        assert_eq!(
            d[1].error.as_ref().unwrap().code,
            "InvalidInstance.NotFound"
        );
    }

    /// `null` wherever the real API may send it reads as empty; one `null` used to fail
    /// the whole answer.
    #[test]
    fn null_reads_as_empty_everywhere() {
        let body = r#"{"ResponseMetadata":{"RequestId":"r","Action":null,"Version":null,"Service":null,"Region":null,"Error":null},
            "Result":{"Instances":[{"InstanceId":"i-abc","Status":null,"Tags":null,"NetworkInterfaces":null,"EipAddress":null,
            "InstanceName":null,"DeletionProtection":null,"CreatedAt":null}],"NextToken":null,"TotalCount":null}}"#;
        let e: Envelope<DescribeInstancesResult> = serde_json::from_str(body).unwrap();
        let i = &e.result.unwrap().instances[0];
        assert_eq!((i.status.as_str(), i.tags.len()), ("", 0));
        assert_eq!((i.primary_ip(), i.public_ip()), (None, None));
        let nic = r#"{"InstanceId":"i-abc","NetworkInterfaces":[{"SecurityGroupIds":null,"Type":null,"PrimaryIpAddress":null}],"Tags":[{"Key":"k","Value":null}]}"#;
        let i: Instance = serde_json::from_str(nic).unwrap();
        assert_eq!(i.tag("k"), Some(""));
        for empty in [
            r#"{"Instances":null}"#,
            r#"{"OperationDetails":null}"#,
            r#"{"InstanceIds":null}"#,
        ] {
            let _: DescribeInstancesResult = serde_json::from_str(empty).unwrap();
            let d: OperationDetailsResult = serde_json::from_str(empty).unwrap();
            assert!(d.operation_details.is_empty());
            let r: RunInstancesResult = serde_json::from_str(empty).unwrap();
            assert!(r.instance_ids.is_empty());
        }
        let d: OperationDetailsResult = serde_json::from_str(
            r#"{"OperationDetails":[{"InstanceId":null,"Error":{"Code":null,"Message":null}}]}"#,
        )
        .unwrap();
        assert_eq!(d.operation_details[0].instance_id, "");
    }

    /// The primary address is the `primary` interface's, wherever it is in the list.
    #[test]
    fn primary_ip_is_the_primary_interfaces() {
        let nic = |t: Option<&str>, ip: &str| NetworkInterface {
            r#type: t.map(str::to_string),
            primary_ip_address: Some(ip.into()),
            ..Default::default()
        };
        let mut i = Instance {
            network_interfaces: vec![
                nic(Some("secondary"), "10.0.0.9"),
                nic(Some("primary"), "10.0.0.2"),
            ],
            ..Default::default()
        };
        assert_eq!(i.primary_ip(), Some("10.0.0.2"));
        i.network_interfaces = vec![nic(Some("secondary"), "10.0.0.9")];
        assert_eq!(i.primary_ip(), None);
        i.network_interfaces = vec![nic(None, "10.0.0.3"), nic(None, "10.0.0.4")];
        assert_eq!(i.primary_ip(), Some("10.0.0.3"));
        i.eip_address = Some(EipAddress {
            ip_address: Some(String::new()),
            ..Default::default()
        });
        assert_eq!(i.public_ip(), None);
    }

    #[test]
    fn parses_error_envelope_with_code_n() {
        let body = r#"{"ResponseMetadata":{"RequestId":"r2","Action":"DeleteInstances","Version":"2020-04-01","Service":"ecs","Region":"cn-beijing","Error":{"CodeN":100010,"Code":"SignatureDoesNotMatch","Message":"no"}}}"#;
        let e: Envelope<OperationDetailsResult> = serde_json::from_str(body).unwrap();
        assert!(e.result.is_none());
        let err = e.response_metadata.unwrap().error.unwrap();
        assert_eq!(
            (err.code.as_str(), err.code_n),
            ("SignatureDoesNotMatch", Some(100010))
        );
    }

    #[test]
    fn parses_describe_and_run_results() {
        let body = r#"{"ResponseMetadata":{"RequestId":"r3"},"Result":{"Instances":[{"InstanceId":"i-abc","Status":"RUNNING","Tags":[{"Key":"k","Value":"v"}],"NetworkInterfaces":[{"PrimaryIpAddress":"10.0.0.2","SecurityGroupIds":["sg-1"]}],"EipAddress":{"IpAddress":"1.2.3.4"},"DeletionProtection":false,"SomethingNew":1}],"NextToken":"","TotalCount":1}}"#;
        let e: Envelope<DescribeInstancesResult> = serde_json::from_str(body).unwrap();
        let r = e.result.unwrap();
        assert_eq!(r.instances[0].status, "RUNNING");
        assert_eq!(r.instances[0].primary_ip(), Some("10.0.0.2"));
        assert_eq!(r.instances[0].public_ip(), Some("1.2.3.4"));
        assert_eq!(r.instances[0].tag("k"), Some("v"));
        let e: Envelope<RunInstancesResult> = serde_json::from_str(
            r#"{"ResponseMetadata":{"RequestId":"r"},"Result":{"InstanceIds":["i-new1"]}}"#,
        )
        .unwrap();
        assert_eq!(e.result.unwrap().instance_ids, vec!["i-new1"]);
        let e: Envelope<EmptyResult> =
            serde_json::from_str(r#"{"ResponseMetadata":{"RequestId":"r"},"Result":{}}"#).unwrap();
        assert!(e.result.is_some());
    }
}
