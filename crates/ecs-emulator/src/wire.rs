//! The response envelope as the real gateway writes it, built from the client's own model
//! types so both ends of the project agree on the shape.

use rand::Rng;
use serde::Serialize;
use serde_json::Value;

use volcengine_ecs::model::{ApiErrorBody, Envelope, ResponseMetadata, API_VERSION, SERVICE};

/// A call-level error: HTTP status plus the `ResponseMetadata.Error` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Sent as the `Retry-After` header (seconds).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// `MissingParameter.<Name>` for a required business parameter.
    pub fn missing(name: &str) -> Self {
        Self::new(
            400,
            format!("MissingParameter.{name}"),
            format!("The required parameter {name} is not supplied."),
        )
    }

    /// `Invalid<Name>.Malformed`, the documented pattern for a badly formed value.
    pub fn malformed(name: &str) -> Self {
        Self::new(
            400,
            format!("Invalid{name}.Malformed"),
            format!("The specified parameter {name} is not valid."),
        )
    }

    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidParameter", message)
    }

    pub fn not_found() -> Self {
        Self::new(
            404,
            "InvalidInstance.NotFound",
            "The specified instance does not exist.",
        )
    }

    pub fn bad_status() -> Self {
        Self::new(
            400,
            "InvalidInstanceStatus",
            "The status of the specified instance does not support this request.",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }
}

/// Gateway codes that carry a numeric `CodeN` in the platform's error table.
pub(crate) fn code_n(code: &str) -> Option<i64> {
    Some(match code {
        "MissingParameter" => 100002,
        "MissingAuthenticationToken" => 100003,
        "MissingRequestInfo" => 100004,
        "MissingSignature" => 100005,
        "InvalidTimestamp" => 100006,
        "ServiceNotFound" => 100007,
        "InvalidActionOrVersion" => 100008,
        "InvalidAccessKey" => 100009,
        "SignatureDoesNotMatch" => 100010,
        "AccessDenied" => 100013,
        "InternalError" => 100014,
        "InternalServiceTimeout" => 100016,
        _ => return None,
    })
}

/// What every answer repeats back: the request id and the routing fields.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    pub request_id: String,
    pub action: String,
    pub version: String,
    pub region: String,
}

impl Meta {
    fn metadata(&self, error: Option<ApiErrorBody>) -> ResponseMetadata {
        ResponseMetadata {
            request_id: self.request_id.clone(),
            action: self.action.clone(),
            version: if self.version.is_empty() {
                API_VERSION.to_string()
            } else {
                self.version.clone()
            },
            service: SERVICE.to_string(),
            region: self.region.clone(),
            error,
        }
    }

    pub fn ok<T: Serialize>(&self, result: T) -> Value {
        to_value(&Envelope {
            response_metadata: Some(self.metadata(None)),
            result: Some(result),
        })
    }

    pub fn err(&self, e: &ApiError) -> Value {
        let body = ApiErrorBody {
            code_n: code_n(&e.code),
            code: e.code.clone(),
            message: e.message.clone(),
        };
        to_value(&Envelope::<Value> {
            response_metadata: Some(self.metadata(Some(body))),
            result: None,
        })
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    // Serializing plain structs of strings cannot fail; Null would only hide a bug in tests.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Swaps in a fresh RequestId (for replayed answers).
pub(crate) fn with_request_id(mut body: Value, request_id: &str) -> Value {
    if let Some(meta) = body
        .get_mut("ResponseMetadata")
        .and_then(Value::as_object_mut)
    {
        meta.insert("RequestId".into(), Value::String(request_id.into()));
    }
    body
}

/// Real request ids are a UTC timestamp followed by random hex.
pub(crate) fn new_request_id(now: jiff::Timestamp) -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..20)
        .map(|_| {
            let n: u8 = rng.random_range(0..16);
            char::from_digit(u32::from(n), 16).map_or('0', |c| c.to_ascii_uppercase())
        })
        .collect();
    format!("{}{suffix}", now.strftime("%Y%m%d%H%M%S"))
}

/// `i-` (or another prefix) plus 20 lowercase alphanumerics, like real resource ids.
pub(crate) fn new_resource_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("{prefix}-{tail}")
}

/// RFC 3339 at UTC+8, the offset the real API's times carry (Terraform reads `CreatedAt` by
/// cutting it at the `+`).
pub(crate) fn rfc3339(ts: jiff::Timestamp) -> String {
    let beijing = jiff::tz::TimeZone::fixed(jiff::tz::offset(8));
    ts.to_zoned(beijing)
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope_shape() {
        let meta = Meta {
            request_id: "r1".into(),
            action: "DeleteInstances".into(),
            version: "2020-04-01".into(),
            region: "cn-beijing".into(),
        };
        let v = meta.err(&ApiError::new(401, "SignatureDoesNotMatch", "no"));
        assert_eq!(
            v,
            serde_json::json!({"ResponseMetadata":{"RequestId":"r1","Action":"DeleteInstances",
                "Version":"2020-04-01","Service":"ecs","Region":"cn-beijing",
                "Error":{"CodeN":100010,"Code":"SignatureDoesNotMatch","Message":"no"}}})
        );
        let v = meta.err(&ApiError::bad_status());
        assert!(v["ResponseMetadata"]["Error"].get("CodeN").is_none());
        assert!(v.get("Result").is_none());
    }

    #[test]
    fn ids_look_real() {
        let id = new_resource_id("i");
        assert_eq!(id.len(), 22);
        assert!(id[2..]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        let rid = new_request_id(jiff::Timestamp::UNIX_EPOCH);
        assert!(
            rid.starts_with("19700101000000") && rid.len() == 34,
            "{rid}"
        );
        assert_ne!(new_resource_id("i"), new_resource_id("i"));
    }
}
