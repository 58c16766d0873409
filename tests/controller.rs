//! Controller behaviour on the fakes (in-memory API server, scripted cloud): no processes,
//! no network; the unit tier runs it.

use std::sync::Arc;

use ecs_operator::api::EcsInstanceSpec;
use ecs_operator::testing::{self, FakeCloud, FakeKube};

const LIST_ALL: &str = "GET /apis/ecs.volcengine.io/v1alpha1/ecsinstances";

fn cluster_lists(kube: &FakeKube) -> usize {
    kube.state()
        .requests
        .iter()
        .filter(|r| r.starts_with(LIST_ALL))
        .count()
}

fn store_with(n: usize) -> FakeKube {
    let kube = FakeKube::new();
    kube.create_namespace("team-a", &[]);
    for i in 0..n {
        kube.create_instance("team-a", &format!("vm-{i}"), EcsInstanceSpec::default());
    }
    kube
}

/// Before the watch cache syncs (at start, or under `--namespaces` until the cluster-wide
/// watch has), each adoption's ownership check needs the whole cluster's list. 200
/// adoptions at once were 200 concurrent cluster-wide LISTs (1,000 got 504s from a real API
/// server); queued checks now share a LIST that started after they asked.
#[tokio::test]
async fn concurrent_ownership_checks_share_cluster_wide_lists() {
    let kube = store_with(30);
    let ctx = testing::context(
        &kube,
        Arc::new(FakeCloud::new(testing::REGION)),
        testing::settings(),
    );
    let checks = (0..200).map(|_| ctx.all_instances());
    let answers = futures::future::join_all(checks).await;
    for a in &answers {
        assert_eq!(a.as_ref().map(Vec::len).ok(), Some(30));
    }
    let lists = cluster_lists(&kube);
    assert!(
        (1..=2).contains(&lists),
        "{lists} cluster-wide LISTs for 200 concurrent checks"
    );
}

/// Sharing never serves an answer older than the question: a resource created before a
/// check starts is in that check's list.
#[tokio::test]
async fn a_shared_list_is_never_older_than_the_check() {
    let kube = store_with(3);
    let ctx = testing::context(
        &kube,
        Arc::new(FakeCloud::new(testing::REGION)),
        testing::settings(),
    );
    assert_eq!(ctx.all_instances().await.map(|l| l.len()).ok(), Some(3));
    kube.create_instance("team-a", "late", EcsInstanceSpec::default());
    let names: Vec<String> = ctx
        .all_instances()
        .await
        .unwrap()
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    assert!(names.contains(&"late".to_string()), "{names:?}");
    assert_eq!(cluster_lists(&kube), 2);
}
