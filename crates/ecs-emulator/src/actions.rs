//! The ECS actions: request validation, effects on the store, and results in the real shapes.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::Value;

use volcengine_ecs::model::{
    Action, DescribeInstancesResult, EmptyResult, Instance, ModifyInstanceSpecResult,
    NetworkInterface, OperationDetail, OperationDetailsResult, OperationError, RunInstancesResult,
    Tag, VolumeRef,
};

use super::faults::DetailOverrides;
use super::params::Params;
use super::state::{self, Delays, Deletion, InstanceRec, Store};
use super::wire::{new_resource_id, rfc3339, ApiError};

/// Per-request facts the actions need.
pub(crate) struct Ctx<'a> {
    pub now: Timestamp,
    pub region: &'a str,
    pub request_id: &'a str,
    pub client_token: Option<&'a str>,
    pub delays: Delays,
    /// How long a new instance stays invisible to the real API (eventual consistency).
    pub visibility_lag_ms: u64,
    /// Injected `OperationDetails` falsifications for batch actions.
    pub details: &'a DetailOverrides,
    /// Most instances a TagFilters query resolves (0 = no limit).
    pub tag_filter_limit: usize,
    /// Injected fault: the deletions this call accepts are rolled back after DELETING.
    pub revert_deletions: bool,
    /// Whether an instance ID is in use in another account (IDs are global; the store is
    /// the calling account's only).
    pub id_taken: &'a dyn Fn(&str) -> bool,
    /// Instance types ModifyInstanceSpec refuses as unavailable (admin config
    /// `unavailable_instance_types`).
    pub unavailable_types: &'a [String],
}

/// `Ctx::id_taken` when there are no other accounts.
#[cfg(test)]
pub(crate) fn no_other_ids(_: &str) -> bool {
    false
}

/// A successful call: the `Result` object and, for batch actions, per-instance codes.
#[derive(Debug)]
pub(crate) struct Done {
    pub result: Value,
    pub instance_codes: Vec<String>,
}

const MAX_IDS: usize = 100;
/// TagResources/UntagResources: `ResourceIds.N`, N 1-50; `Tags.N`/`TagKeys.N`, N 1-20; a
/// resource carries at most 50 tags (ECS TagResources and UntagResources, docs 6396/1394798
/// and 6396/1394799).
const MAX_TAG_RESOURCES: usize = 50;
const MAX_TAGS_PER_CALL: usize = 20;
const MAX_TAGS_PER_RESOURCE: usize = 50;

fn limit_exceeded(what: &str) -> ApiError {
    ApiError::new(
        400,
        format!("LimitExceeded.Maximum{what}"),
        format!("You've reached the limit on the number of {what} that you can set."),
    )
}

/// A tag key as documented: 1-128 characters, letters, digits, spaces and `_ . : / = + - @`,
/// not starting with `volc:` or `sys:` in any case, no leading or trailing space.
fn valid_tag_key(k: &str) -> bool {
    let lower = k.to_ascii_lowercase();
    (1..=128).contains(&k.chars().count())
        && !lower.starts_with("volc:")
        && !lower.starts_with("sys:")
        && k.trim() == k
        && k.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c))
}

fn tag_key_malformed() -> ApiError {
    ApiError::new(
        400,
        "InvalidTagKey.Malformed",
        "The specified TagKey is malformed.",
    )
}

fn done<T: serde::Serialize>(result: T) -> Done {
    Done {
        result: serde_json::to_value(result).unwrap_or(Value::Null),
        instance_codes: Vec::new(),
    }
}

pub(crate) fn dispatch(
    store: &mut Store,
    ctx: &Ctx<'_>,
    action: Action,
    p: &Params,
) -> Result<Done, ApiError> {
    match action {
        Action::RunInstances => run_instances(store, ctx, p),
        Action::DescribeInstances => describe_instances(store, ctx, p),
        Action::DeleteInstances => batch(store, ctx, p, action, delete_one),
        Action::DeleteInstance => delete_instance(store, ctx, p),
        Action::StopInstances => {
            stopped_mode(p)?;
            p.bool("ForceStop")?;
            batch(store, ctx, p, action, stop_one)
        }
        Action::StartInstances => batch(store, ctx, p, action, start_one),
        Action::ModifyInstanceAttribute => modify(store, ctx, p),
        Action::UntagResources => untag(store, ctx, p),
        Action::TagResources => tag(store, ctx, p),
        Action::ModifyInstanceSpec => modify_spec(store, ctx, p),
    }
}

fn dry_run(p: &Params) -> Result<(), ApiError> {
    if p.bool("DryRun")? == Some(true) {
        return Err(ApiError::new(
            400,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
    Ok(())
}

/// 1-128 characters, starting with a letter (Chinese included); letters, digits, `_-.`.
fn valid_instance_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(char::is_alphabetic)
        && name.chars().count() <= 128
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn ids(p: &Params) -> Result<Vec<String>, ApiError> {
    let ids = p.list("InstanceIds");
    if ids.is_empty() {
        return Err(ApiError::missing("InstanceIds"));
    }
    if ids.len() > MAX_IDS {
        return Err(ApiError::invalid_parameter(format!(
            "InstanceIds accepts at most {MAX_IDS} ids, got {}.",
            ids.len()
        )));
    }
    Ok(ids)
}

fn run_instances(store: &mut Store, ctx: &Ctx<'_>, p: &Params) -> Result<Done, ApiError> {
    let zone = p.require("ZoneId")?;
    let image = p.require("ImageId")?;
    let itype = p.require("InstanceTypeId")?;
    let name = p.require("InstanceName")?;
    if !valid_instance_name(name) {
        return Err(ApiError::malformed("InstanceName"));
    }
    // Zones are named after their region (cn-beijing-a, ap-southeast-1a).
    if !(zone.starts_with(ctx.region) && zone.len() > ctx.region.len()) {
        return Err(ApiError::new(
            404,
            "InvalidZoneId.NotFound",
            format!("The zone {zone} does not exist in region {}.", ctx.region),
        ));
    }
    let count = match p.u32("Count")? {
        None | Some(0) => 1,
        Some(n @ 1..=100) => n,
        Some(_) => return Err(ApiError::malformed("Count")),
    };
    let protection = p.bool("DeletionProtection")?.unwrap_or(false);
    let charge = p.non_empty("InstanceChargeType").unwrap_or("PostPaid");
    let expired_at = match charge {
        "PostPaid" => None,
        "PrePaid" => Some(prepaid_expiry(p, ctx.now)?),
        _ => return Err(ApiError::malformed("InstanceChargeType")),
    };
    check_volumes(p)?;
    let tags: Vec<Tag> = p
        .groups("Tags")
        .into_iter()
        .filter_map(|g| {
            let key = g.non_empty("Key")?.to_string();
            let value = g.get("Value").unwrap_or("").to_string();
            Some(Tag { key, value })
        })
        .collect();
    if tags.len() > MAX_TAGS_PER_CALL {
        return Err(limit_exceeded("Tags"));
    }
    if !tags.iter().all(|t| valid_tag_key(&t.key)) {
        return Err(tag_key_malformed());
    }
    check_user_data(p)?;
    let nic = p
        .groups("NetworkInterfaces")
        .into_iter()
        .next()
        .unwrap_or_default();
    // Both are `required:"true"` in the Go SDK's RunInstancesInput.
    nic.require("SubnetId")
        .map_err(|_| ApiError::missing("NetworkInterfaces.1.SubnetId"))?;
    if nic.list("SecurityGroupIds").is_empty() {
        return Err(ApiError::missing("NetworkInterfaces.1.SecurityGroupIds"));
    }
    dry_run(p)?;

    let mut instance_ids = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let id = loop {
            let id = new_resource_id("i");
            if !store.contains(&id) && !(ctx.id_taken)(&id) {
                break id;
            }
        };
        let ip = match nic.non_empty("PrimaryIpAddress") {
            Some(ip) if count == 1 => ip.to_string(),
            _ => store.next_private_ip(),
        };
        let inst = Instance {
            instance_id: id.clone(),
            instance_name: Some(name.to_string()),
            description: p.non_empty("Description").map(str::to_string),
            status: state::CREATING.to_string(),
            zone_id: Some(zone.to_string()),
            instance_type_id: Some(itype.to_string()),
            image_id: Some(image.to_string()),
            host_name: p
                .non_empty("HostName")
                .or_else(|| p.non_empty("Hostname"))
                .map(str::to_string),
            key_pair_name: p.non_empty("KeyPairName").map(str::to_string),
            network_interfaces: vec![NetworkInterface {
                network_interface_id: Some(new_resource_id("eni")),
                subnet_id: nic.non_empty("SubnetId").map(str::to_string),
                primary_ip_address: Some(ip),
                security_group_ids: nic.list("SecurityGroupIds"),
                r#type: Some("primary".into()),
                ..Default::default()
            }],
            tags: tags.clone(),
            // One disk per `Volumes.N`, in order: `Volumes.1`, the system disk, first.
            volumes: p
                .groups("Volumes")
                .iter()
                .map(|_| VolumeRef {
                    volume_id: new_resource_id("vol"),
                })
                .collect(),
            deletion_protection: Some(protection),
            instance_charge_type: Some(charge.to_string()),
            created_at: Some(rfc3339(ctx.now)),
            updated_at: Some(rfc3339(ctx.now)),
            expired_at: expired_at.map(rfc3339),
            ..Default::default()
        };
        store.insert(InstanceRec {
            region: ctx.region.to_string(),
            inst,
            due: None,
            visible_at: (ctx.visibility_lag_ms > 0)
                .then(|| state::after(ctx.now, ctx.visibility_lag_ms)),
            revert_to: None,
        });
        store.enter(&id, state::CREATING, &ctx.delays, ctx.now);
        instance_ids.push(id);
    }
    Ok(done(RunInstancesResult { instance_ids }))
}

/// `Volumes.N.Size` is required (Go SDK); `Volumes.1` is the system disk, whose size range
/// depends on its type (Terraform's `system_volume_size`: ESSD_PL0 and ESSD_FlexPL 20-2048,
/// PTSSD 10-500; an unknown type gets the ESSD range).
fn check_volumes(p: &Params) -> Result<(), ApiError> {
    for (i, v) in p.groups("Volumes").into_iter().enumerate() {
        let size = v
            .u32("Size")?
            .ok_or_else(|| ApiError::missing(&format!("Volumes.{}.Size", i + 1)))?;
        if i == 0 {
            let range = match v.get("VolumeType") {
                Some("PTSSD") => 10..=500,
                _ => 20..=2048,
            };
            if !range.contains(&size) {
                return Err(ApiError::new(
                    400,
                    "InvalidSystemVolumeSize.Malformed",
                    format!("The system disk size {size} is outside {range:?} GiB for its type."),
                ));
            }
        }
    }
    Ok(())
}

/// UserData: base64 of at most 16 KiB (documented for launch templates and the console).
fn check_user_data(p: &Params) -> Result<(), ApiError> {
    use base64::Engine;
    let Some(ud) = p.non_empty("UserData") else {
        return Ok(());
    };
    match base64::engine::general_purpose::STANDARD.decode(ud) {
        Ok(raw) if raw.len() <= 16 * 1024 => Ok(()),
        _ => Err(ApiError::malformed("UserData")),
    }
}

fn prepaid_expiry(p: &Params, now: Timestamp) -> Result<Timestamp, ApiError> {
    let period = i64::from(p.u32("Period")?.unwrap_or(1).max(1));
    let days = match p.non_empty("PeriodUnit").unwrap_or("Month") {
        "Month" => 30,
        "Year" => 365,
        _ => return Err(ApiError::malformed("PeriodUnit")),
    };
    Ok(now
        .checked_add(jiff::SignedDuration::from_hours(24 * days * period))
        .unwrap_or(Timestamp::MAX))
}

/// DescribeInstances filters; every given filter must match.
struct Filter {
    status: Option<String>,
    zone: Option<String>,
    charge: Option<String>,
    name: Option<String>,
    tags: Vec<(String, Vec<String>)>,
}

impl Filter {
    fn parse(p: &Params) -> Self {
        let own = |k: &str| p.non_empty(k).map(str::to_string);
        Self {
            status: own("Status"),
            zone: own("ZoneId"),
            charge: own("InstanceChargeType"),
            name: own("InstanceName"),
            tags: p
                .groups("TagFilters")
                .into_iter()
                .filter_map(|g| Some((g.non_empty("Key")?.to_string(), g.list("Values"))))
                .collect(),
        }
    }

    fn matches(&self, region: &str, r: &InstanceRec) -> bool {
        let i = &r.inst;
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        r.region == region
            && eq(&self.status, Some(&i.status))
            && eq(&self.zone, i.zone_id.as_deref())
            && eq(&self.charge, i.instance_charge_type.as_deref())
            && self.name.as_deref().is_none_or(|n| {
                i.instance_name
                    .as_deref()
                    .is_some_and(|have| have.contains(n))
            })
            && self.tags.iter().all(|(key, values)| {
                i.tags
                    .iter()
                    .any(|t| t.key == *key && (values.is_empty() || values.contains(&t.value)))
            })
    }
}

fn describe_instances(store: &mut Store, ctx: &Ctx<'_>, p: &Params) -> Result<Done, ApiError> {
    let wanted = p.list("InstanceIds");
    if wanted.len() > MAX_IDS {
        return Err(ApiError::invalid_parameter(format!(
            "InstanceIds accepts at most {MAX_IDS} ids."
        )));
    }
    let max = match p.u32("MaxResults")? {
        None => 10,
        Some(n @ 1..=100) => n as usize,
        Some(_) => return Err(ApiError::malformed("MaxResults")),
    };
    // NextToken is the hex of the last id returned: ids are the stable order.
    let after = p
        .non_empty("NextToken")
        .map(|t| {
            hex::decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::malformed("NextToken"))
        })
        .transpose()?;
    let filter = Filter::parse(p);
    // With TagFilters only the first `limit` matches (in id order) exist for this query.
    let limit = match (filter.tags.is_empty(), ctx.tag_filter_limit) {
        (false, n) if n > 0 => n,
        _ => usize::MAX,
    };
    let mut total = 0usize;
    let mut page: Vec<Instance> = Vec::new();
    let mut more = false;
    let mut take = |r: &InstanceRec| {
        if total >= limit || !r.visible(ctx.now) || !filter.matches(ctx.region, r) {
            return;
        }
        total += 1;
        if after
            .as_deref()
            .is_some_and(|a| r.inst.instance_id.as_str() <= a)
        {
            return;
        }
        if page.len() < max {
            page.push(r.inst.clone());
        } else {
            more = true;
        }
    };
    if wanted.is_empty() {
        store.settled(ctx.now).for_each(&mut take);
    } else {
        let wanted: BTreeSet<String> = wanted.into_iter().collect();
        for id in &wanted {
            if let Some(r) = store.get_mut(id, ctx.now) {
                take(r);
            }
        }
    }
    let next_token = match page.last() {
        Some(last) if more => hex::encode(&last.instance_id),
        _ => String::new(),
    };
    Ok(done(DescribeInstancesResult {
        instances: page,
        next_token: Some(next_token),
        total_count: Some(i64::try_from(total).unwrap_or(i64::MAX)),
    }))
}

/// A live instance of the caller's region (others are invisible, as in the real cloud).
fn find<'s>(
    store: &'s mut Store,
    ctx: &Ctx<'_>,
    id: &str,
) -> Result<&'s mut InstanceRec, ApiError> {
    store
        .get_mut(id, ctx.now)
        .filter(|r| r.region == ctx.region && r.visible(ctx.now))
        .ok_or_else(ApiError::not_found)
}

fn check_deletable(store: &mut Store, ctx: &Ctx<'_>, id: &str) -> Result<(), ApiError> {
    let now = ctx.now;
    let r = find(store, ctx, id)?;
    if !state::is_deletable(&r.inst.status) {
        return Err(ApiError::bad_status());
    }
    if r.inst.deletion_protection == Some(true) {
        return Err(ApiError::new(
            400,
            "OperationDenied.DeletionProtection",
            "The instance has deletion protection enabled; disable it with ModifyInstanceAttribute first.",
        ));
    }
    if r.prepaid_unexpired(now) {
        return Err(ApiError::new(
            400,
            "InvalidChargeType",
            "A PrePaid instance can only be deleted after it expires.",
        ));
    }
    Ok(())
}

fn delete_one(store: &mut Store, ctx: &Ctx<'_>, id: &str, action: Action) -> Result<(), ApiError> {
    check_deletable(store, ctx, id)?;
    let owner_uid = find(store, ctx, id)?
        .inst
        .tags
        .iter()
        .find(|t| t.key == "ecs.volcengine.io/uid")
        .map(|t| t.value.clone());
    if ctx.revert_deletions {
        let back = find(store, ctx, id)?.inst.status.clone();
        if let Some(r) = store.get_mut(id, ctx.now) {
            r.revert_to = Some(back);
        }
    }
    store.record_deletion(Deletion {
        reverted: ctx.revert_deletions,
        instance_id: id.to_string(),
        region: ctx.region.to_string(),
        time: rfc3339(ctx.now),
        at_ms: ctx.now.as_millisecond(),
        owner_uid,
        action: action.as_str().to_string(),
        client_token: ctx.client_token.map(str::to_string),
        request_id: ctx.request_id.to_string(),
    });
    store.enter(id, state::DELETING, &ctx.delays, ctx.now);
    Ok(())
}

fn stop_one(store: &mut Store, ctx: &Ctx<'_>, id: &str, _: Action) -> Result<(), ApiError> {
    if find(store, ctx, id)?.inst.status != state::RUNNING {
        return Err(ApiError::bad_status());
    }
    store.enter(id, state::STOPPING, &ctx.delays, ctx.now);
    Ok(())
}

fn start_one(store: &mut Store, ctx: &Ctx<'_>, id: &str, _: Action) -> Result<(), ApiError> {
    if find(store, ctx, id)?.inst.status != state::STOPPED {
        return Err(ApiError::bad_status());
    }
    store.enter(id, state::STARTING, &ctx.delays, ctx.now);
    Ok(())
}

type PerInstance = fn(&mut Store, &Ctx<'_>, &str, Action) -> Result<(), ApiError>;

/// Batch actions answer 200 with one OperationDetail per requested id, in request order.
fn batch(
    store: &mut Store,
    ctx: &Ctx<'_>,
    p: &Params,
    action: Action,
    one: PerInstance,
) -> Result<Done, ApiError> {
    let ids = ids(p)?;
    let mut details = Vec::with_capacity(ids.len());
    let mut codes = Vec::with_capacity(ids.len());
    for id in ids {
        if ctx.details.omit.contains(&id) {
            continue;
        }
        if ctx.details.conflicting.contains(&id) {
            let busy = ApiError::bad_status();
            codes.extend(["OK".to_string(), busy.code.clone()]);
            details.push(OperationDetail {
                instance_id: id.clone(),
                error: None,
            });
            details.push(OperationDetail {
                instance_id: id,
                error: Some(OperationError {
                    code: busy.code,
                    message: busy.message,
                }),
            });
            continue;
        }
        let error = one(store, ctx, &id, action).err().map(|e| OperationError {
            code: e.code,
            message: e.message,
        });
        codes.push(
            error
                .as_ref()
                .map_or_else(|| "OK".to_string(), |e| e.code.clone()),
        );
        details.push(OperationDetail {
            instance_id: id,
            error,
        });
    }
    let mut d = done(OperationDetailsResult {
        operation_details: details,
    });
    d.instance_codes = codes;
    Ok(d)
}

fn delete_instance(store: &mut Store, ctx: &Ctx<'_>, p: &Params) -> Result<Done, ApiError> {
    let id = p.require("InstanceId")?;
    if p.bool("DryRun")? == Some(true) {
        check_deletable(store, ctx, id)?;
        dry_run(p)?;
    }
    delete_one(store, ctx, id, Action::DeleteInstance)?;
    Ok(done(EmptyResult {}))
}

fn stopped_mode(p: &Params) -> Result<(), ApiError> {
    match p.non_empty("StoppedMode") {
        None | Some("KeepCharging" | "StopCharging") => Ok(()),
        Some(_) => Err(ApiError::malformed("StoppedMode")),
    }
}

fn modify(store: &mut Store, ctx: &Ctx<'_>, p: &Params) -> Result<Done, ApiError> {
    let id = p.require("InstanceId")?;
    let protection = p.bool("DeletionProtection")?;
    let name = p.non_empty("InstanceName");
    if name.is_some_and(|n| !valid_instance_name(n)) {
        return Err(ApiError::malformed("InstanceName"));
    }
    let description = p.get("Description");
    if description.is_some_and(|d| !valid_description(d)) {
        return Err(ApiError::malformed("Description"));
    }
    let now = ctx.now;
    let r = find(store, ctx, id)?;
    if r.inst.status == state::DELETING {
        return Err(ApiError::bad_status());
    }
    if let Some(v) = protection {
        r.inst.deletion_protection = Some(v);
    }
    if let Some(n) = name {
        r.inst.instance_name = Some(n.to_string());
    }
    // An empty Description clears it (doc 92110); an absent one keeps it.
    if let Some(d) = description {
        r.inst.description = Some(d.to_string());
    }
    r.inst.updated_at = Some(rfc3339(now));
    Ok(done(EmptyResult {}))
}

/// An instance description as ModifyInstanceAttribute documents it (docs 6396/92110, and
/// RunInstances 6396/76275 alike): empty (clears it), or starting with a letter (Chinese
/// included), then letters, digits, `. _ - =`, space, `,`, `，` and `。`; at most 255
/// characters.
fn valid_description(d: &str) -> bool {
    if d.is_empty() {
        return true;
    }
    let mut chars = d.chars();
    chars.next().is_some_and(char::is_alphabetic)
        && d.chars().count() <= 255
        && chars.all(|c| {
            c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '=' | ' ' | ',' | '，' | '。')
        })
}

/// An instance type as Volcengine names them: `ecs.<family>.<size>` (`ecs.g3i.large`,
/// `ecs.t5-c1m1.large`): `ecs.` then at least two dot-separated parts of lower-case
/// letters, digits and `-`.
fn valid_instance_type(t: &str) -> bool {
    let Some(rest) = t.strip_prefix("ecs.") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// `OrderId` of ModifyInstanceSpec, shaped like the documented sample
/// (`Order7021038849342******`): `Order` and 19 digits.
fn new_order_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let digits: String = (0..19)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect();
    format!("Order{digits}")
}

/// ModifyInstanceSpec (docs 6396/76277; BytePlus ModifyInstanceSpec). Checks, in order:
/// `MissingParameter.InstanceId`; `MissingParameter.InstanceTypeId` (`InstanceType`, which
/// Terraform sends, is accepted in its place; `InstanceTypeId` wins when both are given);
/// `InvalidInstanceTypeId.Malformed` (chosen); `InvalidInstance.NotFound`;
/// `InvalidInstanceStatus` unless STOPPED (chosen: the precondition is not documented);
/// the current type again is a no-op success; `ResourceNotFound.InstanceType` for a type
/// in `unavailable_instance_types` (chosen); then `DryRunOperation` for `DryRun=true`.
fn modify_spec(store: &mut Store, ctx: &Ctx<'_>, p: &Params) -> Result<Done, ApiError> {
    let id = p.require("InstanceId")?;
    let itype = p
        .non_empty("InstanceTypeId")
        .or_else(|| p.non_empty("InstanceType"))
        .ok_or_else(|| ApiError::missing("InstanceTypeId"))?;
    if !valid_instance_type(itype) {
        return Err(ApiError::malformed("InstanceTypeId"));
    }
    // A malformed DryRun is refused before anything is looked up.
    p.bool("DryRun")?;
    let now = ctx.now;
    let r = find(store, ctx, id)?;
    if r.inst.status != state::STOPPED {
        return Err(ApiError::bad_status());
    }
    let same = r.inst.instance_type_id.as_deref() == Some(itype);
    if !same && ctx.unavailable_types.iter().any(|t| t == itype) {
        return Err(ApiError::new(
            400,
            "ResourceNotFound.InstanceType",
            format!("The instance type {itype} is not available."),
        ));
    }
    dry_run(p)?;
    if !same {
        r.inst.instance_type_id = Some(itype.to_string());
        r.inst.updated_at = Some(rfc3339(now));
    }
    Ok(done(ModifyInstanceSpecResult {
        instance_id: id.to_string(),
        order_id: new_order_id(),
    }))
}

/// The `Result` of TagResources and UntagResources: the documented sample (docs 6396/1394799)
/// and both SDKs' output models carry the RequestId inside it too.
fn tag_result(ctx: &Ctx<'_>) -> serde_json::Value {
    serde_json::json!({ "RequestId": ctx.request_id })
}

/// UntagResources for instances: all IDs must exist (checked before any change, so a
/// failed call changes nothing); keys a VM does not carry are ignored, as removing an
/// absent tag is already done.
fn untag(store: &mut Store, ctx: &Ctx<'_>, p: &Params) -> Result<Done, ApiError> {
    match p.require("ResourceType")? {
        "instance" => {}
        _ => return Err(ApiError::malformed("ResourceType")),
    }
    let ids = p.list("ResourceIds");
    let keys = p.list("TagKeys");
    if ids.is_empty() {
        return Err(ApiError::missing("ResourceIds"));
    }
    if keys.is_empty() {
        return Err(ApiError::missing("TagKeys"));
    }
    if ids.len() > MAX_TAG_RESOURCES {
        return Err(limit_exceeded("ResourceIds"));
    }
    if keys.len() > MAX_TAGS_PER_CALL {
        return Err(limit_exceeded("TagKeys"));
    }
    if !keys.iter().all(|k| valid_tag_key(k)) {
        return Err(tag_key_malformed());
    }
    for id in &ids {
        find(store, ctx, id)?;
    }
    let now = ctx.now;
    for id in &ids {
        let r = find(store, ctx, id)?;
        r.inst.tags.retain(|t| !keys.contains(&t.key));
        r.inst.updated_at = Some(rfc3339(now));
    }
    Ok(done(tag_result(ctx)))
}

/// TagResources for instances, as the SDK sends it (`ResourceIds.N`, `Tags.N.Key`,
/// `Tags.N.Value`): all IDs must exist (checked first, so a failed call changes nothing); a
/// key the VM already carries gets the new value.
fn tag(store: &mut Store, ctx: &Ctx<'_>, p: &Params) -> Result<Done, ApiError> {
    match p.require("ResourceType")? {
        "instance" => {}
        _ => return Err(ApiError::malformed("ResourceType")),
    }
    let ids = p.list("ResourceIds");
    if ids.is_empty() {
        return Err(ApiError::missing("ResourceIds"));
    }
    if ids.len() > MAX_TAG_RESOURCES {
        return Err(limit_exceeded("ResourceIds"));
    }
    let mut tags = Vec::new();
    for g in p.groups("Tags") {
        let key = g
            .non_empty("Key")
            .ok_or_else(|| ApiError::missing("Tags.N.Key"))?;
        let value = g.get("Value").unwrap_or("").to_string();
        tags.push(Tag {
            key: key.to_string(),
            value,
        });
    }
    if tags.is_empty() {
        return Err(ApiError::missing("Tags"));
    }
    if tags.len() > MAX_TAGS_PER_CALL {
        return Err(limit_exceeded("Tags"));
    }
    if !tags.iter().all(|t| valid_tag_key(&t.key)) {
        return Err(tag_key_malformed());
    }
    for id in &ids {
        let r = find(store, ctx, id)?;
        let added = tags.iter().filter(|t| r.inst.tag(&t.key).is_none()).count();
        if r.inst.tags.len() + added > MAX_TAGS_PER_RESOURCE {
            return Err(limit_exceeded("TagsPerResource"));
        }
    }
    let now = ctx.now;
    for id in &ids {
        let r = find(store, ctx, id)?;
        for t in &tags {
            r.inst.tags.retain(|have| have.key != t.key);
            r.inst.tags.push(t.clone());
        }
        r.inst.updated_at = Some(rfc3339(now));
    }
    Ok(done(tag_result(ctx)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::decode_pairs;

    fn ctx(now: Timestamp) -> Ctx<'static> {
        Ctx {
            now,
            region: "cn-beijing",
            request_id: "r",
            client_token: Some("t"),
            delays: Delays::ZERO,
            visibility_lag_ms: 0,
            details: &NO_OVERRIDES,
            tag_filter_limit: 0,
            revert_deletions: false,
            id_taken: &no_other_ids,
            unavailable_types: &[],
        }
    }

    #[test]
    fn run_instances_skips_ids_taken_in_other_accounts() {
        let mut s = Store::default();
        let asked = std::cell::RefCell::new(Vec::<String>::new());
        // The first three IDs drawn are "taken" elsewhere.
        let taken = |id: &str| {
            let mut a = asked.borrow_mut();
            a.push(id.to_string());
            a.len() <= 3
        };
        let cx = Ctx {
            id_taken: &taken,
            ..ctx(Timestamp::now())
        };
        let q = p("ZoneId=cn-beijing-a&ImageId=img&InstanceTypeId=t&InstanceName=vm&NetworkInterfaces.1.SubnetId=subnet-1&NetworkInterfaces.1.SecurityGroupIds.1=sg-1");
        let d = dispatch(&mut s, &cx, Action::RunInstances, &q).unwrap();
        let id = d.result["InstanceIds"][0].as_str().unwrap().to_string();
        let asked = asked.borrow();
        assert_eq!(asked.len(), 4, "{asked:?}");
        assert_eq!(asked[3], id, "the first ID free everywhere");
        assert!(!asked[..3].contains(&id));
    }

    static NO_OVERRIDES: DetailOverrides = DetailOverrides {
        omit: Vec::new(),
        conflicting: Vec::new(),
    };

    fn p(s: &str) -> Params {
        Params::from_pairs(decode_pairs(s.as_bytes()))
    }

    fn run(store: &mut Store, tags: &str) -> String {
        let q = format!("ZoneId=cn-beijing-a&ImageId=img&InstanceTypeId=t&InstanceName=vm&NetworkInterfaces.1.SubnetId=subnet-1&NetworkInterfaces.1.SecurityGroupIds.1=sg-1{tags}");
        let d = dispatch(store, &ctx(Timestamp::now()), Action::RunInstances, &p(&q)).unwrap();
        d.result["InstanceIds"][0].as_str().unwrap().to_string()
    }

    /// DescribeInstances lists a VM's disks by ID only (Go SDK
    /// `VolumeForDescribeInstancesOutput`), one per `Volumes.N`, the system disk first.
    #[test]
    fn describe_lists_one_volume_id_per_disk() {
        let mut s = Store::default();
        let id = run(
            &mut s,
            "&Volumes.1.Size=40&Volumes.2.Size=100&Volumes.3.Size=200",
        );
        let q = format!("InstanceIds.1={id}");
        let d = dispatch(
            &mut s,
            &ctx(Timestamp::now()),
            Action::DescribeInstances,
            &p(&q),
        );
        let vols = d.unwrap().result["Instances"][0]["Volumes"].clone();
        let ids: Vec<&str> = vols
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["VolumeId"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 3, "{vols}");
        assert!(ids.iter().all(|v| v.starts_with("vol-")), "{vols}");
    }

    /// The documented limits and required parameters, each with its code; a call that is
    /// refused changes nothing.
    #[test]
    fn documented_limits_and_required_parameters() {
        let mut s = Store::default();
        let a = run(&mut s, "");
        let code = |s: &mut Store, action: Action, q: &str| {
            dispatch(s, &ctx(Timestamp::now()), action, &p(q))
                .map(|_| "OK".to_string())
                .unwrap_or_else(|e| e.code)
        };
        let base = "ZoneId=cn-beijing-a&ImageId=img&InstanceTypeId=t&InstanceName=vm";
        let nic =
            "&NetworkInterfaces.1.SubnetId=subnet-1&NetworkInterfaces.1.SecurityGroupIds.1=sg-1";
        let run_code =
            |s: &mut Store, extra: &str| code(s, Action::RunInstances, &format!("{base}{extra}"));
        assert_eq!(
            run_code(&mut s, "&NetworkInterfaces.1.SecurityGroupIds.1=sg-1"),
            "MissingParameter.NetworkInterfaces.1.SubnetId"
        );
        assert_eq!(
            run_code(&mut s, "&NetworkInterfaces.1.SubnetId=subnet-1"),
            "MissingParameter.NetworkInterfaces.1.SecurityGroupIds"
        );
        assert_eq!(
            run_code(&mut s, &format!("{nic}&Volumes.1.VolumeType=ESSD_PL0")),
            "MissingParameter.Volumes.1.Size"
        );
        assert_eq!(
            run_code(&mut s, &format!("{nic}&Volumes.1.Size=10")),
            "InvalidSystemVolumeSize.Malformed"
        );
        assert_eq!(
            run_code(
                &mut s,
                &format!("{nic}&Volumes.1.Size=10&Volumes.1.VolumeType=PTSSD")
            ),
            "OK"
        );
        assert_eq!(
            run_code(
                &mut s,
                &format!("{nic}&Volumes.1.Size=40&Volumes.2.Size=10")
            ),
            "OK"
        );
        assert_eq!(
            run_code(&mut s, &format!("{nic}&Tags.1.Key=volc:x&Tags.1.Value=v")),
            "InvalidTagKey.Malformed"
        );
        assert_eq!(
            run_code(&mut s, &format!("{nic}&UserData=not-base64!")),
            "InvalidUserData.Malformed"
        );
        use base64::Engine;
        let big = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 16 * 1024 + 1]);
        assert_eq!(
            run_code(&mut s, &format!("{nic}&UserData={big}")),
            "InvalidUserData.Malformed"
        );
        let ok = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 16 * 1024]);
        assert_eq!(run_code(&mut s, &format!("{nic}&UserData={ok}")), "OK");

        let ids: String = (1..=51).map(|i| format!("&ResourceIds.{i}={a}")).collect();
        let keys: String = (1..=21).map(|i| format!("&TagKeys.{i}=k{i}")).collect();
        let tags: String = (1..=21)
            .map(|i| format!("&Tags.{i}.Key=k{i}&Tags.{i}.Value=v"))
            .collect();
        assert_eq!(
            code(
                &mut s,
                Action::UntagResources,
                &format!("ResourceType=instance{ids}&TagKeys.1=k")
            ),
            "LimitExceeded.MaximumResourceIds"
        );
        assert_eq!(
            code(
                &mut s,
                Action::UntagResources,
                &format!("ResourceType=instance&ResourceIds.1={a}{keys}")
            ),
            "LimitExceeded.MaximumTagKeys"
        );
        assert_eq!(
            code(
                &mut s,
                Action::UntagResources,
                &format!("ResourceType=instance&ResourceIds.1={a}&TagKeys.1=sys:x")
            ),
            "InvalidTagKey.Malformed"
        );
        assert_eq!(
            code(
                &mut s,
                Action::TagResources,
                &format!("ResourceType=instance{ids}&Tags.1.Key=k&Tags.1.Value=v")
            ),
            "LimitExceeded.MaximumResourceIds"
        );
        assert_eq!(
            code(
                &mut s,
                Action::TagResources,
                &format!("ResourceType=instance&ResourceIds.1={a}{tags}")
            ),
            "LimitExceeded.MaximumTags"
        );
        assert_eq!(
            code(
                &mut s,
                Action::TagResources,
                &format!("ResourceType=instance&ResourceIds.1={a}&Tags.1.Key=a%23b&Tags.1.Value=v")
            ),
            "InvalidTagKey.Malformed"
        );
        for batch in 0..2 {
            let twenty: String = (1..=20)
                .map(|i| format!("&Tags.{i}.Key=b{batch}k{i}&Tags.{i}.Value=v"))
                .collect();
            assert_eq!(
                code(
                    &mut s,
                    Action::TagResources,
                    &format!("ResourceType=instance&ResourceIds.1={a}{twenty}")
                ),
                "OK"
            );
        }
        let eleven: String = (1..=11)
            .map(|i| format!("&Tags.{i}.Key=c{i}&Tags.{i}.Value=v"))
            .collect();
        assert_eq!(
            code(
                &mut s,
                Action::TagResources,
                &format!("ResourceType=instance&ResourceIds.1={a}{eleven}")
            ),
            "LimitExceeded.MaximumTagsPerResource"
        );
        assert_eq!(
            code(
                &mut s,
                Action::TagResources,
                &format!(
                    "ResourceType=instance&ResourceIds.1={a}&Tags.1.Key=b0k1&Tags.1.Value=new"
                )
            ),
            "OK"
        );
    }

    #[test]
    fn untag_removes_only_named_keys_and_is_all_or_nothing() {
        let mut s = Store::default();
        let a = run(
            &mut s,
            "&Tags.1.Key=owner&Tags.1.Value=x&Tags.2.Key=env&Tags.2.Value=dev",
        );
        let untag = |s: &mut Store, q: &str| {
            dispatch(s, &ctx(Timestamp::now()), Action::UntagResources, &p(q))
        };
        let tags = |s: &mut Store, id: &str| -> Vec<String> {
            let r = s.get_mut(id, Timestamp::now()).unwrap();
            r.inst.tags.iter().map(|t| t.key.clone()).collect()
        };
        // One unknown ID: nothing changes anywhere.
        let e = untag(
            &mut s,
            &format!(
                "ResourceType=instance&ResourceIds.1={a}&ResourceIds.2=i-nope&TagKeys.1=owner"
            ),
        )
        .unwrap_err();
        assert_eq!(e.code, "InvalidInstance.NotFound");
        assert_eq!(tags(&mut s, &a), ["owner", "env"]);
        assert_eq!(
            untag(
                &mut s,
                &format!("ResourceType=disk&ResourceIds.1={a}&TagKeys.1=owner")
            )
            .unwrap_err()
            .code,
            "InvalidResourceType.Malformed"
        );
        assert_eq!(
            untag(&mut s, &format!("ResourceType=instance&ResourceIds.1={a}"))
                .unwrap_err()
                .code,
            "MissingParameter.TagKeys"
        );
        // An absent key is fine; the named one goes, the other stays.
        untag(
            &mut s,
            &format!("ResourceType=instance&ResourceIds.1={a}&TagKeys.1=owner&TagKeys.2=absent"),
        )
        .unwrap();
        assert_eq!(tags(&mut s, &a), ["env"]);
    }

    #[test]
    fn tag_adds_and_overwrites_and_is_all_or_nothing() {
        let mut s = Store::default();
        let a = run(&mut s, "&Tags.1.Key=owner&Tags.1.Value=x");
        let tag = |s: &mut Store, q: &str| {
            dispatch(s, &ctx(Timestamp::now()), Action::TagResources, &p(q))
        };
        let tags = |s: &mut Store, id: &str| -> Vec<(String, String)> {
            let r = s.get_mut(id, Timestamp::now()).unwrap();
            r.inst
                .tags
                .iter()
                .map(|t| (t.key.clone(), t.value.clone()))
                .collect()
        };
        let e = tag(
            &mut s,
            &format!("ResourceType=instance&ResourceIds.1={a}&ResourceIds.2=i-nope&Tags.1.Key=owner&Tags.1.Value=y"),
        )
        .unwrap_err();
        assert_eq!(e.code, "InvalidInstance.NotFound");
        assert_eq!(tags(&mut s, &a), [("owner".into(), "x".into())]);
        let e = tag(&mut s, &format!("ResourceType=instance&ResourceIds.1={a}")).unwrap_err();
        assert_eq!(e.code, "MissingParameter.Tags");
        tag(
            &mut s,
            &format!("ResourceType=instance&ResourceIds.1={a}&Tags.1.Key=owner&Tags.1.Value=y&Tags.2.Key=env&Tags.2.Value=dev"),
        )
        .unwrap();
        assert_eq!(
            tags(&mut s, &a),
            [("owner".into(), "y".into()), ("env".into(), "dev".into())]
        );
    }

    #[test]
    fn a_new_instance_is_invisible_to_the_api_during_the_lag() {
        let mut s = Store::default();
        let t0 = Timestamp::now();
        let lagged = Ctx {
            visibility_lag_ms: 60_000,
            ..ctx(t0)
        };
        let q = p("ZoneId=cn-beijing-a&ImageId=img&InstanceTypeId=t&InstanceName=vm&NetworkInterfaces.1.SubnetId=subnet-1&NetworkInterfaces.1.SecurityGroupIds.1=sg-1&Tags.1.Key=uid&Tags.1.Value=u1");
        let d = dispatch(&mut s, &lagged, Action::RunInstances, &q).unwrap();
        let id = d.result["InstanceIds"][0].as_str().unwrap().to_string();
        let count = |s: &mut Store, at: Timestamp, q: &str| {
            let d = dispatch(s, &ctx(at), Action::DescribeInstances, &p(q)).unwrap();
            d.result["Instances"].as_array().unwrap().len()
        };
        let later = state::after(t0, 61_000);
        for q in [
            format!("InstanceIds.1={id}"),
            "TagFilters.1.Key=uid&TagFilters.1.Values.1=u1".into(),
        ] {
            assert_eq!(count(&mut s, t0, &q), 0, "{q}");
            assert_eq!(count(&mut s, later, &q), 1, "{q}");
        }
        // DeleteInstances does not see it either: NotFound, and nothing is deleted.
        let del = p(&format!("InstanceIds.1={id}"));
        let d = dispatch(&mut s, &ctx(t0), Action::DeleteInstances, &del).unwrap();
        assert_eq!(d.instance_codes, vec!["InvalidInstance.NotFound"]);
        assert!(s.deletions().is_empty() && s.contains(&id));
        let d = dispatch(&mut s, &ctx(later), Action::DeleteInstances, &del).unwrap();
        assert_eq!(d.instance_codes, vec!["OK"]);
        assert_eq!(s.deletions().len(), 1);
    }

    fn spec_code(s: &mut Store, cx: &Ctx<'_>, q: &str) -> String {
        dispatch(s, cx, Action::ModifyInstanceSpec, &p(q))
            .map(|_| "OK".to_string())
            .unwrap_or_else(|e| e.code)
    }

    fn type_of(s: &mut Store, id: &str) -> Option<String> {
        s.get_mut(id, Timestamp::now())
            .unwrap()
            .inst
            .instance_type_id
            .clone()
    }

    fn stop(s: &mut Store, id: &str) {
        let q = p(&format!("InstanceIds.1={id}&StoppedMode=KeepCharging"));
        let d = dispatch(s, &ctx(Timestamp::now()), Action::StopInstances, &q).unwrap();
        assert_eq!(d.instance_codes, ["OK"]);
    }

    #[test]
    fn modify_spec_checks_its_parameters_status_and_type() {
        let mut s = Store::default();
        let a = run(&mut s, "");
        let cx = ctx(Timestamp::now());
        let code = |s: &mut Store, q: &str| spec_code(s, &cx, q);
        assert_eq!(
            code(&mut s, "InstanceTypeId=ecs.g3i.xlarge"),
            "MissingParameter.InstanceId"
        );
        assert_eq!(
            code(&mut s, &format!("InstanceId={a}")),
            "MissingParameter.InstanceTypeId"
        );
        assert_eq!(
            code(&mut s, &format!("InstanceId={a}&InstanceTypeId=")),
            "MissingParameter.InstanceTypeId"
        );
        for bad in [
            "g3i.large",
            "ecs.g3i",
            "ecs.G3i.large",
            "ecs..large",
            "ecs.g3i.large.",
            "ecs.g3i.lar_ge",
            "ecs.g3i.large ",
        ] {
            let q = format!("InstanceId={a}&InstanceTypeId={}", bad.replace(' ', "%20"));
            assert_eq!(code(&mut s, &q), "InvalidInstanceTypeId.Malformed", "{bad}");
        }
        assert_eq!(
            code(&mut s, "InstanceId=i-nope&InstanceTypeId=ecs.g3i.xlarge"),
            "InvalidInstance.NotFound"
        );
        assert_eq!(
            code(
                &mut s,
                &format!("InstanceId={a}&InstanceTypeId=ecs.g3i.xlarge&DryRun=maybe")
            ),
            "InvalidDryRun.Malformed"
        );
        // RUNNING: refused, and refused before DryRun answers.
        for extra in ["", "&DryRun=true"] {
            assert_eq!(
                code(
                    &mut s,
                    &format!("InstanceId={a}&InstanceTypeId=ecs.g3i.xlarge{extra}")
                ),
                "InvalidInstanceStatus"
            );
        }
        assert_eq!(type_of(&mut s, &a).as_deref(), Some("t"));
        // Another region's instance does not exist for this call.
        let other = Ctx {
            region: "cn-shanghai",
            ..ctx(Timestamp::now())
        };
        stop(&mut s, &a);
        assert_eq!(
            spec_code(
                &mut s,
                &other,
                &format!("InstanceId={a}&InstanceTypeId=ecs.g3i.xlarge")
            ),
            "InvalidInstance.NotFound"
        );
    }

    #[test]
    fn modify_spec_changes_a_stopped_instance_once_and_dry_run_changes_nothing() {
        let mut s = Store::default();
        let a = run(&mut s, "");
        stop(&mut s, &a);
        let before = s.get_mut(&a, Timestamp::now()).unwrap().inst.clone();
        let later = state::after(Timestamp::now(), 5_000);
        let q = format!("InstanceId={a}&InstanceTypeId=ecs.g3i.xlarge&DryRun=true");
        assert_eq!(spec_code(&mut s, &ctx(later), &q), "DryRunOperation");
        assert_eq!(s.get_mut(&a, later).unwrap().inst, before);

        let q = p(&format!(
            "InstanceId={a}&InstanceTypeId=ecs.g3i.xlarge&DryRun=false"
        ));
        let d = dispatch(&mut s, &ctx(later), Action::ModifyInstanceSpec, &q).unwrap();
        assert_eq!(d.result["InstanceId"], a.as_str());
        let order = d.result["OrderId"].as_str().unwrap();
        assert!(
            order.starts_with("Order")
                && order.len() == 24
                && order[5..].bytes().all(|b| b.is_ascii_digit()),
            "{order}"
        );
        let after = s.get_mut(&a, later).unwrap().inst.clone();
        assert_eq!(after.instance_type_id.as_deref(), Some("ecs.g3i.xlarge"));
        assert_eq!(after.updated_at, Some(rfc3339(later)));
        assert_eq!(
            after.status,
            state::STOPPED,
            "the type change does not start it"
        );

        // The same type again: success, nothing changes (not even UpdatedAt).
        let even_later = state::after(later, 5_000);
        let q = format!("InstanceId={a}&InstanceTypeId=ecs.g3i.xlarge");
        assert_eq!(spec_code(&mut s, &ctx(even_later), &q), "OK");
        assert_eq!(s.get_mut(&a, even_later).unwrap().inst, after);
    }

    #[test]
    fn modify_spec_takes_terraforms_instance_type_and_refuses_unavailable_types() {
        let mut s = Store::default();
        let a = run(&mut s, "");
        stop(&mut s, &a);
        // Terraform sends `InstanceType`.
        let q = format!("InstanceId={a}&InstanceType=ecs.c3i.large");
        assert_eq!(spec_code(&mut s, &ctx(Timestamp::now()), &q), "OK");
        assert_eq!(type_of(&mut s, &a).as_deref(), Some("ecs.c3i.large"));
        // Both given: InstanceTypeId, the documented name, wins.
        let q = format!("InstanceId={a}&InstanceType=ecs.c3i.xlarge&InstanceTypeId=ecs.g3i.large");
        assert_eq!(spec_code(&mut s, &ctx(Timestamp::now()), &q), "OK");
        assert_eq!(type_of(&mut s, &a).as_deref(), Some("ecs.g3i.large"));
        let q = format!("InstanceId={a}&InstanceType=not-a-type");
        assert_eq!(
            spec_code(&mut s, &ctx(Timestamp::now()), &q),
            "InvalidInstanceTypeId.Malformed"
        );

        let unavailable = ["ecs.g3i.8xlarge".to_string(), "ecs.g3i.large".to_string()];
        let cx = Ctx {
            unavailable_types: &unavailable,
            ..ctx(Timestamp::now())
        };
        for extra in ["", "&DryRun=true"] {
            let q = format!("InstanceId={a}&InstanceTypeId=ecs.g3i.8xlarge{extra}");
            assert_eq!(spec_code(&mut s, &cx, &q), "ResourceNotFound.InstanceType");
        }
        assert_eq!(type_of(&mut s, &a).as_deref(), Some("ecs.g3i.large"));
        // The instance's own type needs nothing new: a no-op success even when unavailable.
        let q = format!("InstanceId={a}&InstanceTypeId=ecs.g3i.large");
        assert_eq!(spec_code(&mut s, &cx, &q), "OK");
        let q = format!("InstanceId={a}&InstanceTypeId=ecs.g3i.2xlarge");
        assert_eq!(spec_code(&mut s, &cx, &q), "OK");
    }

    #[test]
    fn descriptions() {
        for ok in [
            "",
            "a",
            "web server 1, tier=front.end_2-b",
            "测试，服务器。",
            &format!("d{}", "x".repeat(254)),
        ] {
            assert!(valid_description(ok), "{ok}");
        }
        for bad in [
            "1st",
            " leading",
            "-x",
            "a/b",
            "a:b",
            "a\nb",
            &format!("d{}", "x".repeat(255)),
        ] {
            assert!(!valid_description(bad), "{bad}");
        }
    }

    #[test]
    fn modify_attribute_validates_and_clears_the_description() {
        let mut s = Store::default();
        let a = run(&mut s, "&Description=first");
        let modify = |s: &mut Store, q: &str| {
            dispatch(
                s,
                &ctx(Timestamp::now()),
                Action::ModifyInstanceAttribute,
                &p(q),
            )
            .map(|_| "OK".to_string())
            .unwrap_or_else(|e| e.code)
        };
        let desc = |s: &mut Store| {
            s.get_mut(&a, Timestamp::now())
                .unwrap()
                .inst
                .description
                .clone()
        };
        assert_eq!(
            modify(&mut s, &format!("InstanceId={a}&Description=9lives")),
            "InvalidDescription.Malformed"
        );
        assert_eq!(
            modify(
                &mut s,
                &format!("InstanceId={a}&Description=a{}", "b".repeat(255))
            ),
            "InvalidDescription.Malformed"
        );
        assert_eq!(
            desc(&mut s).as_deref(),
            Some("first"),
            "a refused call changes nothing"
        );
        assert_eq!(
            modify(
                &mut s,
                &format!("InstanceId={a}&Description=db+tier%EF%BC%8Cprimary%E3%80%82")
            ),
            "OK"
        );
        assert_eq!(desc(&mut s).as_deref(), Some("db tier，primary。"));
        // Not sent: kept.
        assert_eq!(
            modify(&mut s, &format!("InstanceId={a}&InstanceName=vm2")),
            "OK"
        );
        assert_eq!(desc(&mut s).as_deref(), Some("db tier，primary。"));
        // Empty: cleared.
        assert_eq!(
            modify(&mut s, &format!("InstanceId={a}&Description=")),
            "OK"
        );
        assert_eq!(desc(&mut s).as_deref(), Some(""));
    }

    #[test]
    fn instance_types() {
        for ok in [
            "ecs.g3i.large",
            "ecs.t5-c1m1.large",
            "ecs.ebmhpc-g2i.32xlarge",
            "ecs.a.b.c",
        ] {
            assert!(valid_instance_type(ok), "{ok}");
        }
        for bad in [
            "",
            "ecs.",
            "ecs.g3i",
            "ECS.g3i.large",
            "ecs.g3i.",
            "rds.g3i.large",
        ] {
            assert!(!valid_instance_type(bad), "{bad}");
        }
    }

    #[test]
    fn instance_names() {
        for ok in ["a", "vm-1.web_2", "测试-vm", &"a".repeat(128)] {
            assert!(valid_instance_name(ok), "{ok}");
        }
        for bad in ["", "1vm", "-vm", "vm 1", "vm/1", &"a".repeat(129)] {
            assert!(!valid_instance_name(bad), "{bad}");
        }
    }

    #[test]
    fn tag_filters_and_paging() {
        let mut s = Store::default();
        let a = run(
            &mut s,
            "&Tags.1.Key=owner&Tags.1.Value=x&Tags.2.Key=env&Tags.2.Value=dev",
        );
        let b = run(&mut s, "&Tags.1.Key=owner&Tags.1.Value=y");
        let _c = run(&mut s, "&Tags.1.Key=other&Tags.1.Value=x");
        let describe = |s: &mut Store, q: &str| {
            dispatch(s, &ctx(Timestamp::now()), Action::DescribeInstances, &p(q))
                .unwrap()
                .result
        };
        let ids = |v: &Value| -> Vec<String> {
            let mut ids: Vec<String> = v["Instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["InstanceId"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            ids
        };
        let mut ab = vec![a.clone(), b.clone()];
        ab.sort();
        assert_eq!(ids(&describe(&mut s, "TagFilters.1.Key=owner")), ab);
        assert_eq!(
            ids(&describe(
                &mut s,
                "TagFilters.1.Key=owner&TagFilters.1.Values.1=y&TagFilters.1.Values.2=z"
            )),
            vec![b.clone()]
        );
        assert_eq!(
            ids(&describe(
                &mut s,
                "TagFilters.1.Key=owner&TagFilters.2.Key=env&TagFilters.2.Values.1=dev"
            )),
            vec![a.clone()]
        );
        let first = describe(&mut s, "MaxResults=2");
        assert_eq!(first["TotalCount"], 3);
        assert_eq!(first["Instances"].as_array().unwrap().len(), 2);
        let token = first["NextToken"].as_str().unwrap().to_string();
        let second = describe(&mut s, &format!("MaxResults=2&NextToken={token}"));
        assert_eq!(second["Instances"].as_array().unwrap().len(), 1);
        assert_eq!(second["NextToken"], "");
        let e = dispatch(
            &mut s,
            &ctx(Timestamp::now()),
            Action::DescribeInstances,
            &p("NextToken=zz"),
        );
        assert_eq!(e.err().unwrap().code, "InvalidNextToken.Malformed");
    }

    #[test]
    fn tag_filters_resolve_at_most_the_limit_across_pages() {
        let mut s = Store::default();
        let ids: Vec<String> = (0..5)
            .map(|_| run(&mut s, "&Tags.1.Key=c&Tags.1.Value=x"))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        let cx = Ctx {
            tag_filter_limit: 3,
            ..ctx(Timestamp::now())
        };
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let q = format!("TagFilters.1.Key=c&MaxResults=2&NextToken={token}");
            let r = dispatch(&mut s, &cx, Action::DescribeInstances, &p(&q))
                .unwrap()
                .result;
            assert_eq!(r["TotalCount"], 3, "TotalCount does not reveal the cut");
            for i in r["Instances"].as_array().unwrap() {
                seen.push(i["InstanceId"].as_str().unwrap().to_string());
            }
            token = r["NextToken"].as_str().unwrap().to_string();
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, sorted[..3].to_vec(), "the first three in id order");
        // Without TagFilters there is no limit.
        let r = dispatch(&mut s, &cx, Action::DescribeInstances, &p("MaxResults=100"))
            .unwrap()
            .result;
        assert_eq!(r["Instances"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn delete_records_and_dry_run_does_not() {
        let mut s = Store::default();
        let a = run(&mut s, "");
        let q = p(&format!("InstanceId={a}&DryRun=true"));
        let e = dispatch(&mut s, &ctx(Timestamp::now()), Action::DeleteInstance, &q);
        assert_eq!(e.err().unwrap().code, "DryRunOperation");
        assert!(s.deletions().is_empty() && s.contains(&a));
        let q = p(&format!("InstanceIds.1={a}&InstanceIds.2={a}"));
        let d = dispatch(&mut s, &ctx(Timestamp::now()), Action::DeleteInstances, &q).unwrap();
        // A 0 ms delete is immediate, so the repeated id is already gone.
        assert_eq!(d.instance_codes, vec!["OK", "InvalidInstance.NotFound"]);
        assert_eq!(s.deletions().len(), 1);
        assert_eq!(s.deletions()[0].client_token.as_deref(), Some("t"));
    }

    #[test]
    fn falsified_details_leave_the_instances_alone() {
        let mut s = Store::default();
        let (a, b, c) = (run(&mut s, ""), run(&mut s, ""), run(&mut s, ""));
        let details = DetailOverrides {
            omit: vec![a.clone()],
            conflicting: vec![b.clone()],
        };
        let cx = Ctx {
            details: &details,
            ..ctx(Timestamp::now())
        };
        let q = p(&format!(
            "InstanceIds.1={a}&InstanceIds.2={b}&InstanceIds.3={c}"
        ));
        let d = dispatch(&mut s, &cx, Action::DeleteInstances, &q).unwrap();
        let got: Vec<(String, Option<String>)> = d.result["OperationDetails"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["InstanceId"].as_str().unwrap().to_string(),
                    e["Error"]["Code"].as_str().map(str::to_string),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (b.clone(), None),
                (b.clone(), Some("InvalidInstanceStatus".into())),
                (c.clone(), None),
            ]
        );
        assert_eq!(d.instance_codes, vec!["OK", "InvalidInstanceStatus", "OK"]);
        // Only c was really deleted.
        let deleted: Vec<&str> = s
            .deletions()
            .iter()
            .map(|d| d.instance_id.as_str())
            .collect();
        assert_eq!(deleted, vec![c.as_str()]);
        assert!(s.contains(&a) && s.contains(&b));
    }
}
