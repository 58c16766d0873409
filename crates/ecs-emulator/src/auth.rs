//! Signature verification with the project's own signer, so a signing bug shows up as a
//! failed call here exactly as it would against the real gateway.

use axum::http::HeaderMap;
use jiff::Timestamp;

use volcengine_ecs::signer::{expected_signature, parse_authorization, sha256_hex, VerifyRequest};

use super::accounts::Accounts;
use super::wire::ApiError;
use super::EmulatorConfig;

/// The parts of a request the signature covers.
pub(crate) struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// Decoded URL query only: a form body is covered by the body hash, not the query.
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

/// The credential scope's region and access key when the Authorization header could be
/// parsed (for the envelope and the call log), the account that key belongs to when it is
/// an active key, and the verdict.
pub(crate) struct Verdict {
    pub region: Option<String>,
    pub access_key: Option<String>,
    pub account: Option<String>,
    pub result: Result<(), ApiError>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn parse_x_date(s: &str) -> Option<Timestamp> {
    let dt = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", s).ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the request against the active keys of every account: the access key names the
/// account, and the signature must be made with that key's secret.
pub(crate) fn verify(
    cfg: &EmulatorConfig,
    accounts: &Accounts,
    req: &Incoming<'_>,
    now: Timestamp,
) -> Verdict {
    let mut v = Verdict {
        region: None,
        access_key: None,
        account: None,
        result: Ok(()),
    };
    v.result = check(cfg, accounts, req, now, &mut v);
    v
}

fn check(
    cfg: &EmulatorConfig,
    accounts: &Accounts,
    req: &Incoming<'_>,
    now: Timestamp,
    out: &mut Verdict,
) -> Result<(), ApiError> {
    let Some(raw) = req.headers.get("authorization") else {
        return Err(ApiError::new(
            401,
            "MissingAuthenticationToken",
            "Request is missing Authentication Token.",
        ));
    };
    let invalid_auth = |why: &str| {
        ApiError::new(
            400,
            "InvalidAuthorization",
            format!("Invalid Authorization: {why}"),
        )
    };
    let auth = raw
        .to_str()
        .ok()
        .and_then(parse_authorization)
        .ok_or_else(|| invalid_auth("expected HMAC-SHA256 Credential=AK/DATE/REGION/SERVICE/request, SignedHeaders=..., Signature=..."))?;
    out.region = Some(auth.region.clone());
    out.access_key = Some(auth.access_key.clone());
    // An unknown key and a revoked one look the same, as in the real cloud.
    let Some((account, secret)) = accounts.by_key(&auth.access_key) else {
        return Err(ApiError::new(
            401,
            "InvalidAccessKey",
            format!(
                "The accesskey [{}] included in the request is invalid.",
                auth.access_key
            ),
        ));
    };
    out.account = Some(account.name.clone());
    if auth.service != volcengine_ecs::model::SERVICE {
        return Err(ApiError::new(
            404,
            "ServiceNotFound",
            format!("The service [{}] is not found.", auth.service),
        ));
    }
    if !cfg.regions.contains(&auth.region) {
        return Err(ApiError::new(
            400,
            "InvalidRegion",
            format!("The region [{}] is not supported.", auth.region),
        ));
    }
    let invalid_ts = |why: &str| {
        ApiError::new(
            400,
            "InvalidTimestamp",
            format!("X-Date {why}; it must be UTC YYYYMMDD'T'HHMMSS'Z' within {} seconds of the server time.", cfg.max_clock_skew_secs),
        )
    };
    let x_date = header(req.headers, "x-date").ok_or_else(|| invalid_ts("is missing"))?;
    let signed_at = parse_x_date(x_date).ok_or_else(|| invalid_ts("is malformed"))?;
    let skew = now.duration_since(signed_at).abs();
    if skew.as_secs() > i64::try_from(cfg.max_clock_skew_secs).unwrap_or(i64::MAX) {
        return Err(invalid_ts("is expired or in the future"));
    }
    for required in ["host", "x-date"] {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(invalid_auth(&format!(
                "SignedHeaders must include {required}"
            )));
        }
    }
    let mut signed_values = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let value = header(req.headers, name)
            .ok_or_else(|| invalid_auth(&format!("signed header {name} is not in the request")))?;
        signed_values.push((name.clone(), value.to_string()));
    }
    let body_hash = sha256_hex(req.body);
    if header(req.headers, "x-content-sha256").is_some_and(|h| !h.eq_ignore_ascii_case(&body_hash))
    {
        return Err(ApiError::new(
            401,
            "SignatureDoesNotMatch",
            "The X-Content-Sha256 header does not match the request body.",
        ));
    }
    let want = expected_signature(
        secret.expose(),
        VerifyRequest {
            method: req.method,
            path: req.path,
            query: req.query,
            signed_values,
            body_hash: &body_hash,
            x_date,
            region: &auth.region,
            service: &auth.service,
        },
    );
    if !constant_time_eq(want.as_bytes(), auth.signature.as_bytes()) {
        return Err(ApiError::new(
            401,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your Secret Access Key and signing method.",
        ));
    }
    if let Some(token) = header(req.headers, "x-security-token") {
        if cfg.expired_tokens.iter().any(|t| t == token) {
            return Err(ApiError::new(
                401,
                "InvalidSecretToken",
                "The security token included in the request is expired.",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use volcengine_ecs::signer::{sign, Credentials, Secret, SignRequest};

    fn cfg() -> EmulatorConfig {
        EmulatorConfig {
            expired_tokens: vec!["old-token".into()],
            accounts: vec![crate::AccountSpec {
                name: "team-a".into(),
                keys: vec![("AKLTteamA".into(), Secret::new("team-a-secret"))],
            }],
            ..Default::default()
        }
    }

    struct Built {
        headers: HeaderMap,
        query: Vec<(String, String)>,
        body: Vec<u8>,
        method: &'static str,
    }

    fn build(
        ak: &str,
        sk: &str,
        token: Option<&str>,
        region: &str,
        at: Timestamp,
        body: &[u8],
    ) -> Built {
        let creds = Credentials {
            access_key: ak.into(),
            secret_key: Secret::new(sk),
            session_token: token.map(Secret::new),
        };
        let query = vec![
            ("Action".to_string(), "DescribeInstances".to_string()),
            ("Version".to_string(), "2020-04-01".to_string()),
            ("TagFilters.1.Key".to_string(), "a b/c".to_string()),
        ];
        let method = if body.is_empty() { "GET" } else { "POST" };
        let x_date = at.strftime("%Y%m%dT%H%M%SZ").to_string();
        let extra = vec![("Content-Type".to_string(), "text/plain".to_string())];
        let sig = sign(
            &creds,
            &SignRequest {
                method,
                host: "127.0.0.1:8787",
                path: "/",
                query: &query,
                headers: &extra,
                body,
                x_date: &x_date,
                region,
                service: "ecs",
            },
        );
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:8787".parse().unwrap());
        for (k, v) in sig.headers {
            headers.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Built {
            headers,
            query,
            body: body.to_vec(),
            method,
        }
    }

    fn run(b: &Built, now: Timestamp) -> Result<(), ApiError> {
        let c = cfg();
        run_with(&c, &Accounts::from_config(&c).unwrap(), b, now).result
    }

    fn run_with(c: &EmulatorConfig, accounts: &Accounts, b: &Built, now: Timestamp) -> Verdict {
        verify(
            c,
            accounts,
            &Incoming {
                method: b.method,
                path: "/",
                headers: &b.headers,
                query: &b.query,
                body: &b.body,
            },
            now,
        )
    }

    fn code(r: Result<(), ApiError>) -> (u16, String) {
        let e = r.unwrap_err();
        (e.status, e.code)
    }

    #[test]
    fn accepts_own_signatures_get_and_post() {
        let now = Timestamp::now();
        let c = cfg();
        assert!(run(
            &build(
                &c.access_key,
                c.secret_key.expose(),
                None,
                "cn-beijing",
                now,
                b""
            ),
            now
        )
        .is_ok());
        let post = build(
            &c.access_key,
            c.secret_key.expose(),
            None,
            "cn-shanghai",
            now,
            b"InstanceIds.1=i-a",
        );
        assert!(run(&post, now).is_ok());
    }

    #[test]
    fn each_key_names_its_account_and_signs_with_its_own_secret() {
        let now = Timestamp::now();
        let c = cfg();
        let mut accounts = Accounts::from_config(&c).unwrap();
        let get = |ak: &str, sk: &str| build(ak, sk, None, "cn-beijing", now, b"");
        let v = run_with(&c, &accounts, &get("AKLTteamA", "team-a-secret"), now);
        assert!(v.result.is_ok());
        assert_eq!(v.account.as_deref(), Some("team-a"));
        assert_eq!(v.access_key.as_deref(), Some("AKLTteamA"));
        let v = run_with(
            &c,
            &accounts,
            &get(&c.access_key, c.secret_key.expose()),
            now,
        );
        assert!(v.result.is_ok());
        assert_eq!(v.account.as_deref(), Some("default"));
        // Another account's secret does not sign for this key.
        let v = run_with(&c, &accounts, &get("AKLTteamA", c.secret_key.expose()), now);
        assert_eq!(code(v.result), (401, "SignatureDoesNotMatch".into()));
        // Added at run time: valid at once. Revoked: exactly an unknown key.
        accounts
            .add_key("team-a", "AKLTteamA2", Secret::new("second"))
            .unwrap();
        let second = get("AKLTteamA2", "second");
        assert!(run_with(&c, &accounts, &second, now).result.is_ok());
        assert!(accounts.revoke("team-a", "AKLTteamA"));
        let v = run_with(&c, &accounts, &get("AKLTteamA", "team-a-secret"), now);
        assert_eq!(v.account, None);
        assert_eq!(v.access_key.as_deref(), Some("AKLTteamA"));
        let revoked = v.result.unwrap_err();
        let unknown = run_with(&c, &accounts, &get("AKLTnobody", "x"), now)
            .result
            .unwrap_err();
        assert_eq!(
            (
                revoked.status,
                revoked.code.as_str(),
                revoked.message.as_str()
            ),
            (
                401,
                "InvalidAccessKey",
                "The accesskey [AKLTteamA] included in the request is invalid."
            )
        );
        assert_eq!(
            (unknown.status, unknown.code),
            (401, "InvalidAccessKey".into())
        );
        assert!(run_with(&c, &accounts, &second, now).result.is_ok());
    }

    #[test]
    fn rejections() {
        let now = Timestamp::now();
        let c = cfg();
        let (ak, sk) = (c.access_key.as_str(), c.secret_key.expose());
        let wrong_sk = build(ak, "nope", None, "cn-beijing", now, b"");
        assert_eq!(
            code(run(&wrong_sk, now)),
            (401, "SignatureDoesNotMatch".into())
        );
        let wrong_ak = build("AKLTother", sk, None, "cn-beijing", now, b"");
        assert_eq!(code(run(&wrong_ak, now)), (401, "InvalidAccessKey".into()));
        let region = build(ak, sk, None, "mars-1", now, b"");
        assert_eq!(code(run(&region, now)), (400, "InvalidRegion".into()));
        let old = build(
            ak,
            sk,
            None,
            "cn-beijing",
            now - jiff::SignedDuration::from_mins(16),
            b"",
        );
        assert_eq!(code(run(&old, now)), (400, "InvalidTimestamp".into()));
        let ok_skew = build(
            ak,
            sk,
            None,
            "cn-beijing",
            now - jiff::SignedDuration::from_mins(14),
            b"",
        );
        assert!(run(&ok_skew, now).is_ok());
        let expired = build(ak, sk, Some("old-token"), "cn-beijing", now, b"");
        assert_eq!(code(run(&expired, now)), (401, "InvalidSecretToken".into()));
        let fresh = build(ak, sk, Some("new-token"), "cn-beijing", now, b"");
        assert!(run(&fresh, now).is_ok());

        let mut tampered = build(ak, sk, None, "cn-beijing", now, b"");
        tampered.query[2].1 = "other".into();
        assert_eq!(
            code(run(&tampered, now)),
            (401, "SignatureDoesNotMatch".into())
        );
        let mut body = build(ak, sk, None, "cn-beijing", now, b"InstanceIds.1=i-a");
        body.body = b"InstanceIds.1=i-b".to_vec();
        assert_eq!(code(run(&body, now)), (401, "SignatureDoesNotMatch".into()));

        let mut missing = build(ak, sk, None, "cn-beijing", now, b"");
        missing.headers.remove("authorization");
        assert_eq!(
            code(run(&missing, now)),
            (401, "MissingAuthenticationToken".into())
        );
        let mut garbled = build(ak, sk, None, "cn-beijing", now, b"");
        garbled
            .headers
            .insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(
            code(run(&garbled, now)),
            (400, "InvalidAuthorization".into())
        );
        let mut no_date = build(ak, sk, None, "cn-beijing", now, b"");
        no_date.headers.remove("x-date");
        assert_eq!(code(run(&no_date, now)), (400, "InvalidTimestamp".into()));
        let mut bad_date = build(ak, sk, None, "cn-beijing", now, b"");
        bad_date
            .headers
            .insert("x-date", "2024-01-01".parse().unwrap());
        assert_eq!(code(run(&bad_date, now)), (400, "InvalidTimestamp".into()));
    }
}
