//! Injected failures, per action: errors, throttling, latency, lost responses and garbage
//! bodies. Deterministic counters (`fail_next`, `lose_next`, `garbage_next`) make tests exact;
//! rates make soak tests realistic.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};

use volcengine_ecs::model::Action;

use super::wire::ApiError;

/// The JSON body of `PUT /_emulator/faults/{Action}`; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSpec {
    /// Only calls of this account (signed with one of its keys) are affected; the others
    /// are served as if there were no fault, and leave its counters alone. None: every
    /// account. One fault per action either way: a PUT replaces the action's fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Probability (0..1) that a call fails with `error_code`/`error_status` before it is applied.
    pub error_rate: f64,
    /// Default `InternalError`.
    pub error_code: Option<String>,
    /// Default 500.
    pub error_status: Option<u16>,
    /// The next N calls fail with `error_code`/`error_status`, before being applied.
    pub fail_next: u32,
    /// Token bucket; calls above it get 429 FlowLimitExceeded.
    pub throttle_rps: Option<f64>,
    /// Probability (0..1) of a 429 FlowLimitExceeded regardless of rate (for soak tests).
    pub throttle_rate: f64,
    /// Bucket size; default max(1, ceil(throttle_rps)).
    pub throttle_burst: Option<u32>,
    /// The code of a throttled answer, default `FlowLimitExceeded` (Volcengine's own). Any
    /// code the Go SDK treats as throttling (`Throttling`, `RequestThrottled`, ...) tests
    /// that a client slows down for it too.
    pub throttle_code: Option<String>,
    /// The HTTP status of a throttled answer, default 429.
    pub throttle_status: Option<u16>,
    /// Throttled answers and injected errors carry `Retry-After: <seconds>`. Whether the
    /// real gateway sends it is not documented (see lib.rs, choices left open).
    pub retry_after_secs: Option<u64>,
    /// Added before the call is applied (while its ClientToken is in flight).
    pub latency_ms: u64,
    /// Probability that the call is applied but its response is lost on the wire.
    pub lose_response_rate: f64,
    /// The next N calls are applied and their responses lost.
    pub lose_next: u32,
    /// The next N calls get a garbage body instead of being applied.
    pub garbage_next: u32,
    pub garbage_kind: GarbageKind,
    /// Default 502 for `html`, 200 otherwise.
    pub garbage_status: Option<u16>,
    /// Size of the `oversized` body; default 5 MiB (above the client's 4 MiB limit).
    pub garbage_bytes: Option<usize>,
    /// Batch actions (DeleteInstances, StopInstances, StartInstances): these instance IDs
    /// are left alone and the answer has no `OperationDetails` entry for them. Until cleared.
    pub omit_details: Vec<String>,
    /// Batch actions: these instance IDs are left alone and the answer has two conflicting
    /// entries for each (a success, then `InvalidInstanceStatus`). Until cleared.
    pub conflicting_details: Vec<String>,
    /// Any call whose `InstanceIds` names one of these IDs fails as a whole (call-level, not
    /// per instance) with `error_code`/`error_status`, default 400
    /// `InvalidInstanceId.Malformed`, before anything is applied. Until cleared.
    pub poison_ids: Vec<String>,
    /// Actions that return only the common parameters (UntagResources, TagResources,
    /// ModifyInstanceAttribute, DeleteInstance): the next N calls answer success without
    /// applying anything, as a write not yet visible to reads (or dropped) looks to a client.
    /// Ignored for other actions.
    pub unapplied_next: u32,
    /// Every call that carries a `NextToken` (a later page of a listing) fails with
    /// `error_code`/`error_status` (default 500 `InternalError`); first pages succeed. Until
    /// cleared.
    pub fail_paged: bool,
    /// DeleteInstances: the next N applied (not replayed) calls are accepted, recorded in the
    /// deletions log as `reverted`, and every VM they accepted goes DELETING and then back to
    /// the state it was in (a deletion the cloud rolled back).
    pub revert_next_deletions: u32,
}

/// How a batch action's `OperationDetails` are falsified (see `FaultSpec::omit_details`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetailOverrides {
    pub omit: Vec<String>,
    pub conflicting: Vec<String>,
}

impl DetailOverrides {
    pub fn is_empty(&self) -> bool {
        self.omit.is_empty() && self.conflicting.is_empty()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GarbageKind {
    /// A proxy's HTML error page.
    #[default]
    Html,
    /// A real envelope cut off in the middle.
    TruncatedJson,
    /// JSON without `ResponseMetadata`.
    NoMetadata,
    /// A valid envelope padded to `garbage_bytes`.
    Oversized,
    /// No body at all.
    Empty,
}

impl GarbageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GarbageKind::Html => "html",
            GarbageKind::TruncatedJson => "truncated_json",
            GarbageKind::NoMetadata => "no_metadata",
            GarbageKind::Oversized => "oversized",
            GarbageKind::Empty => "empty",
        }
    }
}

/// What to do with one call, decided before it is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Answer with this error without applying anything; the tag goes to the call log.
    Reject(ApiError, &'static str),
    Garbage {
        kind: GarbageKind,
        status: u16,
        bytes: usize,
    },
    Proceed {
        latency: Duration,
        lose_response: bool,
    },
    /// Answer success, apply nothing (`FaultSpec::unapplied_next`).
    AckUnapplied,
}

/// The throttling answers the SDKs know, in the order ambient throttling
/// (`EmulatorConfig::throttle_every`) uses them: (code, HTTP status, Retry-After seconds).
/// Codes: the Go SDK's `throttleCodes` (volcengine/request/retryer.go) plus Volcengine's own
/// `FlowLimitExceeded` (Terraform retries on it) and `AccountFlowLimitExceeded`; statuses:
/// the Go SDK's 429/502/503/504 with and without `Retry-After`. The client classifies each
/// as throttling (`tests/emulator_client.rs::every_throttling_code_and_status_is_throttling`).
pub const THROTTLE_VARIANTS: [(&str, u16, Option<u64>); 14] = [
    ("FlowLimitExceeded", 429, Some(1)),
    ("Throttling", 400, None),
    ("ThrottlingException", 400, None),
    ("RequestLimitExceeded", 400, None),
    ("RequestThrottled", 400, None),
    ("RequestThrottledException", 400, None),
    ("TooManyRequestsException", 429, Some(1)),
    ("AccountFlowLimitExceeded", 429, None),
    ("ServiceUnavailable", 503, Some(1)),
    ("GatewayTimeout", 504, None),
    ("BadGateway", 502, None),
    ("ProvisionedThroughputExceededException", 400, None),
    ("PriorRequestNotComplete", 400, None),
    ("TransactionInProgressException", 400, None),
];

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct ActionFaults {
    spec: FaultSpec,
    bucket: Option<Bucket>,
}

#[derive(Debug, Default)]
pub struct Faults {
    per_action: HashMap<Action, ActionFaults>,
    /// Real-API calls seen by ambient throttling.
    ambient_seq: u64,
}

const DEFAULT_OVERSIZED: usize = 5 << 20;

/// The call log's `fault` of an ambient throttle (test harnesses leave these out of counts).
pub const AMBIENT_THROTTLE: &str = "ambient_throttle";

impl Faults {
    pub fn set(&mut self, action: Action, spec: FaultSpec) {
        self.per_action
            .insert(action, ActionFaults { spec, bucket: None });
    }

    pub fn remove(&mut self, action: Action) {
        self.per_action.remove(&action);
    }

    pub fn clear(&mut self) {
        self.per_action.clear();
    }

    /// Current specs, counters as they are now.
    pub fn snapshot(&self) -> BTreeMap<String, FaultSpec> {
        self.per_action
            .iter()
            .map(|(a, f)| (a.as_str().to_string(), f.spec.clone()))
            .collect()
    }

    /// The fault of `action` when it applies to calls of `account`.
    fn of(&self, action: Action, account: &str) -> Option<&ActionFaults> {
        self.per_action
            .get(&action)
            .filter(|f| f.spec.account.as_deref().is_none_or(|a| a == account))
    }

    fn of_mut(&mut self, action: Action, account: &str) -> Option<&mut ActionFaults> {
        self.per_action
            .get_mut(&action)
            .filter(|f| f.spec.account.as_deref().is_none_or(|a| a == account))
    }

    /// The `OperationDetails` falsifications in force for `action` in `account`.
    pub fn detail_overrides(&self, action: Action, account: &str) -> DetailOverrides {
        self.of(action, account)
            .map(|f| DetailOverrides {
                omit: f.spec.omit_details.clone(),
                conflicting: f.spec.conflicting_details.clone(),
            })
            .unwrap_or_default()
    }

    /// A call-level rejection when the request names a poisoned instance ID.
    pub fn poisoned(&self, action: Action, account: &str, ids: &[String]) -> Option<Decision> {
        let spec = &self.of(action, account)?.spec;
        let hit = ids.iter().find(|id| spec.poison_ids.contains(id))?;
        let code = spec
            .error_code
            .as_deref()
            .unwrap_or("InvalidInstanceId.Malformed");
        let msg = format!("The specified instance id {hit} is invalid (injected fault).");
        let e = ApiError::new(spec.error_status.unwrap_or(400), code, msg);
        Some(Decision::Reject(e, "poisoned_id"))
    }

    /// A call-level failure for a later page of a listing (`FaultSpec::fail_paged`).
    pub fn paged(&self, action: Action, account: &str, has_next_token: bool) -> Option<Decision> {
        let spec = &self.of(action, account)?.spec;
        if !(spec.fail_paged && has_next_token) {
            return None;
        }
        let code = spec.error_code.as_deref().unwrap_or("InternalError");
        let e = ApiError::new(
            spec.error_status.unwrap_or(500),
            code,
            "Injected fault (a later page).",
        );
        Some(Decision::Reject(e, "failed_page"))
    }

    /// Whether the DeleteInstances about to be applied is to be rolled back (and counts it).
    pub fn take_revert(&mut self, action: Action, account: &str) -> bool {
        let Some(f) = self.of_mut(action, account) else {
            return false;
        };
        if action != Action::DeleteInstances || f.spec.revert_next_deletions == 0 {
            return false;
        }
        f.spec.revert_next_deletions -= 1;
        true
    }

    /// Ambient throttling: every `every`th call (0 = never) is throttled before anything
    /// else, with the next of `THROTTLE_VARIANTS`. Deterministic, so a test's counts are too.
    pub fn ambient(&mut self, every: u32) -> Option<Decision> {
        if every == 0 {
            return None;
        }
        self.ambient_seq += 1;
        if !self.ambient_seq.is_multiple_of(u64::from(every)) {
            return None;
        }
        let n = THROTTLE_VARIANTS.len() as u64;
        let i = usize::try_from((self.ambient_seq / u64::from(every) - 1) % n).unwrap_or(0);
        let (code, status, retry_after) = THROTTLE_VARIANTS[i];
        let mut e = ApiError::new(status, code, "Request rate exceeds the call-rate limit.");
        e.retry_after = retry_after;
        Some(Decision::Reject(e, AMBIENT_THROTTLE))
    }

    /// What to do with a call of `action` by `account` (a fault scoped to another account
    /// does not apply).
    pub fn decide(&mut self, action: Action, account: &str, now: Instant) -> Decision {
        let Some(f) = self.of_mut(action, account) else {
            return Decision::Proceed {
                latency: Duration::ZERO,
                lose_response: false,
            };
        };
        if let Some(rps) = f.spec.throttle_rps {
            if !take_token(f, rps, now) {
                return throttled(&f.spec);
            }
        }
        let spec = &mut f.spec;
        let mut rng = rand::rng();
        if spec.throttle_rate > 0.0 && rng.random::<f64>() < spec.throttle_rate {
            return throttled(spec);
        }
        let fail = if spec.fail_next > 0 {
            spec.fail_next -= 1;
            true
        } else {
            spec.error_rate > 0.0 && rng.random::<f64>() < spec.error_rate
        };
        if fail {
            let code = spec.error_code.as_deref().unwrap_or("InternalError");
            let status = spec.error_status.unwrap_or(500);
            let mut e = ApiError::new(status, code, "Injected fault.");
            e.retry_after = spec.retry_after_secs;
            return Decision::Reject(e, "injected_error");
        }
        if spec.garbage_next > 0 {
            spec.garbage_next -= 1;
            let kind = spec.garbage_kind;
            let default_status = if kind == GarbageKind::Html { 502 } else { 200 };
            return Decision::Garbage {
                kind,
                status: spec.garbage_status.unwrap_or(default_status),
                bytes: spec.garbage_bytes.unwrap_or(DEFAULT_OVERSIZED),
            };
        }
        if spec.unapplied_next > 0 && action.result_optional() {
            spec.unapplied_next -= 1;
            return Decision::AckUnapplied;
        }
        let lose_response = if spec.lose_next > 0 {
            spec.lose_next -= 1;
            true
        } else {
            spec.lose_response_rate > 0.0 && rng.random::<f64>() < spec.lose_response_rate
        };
        Decision::Proceed {
            latency: Duration::from_millis(spec.latency_ms),
            lose_response,
        }
    }
}

fn take_token(f: &mut ActionFaults, rps: f64, now: Instant) -> bool {
    let burst = f64::from(
        f.spec
            .throttle_burst
            .unwrap_or_else(|| rps.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
            .max(1),
    );
    let b = f.bucket.get_or_insert(Bucket {
        tokens: burst,
        last: now,
    });
    let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
    b.tokens = (b.tokens + elapsed * rps.max(0.0)).min(burst);
    b.last = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        true
    } else {
        false
    }
}

fn throttled(spec: &FaultSpec) -> Decision {
    let mut e = ApiError::new(
        spec.throttle_status.unwrap_or(429),
        spec.throttle_code.as_deref().unwrap_or("FlowLimitExceeded"),
        "Request rate exceeds the basic call-rate limit.",
    );
    e.retry_after = spec.retry_after_secs;
    Decision::Reject(e, "throttle")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proceed() -> Decision {
        Decision::Proceed {
            latency: Duration::ZERO,
            lose_response: false,
        }
    }

    #[test]
    fn ambient_throttling_hits_every_nth_call_with_each_variant_in_turn() {
        let mut f = Faults::default();
        assert_eq!(f.ambient(0), None);
        let mut seen = Vec::new();
        for call in 1..=3 * THROTTLE_VARIANTS.len() as u32 {
            match f.ambient(3) {
                Some(Decision::Reject(e, AMBIENT_THROTTLE)) => {
                    assert_eq!(call % 3, 0, "call {call}");
                    seen.push((e.code, e.status, e.retry_after));
                }
                None => assert_ne!(call % 3, 0, "call {call}"),
                d => panic!("{d:?}"),
            }
        }
        let want: Vec<_> = THROTTLE_VARIANTS
            .iter()
            .map(|(c, s, r)| (c.to_string(), *s, *r))
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn unapplied_next_only_for_operation_actions() {
        let mut f = Faults::default();
        let spec = FaultSpec {
            unapplied_next: 1,
            ..Default::default()
        };
        f.set(Action::UntagResources, spec.clone());
        f.set(Action::DeleteInstances, spec);
        let now = Instant::now();
        assert_eq!(
            f.decide(Action::UntagResources, "default", now),
            Decision::AckUnapplied
        );
        assert_eq!(f.decide(Action::UntagResources, "default", now), proceed());
        assert_eq!(f.decide(Action::DeleteInstances, "default", now), proceed());
    }

    #[test]
    fn no_spec_means_proceed() {
        let mut f = Faults::default();
        assert_eq!(
            f.decide(Action::RunInstances, "default", Instant::now()),
            proceed()
        );
    }

    #[test]
    fn fail_next_is_exact_and_per_action() {
        let mut f = Faults::default();
        f.set(
            Action::DeleteInstances,
            FaultSpec {
                fail_next: 2,
                ..Default::default()
            },
        );
        let now = Instant::now();
        for _ in 0..2 {
            match f.decide(Action::DeleteInstances, "default", now) {
                Decision::Reject(e, "injected_error") => {
                    assert_eq!((e.status, e.code.as_str()), (500, "InternalError"))
                }
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(f.decide(Action::DeleteInstances, "default", now), proceed());
        assert_eq!(f.decide(Action::RunInstances, "default", now), proceed());
        assert_eq!(f.snapshot()["DeleteInstances"].fail_next, 0);
    }

    #[test]
    fn custom_error_and_rates() {
        let mut f = Faults::default();
        f.set(
            Action::StopInstances,
            FaultSpec {
                error_rate: 1.0,
                error_code: Some("ServiceUnavailableTemp".into()),
                error_status: Some(503),
                ..Default::default()
            },
        );
        match f.decide(Action::StopInstances, "default", Instant::now()) {
            Decision::Reject(e, _) => {
                assert_eq!((e.status, e.code.as_str()), (503, "ServiceUnavailableTemp"))
            }
            d => panic!("{d:?}"),
        }
        f.set(
            Action::StopInstances,
            FaultSpec {
                lose_response_rate: 1.0,
                latency_ms: 7,
                ..Default::default()
            },
        );
        assert_eq!(
            f.decide(Action::StopInstances, "default", Instant::now()),
            Decision::Proceed {
                latency: Duration::from_millis(7),
                lose_response: true
            }
        );
    }

    #[test]
    fn throttle_bucket_refills() {
        let mut f = Faults::default();
        f.set(
            Action::DescribeInstances,
            FaultSpec {
                throttle_rps: Some(2.0),
                ..Default::default()
            },
        );
        let t0 = Instant::now();
        let throttled = |d: Decision| matches!(d, Decision::Reject(e, "throttle") if e.status == 429 && e.code == "FlowLimitExceeded");
        assert!(!throttled(f.decide(
            Action::DescribeInstances,
            "default",
            t0
        )));
        assert!(!throttled(f.decide(
            Action::DescribeInstances,
            "default",
            t0
        )));
        assert!(throttled(f.decide(
            Action::DescribeInstances,
            "default",
            t0
        )));
        let later = t0 + Duration::from_millis(500);
        assert!(!throttled(f.decide(
            Action::DescribeInstances,
            "default",
            later
        )));
        assert!(throttled(f.decide(
            Action::DescribeInstances,
            "default",
            later
        )));
    }

    #[test]
    fn garbage_then_lose_counters() {
        let mut f = Faults::default();
        f.set(
            Action::RunInstances,
            FaultSpec {
                garbage_next: 1,
                garbage_kind: GarbageKind::Html,
                lose_next: 1,
                ..Default::default()
            },
        );
        let now = Instant::now();
        assert_eq!(
            f.decide(Action::RunInstances, "default", now),
            Decision::Garbage {
                kind: GarbageKind::Html,
                status: 502,
                bytes: DEFAULT_OVERSIZED
            }
        );
        assert!(matches!(
            f.decide(Action::RunInstances, "default", now),
            Decision::Proceed {
                lose_response: true,
                ..
            }
        ));
        assert_eq!(f.decide(Action::RunInstances, "default", now), proceed());
    }

    #[test]
    fn detail_overrides_are_per_action_and_persist() {
        let mut f = Faults::default();
        f.set(
            Action::DeleteInstances,
            serde_json::from_str(r#"{"omit_details":["i-a"],"conflicting_details":["i-b"]}"#)
                .unwrap(),
        );
        let now = Instant::now();
        for _ in 0..2 {
            assert_eq!(f.decide(Action::DeleteInstances, "default", now), proceed());
            let o = f.detail_overrides(Action::DeleteInstances, "default");
            assert_eq!(
                (o.omit, o.conflicting),
                (vec!["i-a".into()], vec!["i-b".into()])
            );
        }
        assert!(f
            .detail_overrides(Action::StopInstances, "default")
            .is_empty());
        f.remove(Action::DeleteInstances);
        assert!(f
            .detail_overrides(Action::DeleteInstances, "default")
            .is_empty());
    }

    #[test]
    fn poisoned_ids_fail_the_whole_call_until_cleared() {
        let mut f = Faults::default();
        f.set(
            Action::DeleteInstances,
            serde_json::from_str(r#"{"poison_ids":["i-bad"],"revert_next_deletions":1}"#).unwrap(),
        );
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(f
            .poisoned(Action::DeleteInstances, "default", &ids(&["i-a", "i-b"]))
            .is_none());
        for _ in 0..2 {
            match f.poisoned(Action::DeleteInstances, "default", &ids(&["i-a", "i-bad"])) {
                Some(Decision::Reject(e, "poisoned_id")) => assert_eq!(
                    (e.status, e.code.as_str()),
                    (400, "InvalidInstanceId.Malformed")
                ),
                d => panic!("{d:?}"),
            }
        }
        assert!(f
            .poisoned(Action::DescribeInstances, "default", &ids(&["i-bad"]))
            .is_none());
        assert!(!f.take_revert(Action::StopInstances, "default"));
        assert!(f.take_revert(Action::DeleteInstances, "default"));
        assert!(!f.take_revert(Action::DeleteInstances, "default"));
    }

    #[test]
    fn a_fault_with_an_account_applies_only_to_that_accounts_calls() {
        let mut f = Faults::default();
        f.set(
            Action::DescribeInstances,
            serde_json::from_str(
                r#"{"account":"team-a","fail_next":1,"poison_ids":["i-x"],"fail_paged":true,
                    "omit_details":["i-y"]}"#,
            )
            .unwrap(),
        );
        f.set(
            Action::DeleteInstances,
            serde_json::from_str(r#"{"account":"team-a","revert_next_deletions":1}"#).unwrap(),
        );
        let now = Instant::now();
        let ids = vec!["i-x".to_string()];
        // Account B: no fault at all, and A's counters are left alone.
        for _ in 0..3 {
            assert_eq!(
                f.decide(Action::DescribeInstances, "team-b", now),
                proceed()
            );
        }
        assert!(f
            .poisoned(Action::DescribeInstances, "team-b", &ids)
            .is_none());
        assert!(f.paged(Action::DescribeInstances, "team-b", true).is_none());
        assert!(f
            .detail_overrides(Action::DescribeInstances, "default")
            .is_empty());
        assert!(!f.take_revert(Action::DeleteInstances, "default"));
        // Account A gets every part of it.
        assert!(matches!(
            f.decide(Action::DescribeInstances, "team-a", now),
            Decision::Reject(_, "injected_error")
        ));
        assert_eq!(
            f.decide(Action::DescribeInstances, "team-a", now),
            proceed()
        );
        assert!(f
            .poisoned(Action::DescribeInstances, "team-a", &ids)
            .is_some());
        assert!(f.paged(Action::DescribeInstances, "team-a", true).is_some());
        assert_eq!(
            f.detail_overrides(Action::DescribeInstances, "team-a").omit,
            ["i-y"]
        );
        assert!(f.take_revert(Action::DeleteInstances, "team-a"));
        // Without `account` the snapshot (and GET /faults) is as before.
        f.set(Action::StopInstances, FaultSpec::default());
        let json = serde_json::to_value(f.snapshot()).unwrap();
        assert!(json["StopInstances"].get("account").is_none());
        assert_eq!(json["DeleteInstances"]["account"], "team-a");
    }

    #[test]
    fn spec_json_rejects_typos() {
        assert!(serde_json::from_str::<FaultSpec>(r#"{"fail_nxt":1}"#).is_err());
        let s: FaultSpec =
            serde_json::from_str(r#"{"garbage_next":1,"garbage_kind":"truncated_json"}"#).unwrap();
        assert_eq!(s.garbage_kind, GarbageKind::TruncatedJson);
    }
}
