//! Every vector the official Python SDK produced must come out byte for byte.

use serde_json::Value;
use volcengine_ecs::signer::{self, Credentials, Secret, SignRequest};

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("missing {k}"))
        .to_string()
}

#[test]
fn reproduces_every_sdk_vector() {
    let raw = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/sign_vectors.json"
    ))
    .unwrap();
    let doc: Value = serde_json::from_str(&raw).unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(
        vectors.len() >= 6,
        "expected all six vectors, got {}",
        vectors.len()
    );
    for v in vectors {
        let id = s(v, "id");
        let i = &v["inputs"];
        let query: Vec<(String, String)> = i["query_params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let headers: Vec<(String, String)> = i["caller_headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let creds = Credentials {
            access_key: s(i, "access_key_id"),
            secret_key: Secret::new(s(i, "secret_access_key")),
            session_token: i["session_token"].as_str().map(Secret::new),
        };
        let body = s(i, "body");
        let method = s(i, "method");
        let host = s(i, "host");
        let path = s(i, "path");
        let x_date = s(i, "x_date");
        let region = s(i, "region");
        let service = s(i, "service");
        let got = signer::sign(
            &creds,
            &SignRequest {
                method: &method,
                host: &host,
                path: &path,
                query: &query,
                headers: &headers,
                body: body.as_bytes(),
                x_date: &x_date,
                region: &region,
                service: &service,
            },
        );
        assert_eq!(
            got.canonical_request,
            s(v, "canonical_request"),
            "{id}: canonical request"
        );
        assert_eq!(
            got.string_to_sign,
            s(v, "string_to_sign"),
            "{id}: string to sign"
        );
        assert_eq!(
            got.signing_key_hex,
            s(v, "signing_key_hex"),
            "{id}: signing key"
        );
        assert_eq!(
            got.signed_headers,
            s(v, "signed_headers"),
            "{id}: signed headers"
        );
        assert_eq!(got.signature, s(v, "signature"), "{id}: signature");
        assert_eq!(
            got.authorization,
            s(&v["output_headers"], "Authorization"),
            "{id}: Authorization"
        );
        for (k, want) in v["output_headers"].as_object().unwrap() {
            if k == "Host" {
                continue;
            }
            let have = got
                .headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str());
            assert_eq!(have, want.as_str(), "{id}: header {k}");
        }
    }
}

#[test]
fn sdk_raw_requests_verify() {
    // The Python SDK's captured DeleteInstances request: the server-side check must accept it.
    let query: Vec<(String, String)> = [
        ("ClientToken", "tok-1"),
        ("InstanceIds.1", "i-abc"),
        ("InstanceIds.2", "i-def"),
        ("Action", "DeleteInstances"),
        ("Version", "2020-04-01"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let signed = vec![
        ("content-type".to_string(), "text/plain".to_string()),
        ("host".to_string(), "127.0.0.1:39173".to_string()),
        (
            "x-content-sha256".to_string(),
            signer::EMPTY_BODY_SHA256.to_string(),
        ),
        ("x-date".to_string(), "20240101T000000Z".to_string()),
        (
            "x-sdk-invocation-id".to_string(),
            "00000000-0000-4000-8000-000000000001".to_string(),
        ),
        ("x-sdk-request".to_string(), "attempt=1; max=4".to_string()),
    ];
    let sig = signer::expected_signature(
        "c2VjcmV0",
        signer::VerifyRequest {
            method: "GET",
            path: "/",
            query: &query,
            signed_values: signed,
            body_hash: signer::EMPTY_BODY_SHA256,
            x_date: "20240101T000000Z",
            region: "cn-beijing",
            service: "ecs",
        },
    );
    assert_eq!(
        sig,
        "7826f386234b715913cf5cedebaa6992c24e3ffbc5f55690e99de051712c8e65"
    );
}
