//! `cloud::client::parse_response` for every result type: whatever the body and status, it
//! returns (never panics), and an error is well-formed: a non-empty code that its message
//! names, the HTTP status it was given, a bounded message.
//!
//! Input: byte 0 picks the result type, bytes 1-2 the HTTP status, the rest is the body.

#![no_main]

use volcengine_ecs::client::parse_response;
use volcengine_ecs::model::{
    Action, DescribeInstancesResult, EmptyResult, OperationDetailsResult, RunInstancesResult,
};
use volcengine_ecs::{CloudError, ErrorClass};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

fn check<T: DeserializeOwned>(action: Action, status: u16, body: &[u8]) {
    match parse_response::<T>(action, status, body) {
        Ok(c) => {
            // Success needs a 2xx, a JSON body with ResponseMetadata and no error in it.
            assert!((200..300).contains(&status), "Ok with status {status}");
            let v: serde_json::Value = serde_json::from_slice(body).expect("Ok from non-JSON");
            assert!(v.get("ResponseMetadata").is_some());
            assert!(v
                .pointer("/ResponseMetadata/Error")
                .is_none_or(|e| e.is_null()));
            let _ = c.request_id;
        }
        Err(e) => {
            assert!(!e.code().is_empty());
            assert_eq!(e.http_status(), Some(status), "{e:?}");
            let shown = e.to_string();
            assert!(shown.contains(e.code()), "{shown:?} lacks {:?}", e.code());
            // Codes and request ids are identifiers, messages and details are capped: the
            // whole error stays small whatever the body (it goes to logs, conditions, Events).
            assert!(e.code().chars().count() <= 128);
            assert!(e.request_id().unwrap_or("").chars().count() <= 128);
            assert!(shown.len() <= 4096, "{} byte error", shown.len());
            match &e {
                CloudError::Api { message, .. } => {
                    // Whatever the cloud (or a gateway) says, what we keep is bounded: it
                    // goes to logs, conditions and Events.
                    assert!(
                        message.chars().count() <= 512,
                        "{} char message",
                        message.chars().count()
                    );
                }
                CloudError::BadResponse { detail, .. } => {
                    // A snippet of the body, never the whole of a large one.
                    assert!(detail.len() <= 1024, "{} byte detail", detail.len());
                    assert_ne!(e.class(), ErrorClass::Auth);
                }
                other => panic!("parse_response made {other:?}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = 100 + u16::from_le_bytes([data[1], data[2]]) % 500;
    let body = &data[3..];
    match data[0] % 4 {
        0 => check::<DescribeInstancesResult>(Action::DescribeInstances, status, body),
        1 => check::<OperationDetailsResult>(Action::DeleteInstances, status, body),
        2 => check::<RunInstancesResult>(Action::RunInstances, status, body),
        _ => check::<EmptyResult>(Action::ModifyInstanceAttribute, status, body),
    }
});
