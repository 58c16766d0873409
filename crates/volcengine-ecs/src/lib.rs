//! A Rust client for the Volcengine ECS OpenAPI (2020-04-01): Signature V4 signing, parameter
//! flattening, the wire model, typed errors that carry the cloud's code and RequestId, and an
//! HTTP client with retries (same ClientToken on every attempt), bounded reads and client-side
//! rate limits.
//!
//! It knows nothing about Kubernetes: the operator uses it through its own narrow `Cloud`
//! trait, and the emulator reuses its signer and wire model so both ends agree by
//! construction.
//!
//! ```no_run
//! # async fn demo() -> Result<(), volcengine_ecs::CloudError> {
//! use volcengine_ecs::{ClientConfig, EcsClient};
//! use volcengine_ecs::signer::{Credentials, Secret};
//!
//! let creds = Credentials {
//!     access_key: "AK...".into(),
//!     secret_key: Secret::new("..."),
//!     session_token: None,
//! };
//! let client = EcsClient::new(ClientConfig::new("https://open.volcengineapi.com", "cn-beijing", creds), None)?;
//! let answer = client.delete_instances("cn-beijing", vec!["i-abc".into()], "my-token".into()).await?;
//! for d in answer.value {
//!     println!("{} {:?} (RequestId {})", d.instance_id, d.error, answer.request_id);
//! }
//! # Ok(()) }
//! ```

pub mod client;
pub mod error;
pub mod limiter;
pub mod model;
pub mod signer;

pub use client::{CallObserver, ClientConfig, EcsClient};
pub use error::{CloudError, ErrorClass};
pub use model::{
    Action, DescribeInstancesResult, DescribeQuery, Instance, OperationDetail, RunInstancesRequest,
    Tag,
};

/// A successful answer and the request id the cloud gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Called<T> {
    pub request_id: String,
    pub value: T,
}
