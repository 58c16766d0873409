//! Batched DescribeInstances: observations of many resources share calls of up to 100 IDs.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::batch::BatchCall;
use crate::cloud::{Called, Cloud, CloudError, DescribeInstancesResult, DescribeQuery};

pub type DescribeOutcome = Result<Called<DescribeInstancesResult>, CloudError>;

pub struct DescribeCall {
    pub cloud: Arc<dyn Cloud>,
}

impl BatchCall<String, DescribeOutcome> for DescribeCall {
    fn call(&self, region: String, mut ids: Vec<String>) -> BoxFuture<'static, DescribeOutcome> {
        ids.sort();
        ids.dedup();
        let cloud = self.cloud.clone();
        Box::pin(async move {
            let q = DescribeQuery {
                max_results: Some(ids.len().clamp(1, 100) as u32),
                instance_ids: ids,
                ..Default::default()
            };
            cloud.describe_instances(&region, q).await
        })
    }

    fn split(&self, outcome: &DescribeOutcome) -> bool {
        outcome
            .as_ref()
            .err()
            .is_some_and(super::batch::split_after)
    }
}
