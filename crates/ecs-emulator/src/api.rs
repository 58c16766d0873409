//! The real API on `/`: decode, authenticate, route by Action, inject faults, honour
//! ClientTokens, apply, log, answer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde_json::Value;

use volcengine_ecs::model::{Action, API_VERSION};

use super::actions::{self, Ctx};
use super::auth::{self, Incoming};
use super::faults::{Decision, DetailOverrides, GarbageKind};
use super::log::CallRecord;
use super::params::{decode_pairs, Params};
use super::state::{Recorded, TokenCheck, TokenKey};
use super::wire::{new_request_id, rfc3339, with_request_id, ApiError, Meta};
use super::Emulator;

/// Forms are tiny; anything bigger is not an ECS request.
pub(crate) const MAX_BODY: usize = 1 << 20;
const MAX_TOKEN_LEN: usize = 64;

/// How the answer goes on the wire.
enum Reply {
    Json {
        status: u16,
        body: Value,
        /// The `Retry-After` header, seconds.
        retry_after: Option<u64>,
    },
    Garbage {
        kind: GarbageKind,
        status: u16,
        bytes: usize,
    },
    /// Headers, a partial body, then an aborted connection.
    Lost,
}

pub(crate) async fn handle(State(emu): State<Arc<Emulator>>, req: Request) -> Response {
    // The whole call, its log record included, runs in its own task: a client that hangs up
    // (a timeout, a SIGKILLed operator) drops this future, but a real server still applies
    // the call, and the log must still show it, marked as an answer nobody received.
    let gone = HangUp::default();
    let flag = gone.0.clone();
    let task = tokio::spawn(serve(emu, req, flag));
    let out = task.await;
    gone.answered();
    match out {
        Ok(resp) => resp,
        Err(_) => {
            let meta = Meta {
                request_id: new_request_id(Timestamp::now()),
                ..Default::default()
            };
            let e = ApiError::internal("The emulator failed.");
            json_response(500, meta.err(&e).to_string().into())
        }
    }
}

/// Set when the handler is dropped before the call's task finished (the client hung up).
#[derive(Default)]
struct HangUp(Arc<std::sync::atomic::AtomicBool>, bool);

impl HangUp {
    fn answered(mut self) {
        self.1 = true;
    }
}

impl Drop for HangUp {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

async fn serve(
    emu: Arc<Emulator>,
    req: Request,
    hung_up: Arc<std::sync::atomic::AtomicBool>,
) -> Response {
    let started = std::time::Instant::now();
    let now = Timestamp::now();
    let request_id = new_request_id(now);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY).await;
    let mut rec = CallRecord {
        time: rfc3339(now),
        at_ms: now.as_millisecond(),
        method: parts.method.to_string(),
        request_id: request_id.clone(),
        ..Default::default()
    };
    let mut meta = Meta {
        request_id,
        ..Default::default()
    };
    let reply = match body {
        Ok(body) => process(&emu, &parts, body, now, &mut meta, &mut rec).await,
        Err(_) => error(
            &meta,
            &ApiError::invalid_parameter("Request body too large."),
            &mut rec,
        ),
    };
    rec.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if let Reply::Garbage { kind, status, .. } = &reply {
        rec.status = *status;
        rec.code = format!("Garbage:{}", kind.as_str());
    }
    if hung_up.load(std::sync::atomic::Ordering::SeqCst) {
        // Nobody is left to read the answer. An applied call is then a lost answer, as far
        // as the client can tell; a refused one stays what it was.
        rec.lost |= rec.code == "OK";
        rec.fault = Some(rec.fault.take().unwrap_or_else(|| "client_gone".into()));
    }
    emu.lock().log.push(rec);
    render(reply, &meta)
}

/// The OpenAPI lives only on `/`; other paths get the envelope a gateway would send.
pub(crate) async fn wrong_path() -> Response {
    let meta = Meta {
        request_id: new_request_id(Timestamp::now()),
        ..Default::default()
    };
    let e = ApiError::new(
        404,
        "InvalidActionOrVersion",
        "The OpenAPI is only served on path /.",
    );
    json_response(404, meta.err(&e).to_string().into())
}

fn error(meta: &Meta, e: &ApiError, rec: &mut CallRecord) -> Reply {
    rec.status = e.status;
    rec.code = e.code.clone();
    Reply::Json {
        status: e.status,
        body: meta.err(e),
        retry_after: e.retry_after,
    }
}

async fn process(
    emu: &Arc<Emulator>,
    parts: &axum::http::request::Parts,
    body: Bytes,
    now: Timestamp,
    meta: &mut Meta,
    rec: &mut CallRecord,
) -> Reply {
    let query = decode_pairs(parts.uri.query().unwrap_or("").as_bytes());
    let mut all = query.clone();
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if parts.method == Method::POST && is_form {
        all.extend(decode_pairs(&body));
    }
    let params = Params::from_pairs(all);
    rec.params = params.map().clone();
    rec.user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    rec.client_token = params.non_empty("ClientToken").map(str::to_string);
    // Action and Version come from the query only (see `route` below).
    let from_query = Params::from_pairs(query.clone());
    meta.action = from_query.get("Action").unwrap_or("").to_string();
    meta.version = from_query.get("Version").unwrap_or("").to_string();
    rec.action = meta.action.clone();

    if parts.method != Method::GET && parts.method != Method::POST {
        return error(
            meta,
            &ApiError::new(405, "MethodNotAllowed", "Use GET or POST."),
            rec,
        );
    }
    let verdict = {
        let inner = emu.lock();
        auth::verify(
            &inner.cfg,
            &inner.accounts,
            &Incoming {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                headers: &parts.headers,
                query: &query,
                body: &body,
            },
            now,
        )
    };
    meta.region = verdict.region.unwrap_or_default();
    rec.region = meta.region.clone();
    rec.access_key = verdict.access_key.clone().unwrap_or_default();
    rec.account = verdict.account.clone().unwrap_or_default();
    if let Err(e) = verdict.result {
        return error(meta, &e, rec);
    }
    // A verified call always has its account.
    let account = rec.account.clone();
    // The documentation: Action and Version are query parameters. A form body may carry
    // the others, never these two.
    let action = match route(&from_query) {
        Ok(a) => a,
        Err(e) => return error(meta, &e, rec),
    };
    let (decision, details) = {
        let mut inner = emu.lock();
        let every = inner.cfg.throttle_every;
        let d = match inner.faults.ambient(every) {
            Some(d) => d,
            None => inner
                .faults
                .decide(action, &account, std::time::Instant::now()),
        };
        let d = match d {
            d @ Decision::Proceed { .. } => inner
                .faults
                .poisoned(action, &account, &params.list("InstanceIds"))
                .or_else(|| {
                    let paged = params.non_empty("NextToken").is_some();
                    inner.faults.paged(action, &account, paged)
                })
                .unwrap_or(d),
            d => d,
        };
        (d, inner.faults.detail_overrides(action, &account))
    };
    let (latency, lose) = match decision {
        Decision::Reject(e, tag) => {
            rec.fault = Some(tag.to_string());
            return error(meta, &e, rec);
        }
        Decision::Garbage {
            kind,
            status,
            bytes,
        } => {
            rec.fault = Some(format!("garbage:{}", kind.as_str()));
            return Reply::Garbage {
                kind,
                status,
                bytes,
            };
        }
        Decision::Proceed {
            latency,
            lose_response,
        } => (latency, lose_response),
        Decision::AckUnapplied => {
            rec.status = 200;
            rec.code = "OK".into();
            rec.fault = Some("unapplied".into());
            let body = realistic(meta.ok(serde_json::json!({})), action, &emu.lock().cfg);
            return Reply::Json {
                status: 200,
                body,
                retry_after: None,
            };
        }
    };
    let token = if action.is_mutating() {
        params.non_empty("ClientToken").map(str::to_string)
    } else {
        None
    };
    if let Some(t) = &token {
        if t.len() > MAX_TOKEN_LEN || !t.is_ascii() {
            let e = ApiError::malformed("ClientToken");
            return error(meta, &e, rec);
        }
    }
    let falsified = !details.is_empty()
        && params
            .list("InstanceIds")
            .iter()
            .any(|id| details.omit.contains(id) || details.conflicting.contains(id));
    // Run the call to completion even if the client hangs up, as a real server would.
    let job = tokio::spawn(execute(
        emu.clone(),
        Caller {
            account,
            access_key: rec.access_key.clone(),
            token,
        },
        action,
        params,
        latency,
        details,
        meta.clone(),
    ));
    let out = match job.await {
        Ok(out) => out,
        Err(_) => return error(meta, &ApiError::internal("The emulator failed."), rec),
    };
    rec.status = out.status;
    rec.code = out.code;
    rec.instance_codes = out.instance_codes;
    rec.replayed = out.replayed;
    if falsified {
        rec.fault = Some("falsified_details".into());
    }
    if lose {
        rec.lost = true;
        rec.fault = Some("lost".into());
        return Reply::Lost;
    }
    Reply::Json {
        status: out.status,
        body: out.body,
        retry_after: None,
    }
}

fn route(params: &Params) -> Result<Action, ApiError> {
    let missing = |what: &str| {
        ApiError::new(
            400,
            "MissingParameter",
            format!("The request is missing the {what} parameter."),
        )
    };
    let name = params
        .non_empty("Action")
        .ok_or_else(|| missing("Action"))?;
    let version = params
        .non_empty("Version")
        .ok_or_else(|| missing("Version"))?;
    match Action::parse(name) {
        Some(a) if version == API_VERSION => Ok(a),
        _ => Err(ApiError::new(
            404,
            "InvalidActionOrVersion",
            format!("Could not find operation {name} for version {version}."),
        )),
    }
}

struct Executed {
    status: u16,
    code: String,
    body: Value,
    instance_codes: Vec<String>,
    replayed: bool,
}

/// Whose call it is: the account of the key that signed it (its store is the only one the
/// call sees), and the call's ClientToken (tokens are per account).
struct Caller {
    account: String,
    access_key: String,
    token: Option<String>,
}

/// Clears an in-flight token if the call dies before recording its answer.
struct InFlight {
    emu: Arc<Emulator>,
    account: String,
    key: Option<TokenKey>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            if let Some(a) = self.emu.lock().accounts.get_mut(&self.account) {
                a.store.token_abort(&key);
            }
        }
    }
}

/// The account of a verified call no longer exists (an admin reset removed it while the
/// call was under way): answered as its key would be now.
fn account_gone(caller: &Caller, meta: &Meta) -> Executed {
    let e = ApiError::new(
        401,
        "InvalidAccessKey",
        format!(
            "The accesskey [{}] included in the request is invalid.",
            caller.access_key
        ),
    );
    Executed {
        status: e.status,
        code: e.code.clone(),
        body: meta.err(&e),
        instance_codes: Vec::new(),
        replayed: false,
    }
}

fn code_of(body: &Value) -> String {
    body.pointer("/ResponseMetadata/Error/Code")
        .and_then(Value::as_str)
        .unwrap_or("OK")
        .to_string()
}

/// The answer a token check settles on its own (None: execute the call).
fn token_answer(check: TokenCheck, meta: &Meta) -> Option<Executed> {
    let refuse = |e: ApiError| Executed {
        status: e.status,
        code: e.code.clone(),
        body: meta.err(&e),
        instance_codes: Vec::new(),
        replayed: false,
    };
    match check {
        TokenCheck::Proceed => None,
        TokenCheck::Replay(r) => Some(Executed {
            status: r.status,
            code: code_of(&r.body),
            body: with_request_id(r.body, &meta.request_id),
            instance_codes: r.instance_codes,
            replayed: true,
        }),
        TokenCheck::Mismatch => Some(refuse(ApiError::new(
            400,
            "IdempotentParameterMismatch",
            "The ClientToken was already used with different parameters.",
        ))),
        TokenCheck::InProgress => Some(refuse(ApiError::new(
            412,
            "IdempotentProcessing",
            "A request with the same ClientToken is still being processed.",
        ))),
    }
}

async fn execute(
    emu: Arc<Emulator>,
    caller: Caller,
    action: Action,
    params: Params,
    latency: Duration,
    details: DetailOverrides,
    meta: Meta,
) -> Executed {
    let token = caller.token.clone();
    let key = token.as_ref().map(|t| (action, t.clone()));
    let early = match &key {
        None => None,
        Some(key) => {
            let fingerprint = params.fingerprint();
            let check = {
                let mut inner = emu.lock();
                let replay = inner.cfg.replay;
                inner
                    .accounts
                    .get_mut(&caller.account)
                    .map(|a| a.store.token_begin(key, &fingerprint, replay))
            };
            match check {
                Some(check) => token_answer(check, &meta),
                None => return account_gone(&caller, &meta),
            }
        }
    };
    // Only a call about to execute has marked its token in flight.
    let mut guard = InFlight {
        emu: emu.clone(),
        account: caller.account.clone(),
        key: if early.is_none() { key.clone() } else { None },
    };
    // Latency is the server's processing time: every answer waits, and a token marked in
    // flight stays so meanwhile (concurrent re-sends see 412).
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(answer) = early {
        return answer;
    }
    let now = Timestamp::now();
    let mut guard_inner = emu.lock();
    let inner = &mut *guard_inner;
    if inner.accounts.get(&caller.account).is_none() {
        return account_gone(&caller, &meta);
    }
    let revert_deletions = inner.faults.take_revert(action, &caller.account);
    let cfg = &inner.cfg;
    let outcome = inner
        .accounts
        .with_store(&caller.account, |store, id_taken| {
            let ctx = Ctx {
                now,
                region: &meta.region,
                request_id: &meta.request_id,
                client_token: token.as_deref(),
                delays: cfg.delays,
                visibility_lag_ms: cfg.visibility_lag_ms,
                details: &details,
                tag_filter_limit: cfg.tag_filter_limit,
                revert_deletions,
                id_taken,
                unavailable_types: &cfg.unavailable_instance_types,
            };
            actions::dispatch(store, &ctx, action, &params)
        });
    let Some(outcome) = outcome else {
        return account_gone(&caller, &meta);
    };
    let (status, body, instance_codes) = match outcome {
        Ok(done) => (
            200,
            realistic(meta.ok(done.result), action, cfg),
            done.instance_codes,
        ),
        Err(e) => (e.status, meta.err(&e), Vec::new()),
    };
    if let (Some(key), Some(a)) = (guard.key.take(), inner.accounts.get_mut(&caller.account)) {
        a.store.token_finish(
            &key,
            Recorded {
                status,
                body: body.clone(),
                instance_codes: instance_codes.clone(),
            },
        );
    }
    drop(guard_inner);
    Executed {
        status,
        code: code_of(&body),
        body,
        instance_codes,
        replayed: false,
    }
}

fn render(reply: Reply, meta: &Meta) -> Response {
    match reply {
        Reply::Json {
            status,
            body,
            retry_after,
        } => {
            let mut r = json_response(status, body.to_string().into());
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            }
            r
        }
        Reply::Garbage {
            kind,
            status,
            bytes,
        } => garbage(kind, status, bytes, meta),
        Reply::Lost => {
            // A partial body followed by an error makes hyper abort the connection, so the
            // client sees a transport failure after the call was applied.
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"ResponseMetadata\":")),
                Err(std::io::Error::other("response deliberately lost")),
            ];
            let mut r = Response::new(Body::from_stream(futures::stream::iter(chunks)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
    }
}

/// The realism switches (`EmulatorConfig::null_empty`, `omit_operation_result`) applied to
/// a success: what the real API and both SDKs allow, and a client must read.
fn realistic(mut body: Value, action: Action, cfg: &crate::EmulatorConfig) -> Value {
    if let Some(envelope) = body.as_object_mut() {
        if cfg.omit_operation_result && action.result_optional() {
            envelope.remove("Result");
        } else if cfg.null_empty {
            if let Some(r) = envelope.get_mut("Result") {
                null_empties(r);
            }
        }
    }
    body
}

/// Every empty list, string or object below `v` (and `v` itself) becomes `null`.
fn null_empties(v: &mut Value) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(null_empties),
        Value::Object(o) => o.values_mut().for_each(null_empties),
        _ => {}
    }
    let empty = match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    };
    if empty {
        *v = Value::Null;
    }
}

fn json_response(status: u16, body: Body) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

fn garbage(kind: GarbageKind, status: u16, bytes: usize, meta: &Meta) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    match kind {
        GarbageKind::Html => (
            code,
            [(header::CONTENT_TYPE, "text/html")],
            format!("<html><head><title>{status}</title></head><body><center><h1>{status} {}</h1></center><hr><center>nginx</center></body></html>", code.canonical_reason().unwrap_or("")),
        )
            .into_response(),
        GarbageKind::TruncatedJson => {
            let full = meta.ok(serde_json::json!({"InstanceIds": ["i-truncated"]})).to_string();
            let cut = full.len() / 2;
            json_response(status, Body::from(full.as_bytes()[..cut].to_vec()))
        }
        GarbageKind::NoMetadata => json_response(status, Body::from("{\"Result\":{}}")),
        GarbageKind::Oversized => {
            let mut body = format!(
                "{{\"ResponseMetadata\":{{\"RequestId\":\"{}\"}},\"Result\":{{\"Padding\":\"",
                meta.request_id
            )
            .into_bytes();
            let tail = b"\"}}";
            let pad = bytes.saturating_sub(body.len() + tail.len());
            body.resize(body.len() + pad, b'x');
            body.extend_from_slice(tail);
            json_response(status, Body::from(body))
        }
        GarbageKind::Empty => json_response(status, Body::empty()),
    }
}
