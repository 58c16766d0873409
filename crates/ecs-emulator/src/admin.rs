//! The admin JSON API under `/_emulator/`: unsigned, never subject to injected faults, and
//! on a prefix the real API (only `/`) cannot collide with.
//!
//! Instances use the DescribeInstances shape (PascalCase) plus `Region`; everything that
//! exists only in the emulator (calls, deletions, faults, config, stats, and an instance's
//! `account`) uses snake_case.
//!
//! Accounts (see `accounts.rs`): `GET /instances`, `POST /instances`, `POST
//! /instances/bulk`, `GET /deletions` and `GET /stats` take `?account=NAME` (default
//! `default`; an unknown account is 404). `GET /calls` takes `account` and `access_key`
//! filters (without them, every account's calls). `GET/PATCH/DELETE /instances/{id}` find
//! the ID in whichever account holds it. `GET /accounts` lists them, `POST /accounts`
//! (`{"name","access_key","secret_key"}`) creates one or adds a key to it, `DELETE
//! /accounts/{name}/keys/{ak}` revokes a key. A fault's `account` limits it to that account.
//!
//! `PATCH /instances/{id}` changes a VM as the console or the cloud would (see `Patch`):
//! `Status` (with `Hold` to keep it), `InstanceName`, `Description`, `InstanceTypeId`,
//! `PrivateIp`, `PublicIp`, `Tags`, `DeletionProtection`, `InstanceChargeType`, `ExpiredAt`.
//! `PUT /config` takes `unavailable_instance_types` (the types ModifyInstanceSpec refuses).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use volcengine_ecs::model::{Action, EipAddress, Instance, NetworkInterface, Tag};
use volcengine_ecs::signer::Secret;

use super::accounts::{
    valid_access_key, valid_account_name, Account, Accounts, Added, DEFAULT_ACCOUNT,
};
use super::faults::FaultSpec;
use super::log::CallFilter;
use super::state::{InstanceRec, Store, RUNNING};
use super::wire::{new_resource_id, rfc3339};
use super::{Emulator, EmulatorConfig};

type Emu = State<Arc<Emulator>>;

pub(crate) fn routes() -> Router<Arc<Emulator>> {
    Router::new()
        .route("/calls", get(calls).delete(clear_calls))
        .route("/instances", get(instances).post(seed))
        .route("/instances/bulk", post(bulk))
        .route("/instances/{id}", get(instance).patch(patch).delete(vanish))
        .route("/deletions", get(deletions))
        .route("/faults", get(faults).delete(clear_faults))
        .route("/faults/{action}", put(set_fault).delete(clear_fault))
        .route("/config", get(config).put(set_config))
        .route("/reset", post(reset))
        .route("/stats", get(stats))
        .route("/accounts", get(accounts).post(add_account_key))
        .route("/accounts/{name}/keys/{ak}", delete(revoke_key))
        .fallback(|| async { fail(StatusCode::NOT_FOUND, "no such admin endpoint") })
}

fn fail(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// An empty body is `{}`; unknown fields are refused so a typo in a test fails loudly.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    let raw: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(raw).map_err(|e| Box::new(fail(StatusCode::BAD_REQUEST, e.to_string())))
}

#[derive(Serialize)]
struct InstanceView<'a> {
    #[serde(flatten)]
    instance: &'a Instance,
    #[serde(rename = "Region")]
    region: &'a str,
    /// The account holding the instance.
    account: &'a str,
}

fn view(r: &InstanceRec, account: &str) -> serde_json::Value {
    serde_json::to_value(InstanceView {
        instance: &r.inst,
        region: &r.region,
        account,
    })
    .unwrap_or_default()
}

fn no_account(name: &str) -> Response {
    fail(StatusCode::NOT_FOUND, format!("no account {name}"))
}

/// `?account=NAME` of the per-account endpoints.
#[derive(Deserialize)]
struct AccountQuery {
    account: Option<String>,
}

impl AccountQuery {
    fn name(&self) -> &str {
        self.account.as_deref().unwrap_or(DEFAULT_ACCOUNT)
    }
}

/// The account a per-account endpoint names (default `default`), or its 404.
fn account_of<'a>(
    accounts: &'a mut Accounts,
    name: &str,
) -> Result<&'a mut Account, Box<Response>> {
    accounts
        .get_mut(name)
        .ok_or_else(|| Box::new(no_account(name)))
}

#[derive(Deserialize)]
struct CallsQuery {
    action: Option<String>,
    /// Only calls of this account (an unknown account is 404).
    account: Option<String>,
    /// Only calls signed with this access key (also unknown and revoked ones).
    access_key: Option<String>,
    since: Option<u64>,
    limit: Option<usize>,
}

async fn calls(State(emu): Emu, Query(q): Query<CallsQuery>) -> Response {
    let inner = emu.lock();
    if let Some(a) = q.account.as_deref() {
        if inner.accounts.get(a).is_none() {
            return no_account(a);
        }
    }
    let filter = CallFilter {
        action: q.action.as_deref(),
        account: q.account.as_deref(),
        access_key: q.access_key.as_deref(),
    };
    let calls = inner
        .log
        .query(&filter, q.since.unwrap_or(0), q.limit.unwrap_or(usize::MAX));
    Json(calls).into_response()
}

async fn clear_calls(State(emu): Emu) -> Response {
    emu.lock().log.clear();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct InstancesQuery {
    region: Option<String>,
    account: Option<String>,
}

async fn instances(State(emu): Emu, Query(q): Query<InstancesQuery>) -> Response {
    let mut inner = emu.lock();
    let name = q.account.as_deref().unwrap_or(DEFAULT_ACCOUNT);
    let a = match account_of(&mut inner.accounts, name) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let all: Vec<_> = a
        .store
        .settled(Timestamp::now())
        .filter(|r| q.region.as_deref().is_none_or(|want| r.region == want))
        .map(|r| view(r, &a.name))
        .collect();
    Json(all).into_response()
}

async fn instance(State(emu): Emu, Path(id): Path<String>) -> Response {
    let mut inner = emu.lock();
    let now = Timestamp::now();
    match inner.accounts.holder_mut(&id, now) {
        Some(a) => match a.store.get_mut(&id, now) {
            Some(r) => Json(view(r, &a.name)).into_response(),
            None => fail(StatusCode::NOT_FOUND, format!("no instance {id}")),
        },
        None => fail(StatusCode::NOT_FOUND, format!("no instance {id}")),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
struct Seed {
    instance_id: Option<String>,
    region: Option<String>,
    status: Option<String>,
    deletion_protection: Option<bool>,
    instance_charge_type: Option<String>,
    expired_at: Option<String>,
    tags: Vec<Tag>,
    zone_id: Option<String>,
    instance_name: Option<String>,
    image_id: Option<String>,
    instance_type_id: Option<String>,
    description: Option<String>,
}

fn check_time(s: &str) -> Result<(), Box<Response>> {
    s.parse::<Timestamp>().map(|_| ()).map_err(|e| {
        Box::new(fail(
            StatusCode::BAD_REQUEST,
            format!("ExpiredAt {s:?}: {e}"),
        ))
    })
}

/// The region named, or the one the zone belongs to, or the first configured.
fn region_for(cfg: &EmulatorConfig, region: Option<&str>, zone: Option<&str>) -> String {
    if let Some(r) = region {
        return r.to_string();
    }
    zone.and_then(|z| {
        cfg.regions
            .iter()
            .filter(|r| z.starts_with(r.as_str()))
            .max_by_key(|r| r.len())
    })
    .or_else(|| cfg.regions.first())
    .cloned()
    .unwrap_or_else(|| "cn-beijing".to_string())
}

fn build(
    store: &mut Store,
    cfg: &EmulatorConfig,
    s: &Seed,
    id: String,
    now: Timestamp,
) -> InstanceRec {
    let region = region_for(cfg, s.region.as_deref(), s.zone_id.as_deref());
    let zone = s.zone_id.clone().unwrap_or_else(|| format!("{region}-a"));
    InstanceRec {
        inst: Instance {
            instance_name: Some(s.instance_name.clone().unwrap_or_else(|| id.clone())),
            instance_id: id,
            description: s.description.clone(),
            status: RUNNING.to_string(),
            zone_id: Some(zone),
            instance_type_id: Some(
                s.instance_type_id
                    .clone()
                    .unwrap_or_else(|| "ecs.g3i.large".into()),
            ),
            image_id: Some(
                s.image_id
                    .clone()
                    .unwrap_or_else(|| "image-emulator".into()),
            ),
            network_interfaces: vec![NetworkInterface {
                network_interface_id: Some(new_resource_id("eni")),
                primary_ip_address: Some(store.next_private_ip()),
                r#type: Some("primary".into()),
                ..Default::default()
            }],
            tags: s.tags.clone(),
            deletion_protection: Some(s.deletion_protection.unwrap_or(false)),
            instance_charge_type: Some(
                s.instance_charge_type
                    .clone()
                    .unwrap_or_else(|| "PostPaid".into()),
            ),
            created_at: Some(rfc3339(now)),
            updated_at: Some(rfc3339(now)),
            expired_at: s.expired_at.clone(),
            ..Default::default()
        },
        region,
        due: None,
        visible_at: None,
        revert_to: None,
    }
}

/// Inserts, then moves into the requested status (transitional ones run their delay).
fn place(
    store: &mut Store,
    cfg: &EmulatorConfig,
    rec: InstanceRec,
    status: Option<&str>,
    now: Timestamp,
) -> String {
    let id = rec.inst.instance_id.clone();
    store.insert(rec);
    store.enter(&id, status.unwrap_or(RUNNING), &cfg.delays, now);
    id
}

async fn seed(State(emu): Emu, Query(q): Query<AccountQuery>, body: Bytes) -> Response {
    let s: Seed = match parse(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if let Some(Err(r)) = s.expired_at.as_deref().map(check_time) {
        return *r;
    }
    let now = Timestamp::now();
    let mut guard = emu.lock();
    let inner = &mut *guard;
    if inner.accounts.get(q.name()).is_none() {
        return no_account(q.name());
    }
    let id = s
        .instance_id
        .clone()
        .unwrap_or_else(|| new_resource_id("i"));
    // IDs are global: one held by any account is taken.
    if inner.accounts.holder_mut(&id, now).is_some() {
        return fail(StatusCode::CONFLICT, format!("instance {id} exists"));
    }
    let Ok(a) = account_of(&mut inner.accounts, q.name()) else {
        return no_account(q.name());
    };
    let rec = build(&mut a.store, &inner.cfg, &s, id, now);
    let id = place(&mut a.store, &inner.cfg, rec, s.status.as_deref(), now);
    match a.store.get_mut(&id, now) {
        Some(r) => (StatusCode::CREATED, Json(view(r, &a.name))).into_response(),
        None => (StatusCode::CREATED, Json(json!({"InstanceId": id}))).into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
struct Bulk {
    count: usize,
    /// Ids become `{Prefix}-00001`, ... (skipping taken ones); random real-looking ids without.
    prefix: Option<String>,
    region: Option<String>,
    status: Option<String>,
    deletion_protection: Option<bool>,
    instance_charge_type: Option<String>,
    expired_at: Option<String>,
    tags: Vec<Tag>,
    zone_id: Option<String>,
    instance_name: Option<String>,
}

const MAX_BULK: usize = 100_000;

async fn bulk(State(emu): Emu, Query(q): Query<AccountQuery>, body: Bytes) -> Response {
    let b: Bulk = match parse(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if b.count > MAX_BULK {
        return fail(
            StatusCode::BAD_REQUEST,
            format!("Count must be at most {MAX_BULK}"),
        );
    }
    if let Some(Err(r)) = b.expired_at.as_deref().map(check_time) {
        return *r;
    }
    let s = Seed {
        region: b.region,
        status: b.status,
        deletion_protection: b.deletion_protection,
        instance_charge_type: b.instance_charge_type,
        expired_at: b.expired_at,
        tags: b.tags,
        zone_id: b.zone_id,
        instance_name: b.instance_name,
        ..Default::default()
    };
    let now = Timestamp::now();
    let mut guard = emu.lock();
    let inner = &mut *guard;
    let cfg = &inner.cfg;
    let mut ids = Vec::with_capacity(b.count);
    let mut n = 0usize;
    let placed = inner
        .accounts
        .with_store(q.name(), |store, taken_elsewhere| {
            while ids.len() < b.count {
                let id = match &b.prefix {
                    Some(p) => {
                        n += 1;
                        format!("{p}-{n:05}")
                    }
                    None => new_resource_id("i"),
                };
                if store.contains(&id) || taken_elsewhere(&id) {
                    continue;
                }
                let rec = build(store, cfg, &s, id, now);
                ids.push(place(store, cfg, rec, s.status.as_deref(), now));
            }
        });
    if placed.is_none() {
        return no_account(q.name());
    }
    (StatusCode::CREATED, Json(json!({ "InstanceIds": ids }))).into_response()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
struct Patch {
    status: Option<String>,
    deletion_protection: Option<bool>,
    /// "" clears it.
    expired_at: Option<String>,
    instance_charge_type: Option<String>,
    instance_name: Option<String>,
    tags: Option<Vec<Tag>>,
    /// Keep the status (`Status`, or the current one when `Status` is absent) with no end:
    /// no configured delay moves it on until a later patch sets a `Status` (a VM held in
    /// STOPPING, say).
    hold: bool,
    /// The console's or the cloud's changes: "" is an empty description.
    description: Option<String>,
    instance_type_id: Option<String>,
    /// The primary interface's `PrimaryIpAddress` (IPv4).
    private_ip: Option<String>,
    /// `EipAddress.IpAddress` (IPv4), with an `eip-...` AllocationId; "" removes the EIP.
    public_ip: Option<String>,
}

fn check_ipv4(field: &str, v: &str) -> Result<(), Box<Response>> {
    v.parse::<std::net::Ipv4Addr>()
        .map(|_| ())
        .map_err(|e| Box::new(fail(StatusCode::BAD_REQUEST, format!("{field} {v:?}: {e}"))))
}

/// The primary interface (typed `primary`, or the first when none is typed) gets `ip`; an
/// instance without one gets a primary interface.
fn set_private_ip(inst: &mut Instance, ip: String) {
    let nics = &mut inst.network_interfaces;
    let primary = if nics.iter().any(|n| n.r#type.is_some()) {
        nics.iter_mut()
            .find(|n| n.r#type.as_deref() == Some("primary"))
    } else {
        nics.first_mut()
    };
    match primary {
        Some(n) => n.primary_ip_address = Some(ip),
        None => nics.push(NetworkInterface {
            network_interface_id: Some(new_resource_id("eni")),
            primary_ip_address: Some(ip),
            r#type: Some("primary".into()),
            ..Default::default()
        }),
    }
}

/// "" removes the EIP; an address replaces the EIP's, keeping its AllocationId if it had one.
fn set_public_ip(inst: &mut Instance, ip: String) {
    if ip.is_empty() {
        inst.eip_address = None;
        return;
    }
    let allocation_id = inst
        .eip_address
        .take()
        .and_then(|e| e.allocation_id)
        .unwrap_or_else(|| new_resource_id("eip"));
    inst.eip_address = Some(EipAddress {
        allocation_id: Some(allocation_id),
        ip_address: Some(ip),
    });
}

async fn patch(State(emu): Emu, Path(id): Path<String>, body: Bytes) -> Response {
    let p: Patch = match parse(&body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if let Some(Err(r)) = p
        .expired_at
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(check_time)
    {
        return *r;
    }
    if let Some(Err(r)) = p.private_ip.as_deref().map(|v| check_ipv4("PrivateIp", v)) {
        return *r;
    }
    if let Some(Err(r)) = p
        .public_ip
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(|v| check_ipv4("PublicIp", v))
    {
        return *r;
    }
    let now = Timestamp::now();
    let mut guard = emu.lock();
    let inner = &mut *guard;
    let Some(a) = inner.accounts.holder_mut(&id, now) else {
        return fail(StatusCode::NOT_FOUND, format!("no instance {id}"));
    };
    let Some(r) = a.store.get_mut(&id, now) else {
        return fail(StatusCode::NOT_FOUND, format!("no instance {id}"));
    };
    if let Some(v) = p.deletion_protection {
        r.inst.deletion_protection = Some(v);
    }
    if let Some(v) = p.expired_at {
        r.inst.expired_at = (!v.is_empty()).then_some(v);
    }
    if let Some(v) = p.instance_charge_type {
        r.inst.instance_charge_type = Some(v);
    }
    if let Some(v) = p.instance_name {
        r.inst.instance_name = Some(v);
    }
    if let Some(v) = p.tags {
        r.inst.tags = v;
    }
    if let Some(v) = p.description {
        r.inst.description = Some(v);
    }
    if let Some(v) = p.instance_type_id {
        r.inst.instance_type_id = Some(v);
    }
    if let Some(v) = p.private_ip {
        set_private_ip(&mut r.inst, v);
    }
    if let Some(v) = p.public_ip {
        set_public_ip(&mut r.inst, v);
    }
    r.inst.updated_at = Some(rfc3339(now));
    let current = r.inst.status.clone();
    match (&p.status, p.hold) {
        (Some(s), false) => a.store.enter(&id, s, &inner.cfg.delays, now),
        (Some(s), true) => a.store.hold(&id, s, now),
        (None, true) => a.store.hold(&id, &current, now),
        (None, false) => {}
    }
    match a.store.get_mut(&id, now) {
        Some(r) => Json(view(r, &a.name)).into_response(),
        None => Json(json!({"InstanceId": id, "Gone": true})).into_response(),
    }
}

async fn vanish(State(emu): Emu, Path(id): Path<String>) -> Response {
    let mut inner = emu.lock();
    let removed = inner.accounts.iter_mut().find_map(|a| a.store.remove(&id));
    match removed {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => fail(StatusCode::NOT_FOUND, format!("no instance {id}")),
    }
}

async fn deletions(State(emu): Emu, Query(q): Query<AccountQuery>) -> Response {
    let mut inner = emu.lock();
    match account_of(&mut inner.accounts, q.name()) {
        Ok(a) => Json(a.store.deletions().to_vec()).into_response(),
        Err(r) => *r,
    }
}

async fn faults(State(emu): Emu) -> Response {
    Json(emu.lock().faults.snapshot()).into_response()
}

async fn clear_faults(State(emu): Emu) -> Response {
    emu.lock().faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

fn action_of(name: &str) -> Result<Action, Box<Response>> {
    Action::parse(name).ok_or_else(|| {
        Box::new(fail(
            StatusCode::NOT_FOUND,
            format!("unknown action {name}"),
        ))
    })
}

async fn set_fault(State(emu): Emu, Path(action): Path<String>, body: Bytes) -> Response {
    let action = match action_of(&action) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let spec: FaultSpec = match parse(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !(0.0..=1.0).contains(&spec.error_rate) || !(0.0..=1.0).contains(&spec.lose_response_rate) {
        return fail(StatusCode::BAD_REQUEST, "rates must be within 0..1");
    }
    // A fault that would never fire is refused, so a test cannot think it injected one.
    if spec.unapplied_next > 0 && !action.result_optional() {
        let msg = format!("unapplied_next applies to operation actions only, not {action:?}");
        return fail(StatusCode::BAD_REQUEST, msg);
    }
    let mut inner = emu.lock();
    if let Some(a) = spec.account.as_deref() {
        if inner.accounts.get(a).is_none() {
            return no_account(a);
        }
    }
    inner.faults.set(action, spec.clone());
    Json(spec).into_response()
}

async fn clear_fault(State(emu): Emu, Path(action): Path<String>) -> Response {
    match action_of(&action) {
        Ok(a) => {
            emu.lock().faults.remove(a);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => *r,
    }
}

/// The admin view of the configuration; `PUT` takes any subset of the same fields.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ConfigDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key: Option<String>,
    regions: Option<Vec<String>>,
    replay: Option<bool>,
    create_delay_ms: Option<u64>,
    stop_delay_ms: Option<u64>,
    start_delay_ms: Option<u64>,
    delete_delay_ms: Option<u64>,
    expired_tokens: Option<Vec<String>>,
    max_clock_skew_secs: Option<u64>,
    tag_filter_limit: Option<usize>,
    visibility_lag_ms: Option<u64>,
    null_empty: Option<bool>,
    omit_operation_result: Option<bool>,
    throttle_every: Option<u32>,
    unavailable_instance_types: Option<Vec<String>>,
}

fn config_doc(c: &EmulatorConfig) -> ConfigDoc {
    ConfigDoc {
        access_key: Some(c.access_key.clone()),
        regions: Some(c.regions.clone()),
        replay: Some(c.replay),
        create_delay_ms: Some(c.delays.create_ms),
        stop_delay_ms: Some(c.delays.stop_ms),
        start_delay_ms: Some(c.delays.start_ms),
        delete_delay_ms: Some(c.delays.delete_ms),
        expired_tokens: Some(c.expired_tokens.clone()),
        max_clock_skew_secs: Some(c.max_clock_skew_secs),
        tag_filter_limit: Some(c.tag_filter_limit),
        visibility_lag_ms: Some(c.visibility_lag_ms),
        null_empty: Some(c.null_empty),
        omit_operation_result: Some(c.omit_operation_result),
        throttle_every: Some(c.throttle_every),
        unavailable_instance_types: Some(c.unavailable_instance_types.clone()),
    }
}

async fn config(State(emu): Emu) -> Response {
    Json(config_doc(&emu.lock().cfg)).into_response()
}

async fn set_config(State(emu): Emu, body: Bytes) -> Response {
    let d: ConfigDoc = match parse(&body) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let mut guard = emu.lock();
    let inner = &mut *guard;
    let c = &mut inner.cfg;
    if let Some(v) = d.access_key {
        // The default account's key `access_key` is renamed; refused (before anything
        // changes) when another account holds the new one.
        if let Err(e) = inner
            .accounts
            .replace_default_key(&c.access_key, &v, &c.secret_key)
        {
            return fail(StatusCode::CONFLICT, e);
        }
        c.access_key = v;
    }
    if let Some(v) = d.regions {
        c.regions = v;
    }
    if let Some(v) = d.replay {
        c.replay = v;
    }
    let delays = &mut c.delays;
    for (src, dst) in [
        (d.create_delay_ms, &mut delays.create_ms),
        (d.stop_delay_ms, &mut delays.stop_ms),
        (d.start_delay_ms, &mut delays.start_ms),
        (d.delete_delay_ms, &mut delays.delete_ms),
    ] {
        if let Some(v) = src {
            *dst = v;
        }
    }
    if let Some(v) = d.expired_tokens {
        c.expired_tokens = v;
    }
    if let Some(v) = d.max_clock_skew_secs {
        c.max_clock_skew_secs = v;
    }
    if let Some(v) = d.tag_filter_limit {
        c.tag_filter_limit = v;
    }
    if let Some(v) = d.visibility_lag_ms {
        c.visibility_lag_ms = v;
    }
    if let Some(v) = d.null_empty {
        c.null_empty = v;
    }
    if let Some(v) = d.omit_operation_result {
        c.omit_operation_result = v;
    }
    if let Some(v) = d.throttle_every {
        c.throttle_every = v;
    }
    if let Some(v) = d.unavailable_instance_types {
        c.unavailable_instance_types = v;
    }
    Json(config_doc(c)).into_response()
}

async fn reset(State(emu): Emu) -> Response {
    emu.reset();
    StatusCode::NO_CONTENT.into_response()
}

/// `instances` and `deletions` are the account's (`?account=`, default `default`); `calls`
/// and `actions` count every account's calls.
async fn stats(State(emu): Emu, Query(q): Query<AccountQuery>) -> Response {
    let mut guard = emu.lock();
    let inner = &mut *guard;
    let a = match account_of(&mut inner.accounts, q.name()) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    Json(json!({
        "calls": inner.log.last_seq(),
        "instances": a.store.len(),
        "deletions": a.store.deletions().len(),
        "actions": inner.log.stats(),
    }))
    .into_response()
}

async fn accounts(State(emu): Emu) -> Response {
    Json(emu.lock().accounts.views(Timestamp::now())).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    access_key: String,
    secret_key: String,
}

/// Creates the account with this key (201), or adds the key to it (200; also when it has
/// exactly this key already). 409 when the access key belongs to another account or
/// exists with another secret key.
async fn add_account_key(State(emu): Emu, body: Bytes) -> Response {
    let k: NewKey = match parse(&body) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if !valid_account_name(&k.name) {
        return fail(
            StatusCode::BAD_REQUEST,
            "name: 1-64 letters, digits, '.', '_' or '-'",
        );
    }
    if !valid_access_key(&k.access_key) {
        return fail(
            StatusCode::BAD_REQUEST,
            "access_key: 1-128 letters, digits, '.', '_', '~' or '-'",
        );
    }
    if k.secret_key.is_empty() {
        return fail(StatusCode::BAD_REQUEST, "secret_key is empty");
    }
    let mut inner = emu.lock();
    let added = match inner
        .accounts
        .add_key(&k.name, &k.access_key, Secret::new(k.secret_key))
    {
        Ok(a) => a,
        Err(e) => return fail(StatusCode::CONFLICT, e),
    };
    let status = match added {
        Added::Account => StatusCode::CREATED,
        Added::Key | Added::Nothing => StatusCode::OK,
    };
    let now = Timestamp::now();
    match inner.accounts.get_mut(&k.name) {
        Some(a) => (status, Json(Accounts::view(a, now))).into_response(),
        None => no_account(&k.name),
    }
}

/// Revokes a key: from the next request on it is an unknown key (401 InvalidAccessKey).
async fn revoke_key(State(emu): Emu, Path((name, ak)): Path<(String, String)>) -> Response {
    let mut inner = emu.lock();
    if inner.accounts.get(&name).is_none() {
        return no_account(&name);
    }
    if inner.accounts.revoke(&name, &ak) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        fail(
            StatusCode::NOT_FOUND,
            format!("account {name} has no access key {ak}"),
        )
    }
}
