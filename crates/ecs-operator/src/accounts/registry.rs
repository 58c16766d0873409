//! The accounts the operator can act in, each with its own client (key, rate limiters) and
//! its own batchers: a batch never mixes accounts (nor regions: the batchers key by
//! region), and one account's throttling or broken key never holds up another's calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector;

use super::{decide, pinned, wanted_given, AccountName, AccountView, NsLabels, Refusal};
use crate::api::{EcsAccountSpec, EcsInstance, NAMESPACE_ACCOUNT_ANNOTATION};
use crate::cloud::signer::Credentials;
use crate::cloud::{Cloud, CloudError, Instance};
use crate::controller::batch::{BatchConfig, Batcher, Pace};
use crate::controller::cleanup::{DeleteCall, DeleteItem, DeleteOutcome};
use crate::controller::observe::{DescribeCall, DescribeOutcome};
use crate::metrics::Metrics;

/// Replaces the key an account's client signs with (a rotated Secret).
pub type Rekey = Arc<dyn Fn(Credentials) + Send + Sync>;

/// Builds the client of one `EcsAccount` (production: `EcsClient` behind the mutation gate).
pub trait CloudFactory: Send + Sync {
    fn build(
        &self,
        account: &str,
        spec: &EcsAccountSpec,
        credentials: Credentials,
    ) -> Result<(Arc<dyn Cloud>, Rekey), CloudError>;
}

/// One account's client and batchers.
pub struct AccountCloud {
    pub name: AccountName,
    pub cloud: Arc<dyn Cloud>,
    pub deleter: Batcher<DeleteItem, DeleteOutcome>,
    pub describer: Batcher<String, DescribeOutcome>,
    rekey: Option<Rekey>,
    /// The spec's endpoint and region the client was built for (a change rebuilds it).
    pub built_for: (Option<String>, Option<String>),
}

impl AccountCloud {
    pub fn new(
        name: AccountName,
        cloud: Arc<dyn Cloud>,
        batch: BatchConfig,
        metrics: &Arc<Metrics>,
        rekey: Option<Rekey>,
    ) -> Self {
        let (m, label) = (metrics.clone(), name.label().to_string());
        // A deletion reaches the deleter right after its describe batch answered, together
        // with that batch's other members: requests come in clumps, one per describe batch,
        // so waiting for more after a clump only delays it. The stream is gathered upstream.
        let deleter = Batcher::spawn(
            BatchConfig {
                stream_idle: batch.idle,
                ..batch
            },
            Arc::new(DeleteCall {
                cloud: cloud.clone(),
                on_batch: Some(Arc::new(move |n| m.delete_batch_size.observe(n as f64))),
            }),
            {
                let m = metrics.clone();
                Some(Arc::new(move |d| m.batch_queue_depth(&label, d)))
            },
        );
        let describer = Batcher::spawn(
            batch,
            Arc::new(DescribeCall {
                cloud: cloud.clone(),
            }),
            None,
        );
        Self {
            name,
            cloud,
            deleter,
            describer,
            rekey,
            built_for: (None, None),
        }
    }

    pub fn default_region(&self) -> &str {
        self.cloud.default_region()
    }

    /// From the next call on, sign with this key.
    pub fn rekey(&self, c: Credentials) {
        if let Some(r) = &self.rekey {
            r(c);
        }
    }

    /// One VM through the batched DescribeInstances; `None` when the cloud does not return it.
    pub async fn describe_one(
        &self,
        region: &str,
        id: &str,
        pace: Pace,
    ) -> Result<Option<Instance>, CloudError> {
        let out = self
            .describer
            .submit_paced(region.to_string(), id.to_string(), pace)
            .await
            .ok_or_else(|| CloudError::Config("shutting down".into()))?;
        match out.as_ref() {
            Ok(c) => Ok(c
                .value
                .instances
                .iter()
                .find(|i| i.instance_id == id)
                .cloned()),
            Err(e) => Err(e.clone()),
        }
    }
}

/// What the namespace cache says of one namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NsInfo {
    pub labels: BTreeMap<String, String>,
    pub account_annotation: Option<String>,
}

impl NsInfo {
    fn of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        NsInfo {
            labels: m.labels.clone().unwrap_or_default(),
            account_annotation: m
                .annotations
                .as_ref()
                .and_then(|a| a.get(NAMESPACE_ACCOUNT_ANNOTATION))
                .cloned(),
        }
    }
}

/// Where namespaces are read from.
enum Namespaces {
    /// No cache (tests that build a `Context` by hand): no namespace annotation, labels not
    /// known, so only the default account resolves.
    Absent,
    Cache(reflector::Store<PartialObjectMeta<Namespace>>),
    /// Every read from the API server (tests on the in-memory API server, which has no
    /// watch for namespaces).
    Api,
}

/// How long a reconcile waits for the namespace cache's first sync before it reports
/// `AccountUnverified` and retries.
const NS_SYNC_WAIT: Duration = Duration::from_secs(10);

/// Every account, by name; the default one always.
pub struct Accounts {
    default: Arc<AccountCloud>,
    named: RwLock<HashMap<String, Arc<AccountCloud>>>,
    views: RwLock<HashMap<String, AccountView>>,
    namespaces: RwLock<Namespaces>,
    client: RwLock<Option<kube::Client>>,
    pub factory: Option<Arc<dyn CloudFactory>>,
    /// The manager read every `EcsAccount` once: before that an unknown name is not known
    /// to be missing.
    synced: std::sync::atomic::AtomicBool,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Accounts {
    pub fn new(default: Arc<AccountCloud>, factory: Option<Arc<dyn CloudFactory>>) -> Self {
        Self {
            default,
            named: RwLock::new(HashMap::new()),
            views: RwLock::new(HashMap::new()),
            namespaces: RwLock::new(Namespaces::Absent),
            client: RwLock::new(None),
            factory,
            synced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn default_account(&self) -> &Arc<AccountCloud> {
        &self.default
    }

    pub fn get(&self, name: &AccountName) -> Option<Arc<AccountCloud>> {
        match name {
            AccountName::Default => Some(self.default.clone()),
            AccountName::Named(n) => read(&self.named).get(n).cloned(),
        }
    }

    /// The default account and every named one with a client (usable or not).
    pub fn all(&self) -> Vec<Arc<AccountCloud>> {
        let mut v = vec![self.default.clone()];
        let named = read(&self.named);
        let mut names: Vec<&String> = named.keys().collect();
        names.sort();
        v.extend(names.into_iter().filter_map(|n| named.get(n).cloned()));
        v
    }

    /// Named accounts whose key is usable now (for the sweeper).
    pub fn usable(&self) -> Vec<Arc<AccountCloud>> {
        let views = read(&self.views);
        self.all()
            .into_iter()
            .filter(|a| match &a.name {
                AccountName::Default => true,
                AccountName::Named(n) => views.get(n).is_some_and(|v| v.usable.is_ok()),
            })
            .collect()
    }

    pub fn view(&self, name: &str) -> Option<AccountView> {
        read(&self.views).get(name).cloned()
    }

    /// Records what the `EcsAccount` says, and its client when there is one.
    pub fn set(&self, name: &str, view: AccountView, cloud: Option<Arc<AccountCloud>>) {
        write(&self.views).insert(name.to_string(), view);
        let mut named = write(&self.named);
        match cloud {
            Some(c) => {
                named.insert(name.to_string(), c);
            }
            None => {
                named.remove(name);
            }
        }
    }

    /// The `EcsAccount` is gone: its resources are refused (`AccountNotFound`).
    pub fn remove(&self, name: &str) {
        write(&self.views).remove(name);
        write(&self.named).remove(name);
    }

    pub fn mark_synced(&self) {
        self.synced.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn names(&self) -> Vec<String> {
        read(&self.views).keys().cloned().collect()
    }

    /// From now on every namespace read goes to the API server with `client`.
    pub fn read_namespaces_from(&self, client: kube::Client) {
        *write(&self.namespaces) = Namespaces::Api;
        *write(&self.client) = Some(client);
    }

    /// From now on namespaces are read from this cache (and, for a resource not bound to
    /// an account yet, from the API server with `client`).
    pub fn use_namespace_cache(
        &self,
        store: reflector::Store<PartialObjectMeta<Namespace>>,
        client: kube::Client,
    ) {
        *write(&self.namespaces) = Namespaces::Cache(store);
        *write(&self.client) = Some(client);
    }

    /// The namespace read from the API server now (its labels and account annotation);
    /// `None` when it cannot be read. Without a client (tests), the cache.
    async fn namespace_fresh(&self, ns: &str) -> Option<NsInfo> {
        let client = read(&self.client).clone();
        let Some(client) = client else {
            return self.namespace_cached(ns).await;
        };
        match Api::<Namespace>::all(client).get_opt(ns).await {
            Ok(Some(n)) => Some(NsInfo::of(&n.metadata)),
            Ok(None) => None,
            Err(e) => {
                tracing::info!(namespace = %ns, error = %e, "namespace not readable for its account");
                None
            }
        }
    }

    /// The `EcsAccount` read now: `Some(Some(deleting))`, `Some(None)` when it does not
    /// exist, `None` when it cannot be read. Without a client (tests): as last seen.
    async fn account_fresh(&self, name: &str) -> Option<Option<bool>> {
        let client = read(&self.client).clone();
        let Some(client) = client else {
            return Some(self.view(name).map(|v| v.deleting));
        };
        match Api::<crate::api::EcsAccount>::all(client)
            .get_opt(name)
            .await
        {
            Ok(a) => Some(a.map(|a| a.metadata.deletion_timestamp.is_some())),
            Err(e) => {
                tracing::info!(account = %name, error = %e, "EcsAccount not readable");
                None
            }
        }
    }

    /// What the namespace cache holds of `ns` now (no wait for its sync).
    pub fn namespace_now(&self, ns: &str) -> Option<NsInfo> {
        let store = match &*read(&self.namespaces) {
            Namespaces::Absent | Namespaces::Api => return None,
            Namespaces::Cache(s) => s.clone(),
        };
        let n = store.get(&reflector::ObjectRef::new(ns))?;
        Some(NsInfo::of(&n.metadata))
    }

    /// The namespace's labels and account annotation; `None`: not known (yet).
    async fn namespace(&self, ns: &str) -> Option<NsInfo> {
        let api = matches!(&*read(&self.namespaces), Namespaces::Api);
        if api {
            self.namespace_fresh(ns).await
        } else {
            self.namespace_cached(ns).await
        }
    }

    /// From the namespace cache, once it has synced.
    async fn namespace_cached(&self, ns: &str) -> Option<NsInfo> {
        let store = match &*read(&self.namespaces) {
            Namespaces::Cache(s) => s.clone(),
            Namespaces::Absent | Namespaces::Api => return None,
        };
        if tokio::time::timeout(NS_SYNC_WAIT, store.wait_until_ready())
            .await
            .ok()?
            .is_err()
        {
            return None;
        }
        self.namespace_now(ns)
    }

    /// The account that acts for `obj`, or why none may (`accounts::decide`).
    pub async fn resolve(&self, obj: &EcsInstance) -> Result<Arc<AccountCloud>, Refusal> {
        let ns = obj.metadata.namespace.clone().unwrap_or_default();
        let bound = pinned(obj.status.as_ref());
        // An unbound resource's account is decided now for its whole life: read the
        // namespace afresh, since the cache may predate an annotation added a moment ago.
        let info = match bound {
            None => self.namespace_fresh(&ns).await,
            Some(_) => self.namespace(&ns).await,
        };
        let absent = matches!(&*read(&self.namespaces), Namespaces::Absent);
        let want = wanted_given(
            obj,
            bound.as_ref(),
            info.as_ref().and_then(|i| i.account_annotation.as_deref()),
        );
        // Without the namespace the annotation (unbound) or the labels (a named account)
        // are unknown: no guess (a cache never set up is the tests' default account only).
        let needs_ns = bound.is_none() || matches!(want, AccountName::Named(_));
        if info.is_none() && !absent && needs_ns {
            return Err(Refusal::Unverified {
                name: want.label().to_string(),
                namespace: ns,
            });
        }
        let mut view = match &want {
            AccountName::Named(n) => self.view(n),
            AccountName::Default => None,
        };
        // Binding is for life: the account must exist and not be leaving now, not only in
        // the manager's last pass (it may be seconds old).
        if let (None, AccountName::Named(n), Some(v)) = (&bound, &want, view.as_mut()) {
            match self.account_fresh(n).await {
                Some(Some(deleting)) => v.deleting |= deleting,
                Some(None) => view = None,
                None => {
                    return Err(Refusal::Unverified {
                        name: n.clone(),
                        namespace: ns,
                    })
                }
            }
        }
        let synced = self.synced.load(std::sync::atomic::Ordering::SeqCst) || absent;
        if let (AccountName::Named(n), None, false) = (&want, &view, synced) {
            return Err(Refusal::Unverified {
                name: n.clone(),
                namespace: ns,
            });
        }
        let labels = match &info {
            Some(i) => NsLabels::Known(&i.labels),
            None => NsLabels::Unknown,
        };
        let name = decide(&want, bound.as_ref(), &ns, view.as_ref(), labels)?;
        // A usable view without a client only while the manager builds it.
        self.get(&name).ok_or(Refusal::NotReady {
            name: name.label().to_string(),
            why: "its client is not built yet".into(),
        })
    }
}
