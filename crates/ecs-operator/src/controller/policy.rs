//! Which deletion policy applies to a resource being deleted. Every input that is not known
//! for certain (an unreadable namespace or CRD, an annotation value we do not recognise) is a
//! reason to keep the VM and retry, never a fallback to Delete.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::batch::Pace;
use super::reasons::Reason;
use crate::api::{DeletionPolicy, NAMESPACE_POLICY_ANNOTATION};

/// What a read of the CRD `ecsinstances.ecs.volcengine.io` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrdState {
    Live,
    /// It has a deletionTimestamp: the cluster is uninstalling the operator's API.
    Deleting,
    /// The read failed (or found no CRD, which cannot be while our resource exists).
    Unreadable(String),
}

/// What a read of the resource's namespace said about `ecs.volcengine.io/deletion-policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsAnnotation {
    Absent,
    Value(String),
    /// HTTP 404. A namespace cannot be removed while it still holds objects, so this is an
    /// inconsistent view (stale cache, etcd restore, a forced finalize): doubt, not "absent".
    NotFound,
    /// Any other failure: 5xx, timeout, throttling, forbidden.
    Unreadable(String),
    /// Not read because spec.deletionPolicy is set.
    NotRead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    CrdDeleting,
    Spec,
    Namespace,
    Default,
}

/// Why the policy is not known: the VM stays, the resource says why and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Doubt {
    CrdUnreadable { error: String },
    InvalidAnnotation { namespace: String, value: String },
    NamespaceNotFound { namespace: String },
    NamespaceUnreadable { namespace: String, error: String },
}

impl Doubt {
    /// Condition and Event reason, and metric label.
    pub fn condition_reason(&self) -> Reason {
        match self {
            Doubt::CrdUnreadable { .. } => Reason::CrdUnreadable,
            Doubt::InvalidAnnotation { .. } => Reason::InvalidDeletionPolicy,
            Doubt::NamespaceNotFound { .. } => Reason::NamespaceNotFound,
            Doubt::NamespaceUnreadable { .. } => Reason::NamespaceUnreadable,
        }
    }

    pub fn reason(&self) -> &'static str {
        self.condition_reason().as_str()
    }

    pub fn message(&self) -> String {
        let keep = "the VM is kept and the deletion is retried with backoff";
        match self {
            Doubt::CrdUnreadable { error } => format!(
                "could not read CustomResourceDefinition {} to see whether it is being deleted (then every VM is orphaned): {error}; {keep}",
                crate::api::CRD_NAME
            ),
            Doubt::InvalidAnnotation { namespace, value } => format!(
                "namespace {namespace} has annotation {NAMESPACE_POLICY_ANNOTATION}={value:?}, which is not a deletion policy (accepted: exactly \"Delete\" or \"Orphan\"); {keep}: fix the annotation or set spec.deletionPolicy"
            ),
            Doubt::NamespaceNotFound { namespace } => format!(
                "namespace {namespace} was not found, so its {NAMESPACE_POLICY_ANNOTATION} annotation is unknown; {keep}: set spec.deletionPolicy to decide"
            ),
            Doubt::NamespaceUnreadable { namespace, error } => format!(
                "could not read namespace {namespace} for its {NAMESPACE_POLICY_ANNOTATION} annotation: {error}; {keep}"
            ),
        }
    }
}

/// The annotation values accepted: exactly the spec's enum values, case-sensitive, so a
/// typo (`orphan`, `Orphan `) is reported instead of guessed.
pub fn parse_annotation(value: &str) -> Option<DeletionPolicy> {
    match value {
        "Delete" => Some(DeletionPolicy::Delete),
        "Orphan" => Some(DeletionPolicy::Orphan),
        _ => None,
    }
}

/// The decision. Pure: CRD deletion wins (uninstalling must never delete VMs), then the
/// spec, then the namespace annotation, then the operator default; anything unknown on the
/// way is a `Doubt`.
pub fn resolve(
    crd: &CrdState,
    spec: Option<DeletionPolicy>,
    namespace: &str,
    annotation: &NsAnnotation,
    default: DeletionPolicy,
) -> Result<(DeletionPolicy, Source), Doubt> {
    match crd {
        CrdState::Deleting => return Ok((DeletionPolicy::Orphan, Source::CrdDeleting)),
        CrdState::Unreadable(e) => return Err(Doubt::CrdUnreadable { error: e.clone() }),
        CrdState::Live => {}
    }
    if let Some(p) = spec {
        return Ok((p, Source::Spec));
    }
    let namespace = namespace.to_string();
    match annotation {
        NsAnnotation::Absent => Ok((default, Source::Default)),
        NsAnnotation::Value(v) => match parse_annotation(v) {
            Some(p) => Ok((p, Source::Namespace)),
            None => Err(Doubt::InvalidAnnotation {
                namespace,
                value: v.clone(),
            }),
        },
        NsAnnotation::NotFound => Err(Doubt::NamespaceNotFound { namespace }),
        NsAnnotation::Unreadable(e) => Err(Doubt::NamespaceUnreadable {
            namespace,
            error: e.clone(),
        }),
        NsAnnotation::NotRead => Err(Doubt::NamespaceUnreadable {
            namespace,
            error: "not read".into(),
        }),
    }
}

/// A read that is always fresh yet shared: a caller gets the result of a read that *started
/// after* it asked, so a change made before the caller's reconcile is always seen (no TTL
/// cache serving a stale "Delete"), while the callers that queue up during one read share
/// the next one (a namespace deletion of 10,000 resources does not cost 10,000 reads).
pub struct Fresh<V> {
    started: AtomicU64,
    slot: tokio::sync::Mutex<Option<(u64, V)>>,
    /// How long a read waits before it starts, so the callers that arrive meanwhile share it.
    linger: Duration,
}

impl<V: Clone> Default for Fresh<V> {
    fn default() -> Self {
        Self::lingering(Duration::ZERO)
    }
}

impl<V: Clone> Fresh<V> {
    /// Reads start `linger` after the first caller that needs one. Without it, callers
    /// arriving a few milliseconds apart (a namespace controller marking 80 objects a
    /// second) each start a read of their own: one GET per deletion, per key, competing
    /// with the marking itself. A read still starts after every caller it serves asked.
    pub fn lingering(linger: Duration) -> Self {
        Self {
            started: AtomicU64::new(0),
            slot: tokio::sync::Mutex::new(None),
            linger,
        }
    }

    pub async fn get<F, Fut>(&self, read: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        self.get_paced(Pace::Wave, read).await
    }

    /// `get`, lingering only for a caller that is part of a wave (`Pace::Wave`): a lone
    /// deletion has nobody to share its read with, and the linger would only delay it.
    /// Callers queued behind a read in flight still share the next one.
    pub async fn get_paced<F, Fut>(&self, pace: Pace, read: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        // Reads are numbered in the order they start; any read numbered above the count
        // seen now starts after this call.
        let want = self.started.load(Ordering::SeqCst) + 1;
        let mut slot = self.slot.lock().await;
        if let Some((n, v)) = slot.as_ref() {
            if *n >= want {
                return v.clone();
            }
        }
        if pace == Pace::Wave && !self.linger.is_zero() {
            // Callers arriving now see `started` unchanged, so they wait for the read below.
            tokio::time::sleep(self.linger).await;
        }
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let v = read().await;
        *slot = Some((n, v.clone()));
        v
    }

    /// Drops the shared result (the next caller reads afresh, as it would anyway).
    pub async fn clear(&self) {
        *self.slot.lock().await = None;
    }
}

/// One `Fresh` per key (namespace name).
pub struct FreshMap<V> {
    map: std::sync::Mutex<HashMap<String, Arc<Fresh<V>>>>,
    linger: Duration,
}

impl<V: Clone> Default for FreshMap<V> {
    fn default() -> Self {
        Self::lingering(Duration::ZERO)
    }
}

impl<V: Clone> FreshMap<V> {
    pub fn lingering(linger: Duration) -> Self {
        Self {
            map: std::sync::Mutex::new(HashMap::new()),
            linger,
        }
    }
}

impl<V: Clone> FreshMap<V> {
    pub fn entry(&self, key: &str) -> Arc<Fresh<V>> {
        let mut m = match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let linger = self.linger;
        m.entry(key.to_string())
            .or_insert_with(|| Arc::new(Fresh::lingering(linger)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeletionPolicy::*;

    /// `clear` drops the shared result: the next caller reads afresh even though nothing
    /// started a read after it asked.
    #[tokio::test]
    async fn a_cleared_fresh_reads_again() {
        let f: Fresh<u32> = Fresh::default();
        let reads = std::sync::atomic::AtomicU32::new(0);
        let read = || async { reads.fetch_add(1, Ordering::SeqCst) + 1 };
        assert_eq!(f.get(read).await, 1);
        f.clear().await;
        assert!(f.slot.lock().await.is_none(), "the result is not kept");
        assert_eq!(f.get(read).await, 2);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    /// Callers arriving 1 ms apart each started a read of their own (reads take 1 ms);
    /// with a linger they share a few, and every read still starts after its callers asked.
    #[tokio::test(start_paused = true)]
    async fn lingering_reads_are_shared_by_callers_arriving_meanwhile() {
        async fn count_reads(f: Arc<Fresh<Duration>>) -> u64 {
            let epoch = tokio::time::Instant::now();
            let reads = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..100 {
                let (f, reads) = (f.clone(), reads.clone());
                let asked = epoch.elapsed();
                tasks.push(tokio::spawn(async move {
                    let read_started = f
                        .get(|| async {
                            reads.fetch_add(1, Ordering::SeqCst);
                            let at = epoch.elapsed();
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            at
                        })
                        .await;
                    assert!(read_started >= asked, "a read older than the ask");
                }));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for t in tasks {
                t.await.unwrap();
            }
            reads.load(Ordering::SeqCst)
        }
        let eager = count_reads(Arc::new(Fresh::default())).await;
        let lingering = count_reads(Arc::new(Fresh::lingering(Duration::from_millis(50)))).await;
        println!("100 callers 1 ms apart: {eager} reads without a linger, {lingering} with 50 ms");
        assert!(eager >= 40, "without a linger: {eager} reads");
        assert!(lingering <= 4, "with a 50 ms linger: {lingering} reads");
    }

    /// A lone caller reads at once; a caller in a wave waits out the linger (and shares).
    #[tokio::test(start_paused = true)]
    async fn only_a_wave_lingers() {
        let f = Fresh::lingering(Duration::from_millis(50));
        let t = tokio::time::Instant::now();
        f.get_paced(Pace::Unknown, || async { 1 }).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        let t = tokio::time::Instant::now();
        f.get_paced(Pace::Wave, || async { 2 }).await;
        assert_eq!(t.elapsed(), Duration::from_millis(50));
    }

    /// One row per combination that matters (a table; long for that reason).
    #[test]
    fn resolution_table() {
        let live = CrdState::Live;
        let deleting = CrdState::Deleting;
        let crd_err = CrdState::Unreadable("503".into());
        let v = |s: &str| NsAnnotation::Value(s.into());
        let absent = NsAnnotation::Absent;
        let ns_err = NsAnnotation::Unreadable("timeout".into());
        // (crd, spec, annotation, default, expected: Ok((policy, source)) or Err(reason))
        type Want = Result<(DeletionPolicy, Source), &'static str>;
        let rows: Vec<(
            &CrdState,
            Option<DeletionPolicy>,
            NsAnnotation,
            DeletionPolicy,
            Want,
        )> = vec![
            (
                &live,
                Some(Delete),
                NsAnnotation::NotRead,
                Orphan,
                Ok((Delete, Source::Spec)),
            ),
            (
                &live,
                Some(Orphan),
                NsAnnotation::NotRead,
                Delete,
                Ok((Orphan, Source::Spec)),
            ),
            // The spec wins over the annotation, whatever it says.
            (
                &live,
                Some(Delete),
                v("bogus"),
                Delete,
                Ok((Delete, Source::Spec)),
            ),
            (
                &live,
                None,
                absent.clone(),
                Delete,
                Ok((Delete, Source::Default)),
            ),
            (
                &live,
                None,
                absent.clone(),
                Orphan,
                Ok((Orphan, Source::Default)),
            ),
            (
                &live,
                None,
                v("Orphan"),
                Delete,
                Ok((Orphan, Source::Namespace)),
            ),
            (
                &live,
                None,
                v("Delete"),
                Orphan,
                Ok((Delete, Source::Namespace)),
            ),
            // Unrecognised values are user errors, never a fallback to Delete.
            (
                &live,
                None,
                v("orphan"),
                Delete,
                Err("InvalidDeletionPolicy"),
            ),
            (
                &live,
                None,
                v("DELETE"),
                Delete,
                Err("InvalidDeletionPolicy"),
            ),
            (
                &live,
                None,
                v("Orphan "),
                Delete,
                Err("InvalidDeletionPolicy"),
            ),
            (&live, None, v(""), Delete, Err("InvalidDeletionPolicy")),
            (
                &live,
                None,
                v("Retain"),
                Orphan,
                Err("InvalidDeletionPolicy"),
            ),
            // A failed read is not "no annotation".
            (
                &live,
                None,
                ns_err.clone(),
                Delete,
                Err("NamespaceUnreadable"),
            ),
            (
                &live,
                None,
                NsAnnotation::NotFound,
                Delete,
                Err("NamespaceNotFound"),
            ),
            (
                &live,
                None,
                NsAnnotation::NotRead,
                Delete,
                Err("NamespaceUnreadable"),
            ),
            // While the CRD is being deleted, everything is orphaned.
            (
                &deleting,
                Some(Delete),
                NsAnnotation::NotRead,
                Delete,
                Ok((Orphan, Source::CrdDeleting)),
            ),
            (
                &deleting,
                None,
                v("bogus"),
                Delete,
                Ok((Orphan, Source::CrdDeleting)),
            ),
            (
                &deleting,
                None,
                ns_err.clone(),
                Delete,
                Ok((Orphan, Source::CrdDeleting)),
            ),
            // An unreadable CRD is doubt even when the spec says Delete.
            (
                &crd_err,
                Some(Delete),
                NsAnnotation::NotRead,
                Delete,
                Err("CrdUnreadable"),
            ),
            (
                &crd_err,
                Some(Orphan),
                NsAnnotation::NotRead,
                Delete,
                Err("CrdUnreadable"),
            ),
        ];
        for (i, (crd, spec, ann, default, want)) in rows.into_iter().enumerate() {
            let got = resolve(crd, spec, "team-a", &ann, default);
            match (&got, want) {
                (Ok(g), Ok(w)) => assert_eq!(*g, w, "row {i}"),
                (Err(d), Err(reason)) => {
                    assert_eq!(d.reason(), reason, "row {i}");
                    assert!(d.message().contains("the VM is kept"), "row {i}");
                }
                _ => panic!("row {i}: got {got:?}, want {want:?}"),
            }
        }
        // The message names the namespace, the annotation and the bad value.
        let d = resolve(&live, None, "team-a", &v("orphan"), Delete).unwrap_err();
        let m = d.message();
        assert!(
            m.contains("team-a")
                && m.contains(NAMESPACE_POLICY_ANNOTATION)
                && m.contains("\"orphan\""),
            "{m}"
        );
    }

    #[tokio::test]
    async fn fresh_never_hands_out_a_read_that_started_before_the_call() {
        use std::sync::atomic::AtomicUsize;
        let fresh: Arc<Fresh<usize>> = Arc::new(Fresh::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (fresh, reads) = (fresh.clone(), reads.clone());
            tokio::spawn(async move {
                fresh
                    .get(|| async move {
                        let _ = started_tx.send(());
                        let _ = go_rx.await;
                        reads.fetch_add(1, Ordering::SeqCst) + 1
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        // Asked while read 1 is in flight: must get read 2, and so must a third caller
        // queued with it (shared).
        let second = {
            let (fresh, reads) = (fresh.clone(), reads.clone());
            tokio::spawn(async move {
                fresh
                    .get(|| async move { reads.fetch_add(1, Ordering::SeqCst) + 1 })
                    .await
            })
        };
        let third = {
            let (fresh, reads) = (fresh.clone(), reads.clone());
            tokio::spawn(async move {
                fresh
                    .get(|| async move { reads.fetch_add(1, Ordering::SeqCst) + 1 })
                    .await
            })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        go_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), 1);
        let (b, c) = (second.await.unwrap(), third.await.unwrap());
        assert_eq!(
            (b, c),
            (2, 2),
            "both waited for a read that started after them"
        );
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        // A later caller gets a new read.
        assert_eq!(fresh.get(|| async { 99 }).await, 99);
    }
}
