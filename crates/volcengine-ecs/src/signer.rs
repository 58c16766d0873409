//! Volcengine OpenAPI V4 request signing (HMAC-SHA256).
//!
//! A pure function of its inputs: no clock, no I/O, so every vector produced by the
//! official SDK can be reproduced byte for byte (see `tests/data/sign_vectors.json`).
//! The emulator verifies signatures with the same code, so both ends agree by construction
//! and the vectors pin them both to the SDK.

use std::fmt;

use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const ALGORITHM: &str = "HMAC-SHA256";
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// RFC 3986 unreserved characters stay literal; everything else is `%XX` (uppercase hex).
const QUERY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A string that never shows itself in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The only way to read the value; grep for it when auditing.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Access key pair plus optional STS session token.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: Secret,
    pub session_token: Option<Secret>,
}

impl Credentials {
    /// Which required part is empty, if any (named by its environment variable).
    pub fn missing(&self) -> Option<&'static str> {
        if self.access_key.is_empty() {
            Some("VOLCENGINE_ACCESS_KEY")
        } else if self.secret_key.is_empty() {
            Some("VOLCENGINE_SECRET_KEY")
        } else {
            None
        }
    }
}

/// Everything a signature depends on.
#[derive(Debug, Clone)]
pub struct SignRequest<'a> {
    pub method: &'a str,
    /// Host as sent in the `Host` header (with port if any).
    pub host: &'a str,
    pub path: &'a str,
    /// Decoded query parameters, any order.
    pub query: &'a [(String, String)],
    /// Extra caller headers (e.g. `Content-Type`). `Host`, `X-Date`, `X-Content-Sha256` and
    /// `X-Security-Token` are added by the signer.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// `YYYYMMDD'T'HHMMSS'Z'`
    pub x_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// The signature and every intermediate string (the latter for tests and debugging).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signing_key_hex: String,
    pub signed_headers: String,
    pub signature: String,
    pub authorization: String,
    /// Headers to put on the wire, in a stable order (Authorization last).
    pub headers: Vec<(String, String)>,
}

/// Percent-encodes one query key or value the way the canonical query needs it.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_ENCODE).to_string()
}

/// Canonical query string: every pair encoded, sorted by key then value, joined with `&`.
/// The client sends exactly this string on the wire, so decoding is never ambiguous.
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> =
        params.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    pairs.sort();
    let mut out = String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 accepts any key length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// kSigning = HMAC(HMAC(HMAC(HMAC(SK, date), region), service), "request").
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(secret.as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"request")
}

/// Whether the SDK signs a header of this name (case-sensitive on the SDK's spelling, but we
/// accept any case since HTTP header names are case-insensitive on the wire).
fn is_signed_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "content-type" || lower == "content-md5" || lower == "host" || lower.starts_with("x-")
}

/// `host` without a default port, as the SDK signs it.
pub fn canonical_host(host: &str) -> &str {
    host.strip_suffix(":80")
        .or_else(|| host.strip_suffix(":443"))
        .unwrap_or(host)
}

/// Signs a request. Pure: the same inputs always give the same output.
pub fn sign(creds: &Credentials, req: &SignRequest<'_>) -> Signature {
    let body_hash = sha256_hex(req.body);
    let mut hdrs: Vec<(String, String)> = vec![
        ("host".into(), canonical_host(req.host).to_string()),
        ("x-date".into(), req.x_date.to_string()),
        ("x-content-sha256".into(), body_hash.clone()),
    ];
    if let Some(tok) = &creds.session_token {
        hdrs.push(("x-security-token".into(), tok.expose().to_string()));
    }
    for (k, v) in req.headers {
        let lower = k.to_ascii_lowercase();
        if is_signed_header(&lower) && !hdrs.iter().any(|(n, _)| *n == lower) {
            hdrs.push((lower, v.clone()));
        }
    }
    let core = compute(
        creds.secret_key.expose(),
        req.method,
        req.path,
        req.query,
        hdrs,
        &body_hash,
        req.x_date,
        req.region,
        req.service,
    );
    let authorization = format!(
        "{ALGORITHM} Credential={}/{}, SignedHeaders={}, Signature={}",
        creds.access_key, core.scope, core.signed_headers, core.signature
    );
    let mut headers = vec![
        ("X-Date".to_string(), req.x_date.to_string()),
        ("X-Content-Sha256".to_string(), body_hash),
    ];
    if let Some(tok) = &creds.session_token {
        headers.push(("X-Security-Token".to_string(), tok.expose().to_string()));
    }
    for (k, v) in req.headers {
        let dup = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(k));
        if !k.eq_ignore_ascii_case("host") && !dup {
            headers.push((k.clone(), v.clone()));
        }
    }
    headers.push(("Authorization".to_string(), authorization.clone()));
    Signature {
        canonical_request: core.canonical_request,
        string_to_sign: core.string_to_sign,
        signing_key_hex: hex::encode(core.key),
        signed_headers: core.signed_headers,
        signature: core.signature,
        authorization,
        headers,
    }
}

/// What a server needs to check a received request.
#[derive(Debug, Clone)]
pub struct VerifyRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    /// `(lowercase name, value)` of every header named in SignedHeaders, as received.
    pub signed_values: Vec<(String, String)>,
    pub body_hash: &'a str,
    pub x_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// Server side: the signature the client should have sent for these signed headers.
pub fn expected_signature(secret_key: &str, req: VerifyRequest<'_>) -> String {
    let hdrs = req
        .signed_values
        .into_iter()
        .map(|(k, v)| {
            let v = if k == "host" {
                canonical_host(&v).to_string()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    compute(
        secret_key,
        req.method,
        req.path,
        req.query,
        hdrs,
        req.body_hash,
        req.x_date,
        req.region,
        req.service,
    )
    .signature
}

struct Core {
    canonical_request: String,
    string_to_sign: String,
    signed_headers: String,
    scope: String,
    key: [u8; 32],
    signature: String,
}

#[allow(clippy::too_many_arguments)]
fn compute(
    secret: &str,
    method: &str,
    path: &str,
    query: &[(String, String)],
    mut hdrs: Vec<(String, String)>,
    body_hash: &str,
    x_date: &str,
    region: &str,
    service: &str,
) -> Core {
    hdrs.sort();
    let mut canonical_headers = String::new();
    for (k, v) in &hdrs {
        canonical_headers.push_str(k);
        canonical_headers.push(':');
        canonical_headers.push_str(v);
        canonical_headers.push('\n');
    }
    let signed_headers = hdrs
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let path = if path.is_empty() { "/" } else { path };
    let canonical_request = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed_headers}\n{body_hash}",
        canonical_query(query)
    );
    let date = x_date.get(..8).unwrap_or(x_date);
    let scope = format!("{date}/{region}/{service}/request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{x_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let key = signing_key(secret, date, region, service);
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    Core {
        canonical_request,
        string_to_sign,
        signed_headers,
        scope,
        key,
        signature,
    }
}

/// Parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationHeader {
    pub access_key: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parses `HMAC-SHA256 Credential=AK/DATE/REGION/SERVICE/request, SignedHeaders=a;b, Signature=hex`.
pub fn parse_authorization(value: &str) -> Option<AuthorizationHeader> {
    let rest = value.strip_prefix(ALGORITHM)?.trim_start();
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let mut c = credential?.split('/');
    let access_key = c.next()?.to_string();
    let date = c.next()?.to_string();
    let region = c.next()?.to_string();
    let service = c.next()?.to_string();
    if c.next()? != "request" || c.next().is_some() {
        return None;
    }
    Some(AuthorizationHeader {
        access_key,
        date,
        region,
        service,
        signed_headers: signed?.split(';').map(str::to_string).collect(),
        signature: signature?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_matches_sdk_rules() {
        assert_eq!(encode("a b*c:d/~"), "a%20b%2Ac%3Ad%2F~");
        assert_eq!(encode("测"), "%E6%B5%8B");
    }

    #[test]
    fn numeric_suffixes_sort_bytewise() {
        let q = vec![
            ("InstanceIds.2".to_string(), "b".to_string()),
            ("InstanceIds.10".to_string(), "a".to_string()),
        ];
        assert_eq!(canonical_query(&q), "InstanceIds.10=a&InstanceIds.2=b");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let c = Credentials {
            access_key: "AK".into(),
            secret_key: Secret::new("supersecret"),
            session_token: Some(Secret::new("tok123")),
        };
        let s = format!("{c:?}");
        assert!(!s.contains("supersecret") && !s.contains("tok123"), "{s}");
    }

    #[test]
    fn parses_authorization() {
        let a = parse_authorization("HMAC-SHA256 Credential=AKLTtest/20240101/cn-beijing/ecs/request, SignedHeaders=host;x-date, Signature=abc").unwrap();
        assert_eq!(a.access_key, "AKLTtest");
        assert_eq!(a.region, "cn-beijing");
        assert_eq!(a.signed_headers, vec!["host", "x-date"]);
        assert!(parse_authorization("Bearer x").is_none());
    }
}
