//! `signer::sign` never panics, is deterministic, and agrees with the server side
//! (`expected_signature`, as the emulator calls it) over the headers it says it signed;
//! `parse_authorization` reads back what `sign` wrote whenever the scope parts are plain.

#![no_main]

use arbitrary::Arbitrary;
use volcengine_ecs::signer::{
    expected_signature, parse_authorization, sha256_hex, sign, Credentials, Secret, SignRequest,
    VerifyRequest,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
    method: String,
    host: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    x_date: String,
    region: String,
    service: String,
}

/// Free of the characters that structure the Authorization header.
fn plain(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', ',', ';', '=', ' ']) && !s.chars().any(char::is_whitespace)
}

/// An HTTP header name (RFC 9110 token): nothing else can be sent, and only such names
/// keep `SignedHeaders` (`;`-separated) unambiguous.
fn token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fuzz_target!(|i: Input| {
    let mut i = i;
    i.headers.retain(|(n, _)| token(n));
    let creds = Credentials {
        access_key: i.access_key.clone(),
        secret_key: Secret::new(i.secret_key.clone()),
        session_token: i.session_token.clone().map(Secret::new),
    };
    let req = SignRequest {
        method: &i.method,
        host: &i.host,
        path: &i.path,
        query: &i.query,
        headers: &i.headers,
        body: &i.body,
        x_date: &i.x_date,
        region: &i.region,
        service: &i.service,
    };
    let sig = sign(&creds, &req);
    assert_eq!(sign(&creds, &req), sig, "deterministic");
    assert_eq!(sig.signature.len(), 64);
    assert!(sig
        .signature
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(
        sig.headers.last().map(|(n, _)| n.as_str()),
        Some("Authorization")
    );
    assert_eq!(format!("{:?}", creds.secret_key), "<redacted>");

    // The server's view: the value of every signed header as it arrives on the wire.
    let body_hash = sha256_hex(&i.body);
    let signed: Vec<&str> = sig.signed_headers.split(';').collect();
    let mut values = Vec::new();
    for name in &signed {
        let v = if *name == "host" {
            i.host.clone()
        } else {
            match sig
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                Some((_, v)) => v.clone(),
                None => panic!("signed header {name:?} is not sent: {:?}", sig.headers),
            }
        };
        values.push((name.to_string(), v));
    }
    let want = expected_signature(
        &i.secret_key,
        VerifyRequest {
            method: &i.method,
            path: &i.path,
            query: &i.query,
            signed_values: values,
            body_hash: &body_hash,
            x_date: &i.x_date,
            region: &i.region,
            service: &i.service,
        },
    );
    assert_eq!(want, sig.signature, "server and client disagree");

    let date = i.x_date.get(..8).unwrap_or(&i.x_date);
    if [i.access_key.as_str(), date, &i.region, &i.service]
        .iter()
        .all(|s| plain(s))
        && signed.iter().all(|h| plain(h))
    {
        let a = parse_authorization(&sig.authorization).expect("parses");
        assert_eq!(a.access_key, i.access_key);
        assert_eq!(a.date, date);
        assert_eq!(a.region, i.region);
        assert_eq!(a.service, i.service);
        assert_eq!(a.signature, sig.signature);
        assert_eq!(a.signed_headers, signed);
    }
});
