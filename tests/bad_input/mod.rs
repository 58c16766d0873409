//! The bad-input scenarios, shared by `e2e_bad_input.rs` (the matrix: every case must end
//! in a condition, a Warning Event and nothing lost) and `e2e_secrets.rs` (the very same
//! paths with debug logging and recognizable secrets, which must show up nowhere).
//!
//! Three groups:
//! - `config_cases`: the operator itself is misconfigured (credentials, endpoint). One
//!   namespace and one operator per case, all at once, sharing one emulator.
//! - `answer_cases`: the cloud answers badly (unknown region, HTML, truncated JSON, no
//!   ResponseMetadata, oversized body, OperationDetails without or with conflicting entries
//!   for our VM). One namespace, one operator, one emulator, one case after the other.
//! - `startup_cases`: endpoints the operator must refuse at startup with a clear message.
//!
//! Every case with a VM ends with the cause removed and the VM deleted exactly once.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecs_operator::api::{EcsInstance, FINALIZER};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use futures::StreamExt;

use crate::support::{self, create, delete, gone, wait_for, Operator};

pub const AK: &str = "AKLTbadinput";
pub const BOGUS_AK: &str = "AKLTnobodyhasthiskey";
pub const UNKNOWN_REGION: &str = "xx-nowhere-1";

/// Credentials and log level of one run of the scenarios.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// Prefix of namespaces and log files.
    pub tag: &'static str,
    /// The emulator's secret key, and so the right one.
    pub sk: &'static str,
    /// A secret key the emulator does not know.
    pub wrong_sk: &'static str,
    /// A session token the emulator accepts, sent by every operator that has one.
    pub token: Option<&'static str>,
    /// A session token the emulator answers with InvalidSecretToken.
    pub expired_token: &'static str,
    pub rust_log: &'static str,
}

impl Mode {
    /// Every value that must never appear in a log, an Event or a status.
    pub fn secrets(&self) -> Vec<&'static str> {
        let mut v = vec![self.sk, self.wrong_sk, self.expired_token];
        v.extend(self.token);
        v
    }
}

pub const MATRIX: Mode = Mode {
    tag: "badin",
    sk: "bad-input-secret-key",
    wrong_sk: "bad-input-wrong-secret-key",
    token: None,
    expired_token: "bad-input-expired-token",
    rust_log: "info,ecs_operator=debug",
};

/// Everything the scenarios saw (logs, objects, Events), for the secrets scan.
#[derive(Clone, Default)]
pub struct Evidence(Arc<Mutex<Vec<(String, String)>>>);

impl Evidence {
    pub fn add(&self, what: impl Into<String>, text: impl Into<String>) {
        self.0.lock().unwrap().push((what.into(), text.into()));
    }

    pub fn items(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap().clone()
    }

    /// Every Event of the namespace, whole.
    pub async fn add_events(&self, client: &Client, ns: &str) {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
        for e in api.list(&ListParams::default()).await.unwrap().items {
            self.add(
                format!("event {ns}/{}", e.name_any()),
                serde_json::to_string(&e).unwrap(),
            );
        }
    }

    fn add_object(&self, o: &EcsInstance) {
        self.add(
            format!(
                "EcsInstance {}/{}",
                o.namespace().unwrap_or_default(),
                o.name_any()
            ),
            serde_json::to_string(o).unwrap(),
        );
    }
}

/// One row of the matrix, as it was observed.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: &'static str,
    pub code: String,
    /// The reason the case expects.
    pub expected: &'static str,
    /// The Synced reason observed on the apply path, when the case goes through it.
    pub apply_reason: Option<String>,
    /// The Synced reason observed on the held deletion.
    pub delete_reason: Option<String>,
}

impl Row {
    /// Every reason observed is the expected one, and at least one was observed.
    pub fn as_expected(&self) -> bool {
        let seen: Vec<&String> = self
            .apply_reason
            .iter()
            .chain(&self.delete_reason)
            .collect();
        !seen.is_empty() && seen.iter().all(|r| r.as_str() == self.expected)
    }
}

/// The emulator with this mode's credentials (the harness default has fixed ones).
pub type Emu = support::Emulator;

pub fn start_emu(name: &str, mode: &Mode) -> Emu {
    Emu::start_with(name, AK, mode.sk, &["--delete-delay-ms", "0"])
}

/// A RUNNING VM in `region` (default cn-beijing).
pub async fn seed_vm(emu: &Emu, region: Option<&str>) -> String {
    let mut body = json!({"Status": "RUNNING"});
    if let Some(r) = region {
        body["Region"] = json!(r);
    }
    emu.seed(body).await
}

/// The operator binary with this mode's credentials and log level, any endpoint, and
/// overrides (`env` wins over the mode's).
pub fn start_op(
    name: &str,
    ns: &str,
    endpoint: &str,
    mode: &Mode,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Operator {
    mode_op(name, mode)
        .namespace(ns)
        .endpoint(endpoint)
        .set("--backoff-max-secs", "3")
        .args(extra)
        .envs(env)
        .start()
}

fn mode_op(name: &str, mode: &Mode) -> support::OperatorBuilder {
    let b = Operator::builder(name)
        .env("VOLCENGINE_ACCESS_KEY", AK)
        .env("VOLCENGINE_SECRET_KEY", mode.sk)
        .env("RUST_LOG", mode.rust_log);
    match mode.token {
        Some(t) => b.env("VOLCENGINE_SESSION_TOKEN", t),
        None => b,
    }
}

/// Waits for the condition an apply-path failure leaves: Synced=False (and the first
/// Ready=False) with `reason`, messages naming `code` and every `detail`, and a Warning
/// Event about DescribeInstances that names the code.
pub async fn expect_apply_failure(
    client: &Client,
    api: &Api<EcsInstance>,
    name: &str,
    code: &str,
    reason: &str,
    detail: &[&str],
    ev: &Evidence,
) -> String {
    // Waits for the code, not for the reason: the reason is what is observed (the matrix
    // row), and the test compares it with the expected one.
    let o = wait_for(
        40,
        &format!("{name}: Synced=False naming {code} (expected {reason})"),
        || async {
            let o = api.get(name).await.ok()?;
            let c = o.condition("Synced")?;
            (c.status == "False" && c.message.contains(code)).then_some(o)
        },
    )
    .await;
    ev.add_object(&o);
    let synced = o.condition("Synced").unwrap();
    let observed = synced.reason.clone();
    let reason = observed.as_str();
    for d in detail {
        assert!(
            synced.message.contains(d),
            "{name}: {:?} lacks {d:?}",
            synced.message
        );
    }
    let ready = o.condition("Ready").expect("Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason),
        "{name}: {ready:?}"
    );
    assert!(ready.message.contains(code), "{name}: {ready:?}");
    assert!(o.finalizers().iter().any(|f| f == FINALIZER), "{name}");
    let ns = o.namespace().unwrap();
    wait_for(20, &format!("{name}: Warning Event {reason}"), || async {
        support::events(client, &ns, name)
            .await
            .into_iter()
            .any(|(t, r, n)| {
                t == "Warning" && r == reason && n.contains(code) && n.contains("DescribeInstances")
            })
            .then_some(())
    })
    .await;
    observed
}

/// Deletes the resource and waits for what a failed deletion leaves: Ready=False Deleting
/// and Synced=False `reason`, both naming `code`, and a Warning Event about DeleteInstances.
/// Then lets the operator retry (at least two DeleteInstances naming the VM when `emu` sees
/// them, else two more reconciles of `op`) and checks nothing was lost: finalizer kept, VM still RUNNING and never
/// deleted.
#[allow(clippy::too_many_arguments)]
pub async fn expect_delete_failure(
    client: &Client,
    api: &Api<EcsInstance>,
    name: &str,
    id: &str,
    code: &str,
    reason: &str,
    emu: &Emu,
    sees_calls: bool,
    op: &Operator,
    ev: &Evidence,
) -> String {
    // Before DeleteInstances the operator proves ownership with DescribeInstances, so an
    // error every action gets (credentials, region, endpoint) stops the deletion there.
    let calls_before = emu.calls_naming("DescribeInstances", id).await
        + emu.calls_naming("DeleteInstances", id).await;
    delete(api, name).await;
    let o = wait_for(
        40,
        &format!("{name}: deletion failure naming {code} (expected {reason})"),
        || async {
            let o = api.get(name).await.ok()?;
            let r = o.condition("Ready")?;
            let s = o.condition("Synced")?;
            (r.status == "False"
                && r.reason == "Deleting"
                && r.message.contains(code)
                && s.status == "False"
                && s.message.contains(code))
            .then_some(o)
        },
    )
    .await;
    ev.add_object(&o);
    // The reason is observed, not waited for (the caller compares it with `reason`).
    let observed = o
        .condition("Synced")
        .map(|c| c.reason.clone())
        .unwrap_or_default();
    let reason = observed.as_str();
    let ns = o.namespace().unwrap();
    wait_for(
        20,
        &format!("{name}: Warning Event {reason} on delete"),
        || async {
            support::events(client, &ns, name)
                .await
                .into_iter()
                .any(|(t, r, n)| {
                    t == "Warning"
                        && r == reason
                        && n.contains(code)
                        && (n.contains("DeleteInstances") || n.contains("DescribeInstances"))
                })
                .then_some(())
        },
    )
    .await;
    if sees_calls {
        wait_for(
            30,
            &format!("{name}: a retried cloud call naming the VM"),
            || async {
                let n = emu.calls_naming("DescribeInstances", id).await
                    + emu.calls_naming("DeleteInstances", id).await;
                (n >= calls_before + 2).then_some(())
            },
        )
        .await;
    } else {
        // No call reaches a cloud that can be watched: proof of retries is the operator's
        // own count of finished reconciles (this namespace holds this one resource only).
        op.wait_reconciles(60, &format!("{name}: two more reconciles"), 2.0)
            .await;
    }
    let o = api.get(name).await.expect("resource still there");
    ev.add_object(&o);
    assert!(
        o.finalizers().iter().any(|f| f == FINALIZER),
        "{name}: finalizer kept"
    );
    assert!(o.metadata.deletion_timestamp.is_some());
    assert_eq!(
        emu.status_of(id).await.as_deref(),
        Some("RUNNING"),
        "{name}: VM untouched"
    );
    assert_eq!(emu.deletions_of(id).await, 0, "{name}: VM never deleted");
    observed
}

/// Once the cause is gone, the held deletion completes, exactly once.
pub async fn expect_recovery(api: &Api<EcsInstance>, name: &str, id: &str, emu: &Emu) {
    wait_for(60, &format!("{name}: deleted after the fix"), || {
        gone(api, name)
    })
    .await;
    assert_eq!(
        emu.deletions_of(id).await,
        1,
        "{name}: deleted exactly once"
    );
}

/// Where a misconfigured operator sends its calls.
#[derive(Clone, Copy, Debug)]
pub enum Endpoint {
    Emulator,
    /// A loopback port nobody listens on.
    Refused,
    /// A loopback listener that accepts and never answers.
    Hanging,
}

pub struct ConfigCase {
    pub name: &'static str,
    pub code: &'static str,
    pub reason: &'static str,
    /// Text each message must also contain.
    pub detail: &'static str,
    pub env: Vec<(&'static str, &'static str)>,
    pub endpoint: Endpoint,
    pub args: &'static [&'static str],
}

pub fn config_cases(mode: &Mode) -> Vec<ConfigCase> {
    let c = |name, code, reason, detail, env, endpoint, args| ConfigCase {
        name,
        code,
        reason,
        detail,
        env,
        endpoint,
        args,
    };
    use Endpoint::*;
    vec![
        c(
            "no-access-key",
            "MissingCredentials",
            "CloudAuthError",
            "VOLCENGINE_ACCESS_KEY",
            vec![("VOLCENGINE_ACCESS_KEY", "")],
            Emulator,
            &[],
        ),
        c(
            "no-secret-key",
            "MissingCredentials",
            "CloudAuthError",
            "VOLCENGINE_SECRET_KEY",
            vec![("VOLCENGINE_SECRET_KEY", "")],
            Emulator,
            &[],
        ),
        c(
            "wrong-secret",
            "SignatureDoesNotMatch",
            "CloudAuthError",
            "HTTP 401",
            vec![("VOLCENGINE_SECRET_KEY", mode.wrong_sk)],
            Emulator,
            &[],
        ),
        c(
            "unknown-access-key",
            "InvalidAccessKey",
            "CloudAuthError",
            "HTTP 401",
            vec![("VOLCENGINE_ACCESS_KEY", BOGUS_AK)],
            Emulator,
            &[],
        ),
        c(
            "expired-token",
            "InvalidSecretToken",
            "CloudAuthError",
            "expired",
            vec![("VOLCENGINE_SESSION_TOKEN", mode.expired_token)],
            Emulator,
            &[],
        ),
        c(
            "refused",
            "NetworkError",
            "CloudError",
            "Connection refused",
            vec![],
            Refused,
            &[],
        ),
        c(
            "hanging",
            "Timeout",
            "CloudError",
            "no response within 1s",
            vec![],
            Hanging,
            &["--request-timeout-secs", "1", "--max-attempts", "1"],
        ),
    ]
}

/// A loopback port that refuses connections (bound, then closed).
fn refused_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// A listener that accepts every connection and never writes a byte; stops when aborted.
async fn hanging_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (url, task)
}

async fn run_config_case(
    client: &Client,
    emu: &Emu,
    mode: &Mode,
    case: &ConfigCase,
    ev: &Evidence,
) -> Row {
    let ns = support::namespace(client, &format!("{}-{}", mode.tag, case.name)).await;
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let id = seed_vm(emu, None).await;
    let mut hang = None;
    let endpoint = match case.endpoint {
        Endpoint::Emulator => emu.url.clone(),
        Endpoint::Refused => refused_endpoint(),
        Endpoint::Hanging => {
            let (url, task) = hanging_endpoint().await;
            hang = Some(task);
            url
        }
    };
    let name = format!("{}-{}", mode.tag, case.name);
    let mut op = start_op(&name, &ns, &endpoint, mode, &case.env, case.args);
    create(&api, case.name, json!({"instanceId": id})).await;
    let apply_reason = expect_apply_failure(
        client,
        &api,
        case.name,
        case.code,
        case.reason,
        &[case.detail],
        ev,
    )
    .await;
    let delete_reason = expect_delete_failure(
        client,
        &api,
        case.name,
        &id,
        case.code,
        case.reason,
        emu,
        false,
        &op,
        ev,
    )
    .await;
    assert!(op.is_running(), "{}: the operator keeps running", case.name);
    let log = op.stop();
    assert!(
        log.contains(case.code),
        "{}: the log names {}",
        case.name,
        case.code
    );
    assert!(!log.contains("panicked"), "{}: {log}", case.name);
    ev.add(format!("log {name}"), log);
    if let Some(t) = hang {
        t.abort();
    }
    // The fix: the same operator with the right configuration.
    let mut fixed = start_op(&format!("{name}-fixed"), &ns, &emu.url, mode, &[], &[]);
    expect_recovery(&api, case.name, &id, emu).await;
    ev.add(format!("log {name}-fixed"), fixed.stop());
    ev.add_events(client, &ns).await;
    Row {
        case: case.name,
        code: case.code.to_string(),
        expected: case.reason,
        apply_reason: Some(apply_reason),
        delete_reason: Some(delete_reason),
    }
}

/// Every misconfigured operator, each in its own namespace, `support::operator_slots()` at a
/// time.
pub async fn run_config_cases(mode: Mode, ev: &Evidence) -> Vec<Row> {
    let client = support::client().await;
    let emu = start_emu(&format!("{}-config", mode.tag), &mode);
    emu.config(json!({"expired_tokens": [mode.expired_token]}))
        .await;
    let cases = config_cases(&mode);
    let runs = cases
        .iter()
        .map(|c| run_config_case(&client, &emu, &mode, c, ev));
    futures::stream::iter(runs)
        .buffered(support::operator_slots())
        .collect()
        .await
}

pub struct AnswerCase {
    pub name: &'static str,
    pub code: &'static str,
    pub reason: &'static str,
    /// Text the apply-path message must also contain.
    pub detail: &'static str,
    pub kind: Answer,
}

#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// spec.region is a region the cloud does not know (the VM lives there anyway, in the
    /// emulator's store, so that opening the region is the fix).
    UnknownRegion,
    /// The emulator's `garbage_kind`, on DescribeInstances and then on DeleteInstances.
    Garbage(&'static str),
    /// OperationDetails without an entry for our VM.
    OmitDetail,
    /// Two conflicting entries for our VM.
    ConflictingDetails,
}

pub fn answer_cases() -> Vec<AnswerCase> {
    let c = |name, code, reason, detail, kind| AnswerCase {
        name,
        code,
        reason,
        detail,
        kind,
    };
    use Answer::*;
    vec![
        c(
            "unknown-region",
            "InvalidRegion",
            "CloudError",
            UNKNOWN_REGION,
            UnknownRegion,
        ),
        // A proxy's 502 page: the status makes it throttling, as the Go SDK reads
        // 429/502/503/504 whatever the body (the limiter slows down).
        c(
            "html",
            "BadResponse",
            "CloudThrottled",
            "HTTP 502 with an unusable response: not JSON",
            Garbage("html"),
        ),
        c(
            "truncated-json",
            "BadResponse",
            "CloudError",
            "not JSON",
            Garbage("truncated_json"),
        ),
        c(
            "no-metadata",
            "BadResponse",
            "CloudError",
            "no ResponseMetadata",
            Garbage("no_metadata"),
        ),
        c(
            "oversized",
            "BadResponse",
            "CloudError",
            "body larger than",
            Garbage("oversized"),
        ),
        c(
            "missing-entry",
            "MissingOperationDetail",
            "CloudError",
            "",
            OmitDetail,
        ),
        c(
            "conflicting-entries",
            "ConflictingOperationDetails",
            "CloudError",
            "",
            ConflictingDetails,
        ),
    ]
}

async fn ready(api: &Api<EcsInstance>, name: &str) {
    wait_for(40, &format!("{name}: Ready"), || async {
        let o = api.get(name).await.ok()?;
        (o.condition("Ready")?.status == "True").then_some(())
    })
    .await;
}

/// Every bad answer, each case with its own namespace, emulator (faults are per action) and
/// operator, `support::operator_slots()` at a time.
pub async fn run_answer_cases(mode: Mode, ev: &Evidence) -> Vec<Row> {
    let client = support::client().await;
    let cases = answer_cases();
    let runs = cases
        .iter()
        .map(|case| run_answer_case(&client, &mode, case, ev));
    futures::stream::iter(runs)
        .buffered(support::operator_slots())
        .collect()
        .await
}

async fn run_answer_case(client: &Client, mode: &Mode, case: &AnswerCase, ev: &Evidence) -> Row {
    let client = client.clone();
    let name = format!("{}-{}", mode.tag, case.name);
    let ns = support::namespace(&client, &name).await;
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let emu = start_emu(&name, mode);
    let mut op = start_op(&name, &ns, &emu.url, mode, &[], &[]);
    let n = case.name;
    let t0 = std::time::Instant::now();
    let mut row = Row {
        case: n,
        code: case.code.to_string(),
        expected: case.reason,
        apply_reason: None,
        delete_reason: None,
    };
    // The deletion is held, with the case's code and reason; `was_ready`: the resource had
    // become Ready first.
    let delete_fails = |id: String, was_ready: bool| {
        let (client, api, emu, op) = (&client, &api, &emu, &op);
        async move {
            expect_delete_failure(
                client,
                api,
                n,
                &id,
                case.code,
                case.reason,
                emu,
                was_ready,
                op,
                ev,
            )
            .await
        }
    };
    match case.kind {
        Answer::UnknownRegion => {
            let id = seed_vm(&emu, Some(UNKNOWN_REGION)).await;
            create(&api, n, json!({"instanceId": id, "region": UNKNOWN_REGION})).await;
            row.apply_reason = Some(
                expect_apply_failure(&client, &api, n, case.code, case.reason, &[case.detail], ev)
                    .await,
            );
            row.delete_reason = Some(delete_fails(id.clone(), false).await);
            let regions = json!(["cn-beijing", UNKNOWN_REGION]);
            emu.config(json!({ "regions": regions })).await;
            expect_recovery(&api, n, &id, &emu).await;
        }
        Answer::Garbage(kind) => {
            let id = seed_vm(&emu, None).await;
            let spec = json!({"garbage_next": 1_000_000, "garbage_kind": kind});
            emu.faults("DescribeInstances", spec.clone()).await;
            create(&api, n, json!({"instanceId": id})).await;
            row.apply_reason = Some(
                expect_apply_failure(&client, &api, n, case.code, case.reason, &[case.detail], ev)
                    .await,
            );
            emu.clear_fault("DescribeInstances").await;
            ready(&api, n).await;
            emu.faults("DeleteInstances", spec).await;
            row.delete_reason = Some(delete_fails(id.clone(), true).await);
            emu.clear_fault("DeleteInstances").await;
            expect_recovery(&api, n, &id, &emu).await;
        }
        Answer::OmitDetail | Answer::ConflictingDetails => {
            let id = seed_vm(&emu, None).await;
            create(&api, n, json!({"instanceId": id})).await;
            ready(&api, n).await;
            let field = if matches!(case.kind, Answer::OmitDetail) {
                "omit_details"
            } else {
                "conflicting_details"
            };
            emu.faults("DeleteInstances", json!({ field: [id] })).await;
            row.delete_reason = Some(delete_fails(id.clone(), true).await);
            // Each answer was definitive (a recorded answer that does not name us), so
            // every retry carried a new token.
            let o = api.get(n).await.unwrap();
            assert!(o.deletion_attempt() >= 1, "{n}: {:?}", o.status);
            emu.clear_fault("DeleteInstances").await;
            expect_recovery(&api, n, &id, &emu).await;
        }
    }
    assert!(op.is_running(), "{n}: the operator keeps running");
    let log = op.stop();
    assert!(!log.contains("panicked"), "{log}");
    ev.add(format!("log {name}"), log);
    ev.add_events(&client, &ns).await;
    eprintln!("{name}: {:.1} s", t0.elapsed().as_secs_f64()); // which case is the slow one
    row
}

/// Endpoints a production operator must refuse at startup, and what its message must say.
pub const STARTUP_CASES: &[(&str, &[&str])] = &[
    (
        "http://example.com",
        &["http://example.com", "refusing plain http", "https"],
    ),
    (
        "ftp://127.0.0.1:21",
        &["unsupported endpoint scheme", "ftp"],
    ),
    ("not a url", &["endpoint", "not a url"]),
];

/// Runs the operator against each endpoint and expects a prompt, clear, non-zero exit.
pub fn run_startup_cases(mode: &Mode, ev: &Evidence) {
    for (endpoint, needles) in STARTUP_CASES {
        // No namespace, no region: the endpoint is refused before either matters.
        let (status, stdout, stderr) = mode_op(&format!("{}-startup", mode.tag), mode)
            .env("VOLCENGINE_SESSION_TOKEN", mode.token.unwrap_or(""))
            .env("VOLCENGINE_ENDPOINT", endpoint)
            .run_to_exit(Duration::from_secs(15));
        assert_eq!(status.code(), Some(1), "{endpoint}: {status:?} {stderr}");
        assert!(!stderr.contains("panicked"), "{endpoint}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: "), "{endpoint}: {stderr}");
        for n in *needles {
            assert!(last.contains(n), "{endpoint}: {last:?} lacks {n:?}");
        }
        ev.add(format!("startup {endpoint}"), stderr);
        ev.add(format!("startup stdout {endpoint}"), stdout);
    }
}

pub fn print_matrix(rows: &[Row]) {
    println!(
        "{:<22} {:<30} {:<16} {:<16} {:<16}",
        "case", "code", "expected", "apply (seen)", "delete (seen)"
    );
    for r in rows {
        println!(
            "{:<22} {:<30} {:<16} {:<16} {:<16}",
            r.case,
            r.code,
            r.expected,
            r.apply_reason.as_deref().unwrap_or("-"),
            r.delete_reason.as_deref().unwrap_or("-"),
        );
    }
}
