//! The mutation gate: a replica that lost its Lease, or cannot prove it still holds it,
//! must not change the cloud any more. Every mutating call goes through `GatedCloud`,
//! which refuses it once the gate is closed and abandons a call still in flight (no
//! retry of it is sent) the moment the gate closes.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::model::{OperationDetail, RunInstancesRequest, Tag};
use super::{Cloud, CloudFuture, DescribeInstancesResult, DescribeQuery};

/// Open while this replica may mutate the cloud. Closing is for good: the process exits.
#[derive(Debug, Clone, Default)]
pub struct MutationGate(CancellationToken);

impl MutationGate {
    pub fn close(&self, why: &'static str) {
        if !self.0.is_cancelled() {
            tracing::warn!(why, "mutation gate closed: no further cloud mutation");
        }
        self.0.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.0.is_cancelled()
    }

    pub async fn closed(&self) {
        self.0.cancelled().await
    }

    /// Runs `call` unless the gate is (or becomes) closed. A refused or abandoned call never
    /// completes: its reconcile is being cancelled by the same gate, so nothing after it
    /// (no status write, no attempt bump, no Event) runs.
    pub async fn admit<T>(
        &self,
        action: &'static str,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::select! {
            biased;
            _ = self.0.cancelled() => {
                tracing::warn!(action, "cloud mutation refused: this replica no longer holds the lease");
                std::future::pending().await
            }
            r = call => r,
        }
    }
}

/// A `Cloud` whose mutating calls pass the gate; reads are never gated.
pub struct GatedCloud {
    inner: Arc<dyn Cloud>,
    gate: MutationGate,
}

impl GatedCloud {
    pub fn new(inner: Arc<dyn Cloud>, gate: MutationGate) -> Self {
        Self { inner, gate }
    }
}

impl Cloud for GatedCloud {
    fn default_region(&self) -> &str {
        self.inner.default_region()
    }

    fn describe_instances<'a>(
        &'a self,
        region: &'a str,
        query: DescribeQuery,
    ) -> CloudFuture<'a, DescribeInstancesResult> {
        self.inner.describe_instances(region, query)
    }

    fn delete_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>> {
        let call = self
            .inner
            .delete_instances(region, instance_ids, client_token);
        Box::pin(self.gate.admit("DeleteInstances", call))
    }

    fn run_instances<'a>(
        &'a self,
        region: &'a str,
        req: RunInstancesRequest,
    ) -> CloudFuture<'a, Vec<String>> {
        let call = self.inner.run_instances(region, req);
        Box::pin(self.gate.admit("RunInstances", call))
    }

    fn set_deletion_protection<'a>(
        &'a self,
        region: &'a str,
        instance_id: String,
        enabled: bool,
    ) -> CloudFuture<'a, ()> {
        let call = self
            .inner
            .set_deletion_protection(region, instance_id, enabled);
        Box::pin(self.gate.admit("ModifyInstanceAttribute", call))
    }

    fn modify_instance_attribute<'a>(
        &'a self,
        region: &'a str,
        instance_id: String,
        name: Option<String>,
        description: Option<String>,
        client_token: String,
    ) -> CloudFuture<'a, ()> {
        let call = self.inner.modify_instance_attribute(
            region,
            instance_id,
            name,
            description,
            client_token,
        );
        Box::pin(self.gate.admit("ModifyInstanceAttribute", call))
    }

    fn modify_instance_spec<'a>(
        &'a self,
        region: &'a str,
        instance_id: String,
        instance_type_id: String,
        client_token: String,
    ) -> CloudFuture<'a, String> {
        let call =
            self.inner
                .modify_instance_spec(region, instance_id, instance_type_id, client_token);
        Box::pin(self.gate.admit("ModifyInstanceSpec", call))
    }

    fn stop_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>> {
        let call = self
            .inner
            .stop_instances(region, instance_ids, client_token);
        Box::pin(self.gate.admit("StopInstances", call))
    }

    fn start_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        client_token: String,
    ) -> CloudFuture<'a, Vec<OperationDetail>> {
        let call = self
            .inner
            .start_instances(region, instance_ids, client_token);
        Box::pin(self.gate.admit("StartInstances", call))
    }

    fn untag_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        tag_keys: Vec<String>,
    ) -> CloudFuture<'a, ()> {
        let call = self.inner.untag_instances(region, instance_ids, tag_keys);
        Box::pin(self.gate.admit("UntagResources", call))
    }

    fn tag_instances<'a>(
        &'a self,
        region: &'a str,
        instance_ids: Vec<String>,
        tags: Vec<Tag>,
    ) -> CloudFuture<'a, ()> {
        let call = self.inner.tag_instances(region, instance_ids, tags);
        Box::pin(self.gate.admit("TagResources", call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn an_open_gate_passes_the_call() {
        let g = MutationGate::default();
        assert_eq!(g.admit("X", async { 7 }).await, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_gate_never_starts_the_call() {
        let g = MutationGate::default();
        g.close("test");
        let started = std::sync::atomic::AtomicBool::new(false);
        let call = async {
            started.store(true, std::sync::atomic::Ordering::SeqCst);
            1
        };
        let r = tokio::time::timeout(Duration::from_secs(60), g.admit("X", call)).await;
        assert!(r.is_err(), "a refused call must not complete");
        assert!(!started.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn closing_abandons_a_call_in_flight() {
        let g = MutationGate::default();
        let g2 = g.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            g2.close("test");
        });
        let call = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            1
        };
        let r = tokio::time::timeout(Duration::from_secs(60), g.admit("X", call)).await;
        assert!(r.is_err(), "an abandoned call must not complete");
    }
}
