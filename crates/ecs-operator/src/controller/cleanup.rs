//! The deletion path: ClientToken derivation, the batched DeleteInstances call, and the
//! pure decision table that maps a cloud answer to what happens to the finalizer.
//!
//! # ClientToken design
//! A token must be the same for every retry of one request (timeouts, 5xx, 412, throttling,
//! restarts, another replica) and different for a new attempt after a definitive answer:
//! the cloud replays the recorded answer for a re-sent token, so re-sending the token that
//! got `InvalidInstanceStatus` would get `InvalidInstanceStatus` forever, even after the VM
//! became deletable. Both properties hold when the token is derived from the resource alone:
//!
//!   `ecsop-del-<metadata.uid>-<status.deletionAttempt>`   (at most 10 + 40 + 1 + 7 = 58 ASCII:
//!   the uid is cut to 40 characters, the attempt stops at 1,000,000)
//!
//! `status.deletionAttempt` is bumped (and persisted) only after a definitive answer (an
//! `OperationDetails` entry, or `IdempotentParameterMismatch`); call-level failures keep it.
//! A batch of several resources uses `ecsop-delb-<sha256 of the sorted (uid, attempt,
//! instance id) triples, 48 hex>`, and its instance IDs are listed in the same sorted order,
//! so one token always names exactly one parameter set: `IdempotentParameterMismatch`
//! cannot happen, and a retried batch re-sends the same token with the same IDs.

use std::sync::Arc;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::batch::BatchCall;
use crate::cloud::{Called, Cloud, CloudError, ErrorClass, OperationDetail};

/// One resource's share of a DeleteInstances batch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeleteItem {
    pub uid: String,
    pub attempt: u32,
    pub instance_id: String,
}

pub type DeleteOutcome = Result<Called<Vec<OperationDetail>>, CloudError>;

/// The longest ClientToken the operator sends (README "How deletion works"): a batch token,
/// `ecsop-delb-` + 48 hex. The emulator accepts up to 64 (the length the documentation leaves
/// open is listed among its choices).
pub const MAX_TOKEN_LEN: usize = 59;

/// Keeps the token ASCII even if a uid were not a UUID.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect()
}

/// Token for one resource's deletion attempt.
pub fn delete_token(uid: &str, attempt: u32) -> String {
    format!("ecsop-del-{}-{attempt}", sanitize(uid))
}

/// Token and instance IDs for a batch, both functions of the same sorted member set.
pub fn batch_request(items: &[DeleteItem]) -> (String, Vec<String>) {
    let mut sorted: Vec<&DeleteItem> = items.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut ids: Vec<String> = Vec::with_capacity(sorted.len());
    for it in &sorted {
        if !ids.contains(&it.instance_id) {
            ids.push(it.instance_id.clone());
        }
    }
    if let [only] = sorted.as_slice() {
        return (delete_token(&only.uid, only.attempt), ids);
    }
    let mut h = Sha256::new();
    for it in &sorted {
        h.update(it.uid.as_bytes());
        h.update(b"/");
        h.update(it.attempt.to_string().as_bytes());
        h.update(b"/");
        h.update(it.instance_id.as_bytes());
        h.update(b"\n");
    }
    let digest = hex::encode(h.finalize());
    (format!("ecsop-delb-{}", &digest[..48]), ids)
}

/// The DeleteInstances call a batch makes.
pub struct DeleteCall {
    pub cloud: Arc<dyn Cloud>,
    pub on_batch: Option<Arc<dyn Fn(usize) + Send + Sync>>,
}

impl BatchCall<DeleteItem, DeleteOutcome> for DeleteCall {
    fn name(&self) -> &'static str {
        "DeleteInstances"
    }

    fn call(&self, region: String, items: Vec<DeleteItem>) -> BoxFuture<'static, DeleteOutcome> {
        let cloud = self.cloud.clone();
        let (token, ids) = batch_request(&items);
        if let Some(f) = &self.on_batch {
            f(ids.len());
        }
        Box::pin(async move {
            tracing::debug!(%region, ids = ids.len(), %token, "DeleteInstances batch");
            cloud.delete_instances(&region, ids, token).await
        })
    }

    // A split batch is a different member set, so each half gets its own token by the same
    // rule (a half of one gets the single-resource token): a token still names one
    // parameter set, and an answer recorded for the whole batch is never replayed to a half.
    fn split(&self, outcome: &DeleteOutcome) -> bool {
        outcome
            .as_ref()
            .err()
            .is_some_and(super::batch::split_after)
    }
}

/// What the cloud's answer means for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The cloud accepted the deletion: the finalizer may go.
    Deleted { request_id: String },
    /// The cloud says the VM does not exist: the finalizer may go.
    AlreadyGone { request_id: String },
    /// `InvalidInstanceStatus`: the VM is busy (STOPPING, CREATING, ...). New attempt later.
    NotDeletableYet {
        code: String,
        message: String,
        request_id: String,
    },
    /// Any other per-instance refusal (deletion protection, prepaid, ...). New attempt later;
    /// `kind` (never `Transitional`) says whether only a person or time can change it.
    Refused {
        code: String,
        message: String,
        request_id: String,
        kind: RefusalKind,
    },
    /// The call itself failed or the answer was unusable. `new_token` when re-sending the
    /// same token cannot help (the cloud recorded an answer that does not name us, or the
    /// token is tied to other parameters).
    Retry {
        code: String,
        message: String,
        request_id: Option<String>,
        class: ErrorClass,
        new_token: bool,
    },
}

impl Decision {
    /// Whether the finalizer may be removed. The only two cases where it may.
    pub fn releases_finalizer(&self) -> bool {
        matches!(
            self,
            Decision::Deleted { .. } | Decision::AlreadyGone { .. }
        )
    }

    /// Whether the next DeleteInstances for this resource must carry a new token.
    pub fn bumps_attempt(&self) -> bool {
        match self {
            Decision::Deleted { .. } | Decision::AlreadyGone { .. } => false,
            Decision::NotDeletableYet { .. } | Decision::Refused { .. } => true,
            Decision::Retry { new_token, .. } => *new_token,
        }
    }

    pub fn code(&self) -> &str {
        match self {
            Decision::Deleted { .. } => "Deleted",
            Decision::AlreadyGone { .. } => NOT_FOUND,
            Decision::NotDeletableYet { code, .. }
            | Decision::Refused { code, .. }
            | Decision::Retry { code, .. } => code,
        }
    }
}

pub const NOT_FOUND: &str = "InvalidInstance.NotFound";
pub const INVALID_STATUS: &str = "InvalidInstanceStatus";

/// Why the cloud refused to delete one VM, decided once from its code where the answer is
/// classified (`decide`), so no use site tests codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// `InvalidInstanceStatus`: the VM is busy (STOPPING, CREATING, ...); time fixes it.
    Transitional,
    /// Deletion protection is on: only the user (spec.deletionProtection) can lift it.
    Protection,
    /// A prepaid (subscription) VM before it expires: only a person or time can help.
    Prepaid,
    Other,
}

impl RefusalKind {
    /// Volcengine documents no code for a protected VM (API.md 4.6; the emulator answers
    /// `OperationDenied.DeletionProtection`) nor a single prepaid one (`InvalidChargeType`
    /// is documented), so these match families of codes; this is the only place they do.
    /// A code of both families counts as protection, the one a person can lift here.
    pub fn of(code: &str) -> RefusalKind {
        if code == INVALID_STATUS {
            RefusalKind::Transitional
        } else if code.contains("DeletionProtection") {
            RefusalKind::Protection
        } else if code == "InvalidChargeType"
            || code.contains("PrePaid")
            || code.contains("Prepaid")
        {
            RefusalKind::Prepaid
        } else {
            RefusalKind::Other
        }
    }

    /// Retried at the slow pace (`Backoff::slow`) with `Stalled=True`: only a person or the
    /// passing of a subscription term changes the answer.
    pub fn slow(self) -> bool {
        self == RefusalKind::Prepaid
    }
}

/// The decision table. Pure: no cloud, no Kubernetes, no clock.
pub fn decide(outcome: &DeleteOutcome, instance_id: &str) -> Decision {
    let called = match outcome {
        Ok(c) => c,
        Err(e) => {
            return Decision::Retry {
                code: e.code().to_string(),
                message: e.to_string(),
                request_id: e.request_id().map(str::to_string),
                class: e.class(),
                new_token: e.code() == "IdempotentParameterMismatch",
            }
        }
    };
    let request_id = called.request_id.clone();
    let ours: Vec<&OperationDetail> = called
        .value
        .iter()
        .filter(|d| d.instance_id == instance_id)
        .collect();
    let Some(first) = ours.first() else {
        return Decision::Retry {
            code: "MissingOperationDetail".into(),
            message: format!("DeleteInstances answered without an entry for {instance_id} (MissingOperationDetail, RequestId {request_id})"),
            request_id: Some(request_id),
            class: ErrorClass::Terminal,
            new_token: true,
        };
    };
    if ours.iter().any(|d| d.error != first.error) {
        return Decision::Retry {
            code: "ConflictingOperationDetails".into(),
            message: format!("DeleteInstances answered with conflicting entries for {instance_id} (ConflictingOperationDetails, RequestId {request_id})"),
            request_id: Some(request_id),
            class: ErrorClass::Terminal,
            new_token: true,
        };
    }
    match &first.error {
        None => Decision::Deleted { request_id },
        Some(e) if e.code == NOT_FOUND => Decision::AlreadyGone { request_id },
        Some(e) => match RefusalKind::of(&e.code) {
            RefusalKind::Transitional => Decision::NotDeletableYet {
                code: e.code.clone(),
                message: e.message.clone(),
                request_id,
            },
            kind => Decision::Refused {
                code: if e.code.is_empty() {
                    "Unknown".into()
                } else {
                    e.code.clone()
                },
                message: e.message.clone(),
                request_id,
                kind,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::model::{Action, OperationError};

    fn ok(entries: &[(&str, Option<&str>)]) -> DeleteOutcome {
        Ok(Called {
            request_id: "req-1".into(),
            value: entries
                .iter()
                .map(|(id, code)| OperationDetail {
                    instance_id: id.to_string(),
                    error: code.map(|c| OperationError {
                        code: c.into(),
                        message: format!("{c} message"),
                    }),
                })
                .collect(),
        })
    }

    fn api_err(code: &str, status: u16) -> DeleteOutcome {
        Err(CloudError::Api {
            action: Action::DeleteInstances,
            code: code.into(),
            code_n: None,
            message: "m".into(),
            status,
            request_id: "req-2".into(),
        })
    }

    /// One row per kind of answer (a table; long for that reason).
    #[test]
    fn decision_table() {
        use ErrorClass::*;
        // (outcome, releases finalizer, bumps attempt, code, class if Retry)
        let rows: Vec<(DeleteOutcome, bool, bool, &str, Option<ErrorClass>)> = vec![
            (ok(&[("i-a", None)]), true, false, "Deleted", None),
            (
                ok(&[("i-b", None), ("i-a", None)]),
                true,
                false,
                "Deleted",
                None,
            ),
            (
                ok(&[("i-a", Some(NOT_FOUND))]),
                true,
                false,
                NOT_FOUND,
                None,
            ),
            (
                ok(&[("i-a", Some(INVALID_STATUS))]),
                false,
                true,
                INVALID_STATUS,
                None,
            ),
            (
                ok(&[("i-a", Some("OperationDenied.DeletionProtection"))]),
                false,
                true,
                "OperationDenied.DeletionProtection",
                None,
            ),
            (
                ok(&[("i-a", Some("InvalidChargeType"))]),
                false,
                true,
                "InvalidChargeType",
                None,
            ),
            (ok(&[("i-a", Some(""))]), false, true, "Unknown", None),
            // Another instance's success says nothing about ours.
            (
                ok(&[("i-b", None)]),
                false,
                true,
                "MissingOperationDetail",
                Some(Terminal),
            ),
            (
                ok(&[]),
                false,
                true,
                "MissingOperationDetail",
                Some(Terminal),
            ),
            (
                ok(&[("i-a", None), ("i-a", Some(INVALID_STATUS))]),
                false,
                true,
                "ConflictingOperationDetails",
                Some(Terminal),
            ),
            (
                ok(&[("i-a", None), ("i-a", None)]),
                true,
                false,
                "Deleted",
                None,
            ),
            (
                api_err("InternalError", 500),
                false,
                false,
                "InternalError",
                Some(Retryable),
            ),
            (
                api_err("IdempotentProcessing", 412),
                false,
                false,
                "IdempotentProcessing",
                Some(Retryable),
            ),
            (
                api_err("FlowLimitExceeded", 429),
                false,
                false,
                "FlowLimitExceeded",
                Some(Throttled),
            ),
            (
                api_err("SignatureDoesNotMatch", 401),
                false,
                false,
                "SignatureDoesNotMatch",
                Some(Auth),
            ),
            (
                api_err("IdempotentParameterMismatch", 400),
                false,
                true,
                "IdempotentParameterMismatch",
                Some(Terminal),
            ),
            (
                Err(CloudError::Timeout {
                    action: Action::DeleteInstances,
                    after: std::time::Duration::from_secs(1),
                }),
                false,
                false,
                "Timeout",
                Some(Retryable),
            ),
            (
                Err(CloudError::BadResponse {
                    action: Action::DeleteInstances,
                    status: 200,
                    detail: "x".into(),
                    request_id: None,
                }),
                false,
                false,
                "BadResponse",
                Some(Retryable),
            ),
        ];
        for (i, (outcome, release, bump, code, class)) in rows.into_iter().enumerate() {
            let d = decide(&outcome, "i-a");
            assert_eq!(d.releases_finalizer(), release, "row {i}: {d:?}");
            assert_eq!(d.bumps_attempt(), bump, "row {i}: {d:?}");
            assert_eq!(d.code(), code, "row {i}: {d:?}");
            if let Decision::Retry {
                class: c, message, ..
            } = &d
            {
                assert_eq!(Some(*c), class, "row {i}");
                // Conditions and Events show this message alone: it must name the code, once.
                assert_eq!(message.matches(code).count(), 1, "row {i}: {message}");
            } else {
                assert!(class.is_none(), "row {i}: {d:?}");
            }
        }
        assert!(matches!(
            decide(&ok(&[("i-a", Some("InvalidChargeType"))]), "i-a"),
            Decision::Refused {
                kind: RefusalKind::Prepaid,
                ..
            }
        ));
        assert!(matches!(
            decide(
                &ok(&[("i-a", Some("OperationDenied.DeletionProtection"))]),
                "i-a"
            ),
            Decision::Refused {
                kind: RefusalKind::Protection,
                ..
            }
        ));
    }

    #[test]
    fn refusal_kinds() {
        use RefusalKind::*;
        let rows = [
            (INVALID_STATUS, Transitional, false),
            ("OperationDenied.DeletionProtection", Protection, false),
            ("InvalidChargeType", Prepaid, true),
            ("OperationDenied.PrePaidInstance", Prepaid, true),
            ("InvalidInstance.Prepaid", Prepaid, true),
            ("MissingParameter.InstanceId", Other, false),
            ("", Other, false),
            // Not a substring of the transitional code: exactly it.
            ("InvalidInstanceStatus.Foo", Other, false),
        ];
        for (code, kind, slow) in rows {
            assert_eq!(RefusalKind::of(code), kind, "{code}");
            assert_eq!(kind.slow(), slow, "{code}");
        }
    }

    #[test]
    fn tokens_are_deterministic_ascii_and_short() {
        let uid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
        let t = delete_token(uid, 0);
        assert_eq!(t, "ecsop-del-3f2504e0-4f89-11d3-9a0c-0305e82c3301-0");
        assert_eq!(t, delete_token(uid, 0));
        assert_ne!(t, delete_token(uid, 1));
        let longest_uid = "x".repeat(100);
        let max = crate::api::MAX_COUNTER;
        assert_eq!(delete_token(&longest_uid, max).len(), 58);
        assert!(delete_token("ü/ weird", 3).is_ascii());
    }

    #[test]
    fn batch_token_is_the_documented_sha256() {
        // Expected value computed outside this code (Python's hashlib) over the documented
        // input: one "uid/attempt/instance id\n" line per member, sorted.
        let item = |uid: &str, attempt, id: &str| DeleteItem {
            uid: uid.into(),
            attempt,
            instance_id: id.into(),
        };
        let (token, ids) = batch_request(&[item("u2", 2, "i-2"), item("u1", 0, "i-1")]);
        assert_eq!(
            token,
            "ecsop-delb-7a583b83693684f8d4df909c72861810f68ba77cff79e678"
        );
        assert_eq!(token.len(), MAX_TOKEN_LEN);
        assert_eq!(ids, ["i-1", "i-2"]);
    }

    #[test]
    fn batch_token_depends_only_on_the_member_set() {
        let a = DeleteItem {
            uid: "u1".into(),
            attempt: 0,
            instance_id: "i-1".into(),
        };
        let b = DeleteItem {
            uid: "u2".into(),
            attempt: 2,
            instance_id: "i-2".into(),
        };
        let (t1, ids1) = batch_request(&[a.clone(), b.clone()]);
        let (t2, ids2) = batch_request(&[b.clone(), a.clone()]);
        assert_eq!((t1.clone(), ids1.clone()), (t2, ids2));
        assert_eq!(ids1, vec!["i-1", "i-2"]);
        assert!(t1.len() <= MAX_TOKEN_LEN && t1.is_ascii());
        let b3 = DeleteItem {
            attempt: 3,
            ..b.clone()
        };
        assert_ne!(batch_request(&[a.clone(), b3]).0, t1);
        // A batch of one uses the single-resource token, so it survives restarts unchanged.
        assert_eq!(
            batch_request(std::slice::from_ref(&a)).0,
            delete_token("u1", 0)
        );
    }
}
