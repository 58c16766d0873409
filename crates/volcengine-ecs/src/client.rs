//! The HTTP client for the ECS OpenAPI: flattening, signing, bounded reads, error
//! classification, retries with the same ClientToken, and client-side rate limits.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;
use url::Url;

use super::error::{CloudError, ErrorClass};
use super::limiter::{RateLimit, RegionLimiters};
use super::model::*;
use super::signer::{self, Credentials, SignRequest};
use super::Called;

/// Where the client reports what it did (the operator's Prometheus metrics implement it).
/// `code` is the cloud's error code, a local code, or "OK".
pub trait CallObserver: Send + Sync + std::fmt::Debug {
    fn cloud_call(&self, action: &str, code: &str, seconds: f64);
    /// A failed attempt, by the class the client itself acts on (a 429 without a code is
    /// throttling here as in the retry logic).
    fn cloud_error(&self, _action: &str, _class: ErrorClass) {}
    /// Time spent waiting for the client-side rate limiter before a call was sent.
    fn throttle_wait(&self, action: &str, seconds: f64);
}

pub const DEFAULT_ENDPOINT: &str = "https://open.volcengineapi.com";

/// Regions the global host does not serve: the official SDKs send them to
/// `ecs.<region>.volcengineapi.com` (their `bootstrapRegion` list,
/// volcengine-go-sdk `volcengine/volcengineutil/url.go`, and the Python SDK's
/// `default_provider.py`). Used only while the endpoint is the default one.
pub const REGIONAL_HOST_REGIONS: &[&str] = &[
    "cn-beijing-autodriving",
    "ap-southeast-2",
    "ap-southeast-3",
    "cn-shanghai-autodriving",
    "cn-beijing-selfdrive",
];

/// Everything the client needs; built once at startup from flags and environment.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: String,
    /// Per-region endpoints, over `endpoint` (`--region-endpoint REGION=URL`).
    pub region_endpoints: Vec<(String, String)>,
    pub region: String,
    pub credentials: Credentials,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Attempts per call, including the first (retries re-send the same ClientToken).
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub max_body_bytes: usize,
    pub rate_limit: RateLimit,
    /// Allow `http://` to a non-loopback host (never needed outside tests).
    pub allow_insecure_http: bool,
    /// Appended to the User-Agent (the replica's Lease identity), so the cloud's own logs
    /// tell which replica made a call.
    pub caller: Option<String>,
}

impl ClientConfig {
    pub fn new(endpoint: &str, region: &str, credentials: Credentials) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            region_endpoints: Vec::new(),
            region: region.to_string(),
            credentials,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            max_attempts: 3,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
            max_body_bytes: 4 << 20,
            rate_limit: RateLimit {
                rate: 4.0,
                burst: 10,
            },
            allow_insecure_http: false,
            caller: None,
        }
    }
}

fn user_agent(caller: Option<&str>) -> String {
    let base = concat!("volcengine-ecs-operator/", env!("CARGO_PKG_VERSION"));
    // Only visible ASCII: a header value must not carry control characters.
    let caller: String = caller
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    if caller.is_empty() {
        base.to_string()
    } else {
        format!("{base} ({caller})")
    }
}

/// Where one region's calls go: the URL and the host it is signed for.
#[derive(Debug, Clone)]
struct Endpoint {
    url: Url,
    host: String,
}

#[derive(Debug)]
pub struct EcsClient {
    http: reqwest::Client,
    endpoint: Endpoint,
    /// Regions served elsewhere (`ClientConfig::region_endpoints`, `REGIONAL_HOST_REGIONS`).
    regional: std::collections::HashMap<String, Endpoint>,
    cfg: ClientConfig,
    limiters: RegionLimiters,
    metrics: Option<Arc<dyn CallObserver>>,
    /// The key calls are signed with; replaced by `set_credentials` (a rotated Secret).
    /// Each logical call reads it once, so its retries carry the key it started with.
    credentials: std::sync::RwLock<Arc<Credentials>>,
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => *d == "localhost",
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => a.is_loopback(),
    }
}

impl EcsClient {
    pub fn new(
        cfg: ClientConfig,
        metrics: Option<Arc<dyn CallObserver>>,
    ) -> Result<Self, CloudError> {
        let endpoint = parse_endpoint(&cfg.endpoint, cfg.allow_insecure_http)?;
        let mut regional = std::collections::HashMap::new();
        if cfg.endpoint.trim_end_matches('/') == DEFAULT_ENDPOINT {
            for r in REGIONAL_HOST_REGIONS {
                let url = format!("https://ecs.{r}.volcengineapi.com");
                regional.insert(r.to_string(), parse_endpoint(&url, false)?);
            }
        }
        for (region, url) in &cfg.region_endpoints {
            regional.insert(
                region.clone(),
                parse_endpoint(url, cfg.allow_insecure_http)?,
            );
        }
        // Missing credentials are not a startup failure: the operator runs, and every call
        // fails with MissingCredentials, which every resource reports in its conditions.
        if let Some(missing) = cfg.credentials.missing() {
            tracing::warn!(
                missing,
                "no cloud credentials: every cloud call will fail with MissingCredentials"
            );
        }
        // TLS verification is always on: there is deliberately no switch to turn it off.
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(user_agent(cfg.caller.as_deref()))
            .build()
            .map_err(|e| CloudError::Config(format!("http client: {e}")))?;
        Ok(Self {
            http,
            endpoint,
            regional,
            limiters: RegionLimiters::new(cfg.rate_limit),
            credentials: std::sync::RwLock::new(Arc::new(cfg.credentials.clone())),
            cfg,
            metrics,
        })
    }

    /// The URL and signed host of a region's calls.
    fn endpoint_for(&self, region: &str) -> &Endpoint {
        self.regional.get(region).unwrap_or(&self.endpoint)
    }

    /// The URL a region's calls go to (for logs and tests).
    pub fn url_for(&self, region: &str) -> &str {
        self.endpoint_for(region).url.as_str()
    }

    pub fn default_region(&self) -> &str {
        &self.cfg.region
    }

    /// From the next call on, sign with these (a rotated key). Calls already started keep
    /// the key they started with, retries included.
    pub fn set_credentials(&self, credentials: Credentials) {
        let new = Arc::new(credentials);
        match self.credentials.write() {
            Ok(mut c) => *c = new,
            Err(p) => *p.into_inner() = new,
        }
    }

    /// The key the next call is signed with.
    pub fn credentials(&self) -> Arc<Credentials> {
        match self.credentials.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// One logical call: retried on retryable errors with the same parameters (and so the
    /// same ClientToken), re-signed on every attempt.
    pub async fn call<T: DeserializeOwned>(
        &self,
        region: &str,
        action: Action,
        params: Vec<(String, String)>,
    ) -> Result<Called<T>, CloudError> {
        let creds = self.credentials();
        if let Some(missing) = creds.missing() {
            let e = CloudError::MissingCredentials { action, missing };
            if let Some(m) = &self.metrics {
                m.cloud_call(action.as_str(), e.code(), 0.0);
                m.cloud_error(action.as_str(), e.class());
            }
            tracing::info!(%action, code = e.code(), error = %e, "cloud call not sent");
            return Err(e);
        }
        let limiter = self.limiters.get(region);
        let mut attempt = 1;
        // The key is taken when the first attempt leaves, not when the call was queued: a
        // call that waited behind the rate limiter through a rotation signs with the new key.
        // Its retries keep it.
        let mut signing: Option<Arc<Credentials>> = None;
        loop {
            let waited = limiter.acquire(action).await;
            if let Some(m) = &self.metrics {
                m.throttle_wait(action.as_str(), waited.as_secs_f64());
            }
            let key = signing.get_or_insert_with(|| self.credentials()).clone();
            let started = Instant::now();
            let (res, retry_after) = self.once::<T>(&key, region, action, &params).await;
            let code = match &res {
                Ok(_) => "OK",
                Err(e) => e.code(),
            };
            if let Some(m) = &self.metrics {
                m.cloud_call(action.as_str(), code, started.elapsed().as_secs_f64());
                if let Err(e) = &res {
                    m.cloud_error(action.as_str(), e.class());
                }
            }
            match res {
                Ok(v) => {
                    tracing::debug!(%action, request_id = %v.request_id, attempt, "cloud call ok");
                    limiter.on_success(action);
                    return Ok(v);
                }
                Err(e) => {
                    let class = e.class();
                    tracing::info!(%action, code = e.code(), request_id = e.request_id().unwrap_or(""),
                        attempt, error = %e, "cloud call failed");
                    // The server's own word on when to come back outranks our backoff.
                    let hint = retry_after.filter(|_| e.is_retryable());
                    if class == ErrorClass::Throttled {
                        limiter.on_throttled(action, hint);
                    }
                    let wait = self.backoff(attempt).max(hint.unwrap_or_default());
                    if !e.is_retryable()
                        || attempt >= self.cfg.max_attempts
                        || wait > MAX_IN_CALL_WAIT
                    {
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .cfg
            .retry_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cfg.retry_max);
        // Full jitter keeps many replicas from retrying in lockstep.
        let ms = exp.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    /// One attempt, and the `Retry-After` its answer carried.
    async fn once<T: DeserializeOwned>(
        &self,
        creds: &Credentials,
        region: &str,
        action: Action,
        params: &[(String, String)],
    ) -> (Result<Called<T>, CloudError>, Option<Duration>) {
        let resp = match self.send(creds, region, action, params).await {
            Ok(r) => r,
            Err(e) => return (Err(e), None),
        };
        let retry_after = retry_after(resp.headers(), jiff::Timestamp::now());
        let status = resp.status().as_u16();
        let parsed = match self.read_bounded(action, status, resp).await {
            Ok(body) => parse_response(action, status, &body),
            Err(e) => Err(e),
        };
        (parsed, retry_after)
    }

    async fn send(
        &self,
        creds: &Credentials,
        region: &str,
        action: Action,
        params: &[(String, String)],
    ) -> Result<reqwest::Response, CloudError> {
        let mut query: Vec<(String, String)> = params.to_vec();
        query.push(("Action".into(), action.as_str().into()));
        query.push(("Version".into(), API_VERSION.into()));
        let x_date = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let ep = self.endpoint_for(region);
        let sig = signer::sign(
            creds,
            &SignRequest {
                method: "GET",
                host: &ep.host,
                path: "/",
                query: &query,
                headers: &[],
                body: b"",
                x_date: &x_date,
                region,
                service: SERVICE,
            },
        );
        let mut url = ep.url.clone();
        url.set_path("/");
        // The wire query is the canonical query, so the server's decoding cannot disagree.
        url.set_query(Some(&signer::canonical_query(&query)));
        let mut req = self.http.get(url).header("Accept", "application/json");
        for (k, v) in &sig.headers {
            req = req.header(k, v);
        }
        req.send()
            .await
            .map_err(|e| self.transport_error(action, e))
    }

    fn transport_error(&self, action: Action, e: reqwest::Error) -> CloudError {
        if e.is_timeout() {
            CloudError::Timeout {
                action,
                after: self.cfg.request_timeout,
            }
        } else {
            // reqwest errors carry the URL (our query, no secrets) and the cause.
            CloudError::Network {
                action,
                detail: error_chain(&e),
            }
        }
    }

    async fn read_bounded(
        &self,
        action: Action,
        status: u16,
        resp: reqwest::Response,
    ) -> Result<Vec<u8>, CloudError> {
        let limit = self.cfg.max_body_bytes;
        if resp.content_length().is_some_and(|n| n as usize > limit) {
            return Err(CloudError::BadResponse {
                action,
                status,
                detail: format!("body larger than {limit} bytes"),
                request_id: None,
            });
        }
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.transport_error(action, e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(CloudError::BadResponse {
                    action,
                    status,
                    detail: format!("body larger than {limit} bytes"),
                    request_id: None,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A `Retry-After` longer than this is not slept through inside one call: the call fails
/// (a throttled action's limiter stays paused, up to `limiter::MAX_RETRY_AFTER`) and the
/// caller plans again, with fresh checks, after its own backoff.
pub const MAX_IN_CALL_WAIT: Duration = Duration::from_secs(5);

/// `Retry-After` as delta-seconds (what the Go SDK reads) or an HTTP-date; anything else,
/// or a date in the past, is no hint.
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: jiff::Timestamp) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let d = at.duration_since(now);
    (d.is_positive()).then(|| d.unsigned_abs())
}

/// An endpoint URL and the host it is signed for; plain http only to loopback unless
/// explicitly allowed.
fn parse_endpoint(raw: &str, allow_insecure_http: bool) -> Result<Endpoint, CloudError> {
    let url = Url::parse(raw).map_err(|e| CloudError::Config(format!("endpoint {raw:?}: {e}")))?;
    let host = url
        .host()
        .ok_or_else(|| CloudError::Config(format!("endpoint {raw:?} has no host")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&host) || allow_insecure_http => {}
        "http" => {
            return Err(CloudError::Config(format!(
            "refusing plain http to non-loopback endpoint {raw}; use https or allow it explicitly"
        )))
        }
        s => {
            return Err(CloudError::Config(format!(
                "unsupported endpoint scheme {s:?}"
            )))
        }
    }
    let host = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Ok(Endpoint { url, host })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Codes and request ids are short identifiers; longer ones are cut to this.
const MAX_ID_CHARS: usize = 128;

/// The cloud's code, bounded; "Unknown" when it gave none.
fn code_or_unknown(code: &str) -> String {
    if code.is_empty() {
        "Unknown".into()
    } else {
        code.chars().take(MAX_ID_CHARS).collect()
    }
}

/// A parser's complaint, cut short: serde quotes the offending value whole, and the body may
/// be megabytes (the error goes to logs, conditions and Events).
fn short(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    if s.chars().count() <= 200 {
        return s;
    }
    let mut cut: String = s.chars().take(200).collect();
    cut.push_str("...");
    cut
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(120)]);
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Turns a raw HTTP answer into a result or a typed error. Checks both the HTTP status and
/// `ResponseMetadata.Error`, as the SDKs do. Never panics, whatever the body.
pub fn parse_response<T: DeserializeOwned>(
    action: Action,
    status: u16,
    body: &[u8],
) -> Result<Called<T>, CloudError> {
    let bad = |detail: String, request_id: Option<String>| CloudError::BadResponse {
        action,
        status,
        detail,
        request_id,
    };
    if body.is_empty() {
        return Err(bad("empty body".into(), None));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad(
            format!("not JSON ({}): {:?}", short(&e), snippet(body)),
            None,
        )
    })?;
    let Some(meta) = value.get("ResponseMetadata") else {
        // The gateway's "simple error" shape: {"HTTPCode":..,"errorcode":..,"message":..}
        if let Some(code) = value.get("errorcode").and_then(Value::as_str) {
            return Err(CloudError::Api {
                action,
                code: code_or_unknown(code),
                code_n: None,
                message: value
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(512)
                    .collect(),
                status,
                request_id: String::new(),
            });
        }
        return Err(bad("no ResponseMetadata".into(), None));
    };
    let mut meta: ResponseMetadata = serde_json::from_value(meta.clone())
        .map_err(|e| bad(format!("malformed ResponseMetadata: {}", short(&e)), None))?;
    // Real ones are 34 characters; whatever comes back ends up in every message.
    meta.request_id = meta.request_id.chars().take(MAX_ID_CHARS).collect();
    if let Some(err) = meta.error {
        return Err(CloudError::Api {
            action,
            code: code_or_unknown(&err.code),
            code_n: err.code_n,
            message: err.message.chars().take(512).collect(),
            status,
            request_id: meta.request_id,
        });
    }
    if !(200..300).contains(&status) {
        return Err(bad(
            "error status without an error in ResponseMetadata".into(),
            Some(meta.request_id),
        ));
    }
    let result = match value.get("Result") {
        Some(r) if !r.is_null() => r.clone(),
        // An operation action's success carries only the common parameters.
        _ if action.result_optional() => Value::Object(Default::default()),
        _ => return Err(bad("no Result".into(), Some(meta.request_id))),
    };
    let value: T = serde_json::from_value(result).map_err(|e| {
        bad(
            format!("malformed Result: {}", short(&e)),
            Some(meta.request_id.clone()),
        )
    })?;
    Ok(Called {
        request_id: meta.request_id,
        value,
    })
}

/// An entry without an `InstanceId` (`null` reads as empty) would make the VM asked about
/// look unlisted, which is read as gone: such an answer is unusable, not an empty one.
fn unnamed_instance(r: &Called<DescribeInstancesResult>) -> Result<(), CloudError> {
    match r.value.instances.iter().any(|i| i.instance_id.is_empty()) {
        true => Err(CloudError::BadResponse {
            action: Action::DescribeInstances,
            status: 200,
            detail: "an instance without InstanceId".into(),
            request_id: Some(r.request_id.clone()),
        }),
        false => Ok(()),
    }
}

/// One method per action the operator uses, with typed parameters and answers.
impl EcsClient {
    pub async fn describe_instances(
        &self,
        region: &str,
        query: DescribeQuery,
    ) -> Result<Called<DescribeInstancesResult>, CloudError> {
        let r: Called<DescribeInstancesResult> = self
            .call(
                region,
                Action::DescribeInstances,
                query.to_params().into_vec(),
            )
            .await?;
        unnamed_instance(&r)?;
        Ok(r)
    }

    pub async fn delete_instances(
        &self,
        region: &str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> Result<Called<Vec<OperationDetail>>, CloudError> {
        self.per_instance(
            region,
            Action::DeleteInstances,
            &instance_ids,
            &[],
            client_token,
        )
        .await
    }

    pub async fn run_instances(
        &self,
        region: &str,
        req: RunInstancesRequest,
    ) -> Result<Called<Vec<String>>, CloudError> {
        let r: Called<RunInstancesResult> = self
            .call(region, Action::RunInstances, req.to_params().into_vec())
            .await?;
        Ok(Called {
            request_id: r.request_id,
            value: r.value.instance_ids,
        })
    }

    pub async fn set_deletion_protection(
        &self,
        region: &str,
        instance_id: String,
        enabled: bool,
    ) -> Result<Called<()>, CloudError> {
        let mut p = Params::new();
        p.set("InstanceId", instance_id)
            .set("DeletionProtection", enabled);
        let r: Called<EmptyResult> = self
            .call(region, Action::ModifyInstanceAttribute, p.into_vec())
            .await?;
        Ok(Called {
            request_id: r.request_id,
            value: (),
        })
    }

    /// ModifyInstanceAttribute with the name and/or description (the fields not given
    /// keep their values; an empty description clears it) and a ClientToken.
    pub async fn modify_instance_attribute(
        &self,
        region: &str,
        instance_id: String,
        name: Option<String>,
        description: Option<String>,
        client_token: String,
    ) -> Result<Called<()>, CloudError> {
        let mut p = Params::new();
        p.set("InstanceId", instance_id);
        if let Some(n) = name {
            p.set("InstanceName", n);
        }
        if let Some(d) = description {
            p.set("Description", d);
        }
        p.set("ClientToken", client_token);
        let r: Called<EmptyResult> = self
            .call(region, Action::ModifyInstanceAttribute, p.into_vec())
            .await?;
        Ok(Called {
            request_id: r.request_id,
            value: (),
        })
    }

    /// ModifyInstanceSpec with `InstanceTypeId` (the documented name; Terraform sends
    /// `InstanceType`) and a ClientToken. Returns the OrderId.
    pub async fn modify_instance_spec(
        &self,
        region: &str,
        instance_id: String,
        instance_type_id: String,
        client_token: String,
    ) -> Result<Called<String>, CloudError> {
        let mut p = Params::new();
        p.set("InstanceId", instance_id)
            .set("InstanceTypeId", instance_type_id)
            .set("ClientToken", client_token);
        let r: Called<ModifyInstanceSpecResult> = self
            .call(region, Action::ModifyInstanceSpec, p.into_vec())
            .await?;
        Ok(Called {
            request_id: r.request_id,
            value: r.value.order_id,
        })
    }

    /// StopInstances with `StoppedMode=KeepCharging` (the VM keeps its vCPU and memory, so
    /// the start that follows cannot fail for want of stock) and no ForceStop (a clean
    /// shutdown). One `OperationDetail` per ID.
    pub async fn stop_instances(
        &self,
        region: &str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> Result<Called<Vec<OperationDetail>>, CloudError> {
        let mode = [("StoppedMode", "KeepCharging")];
        self.per_instance(
            region,
            Action::StopInstances,
            &instance_ids,
            &mode,
            client_token,
        )
        .await
    }

    /// StartInstances. One `OperationDetail` per ID.
    pub async fn start_instances(
        &self,
        region: &str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> Result<Called<Vec<OperationDetail>>, CloudError> {
        self.per_instance(
            region,
            Action::StartInstances,
            &instance_ids,
            &[],
            client_token,
        )
        .await
    }

    /// A batch action with `InstanceIds.N`, a ClientToken and an `OperationDetails` answer
    /// (one entry per ID): DeleteInstances, StopInstances, StartInstances.
    async fn per_instance(
        &self,
        region: &str,
        action: Action,
        instance_ids: &[String],
        extra: &[(&str, &str)],
        client_token: String,
    ) -> Result<Called<Vec<OperationDetail>>, CloudError> {
        let mut p = Params::new();
        p.list("InstanceIds", instance_ids);
        for (k, v) in extra {
            p.set(*k, *v);
        }
        p.set("ClientToken", client_token);
        let r: Called<OperationDetailsResult> = self.call(region, action, p.into_vec()).await?;
        Ok(Called {
            request_id: r.request_id,
            value: r.value.operation_details,
        })
    }

    pub async fn untag_instances(
        &self,
        region: &str,
        instance_ids: Vec<String>,
        tag_keys: Vec<String>,
    ) -> Result<Called<()>, CloudError> {
        let mut p = Params::new();
        p.list("ResourceIds", &instance_ids)
            .set("ResourceType", "instance")
            .list("TagKeys", &tag_keys);
        let r: Called<EmptyResult> = self
            .call(region, Action::UntagResources, p.into_vec())
            .await?;
        Ok(Called {
            request_id: r.request_id,
            value: (),
        })
    }

    pub async fn tag_instances(
        &self,
        region: &str,
        instance_ids: Vec<String>,
        tags: Vec<Tag>,
    ) -> Result<Called<()>, CloudError> {
        let mut p = Params::new();
        p.list("ResourceIds", &instance_ids)
            .set("ResourceType", "instance");
        for (i, t) in tags.iter().enumerate() {
            p.set(format!("Tags.{}.Key", i + 1), &t.key)
                .set(format!("Tags.{}.Value", i + 1), &t.value);
        }
        let r: Called<EmptyResult> = self
            .call(region, Action::TagResources, p.into_vec())
            .await?;
        Ok(Called {
            request_id: r.request_id,
            value: (),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> Result<Called<OperationDetailsResult>, CloudError> {
        parse_response(Action::DeleteInstances, status, body.as_bytes())
    }

    /// An operation action's success may come without `Result`, or with `null`; an action
    /// whose answer is data may not (a DescribeInstances without `Result` is not "no VMs").
    #[test]
    fn operation_actions_succeed_without_result() {
        for body in [
            r#"{"ResponseMetadata":{"RequestId":"r1"}}"#,
            r#"{"ResponseMetadata":{"RequestId":"r1"},"Result":null}"#,
        ] {
            for a in [
                Action::ModifyInstanceAttribute,
                Action::UntagResources,
                Action::TagResources,
                Action::DeleteInstance,
            ] {
                let r = parse_response::<EmptyResult>(a, 200, body.as_bytes());
                assert_eq!(r.unwrap().request_id, "r1", "{a} {body}");
            }
            for a in [
                Action::DescribeInstances,
                Action::DeleteInstances,
                Action::RunInstances,
            ] {
                let e =
                    parse_response::<DescribeInstancesResult>(a, 200, body.as_bytes()).unwrap_err();
                assert_eq!(e.code(), "BadResponse", "{a} {body}");
            }
        }
    }

    #[test]
    fn an_instance_without_an_id_makes_the_answer_unusable() {
        let mut r = Called {
            request_id: "r".into(),
            value: DescribeInstancesResult {
                instances: vec![Instance {
                    instance_id: "i-a".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        };
        assert!(unnamed_instance(&r).is_ok());
        r.value.instances.push(Instance::default());
        assert_eq!(unnamed_instance(&r).unwrap_err().code(), "BadResponse");
    }

    /// The SDKs' regional-host regions go to their own host while the endpoint is the
    /// default; an explicit per-region endpoint wins; every other region uses the endpoint.
    #[test]
    fn each_region_goes_to_its_endpoint() {
        let creds = Credentials {
            access_key: "ak".into(),
            secret_key: crate::signer::Secret::new("sk"),
            session_token: None,
        };
        let mut cfg = ClientConfig::new(DEFAULT_ENDPOINT, "cn-beijing", creds.clone());
        cfg.region_endpoints = vec![(
            "cn-shanghai".into(),
            "https://ecs.cn-shanghai.volcengineapi.com".into(),
        )];
        let c = EcsClient::new(cfg, None).unwrap();
        assert_eq!(c.url_for("cn-beijing"), "https://open.volcengineapi.com/");
        assert_eq!(
            c.url_for("ap-southeast-3"),
            "https://ecs.ap-southeast-3.volcengineapi.com/"
        );
        assert_eq!(
            c.url_for("cn-shanghai"),
            "https://ecs.cn-shanghai.volcengineapi.com/"
        );
        let c = EcsClient::new(
            ClientConfig::new("http://127.0.0.1:9", "cn-beijing", creds.clone()),
            None,
        )
        .unwrap();
        assert_eq!(c.url_for("ap-southeast-3"), "http://127.0.0.1:9/");
        let mut cfg = ClientConfig::new(DEFAULT_ENDPOINT, "cn-beijing", creds);
        cfg.region_endpoints = vec![("x".into(), "http://example.com".into())];
        assert!(
            EcsClient::new(cfg, None).is_err(),
            "plain http to a remote host"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now: jiff::Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        let h = |v: &str| {
            let mut m = reqwest::header::HeaderMap::new();
            m.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            m
        };
        assert_eq!(retry_after(&h("3"), now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&h(" 0 "), now), Some(Duration::ZERO));
        assert_eq!(
            retry_after(&h("Wed, 02 Dec 2026 10:00:05 GMT"), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(retry_after(&h("Wed, 02 Dec 2026 09:59:00 GMT"), now), None);
        assert_eq!(retry_after(&h("soon"), now), None);
        assert_eq!(retry_after(&h("-1"), now), None);
        assert_eq!(retry_after(&Default::default(), now), None);
    }

    #[test]
    fn garbage_bodies_are_errors_with_status() {
        for (status, body, want) in [
            (502, "<html><body>Bad Gateway</body></html>", "BadResponse"),
            (
                200,
                "{\"ResponseMetadata\":{\"RequestId\":\"r\"},\"Result\":{\"Operat",
                "BadResponse",
            ),
            (200, "{\"Result\":{}}", "BadResponse"),
            (200, "", "BadResponse"),
            (
                500,
                "{\"ResponseMetadata\":{\"RequestId\":\"r\"}}",
                "BadResponse",
            ),
            (
                200,
                "{\"ResponseMetadata\":{\"RequestId\":\"r\"},\"Result\":null}",
                "BadResponse",
            ),
            (200, "[1,2]", "BadResponse"),
            (
                200,
                "{\"ResponseMetadata\":{\"RequestId\":\"r\"},\"Result\":{\"OperationDetails\":5}}",
                "BadResponse",
            ),
        ] {
            let e = parse(status, body).unwrap_err();
            assert_eq!(e.code(), want, "{body}");
            assert_eq!(e.http_status(), Some(status));
        }
    }

    #[test]
    fn error_envelope_on_200_is_an_error() {
        let e = parse(200, r#"{"ResponseMetadata":{"RequestId":"rid","Error":{"Code":"InvalidInstanceStatus","Message":"busy"}}}"#).unwrap_err();
        assert_eq!(e.code(), "InvalidInstanceStatus");
        assert_eq!(e.request_id(), Some("rid"));
    }

    /// Found by fuzz/parse_response: an empty gateway `errorcode` made an error without a
    /// code (empty metric label, "failed: : " in conditions).
    #[test]
    fn simple_error_shape_without_code_or_with_a_huge_message() {
        let e = parse(429, r#"{"de": 429, "errorcode": ""}"#).unwrap_err();
        assert_eq!(e.code(), "Unknown");
        assert_eq!(e.class(), ErrorClass::Throttled);
        let long = "m".repeat(5000);
        let body = format!(r#"{{"errorcode":"Oops","message":"{long}"}}"#);
        let e = parse(
            400,
            &format!(
                r#"{{"ResponseMetadata":{{"RequestId":"{long}","Error":{{"Code":"{long}"}}}}}}"#
            ),
        )
        .unwrap_err();
        assert_eq!((e.code().len(), e.request_id().unwrap().len()), (128, 128));
        match parse(502, &body).unwrap_err() {
            CloudError::Api { message, .. } => assert_eq!(message.len(), 512),
            e => panic!("{e:?}"),
        }
    }

    /// serde quotes an offending string whole: a huge field must not make a huge error.
    #[test]
    fn details_stay_short_whatever_the_body() {
        let huge = "y".repeat(100_000);
        for body in [
            format!(
                r#"{{"ResponseMetadata":{{"RequestId":"r"}},"Result":{{"OperationDetails":"{huge}"}}}}"#
            ),
            format!(r#"{{"ResponseMetadata":{{"RequestId":"{huge}","Error":5}}}}"#),
            format!(
                r#"{{"ResponseMetadata":{{"RequestId":"r"}},"Result":{{"OperationDetails":[]}},"{huge}"#
            ),
            format!(r#"{{"ResponseMetadata":{{"RequestId":"{huge}"}},"Result":5}}"#),
        ] {
            let e = parse(200, &body).unwrap_err();
            assert_eq!(e.code(), "BadResponse");
            assert!(e.to_string().len() < 600, "{} bytes", e.to_string().len());
        }
    }

    #[test]
    fn simple_error_shape() {
        let e = parse(
            429,
            r#"{"HTTPCode":429,"errorcode":"FlowLimitExceeded","message":"slow down"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), "FlowLimitExceeded");
        assert_eq!(e.class(), ErrorClass::Throttled);
    }

    #[tokio::test]
    async fn missing_credentials_fail_every_call_without_sending_it() {
        for (ak, sk, missing) in [
            ("", "sk", "VOLCENGINE_ACCESS_KEY"),
            ("ak", "", "VOLCENGINE_SECRET_KEY"),
            ("", "", "VOLCENGINE_ACCESS_KEY"),
        ] {
            let creds = Credentials {
                access_key: ak.into(),
                secret_key: signer::Secret::new(sk),
                session_token: Some(signer::Secret::new("tok-not-shown")),
            };
            // Port 9 (discard) is never reached: the call fails before the limiter and the wire.
            let c = EcsClient::new(
                ClientConfig::new("http://127.0.0.1:9", "cn-beijing", creds),
                None,
            )
            .expect("missing credentials are not a startup failure");
            let e = c
                .describe_instances("cn-beijing", DescribeQuery::default())
                .await
                .unwrap_err();
            assert_eq!(e.code(), "MissingCredentials");
            assert_eq!(e.class(), ErrorClass::Auth);
            assert!(!e.is_retryable());
            let shown = e.to_string();
            assert!(
                shown.contains("MissingCredentials") && shown.contains(missing),
                "{shown}"
            );
            assert!(!shown.contains("tok-not-shown"), "{shown}");
        }
    }

    /// A rotated key: a call in flight keeps the key it started with through its retries;
    /// the next call signs with the new one. A raw HTTP server answers the first request
    /// with a retryable 500 and swaps the client's key while that call waits to retry.
    #[tokio::test]
    async fn a_call_in_flight_keeps_its_key_and_the_next_call_takes_the_new_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let key = |ak: &str| Credentials {
            access_key: ak.into(),
            secret_key: signer::Secret::new("sk"),
            session_token: None,
        };
        let mut cfg = ClientConfig::new(&url, "cn-beijing", key("AK-OLD"));
        cfg.retry_base = Duration::from_millis(1);
        cfg.rate_limit = RateLimit {
            rate: 0.0,
            burst: 1,
        };
        let client = Arc::new(EcsClient::new(cfg, None).unwrap());
        let server = {
            let client = client.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for n in 0..3 {
                    let (mut sock, _) = listener.accept().await.unwrap();
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        len += sock.read(&mut buf[len..]).await.unwrap();
                    }
                    let head = String::from_utf8_lossy(&buf[..len]).to_lowercase();
                    let ak = head
                        .split("credential=")
                        .nth(1)
                        .and_then(|r| r.split('/').next())
                        .unwrap_or_default()
                        .to_uppercase();
                    seen.push(ak);
                    let (status, body) = if n == 0 {
                        // The rotation lands while the first call is in flight.
                        client.set_credentials(key("AK-NEW"));
                        (
                            "500 Internal Server Error",
                            r#"{"ResponseMetadata":{"RequestId":"r0","Error":{"Code":"InternalError","Message":"x"}}}"#,
                        )
                    } else {
                        (
                            "200 OK",
                            r#"{"ResponseMetadata":{"RequestId":"r1"},"Result":{"Instances":[],"NextToken":"","TotalCount":0}}"#,
                        )
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    sock.write_all(resp.as_bytes()).await.unwrap();
                }
                seen
            })
        };
        client
            .describe_instances("cn-beijing", DescribeQuery::default())
            .await
            .unwrap();
        client
            .describe_instances("cn-beijing", DescribeQuery::default())
            .await
            .unwrap();
        assert_eq!(server.await.unwrap(), ["AK-OLD", "AK-OLD", "AK-NEW"]);
    }

    #[test]
    fn refuses_plain_http_to_remote_hosts() {
        let creds = Credentials {
            access_key: "ak".into(),
            secret_key: signer::Secret::new("sk"),
            session_token: None,
        };
        let remote = ClientConfig::new("http://example.com", "cn-beijing", creds.clone());
        assert!(matches!(
            EcsClient::new(remote, None),
            Err(CloudError::Config(_))
        ));
        let local = ClientConfig::new("http://127.0.0.1:9", "cn-beijing", creds.clone());
        assert!(EcsClient::new(local, None).is_ok());
        let mut allowed = ClientConfig::new("http://example.com", "cn-beijing", creds);
        allowed.allow_insecure_http = true;
        assert!(EcsClient::new(allowed, None).is_ok());
    }
}
