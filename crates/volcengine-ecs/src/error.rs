//! Typed cloud errors. Every variant knows its code (for conditions, Events and metric
//! labels) and how the caller should react (retry, fix credentials, or give up).

use std::time::Duration;

use super::model::Action;

/// How the caller should react to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling: retry after slowing down.
    Throttled,
    /// 5xx, timeouts, network errors, IdempotentProcessing: retry the same request.
    Retryable,
    /// Credentials or permissions: retrying will not help until someone fixes them.
    Auth,
    /// Anything else: the request itself was refused.
    Terminal,
}

/// Codes that mean "too fast": Volcengine's own (`FlowLimitExceeded`, which Terraform
/// retries; `AccountFlowLimitExceeded`) and every code the official Go SDK treats as
/// throttling (`volcengine/request/retryer.go`, `throttleCodes`).
pub const THROTTLE_CODES: &[&str] = &[
    "FlowLimitExceeded",
    "AccountFlowLimitExceeded",
    "ProvisionedThroughputExceededException",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "PriorRequestNotComplete",
    "TransactionInProgressException",
];

/// HTTP statuses the Go SDK treats as throttling whatever the code (`throttleStatusCodes`).
pub const THROTTLE_STATUSES: &[u16] = &[429, 502, 503, 504];

/// Codes that mean "try the very same request again later".
pub const RETRYABLE_CODES: &[&str] = &[
    "ServiceUnavailableTemp",
    "InternalError",
    "InternalServiceTimeout",
    "InternalServiceError",
    "FailToConnect",
    "UndefinedError",
    "IdempotentProcessing",
];

pub const AUTH_CODES: &[&str] = &[
    "InvalidAccessKey",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "InvalidSecretToken",
    "AccessDenied",
    "InvalidTimestamp",
    "MissingAuthenticationToken",
    "MissingSignature",
    "InvalidAuthorization",
    "InvalidCredential",
    "LackPolicy",
    "LackProjectPolicy",
];

/// Codes that say the instance (resource) named in the request does not exist. Volcengine
/// documents `InvalidInstance.NotFound`; UntagResources' own code for a missing instance is
/// not documented (shared API.md, section 7), so the other spellings in use for instance
/// and tagged-resource IDs count too. Only codes about the named ID: a missing zone, image
/// or subnet is not a missing VM.
pub const INSTANCE_NOT_FOUND_CODES: &[&str] = &[
    "InvalidInstance.NotFound",
    "InvalidInstanceId.NotFound",
    "InvalidResource.NotFound",
    "InvalidResourceId.NotFound",
];

impl ErrorClass {
    /// The condition and Event reason for a failed call of this class.
    pub fn condition_reason(self) -> &'static str {
        match self {
            ErrorClass::Auth => "CloudAuthError",
            ErrorClass::Throttled => "CloudThrottled",
            ErrorClass::Retryable | ErrorClass::Terminal => "CloudError",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudError {
    /// The cloud answered with its error envelope.
    #[error("{action} failed: {code}: {message} (HTTP {status}, RequestId {request_id})")]
    Api {
        action: Action,
        code: String,
        code_n: Option<i64>,
        message: String,
        status: u16,
        request_id: String,
    },
    /// The cloud answered, but not with anything we can read (HTML page, truncated JSON,
    /// no ResponseMetadata, oversized body).
    #[error("{action} failed: BadResponse: HTTP {status} with an unusable response: {detail}{}",
        request_id.as_deref().map(|r| format!(" (RequestId {r})")).unwrap_or_default())]
    BadResponse {
        action: Action,
        status: u16,
        detail: String,
        request_id: Option<String>,
    },
    #[error("{action} failed: NetworkError: {detail}")]
    Network { action: Action, detail: String },
    #[error("{action} failed: Timeout: no response within {after:?}")]
    Timeout { action: Action, after: Duration },
    /// No access key or secret key is configured: nothing was sent. The operator keeps
    /// running so that every resource says so, and picks up fixed credentials on restart.
    #[error("{action} not sent: MissingCredentials: {missing} is empty; set VOLCENGINE_ACCESS_KEY and VOLCENGINE_SECRET_KEY")]
    MissingCredentials {
        action: Action,
        missing: &'static str,
    },
    /// Local misconfiguration (bad endpoint URL, plain http to a remote host, ...).
    #[error("cloud client configuration: {0}")]
    Config(String),
}

impl CloudError {
    /// The cloud's error code, or a stable local code for failures without one.
    pub fn code(&self) -> &str {
        match self {
            CloudError::Api { code, .. } => code,
            CloudError::BadResponse { .. } => "BadResponse",
            CloudError::Network { .. } => "NetworkError",
            CloudError::Timeout { .. } => "Timeout",
            CloudError::MissingCredentials { .. } => "MissingCredentials",
            CloudError::Config(_) => "InvalidConfiguration",
        }
    }

    /// The cloud said the instance named in the request does not exist.
    pub fn is_instance_not_found(&self) -> bool {
        matches!(self, CloudError::Api { code, .. } if INSTANCE_NOT_FOUND_CODES.contains(&code.as_str()))
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            CloudError::Api { request_id, .. } => Some(request_id),
            CloudError::BadResponse { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            CloudError::Api { status, .. } | CloudError::BadResponse { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            CloudError::Api { code, status, .. } => classify(code, *status),
            CloudError::BadResponse { status, .. } => {
                if THROTTLE_STATUSES.contains(status) {
                    ErrorClass::Throttled
                } else {
                    // A garbage body may be a proxy's error page or a cut-off answer:
                    // the request may or may not have been applied, so retry it as is.
                    ErrorClass::Retryable
                }
            }
            CloudError::Network { .. } | CloudError::Timeout { .. } => ErrorClass::Retryable,
            CloudError::MissingCredentials { .. } => ErrorClass::Auth,
            CloudError::Config(_) => ErrorClass::Terminal,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self.class(), ErrorClass::Retryable | ErrorClass::Throttled)
    }
}

/// Classifies by code first (statuses differ between doc pages), then by HTTP status.
pub fn classify(code: &str, status: u16) -> ErrorClass {
    // An error without a code (`"Code": null` or empty, shown as `Unknown`) says nothing
    // about whether the call was applied: retry it as is, never take it for a refusal.
    if code.is_empty() || code == "Unknown" {
        return if THROTTLE_STATUSES.contains(&status) {
            ErrorClass::Throttled
        } else {
            ErrorClass::Retryable
        };
    }
    if THROTTLE_CODES.contains(&code) {
        ErrorClass::Throttled
    } else if AUTH_CODES.contains(&code) {
        ErrorClass::Auth
    } else if THROTTLE_STATUSES.contains(&status) {
        ErrorClass::Throttled
    } else if RETRYABLE_CODES.contains(&code) || status >= 500 || status == 412 {
        ErrorClass::Retryable
    } else {
        ErrorClass::Terminal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_not_found_is_recognised_by_code_only() {
        let api = |code: &str| CloudError::Api {
            action: Action::UntagResources,
            code: code.into(),
            code_n: None,
            message: "m".into(),
            status: 404,
            request_id: "r".into(),
        };
        for code in [
            "InvalidInstance.NotFound",
            "InvalidInstanceId.NotFound",
            "InvalidResource.NotFound",
            "InvalidResourceId.NotFound",
        ] {
            assert!(api(code).is_instance_not_found(), "{code}");
        }
        for code in [
            "InvalidZoneId.NotFound",
            "ServiceNotFound",
            "InternalError",
            "invalidinstance.notfound",
            "",
        ] {
            assert!(!api(code).is_instance_not_found(), "{code}");
        }
        let timeout = CloudError::Timeout {
            action: Action::UntagResources,
            after: Duration::from_secs(1),
        };
        assert!(!timeout.is_instance_not_found());
    }

    #[test]
    fn every_message_names_its_code() {
        let a = Action::DeleteInstances;
        let errors = [
            CloudError::BadResponse {
                action: a,
                status: 502,
                detail: "not JSON".into(),
                request_id: Some("rid-1".into()),
            },
            CloudError::Network {
                action: a,
                detail: "connection refused".into(),
            },
            CloudError::Timeout {
                action: a,
                after: Duration::from_secs(1),
            },
            CloudError::MissingCredentials {
                action: a,
                missing: "VOLCENGINE_SECRET_KEY",
            },
            CloudError::Api {
                action: a,
                code: "InvalidRegion".into(),
                code_n: None,
                message: "m".into(),
                status: 400,
                request_id: "rid-2".into(),
            },
        ];
        for e in errors {
            let shown = e.to_string();
            assert!(shown.contains(e.code()), "{shown}");
            if let Some(rid) = e.request_id() {
                assert!(shown.contains(rid), "{shown}");
            }
        }
    }

    #[test]
    fn classification_table() {
        let cases = [
            ("FlowLimitExceeded", 429, ErrorClass::Throttled),
            ("AccountFlowLimitExceeded", 429, ErrorClass::Throttled),
            ("RequestLimitExceeded", 429, ErrorClass::Throttled),
            ("Whatever", 429, ErrorClass::Throttled),
            ("InternalError", 500, ErrorClass::Retryable),
            ("ServiceUnavailableTemp", 503, ErrorClass::Throttled),
            ("Throttling", 400, ErrorClass::Throttled),
            ("ThrottlingException", 400, ErrorClass::Throttled),
            ("RequestThrottled", 400, ErrorClass::Throttled),
            ("RequestThrottledException", 400, ErrorClass::Throttled),
            ("TooManyRequestsException", 400, ErrorClass::Throttled),
            ("Unknown", 504, ErrorClass::Throttled),
            ("SignatureDoesNotMatch", 503, ErrorClass::Auth),
            ("InternalError", 501, ErrorClass::Retryable),
            ("IdempotentProcessing", 412, ErrorClass::Retryable),
            ("Unknown", 502, ErrorClass::Throttled),
            ("SignatureDoesNotMatch", 401, ErrorClass::Auth),
            ("InvalidAccessKey", 401, ErrorClass::Auth),
            ("InvalidSecretToken", 401, ErrorClass::Auth),
            ("AccessDenied", 403, ErrorClass::Auth),
            ("InvalidTimestamp", 400, ErrorClass::Auth),
            ("IdempotentParameterMismatch", 400, ErrorClass::Terminal),
            ("InvalidInstance.NotFound", 404, ErrorClass::Terminal),
            ("MissingParameter", 400, ErrorClass::Terminal),
            ("Unknown", 400, ErrorClass::Retryable),
            ("", 200, ErrorClass::Retryable),
        ];
        for (code, status, want) in cases {
            assert_eq!(classify(code, status), want, "{code} {status}");
        }
    }
}
