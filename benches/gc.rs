//! Garbage-collection benchmark on the real control plane and the emulator (issue 5).
//!
//!   cargo bench --bench gc -- [--n 10000] [--floor 10000 | --floor-too] [--compare 1000]
//!                             [--latency 100]
//!
//! For each run: seed N VMs, create N EcsInstances adopting them, wait until all carry the
//! finalizer and their instance ID, delete the namespace, and measure until the last
//! EcsInstance is gone (the headline clock; the namespace itself goes later and is only
//! logged). A watch started before the namespace DELETE records, per object, when its
//! deletionTimestamp was first seen and when it was deleted, so every row also splits the
//! time into the namespace controller's marking (first / last object marked) and the
//! per-object mark -> gone lag (p50 / p95 / max) plus the tail (last gone - last marked).
//! `--floor N` is the control plane's own cost, measured in the same invocation: the same
//! setup as `--n N`, then the operator is killed and the bench removes finalizers itself the
//! instant each object is marked (64 patches in flight, no cloud calls), so no VM is deleted
//! (VMs left = N is expected there). `--floor-too` with `--n N` runs the floor for the same
//! N. The floor runs right before `--n`, and with both the ratio operator / floor is printed.
//! `--compare M` runs M with batching on and off (batch size 1) and prints the ratios.
//! `--latency K` measures single-resource `delete` -> gone latency over K deletions.
//! `--check` makes the `--n` run's targets assertions (exit 1 when one fails): DeleteInstances
//! calls <= 1.05 * ceil(N / 100) and 0 VMs left (0 EcsInstances left is when the clock stops). CI runs
//! `--n 300 --floor-too --check` (scripts/test.sh, tier gc-bench); the time ratio to the floor
//! is printed, not asserted (benchmarks print numbers; two cores shared with the control plane
//! make a timed assertion flaky).
//! The emulator throttles DeleteInstances at 10 requests/s (429 FlowLimitExceeded above).

use ecs_test_harness as support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ecs_operator::api::{EcsInstance, FINALIZER};
use futures::channel::mpsc;
use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use support::*;

/// Overall limit for the namespace deletion; generous, since N = 10,000 with batching off
/// legitimately takes many minutes.
const DELETION_LIMIT: Duration = Duration::from_secs(1800);
/// No object marked or gone for this long means something is stuck (an object never
/// marked, a finalizer never removed), not slow: fail with the names instead of waiting
/// out DELETION_LIMIT.
const STALL_LIMIT: Duration = Duration::from_secs(300);
/// Finalizer patches in flight in the floor run.
const FLOOR_CONCURRENCY: usize = 64;

struct Outcome {
    n: usize,
    /// Batch size, or "floor".
    label: String,
    seconds: f64,
    delete_calls: u64,
    all_calls: u64,
    /// None when the operator did not run during the deletion (floor).
    rss_mib: Option<f64>,
    cpu_s: Option<f64>,
    vms_left: usize,
    resources_left: usize,
    split: Split,
}

/// Where the deletion time went, from the bench's own watch.
struct Split {
    first_mark_s: f64,
    last_mark_s: f64,
    lag_p50_ms: f64,
    lag_p95_ms: f64,
    lag_max_ms: f64,
    tail_s: f64,
}

fn proc_stats(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm_kb / 1024.0, ticks / 100.0)
}

fn calls_of(stats: &Value, action: &str) -> u64 {
    stats["actions"][action]["calls"].as_u64().unwrap_or(0)
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1)]
}

/// Tags every seeded VM as its resource's claim would (cluster, namespace, name, uid), before
/// the operator starts. Adopting an untagged VM costs one TagResources call, and at the
/// bench's 10 calls/s 10,000 claims took 17 minutes per run; adopting a VM already tagged
/// for its resource is DescribeInstances only (`ownership::tagged_ours`). The deletion, which
/// is what is measured, is the same either way.
async fn pretag(client: &Client, api: &Api<EcsInstance>, emu: &Emulator) {
    let cluster = Api::<Namespace>::all(client.clone())
        .get(ecs_operator::identity::IDENTITY_NAMESPACE)
        .await
        .expect("kube-system")
        .uid()
        .expect("kube-system has a uid");
    let objs = api.list(&ListParams::default()).await.expect("list").items;
    let t = Instant::now();
    stream::iter(objs)
        .for_each_concurrent(32, |o| {
            let cluster = cluster.clone();
            async move {
                let id = o.spec.instance_id.clone().expect("adopting");
                let tags = json!({"Tags": [
                    {"Key": "ecs.volcengine.io/cluster", "Value": cluster},
                    {"Key": "ecs.volcengine.io/namespace", "Value": o.namespace()},
                    {"Key": "ecs.volcengine.io/name", "Value": o.name_any()},
                    {"Key": "ecs.volcengine.io/uid", "Value": o.uid()},
                ]});
                emu.send(reqwest::Method::PATCH, &format!("instances/{id}"), tags)
                    .await;
            }
        })
        .await;
    eprintln!("  tagged their VMs in {:.1}s", t.elapsed().as_secs_f64());
}

/// One run's namespace, emulator and operator, with N adopted EcsInstances.
struct Setup {
    n: usize,
    client: Client,
    emu: Emulator,
    op: Operator,
    api: Api<EcsInstance>,
    // Last: dropped after the operator is gone.
    ns: TestNamespace,
}

async fn setup(n: usize, batch: u16, tag: &str) -> Setup {
    let client = client().await;
    let ns = namespace(&client, tag).await;
    let emu = Emulator::start(tag, &["--delete-delay-ms", "0", "--create-delay-ms", "0"]);
    emu.faults(
        "DeleteInstances",
        json!({"throttle_rps": 10.0, "throttle_burst": 10}),
    )
    .await;
    let ids: Vec<String> = emu
        .send(
            reqwest::Method::POST,
            "instances/bulk",
            json!({"Count": n, "Status": "RUNNING"}),
        )
        .await["InstanceIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    stream::iter(ids.iter().enumerate())
        .for_each_concurrent(32, |(i, id)| {
            let api = api.clone();
            async move {
                let o = ecsi(&format!("vm-{i:05}"), json!({"instanceId": id}));
                api.create(&PostParams::default(), &o)
                    .await
                    .expect("create");
            }
        })
        .await;
    eprintln!(
        "  created {n} resources in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    pretag(&client, &api, &emu).await;
    let batch_s = batch.to_string();
    let op = Operator::start(
        tag,
        &ns,
        &emu,
        &[
            "--batch-size",
            &batch_s,
            "--rate-limit",
            "10",
            "--rate-burst",
            "10",
            "--resync-secs",
            "3600",
        ],
    );
    let lp = ListParams::default();
    // Status writes and Events for N adoptions; ~1 min per 1,000 here, with room.
    let limit = 600.max(n as u64 / 5);
    wait_for(limit, "all adopted", || async {
        let l = api.list(&lp).await.ok()?;
        let done = l
            .items
            .iter()
            .filter(|o| {
                !o.metadata
                    .finalizers
                    .as_deref()
                    .unwrap_or_default()
                    .is_empty()
                    && o.status
                        .as_ref()
                        .and_then(|s| s.instance_id.as_ref())
                        .is_some()
            })
            .count();
        (done == n).then_some(())
    })
    .await;
    eprintln!("  all {n} adopted after {:.1}s", t.elapsed().as_secs_f64());
    Setup {
        n,
        client,
        ns,
        emu,
        op,
        api,
    }
}

async fn run(n: usize, batch: u16) -> Outcome {
    let tag = format!("bench-{n}-b{batch}");
    let s = setup(n, batch, &tag).await;
    let before = s.emu.get("stats").await;
    let (seconds, split) = delete_namespace(&s, &before, false).await;
    let (rss_mib, cpu_s) = proc_stats(s.op.pid().unwrap_or(0));
    finish(
        &s,
        &before,
        batch.to_string(),
        seconds,
        split,
        Some((rss_mib, cpu_s)),
    )
    .await
}

/// The control plane's floor: the same objects, status and Events as `run(n, 100)`, but
/// with the operator gone and the bench removing each finalizer the moment the object is
/// marked, so what is left is the namespace controller, the apiserver and etcd.
async fn floor(n: usize) -> Outcome {
    let tag = format!("bench-{n}-floor");
    let mut s = setup(n, 100, &tag).await;
    // The operator publishes its adoption Events asynchronously; let them land so the
    // namespace holds what a real run's namespace ends up holding.
    let mut last = usize::MAX;
    for _ in 0..120 {
        let now = events_in(&s.client, &s.ns).await;
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    s.op.kill();
    let before = s.emu.get("stats").await;
    let (seconds, split) = delete_namespace(&s, &before, true).await;
    finish(&s, &before, "floor".into(), seconds, split, None).await
}

async fn finish(
    s: &Setup,
    before: &Value,
    label: String,
    seconds: f64,
    split: Split,
    op_stats: Option<(f64, f64)>,
) -> Outcome {
    let after = s.emu.get("stats").await;
    let all_calls = after["calls"].as_u64().unwrap_or(0) - before["calls"].as_u64().unwrap_or(0);
    let delete_calls = calls_of(&after, "DeleteInstances") - calls_of(before, "DeleteInstances");
    let vms_left = s
        .emu
        .get("instances")
        .await
        .as_array()
        .map(Vec::len)
        .unwrap_or(usize::MAX);
    let resources_left = s
        .api
        .list(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(0);
    Outcome {
        n: s.n,
        label,
        seconds,
        delete_calls,
        all_calls,
        rss_mib: op_stats.map(|(r, _)| r),
        cpu_s: op_stats.map(|(_, c)| c),
        vms_left,
        resources_left,
        split,
    }
}

/// Deletes the namespace and waits for its EcsInstances (the clock) and then the namespace.
/// With `strip`, the bench itself removes each object's finalizer as soon as it is marked.
async fn delete_namespace(s: &Setup, before: &Value, strip: bool) -> (f64, Split) {
    let meta: Api<PartialObjectMeta<EcsInstance>> = Api::namespaced(s.client.clone(), &s.ns);
    let (tx, rx) = mpsc::unbounded::<PartialObjectMeta<EcsInstance>>();
    let remover = strip.then(|| {
        let api = s.api.clone();
        tokio::spawn(
            rx.map(move |o| remove_finalizer(api.clone(), o))
                .buffer_unordered(FLOOR_CONCURRENCY)
                .count(),
        )
    });
    let tracker = Tracker::start(meta, strip.then_some(tx)).await;
    eprintln!(
        "  {} Events in the namespace at DELETE",
        events_in(&s.client, &s.ns).await
    );
    let nss: Api<Namespace> = Api::all(s.client.clone());
    let t0 = Instant::now();
    nss.delete(&s.ns, &DeleteParams::default()).await.unwrap();
    let mut done = tracker.task;
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    let (mut progress, mut progress_at) = (0, Instant::now());
    loop {
        tokio::select! {
            r = &mut done => {
                r.expect("watch task");
                break;
            }
            _ = report.tick() => {
                let (n, marked, gone, unmarked) = {
                    let seen = tracker.seen.lock().unwrap();
                    let mut unmarked: Vec<&String> =
                        seen.names.iter().filter(|n| !seen.marked.contains_key(*n)).collect();
                    unmarked.sort();
                    unmarked.truncate(5);
                    let unmarked: Vec<String> = unmarked.into_iter().cloned().collect();
                    (seen.names.len(), seen.marked.len(), seen.gone.len(), unmarked)
                };
                let st = s.emu.get("stats").await;
                eprintln!(
                    "  {:>5.0}s: {marked}/{n} marked, {gone}/{n} gone, {} DeleteInstances calls",
                    t0.elapsed().as_secs_f64(),
                    calls_of(&st, "DeleteInstances") - calls_of(before, "DeleteInstances")
                );
                if marked + gone != progress {
                    (progress, progress_at) = (marked + gone, Instant::now());
                }
                let stuck = progress_at.elapsed() > STALL_LIMIT;
                if stuck || t0.elapsed() > DELETION_LIMIT {
                    panic!(
                        "namespace {} not emptied after {:.0}s ({}): {marked}/{n} EcsInstances \
                         marked for deletion, {gone}/{n} gone; first never marked: {unmarked:?}",
                        s.ns,
                        t0.elapsed().as_secs_f64(),
                        if stuck { "no progress for 300s" } else { "overall limit" },
                    );
                }
            }
        }
    }
    // Same clock as before the watch existed: namespace DELETE -> last EcsInstance gone.
    let seen = std::mem::take(&mut *tracker.seen.lock().unwrap());
    let last_gone = seen.gone.values().max().copied().unwrap_or(t0);
    let seconds = last_gone.saturating_duration_since(t0).as_secs_f64();
    assert_eq!(
        remaining(&s.api).await,
        Some(0),
        "the watch saw every EcsInstance deleted but a list still returns some"
    );
    if let Some(r) = remover {
        let patched = r.await.expect("finalizer remover");
        eprintln!("  the bench removed {patched} finalizers");
    }
    let split = seen.split(t0);
    wait_for(1800, "namespace gone", || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        matches!(nss.get_opt(&s.ns).await, Ok(None)).then_some(())
    })
    .await;
    eprintln!(
        "  resources gone after {seconds:.1}s, namespace gone after {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    eprintln!(
        "  marked from {:.1}s to {:.1}s; mark -> gone p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms; \
         tail {:.1}s",
        split.first_mark_s,
        split.last_mark_s,
        split.lag_p50_ms,
        split.lag_p95_ms,
        split.lag_max_ms,
        split.tail_s
    );
    (seconds, split)
}

/// The floor's ideal finalizer remover: the same guarded JSON patch the operator sends
/// (controller/finalizer.rs), so the apiserver does the same work per object.
async fn remove_finalizer(api: Api<EcsInstance>, o: PartialObjectMeta<EcsInstance>) {
    let name = o.name_any();
    let Some(idx) = o.finalizers().iter().position(|f| f == FINALIZER) else {
        return;
    };
    let path = format!("/metadata/finalizers/{idx}");
    let mut patch = json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    for attempt in 1..=5 {
        let p: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
        match api
            .patch(&name, &PatchParams::default(), &Patch::<()>::Json(p))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 404 => return,
            Err(e) if attempt < 5 => {
                eprintln!("  removing the finalizer of {name} failed ({e}); retrying");
                // Nothing else writes the list in the floor run, so a failed test means a
                // stale event; drop the whole list rather than guess the index again.
                patch = json!([{"op": "remove", "path": "/metadata/finalizers"}]);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("could not remove the finalizer of {name}: {e}"),
        }
    }
}

/// What the bench's watch saw while the namespace went away.
#[derive(Default)]
struct Seen {
    /// The EcsInstances listed before the DELETE; the ones measured.
    names: HashSet<String>,
    /// When each one's deletionTimestamp was first seen.
    marked: HashMap<String, Instant>,
    /// When each one was deleted.
    gone: HashMap<String, Instant>,
}

impl Seen {
    fn split(&self, t0: Instant) -> Split {
        let since = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
        let first_mark = self.marked.values().min().copied().unwrap_or(t0);
        let last_mark = self.marked.values().max().copied().unwrap_or(t0);
        let last_gone = self.gone.values().max().copied().unwrap_or(t0);
        let mut lags: Vec<f64> = self
            .gone
            .iter()
            .map(|(name, gone)| {
                let marked = self.marked.get(name).copied().unwrap_or(*gone);
                gone.saturating_duration_since(marked).as_secs_f64() * 1000.0
            })
            .collect();
        lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Split {
            first_mark_s: since(first_mark),
            last_mark_s: since(last_mark),
            lag_p50_ms: percentile(&lags, 0.50),
            lag_p95_ms: percentile(&lags, 0.95),
            lag_max_ms: lags.last().copied().unwrap_or(0.0),
            tail_s: last_gone.saturating_duration_since(last_mark).as_secs_f64(),
        }
    }
}

/// A metadata-only watch on the namespace's EcsInstances (metadata is all it needs, and it
/// keeps the bench's decoding off the two cores the apiserver and operator share), running
/// in its own task so events are timestamped on arrival, not when the bench gets around to
/// them. The task ends once every listed object is gone.
struct Tracker {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    /// Returns once the initial list is done, so no mark can happen unseen.
    async fn start(
        api: Api<PartialObjectMeta<EcsInstance>>,
        marked_tx: Option<mpsc::UnboundedSender<PartialObjectMeta<EcsInstance>>>,
    ) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let mut events =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            let mut ready = Some(ready_tx);
            let mut relisted: Option<HashSet<String>> = None;
            while let Some(ev) = events.next().await {
                let now = Instant::now();
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        eprintln!("  bench watch error (retrying): {e}");
                        continue;
                    }
                };
                let mut seen = shared.lock().unwrap();
                match ev {
                    watcher::Event::Init => relisted = Some(HashSet::new()),
                    watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                        let name = o.name_any();
                        if let Some(r) = relisted.as_mut() {
                            r.insert(name.clone());
                        }
                        if ready.is_some() {
                            seen.names.insert(name.clone());
                        }
                        if o.metadata.deletion_timestamp.is_some()
                            && seen.names.contains(&name)
                            && !seen.marked.contains_key(&name)
                        {
                            seen.marked.insert(name, now);
                            if let Some(tx) = &marked_tx {
                                let _ = tx.unbounded_send(o);
                            }
                        }
                    }
                    watcher::Event::Delete(o) => {
                        let name = o.name_any();
                        if seen.names.contains(&name) {
                            seen.marked.entry(name.clone()).or_insert(now);
                            seen.gone.entry(name).or_insert(now);
                        }
                    }
                    watcher::Event::InitDone => {
                        let listed = relisted.take().unwrap_or_default();
                        if ready.is_none() {
                            // A relist after the watch was lost: deletions in the gap come
                            // as absences, not Delete events.
                            let missing: Vec<String> = seen
                                .names
                                .iter()
                                .filter(|n| !listed.contains(*n) && !seen.gone.contains_key(*n))
                                .cloned()
                                .collect();
                            for name in missing {
                                seen.marked.entry(name.clone()).or_insert(now);
                                seen.gone.insert(name, now);
                            }
                        }
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                if ready.is_none() && seen.gone.len() >= seen.names.len() {
                    break;
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(120), ready_rx)
            .await
            .expect("the bench's watch did not finish its initial list within 120s")
            .expect("the bench's watch ended before its initial list");
        Self { seen, task }
    }
}

/// EcsInstances left in the namespace, from a one-item page (`remainingItemCount`), so the
/// check does not itself load the apiserver with a 10,000-item list. (The metadata-only
/// list of 1.20 leaves `remainingItemCount` out, so this reads one full object.)
async fn remaining(api: &Api<EcsInstance>) -> Option<usize> {
    let l = api.list(&ListParams::default().limit(1)).await.ok()?;
    let rest = l.metadata.remaining_item_count.unwrap_or(0).max(0) as usize;
    Some(l.items.len() + rest)
}

/// Events in the namespace (the namespace controller deletes them too), counted the same
/// cheap way.
async fn events_in(client: &Client, ns: &str) -> usize {
    let api: Api<CoreEvent> = Api::namespaced(client.clone(), ns);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(l) => l.items.len() + l.metadata.remaining_item_count.unwrap_or(0).max(0) as usize,
        Err(_) => 0,
    }
}

async fn latency(k: usize) -> (f64, f64) {
    let client = client().await;
    let ns = namespace(&client, "bench-latency").await;
    let emu = Emulator::start("bench-latency", &["--delete-delay-ms", "0"]);
    let _op = Operator::start("bench-latency", &ns, &emu, &[]);
    let api: Api<EcsInstance> = Api::namespaced(client.clone(), &ns);
    let mut samples = Vec::new();
    for i in 0..k {
        let id = emu.seed(json!({"Status": "RUNNING"})).await;
        let name = format!("vm-{i}");
        create(&api, &name, json!({"instanceId": id})).await;
        wait_for(30, "adopted", || async {
            let o = api.get(&name).await.ok()?;
            o.status.as_ref()?.instance_id.as_ref()?;
            (!o.metadata.finalizers.unwrap_or_default().is_empty()).then_some(())
        })
        .await;
        // A lone deletion on a quiet operator, as a user's `kubectl delete`: the adoption's
        // calls behind it, the client's rate limiter (4 calls/s per action by default) refilled.
        // Back to back, 40 iterations would measure the limiter instead.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = Instant::now();
        api.delete(&name, &DeleteParams::default()).await.unwrap();
        loop {
            if matches!(api.get_opt(&name).await, Ok(None)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&samples, 0.50), percentile(&samples, 0.95))
}

fn print(o: &Outcome) {
    let opt = |v: Option<f64>, w: usize| v.map_or(format!("{:>w$}", "-"), |v| format!("{v:>w$.1}"));
    let s = &o.split;
    println!(
        "| {:>6} | {:>5} | {:>8.1} | {:>6} | {:>6} | {} | {} | {:>5} | {:>3} | {:>6.1} | {:>6.1} | {:>6.0} | {:>6.0} | {:>6.0} | {:>5.1} |",
        o.n,
        o.label,
        o.seconds,
        o.delete_calls,
        o.all_calls,
        opt(o.rss_mib, 7),
        opt(o.cpu_s, 6),
        o.vms_left,
        o.resources_left,
        s.first_mark_s,
        s.last_mark_s,
        s.lag_p50_ms,
        s.lag_p95_ms,
        s.lag_max_ms,
        s.tail_s
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let n = arg("--n");
    let compare = arg("--compare");
    let lat = arg("--latency");
    let floor_n = arg("--floor").or(n.filter(|_| args.iter().any(|a| a == "--floor-too")));
    let check = args.iter().any(|a| a == "--check");
    let mut failed = Vec::new();
    // Bring the control plane up first: its script prints to stdout, which would otherwise
    // land inside the table.
    control_plane();
    // A run interrupted earlier leaves its namespace, finalizers stranded: thousands of
    // objects in the API server's caches and the operator's would skew every figure.
    let left = remove_leftover_namespaces("bench-").await;
    if left > 0 {
        eprintln!("removed {left} namespaces left by an earlier run");
    }
    println!("| N | batch | seconds | DeleteInstances | all calls | peak RSS MiB | CPU s | VMs left | resources left | first marked s | last marked s | mark->gone p50 ms | mark->gone p95 ms | mark->gone max ms | tail s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // Rows are printed as runs finish (long runs show results early); the prose waits
    // until after the table so the table stays one markdown table.
    let mut notes = Vec::new();
    if let Some(m) = compare {
        let on = run(m, 100).await;
        print(&on);
        let off = run(m, 1).await;
        print(&off);
        notes.push(format!(
            "N = {m}: batching off/on time ratio {:.1}x, DeleteInstances call ratio {:.1}x",
            off.seconds / on.seconds,
            off.delete_calls as f64 / on.delete_calls.max(1) as f64
        ));
    }
    let mut floor_seconds = None;
    if let Some(f) = floor_n {
        let o = floor(f).await;
        print(&o);
        notes.push(format!(
            "floor, N = {f}: {:.1}s with the operator killed and the bench removing finalizers \
             ({FLOOR_CONCURRENCY} in flight, no cloud calls); VMs left = {} is expected there",
            o.seconds, o.vms_left
        ));
        floor_seconds = Some((f, o.seconds));
    }
    if let Some(n) = n {
        let o = run(n, 100).await;
        print(&o);
        let limit = 1.05 * (n as f64 / 100.0).ceil();
        if o.delete_calls as f64 > limit {
            failed.push(format!(
                "DeleteInstances calls: {} > {limit:.2} (1.05 * ceil({n} / 100))",
                o.delete_calls
            ));
        }
        if o.vms_left != 0 {
            failed.push(format!("VMs left: {} (expected 0)", o.vms_left));
        }
        notes.push(format!(
            "N = {n}: {:.1}s (target <= 60), DeleteInstances {} (target <= {limit:.0}), peak RSS {:.1} MiB (target <= 96), left {}+{}",
            o.seconds, o.delete_calls, o.rss_mib.unwrap_or(0.0), o.vms_left, o.resources_left
        ));
        if let Some((f, fs)) = floor_seconds {
            let same = if f == n {
                String::new()
            } else {
                format!(" (floor N = {f})")
            };
            notes.push(format!(
                "N = {n}: operator/floor time ratio {:.2}x ({:.1}s / {fs:.1}s){same}",
                o.seconds / fs,
                o.seconds
            ));
        }
    }
    for note in &notes {
        println!("\n{note}");
    }
    if check {
        if n.is_none() {
            failed.push("--check needs --n".into());
        }
        if !failed.is_empty() {
            for f in &failed {
                eprintln!("CHECK FAILED: {f}");
            }
            std::process::exit(1);
        }
        // One check each: the call bound, no VM left (scripts/test.sh counts these lines).
        // No EcsInstance left is the run's own stop condition (`delete_namespace` waits for
        // the list to be empty, and fails after its limits), not a check of its own.
        println!("\nCHECKS 2");
    }
    if let Some(k) = lat {
        let (p50, p95) = latency(k).await;
        println!("\nsingle-resource delete -> gone over {k} deletions: p50 {p50:.0} ms, p95 {p95:.0} ms (target p50 < 250 ms)");
    }
}
