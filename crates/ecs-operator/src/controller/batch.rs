//! Coalesces per-resource cloud calls into batched calls of up to 100 instance IDs.
//!
//! Deletions from a namespace deletion or a garbage-collected owner arrive as a stream
//! (the namespace controller marks about 190 resources a second), not all at once, so a
//! fixed tiny window would send many small batches. Instead a batch is sent when it is full,
//! or when its oldest request has waited `max_linger`, or, while the batcher is quiet (no
//! batch sent within `max_linger`), when no new request arrived for `idle` (one request
//! waiting) or `stream_idle` (several): a lone `kubectl delete` waits only `idle`, and a
//! stream fills its batches from the first one on (the first requests of a namespace
//! deletion arrive a few at a time, with gaps longer than `idle`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cloud::{CloudError, ErrorClass};

/// One resource's request: which region and instance, plus whatever the call needs
/// (for deletions: the uid and attempt that make up the ClientToken).
pub struct Pending<I, O> {
    pub region: String,
    pub item: I,
    pub pace: Pace,
    pub reply: oneshot::Sender<Arc<O>>,
}

/// What the caller knows of the requests to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Nothing: alone and quiet, the request leaves after `idle`.
    Unknown,
    /// Part of a wave (its namespace is being deleted: the namespace controller marks every
    /// resource there, the first few hundreds of milliseconds apart): it waits `stream_idle`
    /// for company even when alone.
    Wave,
}

/// Sends one batch; every member receives the same (shared) outcome and reads its own part.
pub trait BatchCall<I, O>: Send + Sync + 'static {
    fn call(&self, region: String, items: Vec<I>) -> BoxFuture<'static, O>;

    /// Whether this outcome is a call-level failure that one member may have caused: then
    /// the batch is retried at once as two halves, each its own call (recursively, down to
    /// single members), so no member holds back the others.
    fn split(&self, _outcome: &O) -> bool {
        false
    }

    /// The action, for logs.
    fn name(&self) -> &'static str {
        "batch"
    }
}

/// Whether a failed batch call is split (see `BatchCall::split`). Pure.
///
/// Only a refusal of the request itself (class `Terminal`: a malformed or unknown ID, a
/// parameter the cloud rejects, a VM in a state that fails the whole call) can be caused by
/// one member. Throttling, 5xx, timeouts, network errors and bad bodies are the cloud's or
/// the wire's state, and auth errors the credentials': splitting those would multiply the
/// calls (up to 2n-1) exactly when the cloud is overloaded or refusing everyone. Only an
/// answer the cloud gave (`CloudError::Api`) counts: a local failure sent nothing.
pub fn split_after(e: &CloudError) -> bool {
    matches!(e, CloudError::Api { .. }) && e.class() == ErrorClass::Terminal
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_size: usize,
    pub idle: Duration,
    /// The quiet gap that ends a batch already holding more than one request.
    pub stream_idle: Duration,
    pub max_linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_size: 100,
            idle: Duration::from_millis(25),
            stream_idle: Duration::from_millis(1000),
            max_linger: Duration::from_millis(5000),
        }
    }
}

pub struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<Pending<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

/// Hook for the queue-depth metric.
pub type DepthObserver = Arc<dyn Fn(i64) + Send + Sync>;

impl<I: Clone + Send + 'static, O: Send + Sync + 'static> Batcher<I, O> {
    pub fn spawn(
        cfg: BatchConfig,
        caller: Arc<dyn BatchCall<I, O>>,
        depth: Option<DepthObserver>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(cfg, caller, rx, depth));
        Self { tx }
    }

    /// Queues one request and waits for its batch's outcome. `None` if the batcher stopped.
    pub async fn submit(&self, region: String, item: I) -> Option<Arc<O>> {
        self.submit_paced(region, item, Pace::Unknown).await
    }

    /// `submit`, saying what is known of the requests to come.
    pub async fn submit_paced(&self, region: String, item: I, pace: Pace) -> Option<Arc<O>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                region,
                item,
                pace,
                reply,
            })
            .ok()?;
        rx.await.ok()
    }
}

async fn run<I: Clone + Send + 'static, O: Send + Sync + 'static>(
    cfg: BatchConfig,
    caller: Arc<dyn BatchCall<I, O>>,
    mut rx: mpsc::UnboundedReceiver<Pending<I, O>>,
    depth: Option<DepthObserver>,
) {
    let max = cfg.max_size.max(1);
    // Regions are batched separately: the region is part of the signature scope.
    let mut open: OpenBatches<I, O> = BTreeMap::new();
    let mut last_arrival = Instant::now();
    // A batch went out recently, or several requests wait: a stream (a namespace deletion,
    // a GC wave, `kubectl delete` of several). Then a partial batch leaves only at a gap of
    // `stream_idle` (or at `max_linger`), not at the first short gap. When it is quiet, a
    // lone deletion leaves after `idle`.
    // Only a batch of several counts: lone deletions one after another (a user deleting
    // resources one by one) are not a stream and each leaves after `idle`.
    let mut last_stream_dispatch: Option<Instant> = None;
    let mut closed = false;
    loop {
        if open.is_empty() {
            if closed {
                return;
            }
            match rx.recv().await {
                Some(p) => {
                    last_arrival = Instant::now();
                    add(&mut open, p);
                }
                None => return,
            }
        }
        let busy = |now: Instant| {
            last_stream_dispatch.is_some_and(|t| now.saturating_duration_since(t) < cfg.max_linger)
        };
        let gap = |open: &OpenBatches<I, O>, now: Instant| {
            let waiting: usize = open.values().map(|(_, v)| v.len()).sum();
            let wave = open
                .values()
                .any(|(_, v)| v.iter().any(|p| p.pace == Pace::Wave));
            if waiting <= 1 && !busy(now) && !wave {
                cfg.idle
            } else {
                cfg.stream_idle.max(cfg.idle)
            }
        };
        let oldest = open
            .values()
            .map(|(t, _)| *t)
            .min()
            .unwrap_or_else(Instant::now);
        let deadline = (last_arrival + gap(&open, Instant::now())).min(oldest + cfg.max_linger);
        if !closed {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => {
                        last_arrival = Instant::now();
                        add(&mut open, p);
                    }
                    None => closed = true,
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        let now = Instant::now();
        let idle = now >= last_arrival + gap(&open, now) || closed;
        let regions: Vec<String> = open.keys().cloned().collect();
        for region in regions {
            let due = match open.get(&region) {
                Some((t, v)) => v.len() >= max || idle || now >= *t + cfg.max_linger,
                None => false,
            };
            if !due {
                continue;
            }
            let Some((first, mut members)) = open.remove(&region) else {
                continue;
            };
            tracing::debug!(
                action = caller.name(),
                %region,
                size = members.len(),
                waited_ms = now.saturating_duration_since(first).as_millis() as u64,
                why = if members.len() >= max { "full" } else if idle { "idle" } else { "linger" },
                "batch sent"
            );
            let sent = members.len();
            while !members.is_empty() {
                let rest = members.split_off(members.len().min(max));
                let batch = std::mem::replace(&mut members, rest);
                dispatch(&caller, region.clone(), batch);
            }
            if sent > 1 {
                last_stream_dispatch = Some(now);
            }
        }
        if let Some(d) = &depth {
            d(open.values().map(|(_, v)| v.len() as i64).sum());
        }
    }
}

/// Open batches by region, with the arrival time of each batch's first request.
type OpenBatches<I, O> = BTreeMap<String, (Instant, Vec<Pending<I, O>>)>;

fn add<I, O>(open: &mut OpenBatches<I, O>, p: Pending<I, O>) {
    open.entry(p.region.clone())
        .or_insert_with(|| (Instant::now(), Vec::new()))
        .1
        .push(p);
}

fn dispatch<I: Clone + Send + 'static, O: Send + Sync + 'static>(
    caller: &Arc<dyn BatchCall<I, O>>,
    region: String,
    batch: Vec<Pending<I, O>>,
) {
    let (items, replies): (Vec<I>, Vec<oneshot::Sender<Arc<O>>>) =
        batch.into_iter().map(|p| (p.item, p.reply)).unzip();
    tokio::spawn(send(caller.clone(), region, items, replies));
}

/// One call for `items`; on a failure `split` accepts, the two halves go out as separate
/// calls (concurrently), so each member ends up with the answer of the smallest call that
/// named it, and a member that alone fails the call is answered alone.
fn send<I: Clone + Send + 'static, O: Send + Sync + 'static>(
    caller: Arc<dyn BatchCall<I, O>>,
    region: String,
    mut items: Vec<I>,
    mut replies: Vec<oneshot::Sender<Arc<O>>>,
) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let out = caller.call(region.clone(), items.clone()).await;
        if items.len() > 1 && caller.split(&out) {
            let mid = items.len() / 2;
            let (items2, replies2) = (items.split_off(mid), replies.split_off(mid));
            let a = send(caller.clone(), region.clone(), items, replies);
            let b = send(caller, region, items2, replies2);
            futures::future::join(a, b).await;
            return;
        }
        let out = Arc::new(out);
        for r in replies {
            // A member that gave up (its reconcile was cancelled) just misses the answer.
            let _ = r.send(out.clone());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Calls = Vec<(String, Vec<u32>)>;

    #[derive(Default)]
    struct Recorder(Mutex<Calls>);

    impl BatchCall<u32, usize> for Arc<Recorder> {
        fn call(&self, region: String, items: Vec<u32>) -> BoxFuture<'static, usize> {
            let n = items.len();
            self.0.lock().unwrap().push((region, items));
            Box::pin(async move { n })
        }
    }

    /// Fails (call-level) every call naming 13.
    struct Poisoned(Mutex<Calls>);

    impl BatchCall<u32, Result<Vec<u32>, ()>> for Arc<Poisoned> {
        fn call(
            &self,
            region: String,
            items: Vec<u32>,
        ) -> BoxFuture<'static, Result<Vec<u32>, ()>> {
            self.0.lock().unwrap().push((region, items.clone()));
            let out = if items.contains(&13) {
                Err(())
            } else {
                Ok(items)
            };
            Box::pin(async move { out })
        }
        fn split(&self, outcome: &Result<Vec<u32>, ()>) -> bool {
            outcome.is_err()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_level_failure_is_bisected_down_to_the_member_that_causes_it() {
        let rec = Arc::new(Poisoned(Mutex::new(Vec::new())));
        let b: Batcher<u32, Result<Vec<u32>, ()>> =
            Batcher::spawn(BatchConfig::default(), Arc::new(rec.clone()), None);
        let handles: Vec<_> = (0..20u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.submit("r".into(), i).await.unwrap()) })
            })
            .collect();
        for h in handles {
            let (i, out) = h.await.unwrap();
            match out.as_ref() {
                Ok(ids) => assert!(i != 13 && ids.contains(&i) && !ids.contains(&13)),
                Err(()) => assert_eq!(i, 13),
            }
        }
        let calls = rec.0.lock().unwrap().clone();
        // The first call, then a bisection path: two calls per level, 20 -> 10 -> 5 -> 3 -> 2 -> 1.
        assert_eq!(calls[0].1.len(), 20);
        assert!(calls.len() <= 1 + 2 * 5, "{calls:?}");
        let failed_alone: Vec<_> = calls.iter().filter(|(_, v)| v == &vec![13]).collect();
        assert_eq!(failed_alone.len(), 1, "{calls:?}");
        // Every other member got an answer from a call that succeeded, exactly once.
        let mut answered: Vec<u32> = calls
            .iter()
            .filter(|(_, v)| !v.contains(&13))
            .flat_map(|(_, v)| v.clone())
            .collect();
        answered.sort();
        assert_eq!(answered, (0..20).filter(|i| *i != 13).collect::<Vec<_>>());
    }

    #[test]
    fn split_only_on_refusals_a_member_can_cause() {
        use crate::cloud::model::Action;
        let api = |code: &str, status: u16| CloudError::Api {
            action: Action::DeleteInstances,
            code: code.into(),
            code_n: None,
            message: "m".into(),
            status,
            request_id: "r".into(),
        };
        let rows: Vec<(CloudError, bool)> = vec![
            (api("InvalidInstanceId.Malformed", 400), true),
            (api("InvalidParameter", 400), true),
            (api("InvalidInstance.NotFound", 404), true),
            (api("IdempotentParameterMismatch", 400), true),
            (api("FlowLimitExceeded", 429), false),
            (api("AccountFlowLimitExceeded", 400), false),
            (api("InternalError", 500), false),
            (api("ServiceUnavailableTemp", 503), false),
            (api("IdempotentProcessing", 412), false),
            (api("SignatureDoesNotMatch", 401), false),
            (api("AccessDenied", 403), false),
            (
                CloudError::Timeout {
                    action: Action::DeleteInstances,
                    after: Duration::from_secs(1),
                },
                false,
            ),
            (
                CloudError::Network {
                    action: Action::DeleteInstances,
                    detail: "reset".into(),
                },
                false,
            ),
            (
                CloudError::BadResponse {
                    action: Action::DeleteInstances,
                    status: 200,
                    detail: "x".into(),
                    request_id: None,
                },
                false,
            ),
            (CloudError::Config("bad endpoint".into()), false),
        ];
        for (i, (e, want)) in rows.iter().enumerate() {
            assert_eq!(split_after(e), *want, "row {i}: {e}");
        }
    }

    fn batcher(rec: &Arc<Recorder>, cfg: BatchConfig) -> Batcher<u32, usize> {
        Batcher::spawn(cfg, Arc::new(rec.clone()), None)
    }

    /// Submits requests 0..n with `gap(i)` ms after request i (default config, one region),
    /// waits for every answer, and returns the batch sizes in the order sent.
    async fn stream(
        rec: &Arc<Recorder>,
        b: &Batcher<u32, usize>,
        n: u32,
        pace: Pace,
        gap: impl Fn(u32) -> u64,
    ) -> Vec<usize> {
        let mut handles = Vec::new();
        for i in 0..n {
            let b = b.clone();
            handles.push(tokio::spawn(async move {
                b.submit_paced("r".into(), i, pace).await
            }));
            tokio::time::sleep(Duration::from_millis(gap(i))).await;
        }
        for h in handles {
            assert!(h.await.unwrap().is_some());
        }
        let calls = rec.0.lock().unwrap();
        calls.iter().map(|(_, v)| v.len()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn single_request_waits_only_the_idle_gap() {
        let rec = Arc::new(Recorder::default());
        let b = batcher(&rec, BatchConfig::default());
        let t = Instant::now();
        let out = b.submit("r".into(), 7).await.unwrap();
        assert_eq!(*out, 1);
        assert!(
            t.elapsed() <= Duration::from_millis(30),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_fills_batches_of_max_size() {
        let rec = Arc::new(Recorder::default());
        let b = batcher(&rec, BatchConfig::default());
        // 250 requests arriving every 5 ms (the namespace controller's pace).
        let sizes = stream(&rec, &b, 250, Pace::Unknown, |_| 5).await;
        assert_eq!(sizes, vec![100, 100, 50], "{sizes:?}");
        let calls = rec.0.lock().unwrap().clone();
        let mut all: Vec<u32> = calls.into_iter().flat_map(|(_, v)| v).collect();
        all.sort();
        assert_eq!(all, (0..250).collect::<Vec<_>>());
    }

    /// As the namespace controller starts a deletion (bench at N = 300: a first batch of 4,
    /// then 100, 100, 96): a few requests, a gap longer than `idle`, then the stream.
    #[tokio::test(start_paused = true)]
    async fn the_first_batch_of_a_stream_is_not_cut_at_its_first_gap() {
        let rec = Arc::new(Recorder::default());
        let b = batcher(&rec, BatchConfig::default());
        let gap = |i| if i == 3 { 60 } else { 10 };
        let sizes = stream(&rec, &b, 300, Pace::Unknown, gap).await;
        assert_eq!(sizes, vec![100, 100, 100], "{sizes:?}");
    }

    /// Lone deletions one after another (the latency bench: each deleted once the previous
    /// one is gone) each leave after `idle`: a batch of one does not make the next wait.
    #[tokio::test(start_paused = true)]
    async fn lone_requests_in_a_row_each_wait_only_the_idle_gap() {
        let rec = Arc::new(Recorder::default());
        let b = batcher(&rec, BatchConfig::default());
        for i in 0..10u32 {
            let t = Instant::now();
            b.submit("r".into(), i).await.unwrap();
            assert!(
                t.elapsed() <= Duration::from_millis(30),
                "{i}: {:?}",
                t.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A request known to open a wave (its namespace is being deleted) waits for company
    /// although alone and quiet: the namespace controller's first marks come hundreds of
    /// milliseconds apart (bench at N = 300: four batches of one, then 100, 100, 96).
    #[tokio::test(start_paused = true)]
    async fn a_wave_is_gathered_from_its_first_request() {
        let rec = Arc::new(Recorder::default());
        let b = batcher(&rec, BatchConfig::default());
        let gap = |i| if i < 4 { 300 } else { 5 };
        let sizes = stream(&rec, &b, 200, Pace::Wave, gap).await;
        assert_eq!(sizes, vec![100, 100], "{sizes:?}");
    }

    /// Several requests at once (`kubectl delete a b c`, or one describe batch's members
    /// moving on to deletion) leave together after `stream_idle`, not `max_linger`.
    #[tokio::test(start_paused = true)]
    async fn a_few_requests_at_once_wait_only_the_stream_gap() {
        let rec = Arc::new(Recorder::default());
        let b = batcher(&rec, BatchConfig::default());
        let t = Instant::now();
        let all = futures::future::join_all((0..3u32).map(|i| b.submit("r".into(), i))).await;
        assert!(all.iter().all(|o| o.as_deref() == Some(&3)), "{all:?}");
        let waited = t.elapsed();
        let cfg = BatchConfig::default();
        assert!(
            waited >= cfg.stream_idle && waited < cfg.stream_idle + Duration::from_millis(10),
            "{waited:?}"
        );
    }

    /// A stream slower than `idle` (30 ms gaps) that began with two requests together: once
    /// a batch of several went out the batcher is busy, and the requests after a full batch
    /// are gathered, not sent one by one. (A trickle in which no two requests ever meet
    /// within `idle` is sent one by one, like lone deletions.)
    #[tokio::test(start_paused = true)]
    async fn after_a_burst_partial_batches_wait_to_fill_then_quiet_is_fast_again() {
        let rec = Arc::new(Recorder::default());
        let b = batcher(&rec, BatchConfig::default());
        let gap = |i| if i == 0 { 1 } else { 30 };
        let sizes = stream(&rec, &b, 150, Pace::Unknown, gap).await;
        assert_eq!(sizes, vec![100, 50], "{sizes:?}");
        // Quiet again (no batch within `max_linger`): a lone request goes out after `idle`.
        tokio::time::sleep(BatchConfig::default().max_linger + Duration::from_secs(1)).await;
        let t = Instant::now();
        b.submit("r".into(), 99).await.unwrap();
        assert!(
            t.elapsed() <= Duration::from_millis(30),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_linger_bounds_the_wait_and_regions_split() {
        let rec = Arc::new(Recorder::default());
        let cfg = BatchConfig {
            max_size: 100,
            idle: Duration::from_millis(25),
            stream_idle: Duration::from_millis(100),
            max_linger: Duration::from_millis(200),
        };
        let b = batcher(&rec, cfg);
        let mut handles = Vec::new();
        for i in 0..60u32 {
            let b = b.clone();
            let region = if i % 2 == 0 { "a" } else { "b" };
            handles.push(tokio::spawn(
                async move { b.submit(region.into(), i).await },
            ));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for h in handles {
            h.await.unwrap();
        }
        let calls = rec.0.lock().unwrap().clone();
        assert!(calls
            .iter()
            .all(|(r, v)| v.iter().all(|i| (i % 2 == 0) == (r == "a"))));
        // 600 ms of arrivals with a 200 ms linger: about 3 batches per region, not 1 or 30.
        assert!((4..=8).contains(&calls.len()), "{}", calls.len());
    }
}
