//! A local, in-memory Volcengine ECS endpoint (API 2020-04-01, service `ecs`) that speaks the
//! real wire protocol: signed GET (or POST form) requests on `/`, the `ResponseMetadata`
//! envelope, batch `OperationDetails`, ClientToken idempotency. It backs the integration and
//! end-to-end tests, demos and offline pipelines (the `ecs-emulator` binary). It is a test
//! tool: the operator crate does not depend on it and its image does not contain it.
//!
//! Besides the real API there is an unsigned admin JSON API under `/_emulator/` (see
//! `admin.rs`) to seed instances, inject faults, manage accounts and keys, and read the call
//! and deletion logs.
//! `--request-log PATH` appends every HTTP request as it arrived (`reqlog.rs`), for checkers
//! that are not ours (the official Python SDK's signer in `tests/python`).
//!
//! Choices the Volcengine docs leave open, made here and relied on by tests:
//! - unknown region in the credential scope: 400 `InvalidRegion`;
//! - deleting a protected instance: 400 `OperationDenied.DeletionProtection`;
//! - a zone outside the request's region: 404 `InvalidZoneId.NotFound`;
//! - StopInstances only accepts RUNNING and StartInstances only STOPPED instances
//!   (per instance `InvalidInstanceStatus` otherwise);
//! - ModifyInstanceSpec (docs 6396/76277, BytePlus ModifyInstanceSpec) requires `InstanceId`
//!   and `InstanceTypeId` (`MissingParameter.<name>`, both documented; the Go SDK marks only
//!   InstanceId required). `InstanceType`, the name Terraform sends, is accepted in place of
//!   `InstanceTypeId` (which wins when both are given). Chosen, as no code is documented (the
//!   stored doc's error table is cut off after `InvalidClientToken.Malformed`): a type not
//!   of the form `ecs.<family>.<size>` (lower-case letters, digits, `-`) is 400
//!   `InvalidInstanceTypeId.Malformed`; a type listed in the admin config
//!   `unavailable_instance_types` (default empty; no stock, not sold) is 400
//!   `ResourceNotFound.InstanceType`. The status precondition is not documented by Volcengine
//!   (the "instance must be Stopped" rule found online is Alibaba Cloud's); Terraform stops
//!   the VM first (`//need stop before ModifyInstanceSpec`), so here only a STOPPED instance
//!   is accepted (400 `InvalidInstanceStatus` otherwise). The change is immediate: the VM
//!   stays STOPPED with the new `InstanceTypeId` and a new `UpdatedAt`; the answer is
//!   `{InstanceId, OrderId}` (`Order` and 19 digits, as the documented sample). The
//!   instance's current type is a success that changes nothing (an unavailable type too, as
//!   it needs no new stock). `DryRun=true` answers `DryRunOperation` after every check
//!   (status and availability included, as documented: "business limits and ECS stock").
//!   Checks run in that order: parameters, type format, instance (404
//!   `InvalidInstance.NotFound`), status, availability, DryRun. Its ClientToken is honoured
//!   as for every mutating action (a re-sent token replays the recorded answer, OrderId
//!   included; other parameters under it are `IdempotentParameterMismatch`);
//! - ModifyInstanceAttribute's `Description` follows doc 92110: "" clears it (an empty
//!   `Description`, not an absent one), else it starts with a letter (Chinese included) and
//!   holds only letters, digits, `. _ - =`, space, `,`, `，`, `。`, at most 255 characters;
//!   otherwise 400 `InvalidDescription.Malformed` (code chosen by the documented pattern)
//!   and nothing changes. An absent Description keeps the current one;
//! - only accepted (2xx) answers are recorded for a ClientToken: a refused call leaves the
//!   token free;
//! - X-Date may be off by at most 15 minutes (`--max-clock-skew-secs`);
//! - DescribeInstances with TagFilters resolves at most 1,000 instances (documented: "tag
//!   filtering can only ever resolve up to 1,000 instances"; which ones and what TotalCount
//!   then says are not). Here: the first 1,000 matches in listing order (instance ID), pages
//!   and NextToken walk only those, and TotalCount says 1,000, so nothing in the answer shows
//!   the cut (the hardest case for a client). `--tag-filter-limit N` (0 = no limit) and
//!   `tag_filter_limit` in `/_emulator/config` change it; without TagFilters there is none.
//! - TagResources overwrites the value of a key the instance already carries, and like
//!   UntagResources fails as a whole (`InvalidInstance.NotFound`) if any ID is unknown;
//! - eventual consistency (`--visibility-lag-ms`, admin config `visibility_lag_ms`, default
//!   0 = off): for that long after RunInstances the new instance is invisible to the whole
//!   real API: DescribeInstances by ID and by TagFilters do not return it, and
//!   DeleteInstances (like every other action naming it) answers `InvalidInstance.NotFound`
//!   without deleting it. That is the unfavourable case: a client that takes this NotFound
//!   for "already gone" leaks the VM. The admin API always sees it.
//! - throttling: 429 `FlowLimitExceeded` by default. Whether the real gateway ever sends
//!   `Retry-After` is not documented (the Go SDK reads it on 429 and 503, whole seconds
//!   only: `volcengine/client/default_retryer.go`); the faults `retry_after_secs`,
//!   `throttle_code` and `throttle_status` produce each variant the SDKs handle.
//! - limits whose codes are documented (ECS UntagResources, docs 6396/1394799): more than 50
//!   `ResourceIds` is 400 `LimitExceeded.MaximumResourceIds`, more than 20 `TagKeys`
//!   `LimitExceeded.MaximumTagKeys`, a bad key `InvalidTagKey.Malformed` (1-128 letters,
//!   digits, spaces, `_ . : / = + - @`, no `volc:`/`sys:` prefix in any case). Not
//!   documented, chosen by the same pattern: more than 20 `Tags` per call
//!   `LimitExceeded.MaximumTags`, more than 50 tags on one VM
//!   `LimitExceeded.MaximumTagsPerResource`;
//! - RunInstances requires `NetworkInterfaces.1.SubnetId`, at least one
//!   `NetworkInterfaces.1.SecurityGroupIds.N` and every `Volumes.N.Size` (`required:"true"`
//!   in the Go SDK; `MissingParameter.<name>`). `Volumes.1` is the system disk: 20-2048 GiB,
//!   PTSSD 10-500 (Terraform's ranges), else 400 `InvalidSystemVolumeSize.Malformed` (code
//!   chosen). UserData must be base64 of at most 16 KiB, else `InvalidUserData.Malformed`
//!   (code chosen; the limit is documented for launch templates);
//! - `Action` and `Version` are read from the query string only, as documented; a form body
//!   carries the other parameters;
//! - times (`CreatedAt`, `UpdatedAt`, `ExpiredAt`) are RFC 3339 at `+08:00`, as Terraform
//!   expects when it cuts them at the `+`; the admin API accepts any RFC 3339 time;
//! - `--realism` (admin config `null_empty`, `omit_operation_result`): `null` for every empty
//!   list, string and object of a `Result`, and no `Result` at all for the actions that
//!   return only the common parameters. Both SDKs read either.
//! - `--throttle-every N` (admin config `throttle_every`): every Nth real-API call is
//!   throttled before it is applied, with each throttling answer the SDKs know in turn
//!   (`faults::THROTTLE_VARIANTS`). The deletion and lifecycle end-to-end suites run with
//!   it, `--realism` and a visibility lag (`Emulator::realistic` in the test harness).
//! - fault `unapplied_next` (operation actions only): success without the change, as a
//!   tag write not yet visible to DescribeInstances looks. Whether the real tag index lags
//!   is not documented; the operator confirms an untag by describing before it relies on it.
//! - several accounts (`accounts.rs`): `--access-key`/`--secret-key` are the keys of the
//!   account `default`; `--account NAME:AK:SK` (repeatable; `EMULATOR_ACCOUNTS`, comma
//!   separated, is read when no flag is given) adds an account or a key to one, and so does
//!   the admin `POST /accounts` at run time. An access key belongs to exactly one account (one given to two accounts is
//!   refused at startup, and with 409 by the admin API); each account has its own instances,
//!   deletions log, ClientToken records and private IP sequence. A call acts only on the
//!   store of the account whose key signed it, so ClientTokens are per account (the same
//!   token in two accounts is two requests). Instance IDs are global: no two accounts ever
//!   hold the same ID (RunInstances and the admin seeds skip IDs taken anywhere).
//! - another account's instance looks exactly like one that does not exist: DescribeInstances
//!   (by ID or TagFilters) omits it, batch actions answer its `OperationDetails` entry
//!   `InvalidInstance.NotFound`, TagResources/UntagResources/ModifyInstanceAttribute/
//!   DeleteInstance answer 404 `InvalidInstance.NotFound`, and nothing of it changes.
//! - the admin `PATCH /_emulator/instances/{id}` models what the console or the cloud
//!   changes behind the operator's back: `Description`, `InstanceTypeId`, `PrivateIp` (the
//!   primary interface's `PrimaryIpAddress`), `PublicIp` (`EipAddress.IpAddress`, with an
//!   `eip-...` AllocationId kept across changes; "" removes the EIP), besides `Status`,
//!   `InstanceName`, `Tags`, ... A `Status` runs its configured delay (`stop_delay_ms`
//!   for STOPPING, ...); with `"Hold": true` the status (the patched one, or the current
//!   one, e.g. the STOPPING a StopInstances started) stays until a later patch sets a
//!   `Status`, so a test can keep a VM STOPPING as long as it likes;
//! - a key revoked at run time (`DELETE /_emulator/accounts/{name}/keys/{ak}`) fails from
//!   the next request on (a call already past authentication completes) with the answer of
//!   an unknown key, 401 `InvalidAccessKey`; a key added at run time signs at once. The call
//!   log records each call's `account` (empty for an unknown or revoked key) and
//!   `access_key`, never a secret. A fault with `account` applies to that account's calls
//!   only; `POST /_emulator/reset` restores the initial accounts and keys.

mod accounts;
mod actions;
mod admin;
mod api;
mod auth;
mod faults;
mod log;
mod params;
mod reqlog;
mod state;
mod wire;

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::routing::any;
use axum::Router;
use tokio::net::TcpListener;

use volcengine_ecs::signer::Secret;

pub use accounts::{valid_access_key, valid_account_name, AccountSpec, DEFAULT_ACCOUNT};
pub use faults::{FaultSpec, GarbageKind, AMBIENT_THROTTLE, THROTTLE_VARIANTS};
pub use log::{ActionStats, CallRecord};
pub use state::{Delays, Deletion};

pub const DEFAULT_REGIONS: [&str; 4] = [
    "cn-beijing",
    "cn-shanghai",
    "cn-guangzhou",
    "ap-southeast-1",
];

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

/// `--account NAME:AK:SK`. Its errors never show the value (it holds a secret key): clap's
/// own error for a failed `value_parser` function would quote it.
#[derive(Clone, Copy, Debug)]
struct AccountParser;

impl clap::builder::TypedValueParser for AccountParser {
    type Value = AccountSpec;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<AccountSpec, clap::Error> {
        let refuse = |why: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid --account (EMULATOR_ACCOUNTS) value: {why}\n"),
            )
            .with_cmd(cmd)
        };
        let s = value.to_str().ok_or_else(|| refuse("not UTF-8"))?.trim();
        let mut parts = s.splitn(3, ':');
        let (Some(name), Some(ak), Some(sk)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(refuse("expected NAME:AK:SK"));
        };
        if !valid_account_name(name) {
            return Err(refuse(
                "the account name must be 1-64 letters, digits, '.', '_' or '-'",
            ));
        }
        if !valid_access_key(ak) {
            return Err(refuse(
                "the access key must be 1-128 letters, digits, '.', '_', '~' or '-'",
            ));
        }
        if sk.is_empty() {
            return Err(refuse("the secret key is empty"));
        }
        Ok(AccountSpec {
            name: name.to_string(),
            keys: vec![(ak.to_string(), Secret::new(sk))],
        })
    }
}

/// `ecs-emulator` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct EmulatorArgs {
    /// Address to listen on; with port 0 a free port is picked. The first stdout line is
    /// always "emulator listening on http://ADDR".
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: String,
    #[arg(long, env = "EMULATOR_ACCESS_KEY", default_value = "AKLTemulator")]
    pub access_key: String,
    #[arg(long, env = "EMULATOR_SECRET_KEY", default_value = "emulator-secret", hide_env_values = true, value_parser = parse_secret)]
    pub secret_key: Secret,
    /// Another account (`NAME:AK:SK`), or another key of an account already given
    /// (`default` is the account of --access-key). Repeatable; the environment variable
    /// takes a comma-separated list and is read only when no --account is given. An access
    /// key belongs to one account.
    #[arg(
        long = "account",
        value_name = "NAME:AK:SK",
        env = "EMULATOR_ACCOUNTS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = AccountParser
    )]
    pub accounts: Vec<AccountSpec>,
    /// Regions accepted in the credential scope.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cn-beijing,cn-shanghai,cn-guangzhou,ap-southeast-1"
    )]
    pub regions: Vec<String>,
    /// CREATING -> RUNNING after this long.
    #[arg(long, default_value_t = 1000)]
    pub create_delay_ms: u64,
    /// STOPPING -> STOPPED after this long.
    #[arg(long, default_value_t = 1000)]
    pub stop_delay_ms: u64,
    /// STARTING (and REBOOTING) -> RUNNING after this long.
    #[arg(long, default_value_t = 1000)]
    pub start_delay_ms: u64,
    /// DELETING -> gone after this long.
    #[arg(long, default_value_t = 500)]
    pub delete_delay_ms: u64,
    /// Execute a re-sent ClientToken again instead of replaying the recorded answer.
    #[arg(long)]
    pub no_replay: bool,
    /// Largest accepted difference between X-Date and the emulator's clock.
    #[arg(long, default_value_t = 900)]
    pub max_clock_skew_secs: u64,
    /// Most instances a DescribeInstances with TagFilters resolves, as in the real API
    /// (0 = no limit).
    #[arg(long, default_value_t = DEFAULT_TAG_FILTER_LIMIT)]
    pub tag_filter_limit: usize,
    /// Eventual consistency: a new instance stays invisible to the real API this long after
    /// RunInstances (0 = visible at once).
    #[arg(long, default_value_t = 0)]
    pub visibility_lag_ms: u64,
    /// Answer as the real API may, where the SDKs allow it: `null` for empty fields, no
    /// `Result` for operation actions (admin config `null_empty`, `omit_operation_result`).
    /// The end-to-end suites and the soak run with it.
    #[arg(long)]
    pub realism: bool,
    /// Ambient throttling: every Nth call of the real API (0 = none) is answered with the
    /// next of the throttling answers the SDKs know (`faults::THROTTLE_VARIANTS`: each code,
    /// 429/503/504, with and without `Retry-After`) before it is applied. Admin config
    /// `throttle_every`.
    #[arg(long, default_value_t = 0)]
    pub throttle_every: u32,
    /// Append one JSON line per HTTP request received to this file: method, path, raw
    /// query, every header and the body, as they arrived (see `reqlog.rs`). Off by default.
    #[arg(long, value_name = "PATH")]
    pub request_log: Option<PathBuf>,
}

/// Volcengine's documented TagFilters limit.
pub const DEFAULT_TAG_FILTER_LIMIT: usize = 1000;

/// Everything the emulator can be configured with; `GET/PUT /_emulator/config` change the
/// runtime copy, `POST /_emulator/reset` restores the initial one.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The first key of the account `default`.
    pub access_key: String,
    pub secret_key: Secret,
    /// More accounts, or more keys of `default` (a spec of that name). An access key
    /// belongs to one account (`Emulator::new` panics otherwise; `run` refuses to start).
    pub accounts: Vec<AccountSpec>,
    pub regions: Vec<String>,
    pub delays: Delays,
    /// Replay the recorded answer for a re-sent ClientToken (else execute again).
    pub replay: bool,
    /// Session tokens answered with InvalidSecretToken.
    pub expired_tokens: Vec<String>,
    pub max_clock_skew_secs: u64,
    /// Calls kept in the call log (oldest dropped first).
    pub call_log_limit: usize,
    /// Most instances a TagFilters query resolves (0 = no limit).
    pub tag_filter_limit: usize,
    /// How long a new instance stays invisible to the real API after RunInstances.
    pub visibility_lag_ms: u64,
    /// Empty lists, strings and objects in a `Result` are sent as `null`.
    pub null_empty: bool,
    /// Operation actions (ModifyInstanceAttribute, TagResources, UntagResources,
    /// DeleteInstance) answer without `Result`, only the common parameters.
    pub omit_operation_result: bool,
    /// Every Nth real-API call is throttled (0 = none); see `EmulatorArgs::throttle_every`.
    pub throttle_every: u32,
    /// Instance types ModifyInstanceSpec refuses as not available (admin config
    /// `unavailable_instance_types`; default none).
    pub unavailable_instance_types: Vec<String>,
    /// Where every received HTTP request is appended as a JSON line (`--request-log`);
    /// fixed at start, not part of the admin config.
    pub request_log: Option<PathBuf>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            access_key: "AKLTemulator".into(),
            secret_key: Secret::new("emulator-secret"),
            accounts: Vec::new(),
            regions: DEFAULT_REGIONS.iter().map(|r| r.to_string()).collect(),
            delays: Delays::default(),
            replay: true,
            expired_tokens: Vec::new(),
            max_clock_skew_secs: 900,
            call_log_limit: 200_000,
            tag_filter_limit: DEFAULT_TAG_FILTER_LIMIT,
            visibility_lag_ms: 0,
            null_empty: false,
            omit_operation_result: false,
            throttle_every: 0,
            unavailable_instance_types: Vec::new(),
            request_log: None,
        }
    }
}

impl From<&EmulatorArgs> for EmulatorConfig {
    fn from(a: &EmulatorArgs) -> Self {
        Self {
            access_key: a.access_key.clone(),
            secret_key: a.secret_key.clone(),
            accounts: a.accounts.clone(),
            regions: a
                .regions
                .iter()
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect(),
            delays: Delays {
                create_ms: a.create_delay_ms,
                stop_ms: a.stop_delay_ms,
                start_ms: a.start_delay_ms,
                delete_ms: a.delete_delay_ms,
            },
            replay: !a.no_replay,
            max_clock_skew_secs: a.max_clock_skew_secs,
            tag_filter_limit: a.tag_filter_limit,
            visibility_lag_ms: a.visibility_lag_ms,
            null_empty: a.realism,
            omit_operation_result: a.realism,
            throttle_every: a.throttle_every,
            request_log: a.request_log.clone(),
            ..Self::default()
        }
    }
}

/// All mutable state behind one lock: calls are short and never hold it across an await.
pub(crate) struct Inner {
    pub cfg: EmulatorConfig,
    /// Each account's keys and instances.
    pub accounts: accounts::Accounts,
    pub faults: faults::Faults,
    pub log: log::CallLog,
}

impl Inner {
    fn new(cfg: EmulatorConfig) -> Self {
        let accounts = accounts::Accounts::from_config(&cfg)
            .unwrap_or_else(|e| panic!("invalid EmulatorConfig: {e}"));
        Self {
            log: log::CallLog::new(cfg.call_log_limit),
            cfg,
            accounts,
            faults: faults::Faults::default(),
        }
    }
}

impl EmulatorConfig {
    /// Whether the accounts are consistent: every access key belongs to one account, with
    /// one secret key, and every account name is valid.
    pub fn check(&self) -> Result<(), String> {
        accounts::Accounts::from_config(self).map(|_| ())
    }
}

/// One emulated cloud. Cheap to share: everything is behind an `Arc`.
pub struct Emulator {
    initial: EmulatorConfig,
    inner: Mutex<Inner>,
    /// `--request-log`: outside `inner`, so a reset keeps it.
    request_log: Option<reqlog::RequestLog>,
}

impl Emulator {
    /// Panics when `cfg` fails `EmulatorConfig::check` (an access key given to two accounts).
    pub fn new(cfg: EmulatorConfig) -> Arc<Self> {
        Arc::new(Self {
            request_log: cfg.request_log.clone().map(reqlog::RequestLog::new),
            initial: cfg.clone(),
            inner: Mutex::new(Inner::new(cfg)),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the emulator down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Back to the initial configuration (and accounts, with their initial keys) with
    /// nothing in it.
    pub(crate) fn reset(&self) {
        *self.lock() = Inner::new(self.initial.clone());
    }
}

/// The real API on `/` plus the admin API under `/_emulator/`.
pub fn router(emu: Arc<Emulator>) -> Router {
    let app = Router::new()
        .route("/", any(api::handle))
        .nest("/_emulator", admin::routes())
        .fallback(api::wrong_path);
    let app = match emu.request_log {
        Some(_) => app.layer(axum::middleware::from_fn_with_state(
            emu.clone(),
            reqlog::record,
        )),
        None => app,
    };
    app.with_state(emu)
}

/// Serves on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    cfg: EmulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(Emulator::new(cfg)))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `ecs-emulator`: binds, announces the address on stdout, serves until Ctrl-C or
/// SIGTERM.
pub async fn run(args: EmulatorArgs) -> std::io::Result<()> {
    let cfg = EmulatorConfig::from(&args);
    cfg.check().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("--account: {e}"))
    })?;
    if let Some(path) = &cfg.request_log {
        // Fail at startup, not on the first request, if the log cannot be written.
        reqlog::open(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("--request-log {}: {e}", path.display()))
        })?;
    }
    let listener = TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "emulator listening on http://{addr}")?;
        out.flush()?;
    }
    let mut accounts = vec![DEFAULT_ACCOUNT];
    for a in &cfg.accounts {
        if !accounts.contains(&a.name.as_str()) {
            accounts.push(&a.name);
        }
    }
    tracing::info!(%addr, regions = ?cfg.regions, ?accounts, "ECS emulator started");
    serve(listener, cfg, shutdown_signal()).await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    fn parse(args: &[&str]) -> Result<EmulatorConfig, String> {
        let argv = std::iter::once("ecs-emulator").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .map(|c| EmulatorConfig::from(&c.args))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn account_flags() {
        let cfg = parse(&[
            "--account",
            "team-a:AKa:SKa:with:colons",
            "--account",
            "team-b:AKb:SKb,team-a:AKa2:SKa2",
        ])
        .unwrap();
        let got: Vec<(String, String, String)> = cfg
            .accounts
            .iter()
            .flat_map(|a| {
                a.keys
                    .iter()
                    .map(|(ak, sk)| (a.name.clone(), ak.clone(), sk.expose().to_string()))
            })
            .collect();
        let want = [
            ("team-a", "AKa", "SKa:with:colons"),
            ("team-b", "AKb", "SKb"),
            ("team-a", "AKa2", "SKa2"),
        ];
        assert_eq!(
            got,
            want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        );
        assert!(cfg.check().is_ok());
        assert_eq!(
            cfg.access_key, "AKLTemulator",
            "the default account is unchanged"
        );
        assert!(parse(&[]).unwrap().accounts.is_empty());

        // An access key of two accounts is refused at startup.
        let twice = parse(&["--account", "x:AKLTemulator:s"]).unwrap();
        assert!(twice
            .check()
            .unwrap_err()
            .contains("belongs to account default"));
    }

    #[test]
    fn a_bad_account_flag_never_echoes_its_secret() {
        for bad in [
            "team-a:AKa",
            "team a:AKa:TOPSECRET",
            "team-a:AK/a:TOPSECRET",
            ":AKa:TOPSECRET",
            "team-a::TOPSECRET",
            "team-a:AKa:",
        ] {
            let e = parse(&["--account", bad]).unwrap_err();
            assert!(e.contains("--account"), "{bad}: {e}");
            assert!(!e.contains("TOPSECRET"), "{bad}: {e}");
        }
        let debug = format!("{:?}", parse(&["--account", "a:AKa:TOPSECRET"]).unwrap());
        assert!(!debug.contains("TOPSECRET"), "{debug}");
    }
}
