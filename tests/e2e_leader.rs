//! Two replicas with leader election on the real control plane: only the holder reconciles;
//! the leader killed mid-run is replaced within the lease duration; SIGTERM releases the Lease.

use ecs_test_harness as support;

use std::time::Duration;

use ecs_operator::api::EcsInstance;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;
use support::*;

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("ecs-operator-leader")
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let client = client().await;
    let ns = namespace(&client, "e2e-leader").await;
    let emu = Emulator::start("leader", &["--delete-delay-ms", "0"]);
    let args = |id: &'static str| -> Vec<&'static str> {
        vec![
            "--leader-elect",
            "--lease-duration-secs",
            "4",
            "--identity",
            id,
        ]
    };
    let env = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    let mut a = Operator::start_with_env("leader-a", &ns, &emu, &args("replica-a"), &env);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let first = wait_for(30, "a leader", || holder(&leases)).await;
    assert_eq!(first, "replica-a");
    let mut b = Operator::start_with_env("leader-b", &ns, &emu, &args("replica-b"), &env);

    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = emu.seed(json!({"Status": "RUNNING"})).await;
        create(&api, &format!("vm-{i}"), json!({"instanceId": id})).await;
        ids.push(id);
    }
    wait_for(30, "all adopted", || async {
        let l = api.list(&Default::default()).await.ok()?;
        l.items
            .iter()
            .all(|o| o.condition("Ready").is_some_and(|c| c.status == "True"))
            .then_some(())
    })
    .await;
    // The standby made no cloud call at all (each call carries its replica in the
    // User-Agent), while the leader adopted all 20 through the cloud.
    let by = |who: &'static str| {
        let emu = &emu;
        async move {
            let calls = emu.get("calls").await;
            let calls = calls.as_array().cloned().unwrap_or_default();
            let ua = |c: &serde_json::Value| c["user_agent"].as_str().unwrap_or("").to_string();
            calls.iter().filter(|c| ua(c).contains(who)).count()
        }
    };
    assert!(by("replica-a").await > 0, "the leader made no cloud call");
    assert_eq!(by("replica-b").await, 0, "the standby called the cloud");
    assert!(b.is_running());

    // Delete half, kill the leader in the middle of it, delete the rest.
    for i in 0..10 {
        delete(&api, &format!("vm-{i}")).await;
    }
    // In the middle of it: A has sent a first DeleteInstances batch.
    wait_for(20, "A sent a DeleteInstances batch", || async {
        a.log().contains("DeleteInstances batch").then_some(())
    })
    .await;
    a.kill();
    for i in 10..20 {
        delete(&api, &format!("vm-{i}")).await;
    }
    let t = std::time::Instant::now();
    wait_for(30, "b leads", || async {
        (holder(&leases).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    let takeover = t.elapsed();
    assert!(
        takeover < Duration::from_secs(10),
        "takeover took {takeover:?}"
    );
    wait_for(60, "all resources gone", || async {
        (count(&api).await == 0).then_some(())
    })
    .await;
    for id in &ids {
        assert_eq!(emu.deletions_of(id).await, 1, "{id} deleted exactly once");
    }
    assert!(b.log().contains("acquired the lease"));

    // SIGTERM releases the Lease: a new replica takes over well before it would expire.
    let mut c = Operator::start_with_env("leader-c", &ns, &emu, &args("replica-c"), &env);
    wait_for(20, "c campaigns", || async {
        c.log().contains("waiting for the lease").then_some(())
    })
    .await;
    let t = std::time::Instant::now();
    let st = b.terminate().expect("b exited");
    assert!(st.success(), "graceful exit: {st:?}");
    // Released, not left to expire: the moment b is gone, the Lease names nobody (or c,
    // if it was quicker than this read); an unreleased Lease would still name b for ~4 s.
    let now_held = holder(&leases).await;
    assert!(
        now_held.is_none() || now_held.as_deref() == Some("replica-c"),
        "after b's exit the Lease names {now_held:?}"
    );
    wait_for(10, "c leads", || async {
        (holder(&leases).await.as_deref() == Some("replica-c")).then_some(())
    })
    .await;
    println!("SIGTERM -> c leads: {:?} (lease 4 s)", t.elapsed());
    assert!(c.is_running());
}

/// Cloud mutations (by action) that replica `who` sent, as (action, arrival in Unix ms).
async fn mutations_by(emu: &Emulator, who: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for action in [
        "RunInstances",
        "DeleteInstances",
        "ModifyInstanceAttribute",
        "TagResources",
        "UntagResources",
        "StopInstances",
        "StartInstances",
    ] {
        for c in emu.calls(action).await {
            if c["user_agent"].as_str().unwrap_or("").contains(who) {
                out.push((action.to_string(), c["at_ms"].as_i64().unwrap()));
            }
        }
    }
    out
}

fn unix_ms(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime) -> i64 {
    t.0.as_millisecond()
}

/// Replica A (API server traffic through a cuttable proxy) leads, replica B stands by, and
/// `n` adopted VMs are Ready.
struct CutSetup {
    proxy: CutProxy,
    /// A's endpoint: what A sent, answered or not.
    a_calls: CallTap,
    a: Operator,
    _b: Operator,
    api: Api<EcsInstance>,
    leases: Api<Lease>,
    ids: Vec<String>,
    // Last: dropped after the operators.
    _ns: TestNamespace,
}

async fn cut_setup(
    client: &kube::Client,
    name: &str,
    emu: &Emulator,
    a_extra: &[&str],
    n: usize,
) -> CutSetup {
    let ns = namespace(client, name).await;
    let proxy = CutProxy::to_apiserver().await;
    let kc_a = proxy.kubeconfig(&format!("{name}-a"));
    let kc_a = kc_a.to_str().unwrap();
    let lease_args = ["--leader-elect", "--lease-duration-secs", "4", "--identity"];
    let mut args_a: Vec<&str> = lease_args.to_vec();
    args_a.push("replica-a");
    args_a.extend_from_slice(a_extra);
    let mut args_b: Vec<&str> = lease_args.to_vec();
    args_b.push("replica-b");
    let env_b = [
        ("VOLCENGINE_SECRET_KEY", SK),
        ("POD_NAMESPACE", ns.as_str()),
    ];
    let env_a = [env_b[0], env_b[1], ("KUBECONFIG", kc_a)];
    let a_calls = CallTap::to(emu).await;
    let a = Operator::builder(&format!("{name}-a"))
        .namespace(&ns)
        .endpoint(&a_calls.url)
        .args(&args_a)
        .envs(&env_a)
        .start();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let first = wait_for(30, "a leader", || holder(&leases)).await;
    assert_eq!(first, "replica-a");
    let b = Operator::start_with_env(&format!("{name}-b"), &ns, emu, &args_b, &env_b);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let mut ids = Vec::new();
    for i in 0..n {
        let id = emu.seed(json!({"Status": "RUNNING"})).await;
        create(&api, &format!("vm-{i}"), json!({"instanceId": id})).await;
        ids.push(id);
    }
    wait_for(30, "all adopted", || async {
        let l = api.list(&Default::default()).await.ok()?;
        (l.items.len() == n
            && l.items
                .iter()
                .all(|o| o.condition("Ready").is_some_and(|c| c.status == "True")))
        .then_some(())
    })
    .await;
    CutSetup {
        proxy,
        a_calls,
        a,
        _b: b,
        api,
        leases,
        ids,
        _ns: ns,
    }
}

impl CutSetup {
    /// Cuts A off and returns when its Lease expires at the latest (Unix ms): A cannot
    /// renew it any more.
    async fn cut(&self) -> i64 {
        self.proxy.cut();
        let spec = self
            .leases
            .get("ecs-operator-leader")
            .await
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
        unix_ms(spec.renew_time.as_ref().unwrap())
            + 1000 * i64::from(spec.lease_duration_seconds.unwrap())
    }

    async fn b_leads(&self) {
        wait_for(30, "b leads", || async {
            (holder(&self.leases).await.as_deref() == Some("replica-b")).then_some(())
        })
        .await;
    }

    /// Until A exits (a gated A does once its gate closes) or is seen mutating after
    /// `expiry` (an ungated A does once its slowed calls answer), at most 30 s; then
    /// asserts A did neither mutate late nor stay alive, and each VM was deleted once.
    async fn assert_a_stopped_in_time(&mut self, emu: &Emulator, expiry: i64) {
        let late = || async {
            mutations_by(emu, "replica-a")
                .await
                .into_iter()
                .filter(|(_, at)| *at >= expiry)
                .collect::<Vec<_>>()
        };
        let t = std::time::Instant::now();
        while self.a.is_running()
            && late().await.is_empty()
            && t.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let late = late().await;
        assert!(
            late.is_empty(),
            "replica-a mutated the cloud after its Lease expired at {expiry}: {late:?}"
        );
        assert!(
            !self.a.is_running(),
            "replica-a still runs without its Lease"
        );
        assert!(
            self.a.log().contains("mutation gate closed"),
            "{}",
            self.a.log()
        );
        for id in &self.ids {
            assert_eq!(emu.deletions_of(id).await, 1, "{id} deleted exactly once");
        }
    }
}

/// The leader is cut off from the API server while its deletions wait on the cloud
/// (DescribeInstances slowed): it cannot renew its Lease, so it must stop every cloud
/// mutation before the Lease expires, and its in-flight reconciles must not go on to send
/// DeleteInstances. The standby takes over after the expiry and deletes each VM once.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_from_the_apiserver_stops_mutating_before_its_lease_expires() {
    let client = client().await;
    let emu = Emulator::start("leader-cut", &["--delete-delay-ms", "0"]);
    let mut s = cut_setup(&client, "leader-cut", &emu, &[], 6).await;
    // A's deletions pass the policy reads, then wait on DescribeInstances (the ownership
    // proof) well past the Lease's expiry.
    emu.faults("DescribeInstances", json!({"latency_ms": 7000}))
        .await;
    let sent_before = s.a_calls.arrived("DescribeInstances");
    for i in 0..6 {
        delete(&s.api, &format!("vm-{i}")).await;
    }
    // Every VM's ownership proof (DescribeInstances naming it) has reached the cloud, where
    // it is held: A is inside those calls when it is cut off.
    wait_for(20, "A's ownership proofs sent", || async {
        let sent = s.a_calls.requests("DescribeInstances");
        let sent = &sent[sent_before.min(sent.len())..];
        s.ids
            .iter()
            .all(|id| sent.iter().any(|line| line.contains(id.as_str())))
            .then_some(())
    })
    .await;
    let expiry = s.cut().await;
    s.b_leads().await;
    emu.faults("DescribeInstances", json!({})).await;
    wait_for(60, "all resources gone", || async {
        (count(&s.api).await == 0).then_some(())
    })
    .await;
    s.assert_a_stopped_in_time(&emu, expiry).await;
}

/// The leader's DeleteInstances batch is in flight (slowed past the client's timeout) when
/// it is cut off: the client's retries of it would reach the cloud after the Lease expired,
/// so the call is abandoned when the gate closes. B deletes each VM exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn an_in_flight_deletion_is_not_retried_after_the_lease_is_lost() {
    let client = client().await;
    let emu = Emulator::start("leader-retry", &["--delete-delay-ms", "0"]);
    let a_extra = ["--request-timeout-secs", "2", "--max-attempts", "5"];
    let mut s = cut_setup(&client, "leader-retry", &emu, &a_extra, 4).await;
    emu.faults("DeleteInstances", json!({"latency_ms": 10000}))
        .await;
    for i in 0..4 {
        delete(&s.api, &format!("vm-{i}")).await;
    }
    wait_for(20, "A sent its DeleteInstances batch", || async {
        s.a.log().contains("DeleteInstances batch").then_some(())
    })
    .await;
    let expiry = s.cut().await;
    s.b_leads().await;
    emu.faults("DeleteInstances", json!({})).await;
    wait_for(60, "all resources gone", || async {
        (count(&s.api).await == 0).then_some(())
    })
    .await;
    s.assert_a_stopped_in_time(&emu, expiry).await;
}

/// RunInstances goes out only after a status write guarded by the resourceVersion the
/// reconcile read: a resource deleted while its reconcile looked for an earlier VM (a
/// slowed DescribeInstances) gets no VM; the stale write is refused (409) instead.
#[tokio::test(flavor = "multi_thread")]
async fn run_instances_needs_a_write_proving_the_current_version() {
    let client = client().await;
    let ns = namespace(&client, "e2e-stale-run").await;
    let emu = Emulator::start("stale-run", &["--delete-delay-ms", "0"]);
    emu.faults("DescribeInstances", json!({"latency_ms": 3000}))
        .await;
    let calls = CallTap::to(&emu).await;
    let op = Operator::builder("stale-run")
        .namespace(&ns)
        .endpoint(&calls.url)
        .start();
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    create(
        &api,
        "web",
        json!({"create": {
            "zoneId": "cn-beijing-a", "imageId": "image-abc", "instanceTypeId": "ecs.g1ie.large",
            "subnetId": "subnet-1", "securityGroupIds": ["sg-1"], "systemVolume": {"size": 40}
        }}),
    )
    .await;
    wait_for(20, "finalizer", || async {
        has_finalizer(&api, "web").await.filter(|h| *h).map(|_| ())
    })
    .await;
    // The reconcile now waits in DescribeInstances (find_by_uid) with the version it read.
    wait_for(20, "the lookup by uid sent", || async {
        (calls.arrived("DescribeInstances") > 0).then_some(())
    })
    .await;
    delete(&api, "web").await;
    emu.faults("DescribeInstances", json!({})).await;
    wait_for(40, "resource gone", || gone(&api, "web")).await;
    let runs = emu.calls("RunInstances").await;
    assert!(
        runs.is_empty(),
        "RunInstances sent for a stale view: {runs:?}"
    );
    assert!(
        op.log().contains("409 Conflict"),
        "the guarded write was not refused: {}",
        op.log()
    );
}
