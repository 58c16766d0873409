//! The production `CloudFactory`: an `EcsClient` per account (its own key, rate limiters
//! and metrics label) behind the replica's mutation gate.

use std::sync::Arc;

use super::registry::{CloudFactory, Rekey};
use crate::api::EcsAccountSpec;
use crate::cloud::client::{ClientConfig, EcsClient};
use crate::cloud::gated::{GatedCloud, MutationGate};
use crate::cloud::signer::Credentials;
use crate::cloud::{Cloud, CloudError};
use crate::metrics::{AccountObserver, Metrics};

pub struct EcsFactory {
    /// The operator's own client settings (timeouts, retries, rate limits, endpoint).
    pub base: ClientConfig,
    pub metrics: Arc<Metrics>,
    pub gate: MutationGate,
}

impl CloudFactory for EcsFactory {
    fn build(
        &self,
        account: &str,
        spec: &EcsAccountSpec,
        credentials: Credentials,
    ) -> Result<(Arc<dyn Cloud>, Rekey), CloudError> {
        let mut cfg = self.base.clone();
        if let Some(e) = spec.endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
            cfg.endpoint = e.trim().to_string();
            // The operator's per-region endpoints belong to its own endpoint.
            cfg.region_endpoints.clear();
        }
        if let Some(r) = &spec.region {
            cfg.region = r.clone();
        }
        cfg.credentials = credentials;
        let observer = AccountObserver {
            account: account.to_string(),
            metrics: self.metrics.clone(),
        };
        let client = Arc::new(EcsClient::new(cfg, Some(Arc::new(observer)))?);
        let rekey: Rekey = {
            let client = client.clone();
            Arc::new(move |c| client.set_credentials(c))
        };
        let raw: Arc<dyn Cloud> = client;
        Ok((Arc::new(GatedCloud::new(raw, self.gate.clone())), rekey))
    }
}
