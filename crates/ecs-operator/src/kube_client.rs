//! The operator's Kubernetes client, with a cap on requests in flight.
//!
//! kube's client speaks HTTP/1.1: one TLS connection per request in flight. With 2,048
//! reconciles and their Events, adopting 10,000 resources opened 2,361 connections, about
//! 80 MiB of buffers and TLS state (heaptrack, docs/benchmarks.md). Past the cap a request
//! waits its turn in kube's request buffer; it holds its slot until its response headers
//! arrive, so a watch's open stream holds none.

use kube::client::ClientBuilder;
use tower::limit::{ConcurrencyLimit, ConcurrencyLimitLayer};

/// The client `ecs-operator run` uses: at most `max_in_flight` requests in flight (at
/// least one).
pub fn limited(config: kube::Config, max_in_flight: usize) -> Result<kube::Client, kube::Error> {
    Ok(limit_in_flight(ClientBuilder::try_from(config)?, max_in_flight).build())
}

/// The cap itself, on any client stack (the tests put it over `testing::FakeKube`).
pub fn limit_in_flight<S>(
    builder: ClientBuilder<S>,
    max_in_flight: usize,
) -> ClientBuilder<ConcurrencyLimit<S>> {
    builder.with_layer(&ConcurrencyLimitLayer::new(max_in_flight.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeKube;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::Api;
    use std::time::Duration;

    /// 40 reads at once through a cap of 4: the API server never sees more than 4 at a
    /// time, and sees 4 (the cap is reached, so the reads did overlap).
    #[tokio::test]
    async fn at_most_the_cap_is_in_flight() {
        let kube = FakeKube::new();
        kube.create_namespace("team-a", &[]);
        kube.traffic.set_delay(Duration::from_millis(200));
        let client = limit_in_flight(ClientBuilder::new(kube.service(), "default"), 4).build();
        let api: Api<Namespace> = Api::all(client);
        let reads = (0..40).map(|_| api.get("team-a"));
        for r in futures::future::join_all(reads).await {
            assert!(r.is_ok(), "{r:?}");
        }
        assert_eq!(kube.traffic.max_in_flight(), 4);
    }

    /// The same reads without the cap: all 40 in flight at once (the test above could fail).
    #[tokio::test]
    async fn without_the_cap_every_read_is_in_flight() {
        let kube = FakeKube::new();
        kube.create_namespace("team-a", &[]);
        kube.traffic.set_delay(Duration::from_millis(200));
        let client = ClientBuilder::new(kube.service(), "default").build();
        let api: Api<Namespace> = Api::all(client);
        futures::future::join_all((0..40).map(|_| api.get("team-a"))).await;
        assert_eq!(kube.traffic.max_in_flight(), 40);
    }
}
