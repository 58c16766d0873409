//! Batched DescribeInstances: observations of many resources share calls of up to 100 IDs.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::batch::BatchCall;
use crate::cloud::model::Action;
use crate::cloud::{Called, Cloud, CloudError, DescribeInstancesResult, DescribeQuery};

pub type DescribeOutcome = Result<Called<DescribeInstancesResult>, CloudError>;

/// Pages of one lookup by ID before the answer is taken as broken (one is expected).
const MAX_PAGES: usize = 10;

pub struct DescribeCall {
    pub cloud: Arc<dyn Cloud>,
}

impl BatchCall<String, DescribeOutcome> for DescribeCall {
    fn name(&self) -> &'static str {
        "DescribeInstances"
    }

    fn call(&self, region: String, mut ids: Vec<String>) -> BoxFuture<'static, DescribeOutcome> {
        ids.sort();
        ids.dedup();
        let cloud = self.cloud.clone();
        Box::pin(async move {
            let mut q = DescribeQuery {
                max_results: Some(ids.len().clamp(1, 100) as u32),
                instance_ids: ids,
                ..Default::default()
            };
            // MaxResults is the number of IDs, so one page is expected. Should the cloud page
            // anyway, the rest is read: a VM on an unread page would look not listed, which
            // the deletion path takes for gone (released without DeleteInstances: a leak).
            let mut all = cloud.describe_instances(&region, q.clone()).await?;
            for _ in 1..MAX_PAGES {
                let Some(token) = all.value.next_token.take().filter(|t| !t.is_empty()) else {
                    return Ok(all);
                };
                q.next_token = Some(token);
                let page = cloud.describe_instances(&region, q.clone()).await?;
                all.value.instances.extend(page.value.instances);
                all.value.next_token = page.value.next_token;
            }
            match all.value.next_token.as_deref().filter(|t| !t.is_empty()) {
                None => Ok(all),
                Some(_) => Err(CloudError::BadResponse {
                    action: Action::DescribeInstances,
                    status: 200,
                    detail: format!("still paging after {MAX_PAGES} pages of a lookup by ID"),
                    request_id: Some(all.request_id),
                }),
            }
        })
    }

    fn split(&self, outcome: &DescribeOutcome) -> bool {
        outcome
            .as_ref()
            .err()
            .is_some_and(super::batch::split_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeCloud, Vm, REGION};

    /// A cloud that pages a lookup by ID (here 2 a page, whatever MaxResults asked): every
    /// VM asked for is still in the answer, none reads as "not listed".
    #[tokio::test]
    async fn a_paged_answer_is_read_to_the_end() {
        let cloud = Arc::new(FakeCloud::new(REGION));
        let ids: Vec<String> = (0..5).map(|i| format!("i-{i}")).collect();
        for id in &ids {
            cloud.add_vm(Vm::running(id));
        }
        cloud.state().describe_page = Some(2);
        let call = DescribeCall {
            cloud: cloud.clone(),
        };
        let got = call.call(REGION.into(), ids.clone()).await.unwrap();
        let mut seen: Vec<String> = got
            .value
            .instances
            .iter()
            .map(|i| i.instance_id.clone())
            .collect();
        seen.sort();
        assert_eq!(seen, ids);
        assert_eq!(cloud.state().calls_of(Action::DescribeInstances).count(), 3);
    }
}
