//! Keeps the registry in step with the `EcsAccount`s and their Secrets: a watch on the
//! accounts, one on namespaces (labels and the account annotation, metadata only), and a
//! read of each account's Secret every `poll` (and at once when an account changes).
//!
//! Secrets are read one by one with GET, never listed or watched: the operator needs only
//! `get` on the Secrets accounts name, which a Role can narrow with `resourceNames`
//! (deploy/rbac/account-secrets-role.yaml). A rotated key is in use from the next poll on
//! (5 s by default); calls already started finish with the key they were signed with.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;

use super::registry::AccountCloud;
use super::secret::credentials;
use super::{AccountName, AccountView};
use crate::api::{set_condition, EcsAccount};
use crate::cloud::signer::Credentials;
use crate::controller::Context;

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Where account Secrets live (`--account-secret-namespace`).
    pub secret_namespace: String,
    /// How often each account's Secret is read (`--account-secret-poll-secs`).
    pub poll: Duration,
}

/// What a read of an account's Secret found.
#[derive(Debug)]
pub enum KeyState {
    Read {
        resource_version: String,
        credentials: Credentials,
    },
    /// Not usable: the condition reason and message (key names only, never values).
    Broken {
        reason: &'static str,
        message: String,
    },
    /// The read failed for a reason that may pass (network, 5xx): keep what was known.
    Unknown(String),
}

/// Reads one account's Secret.
pub async fn read_key(secrets: &Api<Secret>, ns: &str, name: &str) -> KeyState {
    match secrets.get_opt(name).await {
        Ok(Some(s)) => match credentials(s.data.as_ref()) {
            Ok(c) => KeyState::Read {
                resource_version: s.resource_version().unwrap_or_default(),
                credentials: c,
            },
            Err(why) => KeyState::Broken {
                reason: "SecretMalformed",
                message: format!("Secret {ns}/{name}: {why}"),
            },
        },
        Ok(None) => KeyState::Broken {
            reason: "SecretNotFound",
            message: format!("Secret {ns}/{name} not found"),
        },
        Err(kube::Error::Api(e)) if e.code == 403 => KeyState::Broken {
            reason: "SecretForbidden",
            message: format!("the operator may not read Secret {ns}/{name}: grant it get on that Secret (deploy/rbac/account-secrets-role.yaml)"),
        },
        Err(e) => KeyState::Unknown(e.to_string()),
    }
}

/// Runs until `shutdown`: the two watches and the Secret reads.
/// `ns_writer`: the namespace cache's writer; its reader is in the registry already (set
/// before any reconcile starts, so none resolves without it).
pub async fn run(
    ctx: Arc<Context>,
    cfg: ManagerConfig,
    ns_writer: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    // Metadata only: labels and annotations are all that is read of a namespace.
    let namespaces = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(ctx.client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(ns_writer)
    .for_each(|_| futures::future::ready(()));
    let (reader, writer) = reflector::store();
    let changed = Arc::new(tokio::sync::Notify::new());
    let accounts = {
        let changed = changed.clone();
        watcher(
            Api::<EcsAccount>::all(ctx.client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .reflect(writer)
        .for_each(move |e| {
            if let Err(err) = &e {
                tracing::warn!(error = %err, "EcsAccount watch");
            }
            changed.notify_one();
            futures::future::ready(())
        })
    };
    let sync = async {
        if reader.wait_until_ready().await.is_err() {
            return;
        }
        loop {
            sync_all(&ctx, &cfg, &reader.state()).await;
            ctx.accounts.mark_synced();
            // At most one pass a second, however often the accounts change (our own status
            // writes are changes too).
            tokio::time::sleep(Duration::from_secs(1)).await;
            tokio::select! {
                _ = tokio::time::sleep(cfg.poll) => {}
                _ = changed.notified() => {}
            }
        }
    };
    tokio::select! {
        _ = namespaces => {}
        _ = accounts => {}
        _ = sync => {}
        _ = shutdown => {}
    }
}

/// One pass: every account's Secret read, its client built or re-keyed, its status written
/// when it changed; accounts that are gone are dropped.
pub async fn sync_all(ctx: &Arc<Context>, cfg: &ManagerConfig, all: &[Arc<EcsAccount>]) {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &cfg.secret_namespace);
    let mut present = HashSet::new();
    for a in all {
        let name = a.name_any();
        present.insert(name.clone());
        let state = read_key(&secrets, &cfg.secret_namespace, &a.spec.secret_ref.name).await;
        sync_one(ctx, a, &name, state).await;
        keep_finalizer(ctx, a, &name).await;
    }
    for gone in ctx.accounts.names() {
        if !present.contains(&gone) {
            tracing::info!(account = %gone, "EcsAccount deleted: its resources are refused from now on");
            ctx.accounts.remove(&gone);
            ctx.metrics.account_ready(&gone, None);
        }
    }
}

async fn sync_one(ctx: &Arc<Context>, a: &EcsAccount, name: &str, state: KeyState) {
    let allowed = a.spec.allowed_namespaces.clone();
    let deleting = a.metadata.deletion_timestamp.is_some();
    let (usable, reason, message, rv) = match state {
        KeyState::Unknown(e) if ctx.accounts.view(name).is_some() => {
            tracing::info!(account = %name, error = %e, "account Secret not read; keeping the key in use");
            return;
        }
        // Never read yet: not usable until it is (a resource waits, it is not refused as if
        // the account did not exist).
        KeyState::Unknown(e) => {
            let m = format!("its Secret could not be read yet: {e}");
            (Err(m.clone()), "SecretUnreadable", m, None)
        }
        KeyState::Broken { reason, message } => (Err(message.clone()), reason, message, None),
        KeyState::Read {
            resource_version,
            credentials,
        } => match client_for(ctx, a, name, credentials) {
            Ok(cloud) => {
                let msg = format!(
                    "key read from Secret {} (resourceVersion {resource_version})",
                    a.spec.secret_ref.name
                );
                ctx.accounts.set(
                    name,
                    AccountView {
                        allowed,
                        usable: Ok(()),
                        deleting,
                    },
                    Some(cloud),
                );
                write_status(ctx, a, true, "SecretRead", &msg, Some(resource_version)).await;
                ctx.metrics.account_ready(name, Some(true));
                return;
            }
            Err(e) => (Err(e.clone()), "EndpointInvalid", e, None),
        },
    };
    tracing::warn!(account = %name, reason, %message, "account not usable");
    // The client is kept (calls in flight finish), but no new call is made with it.
    let cloud = ctx.accounts.get(&AccountName::Named(name.to_string()));
    let view = AccountView {
        allowed,
        usable,
        deleting,
    };
    ctx.accounts.set(name, view, cloud);
    write_status(ctx, a, false, reason, &message, rv).await;
    ctx.metrics.account_ready(name, Some(false));
}

/// Keeps an account from going while a resource is bound to it: its VMs live there, and
/// their deletions need its key. The finalizer is added to every account and removed, once
/// the account is being deleted, when no `EcsInstance` names it in `status.account` (the
/// cluster-wide cache). Writes are guarded by the resourceVersion read.
async fn keep_finalizer(ctx: &Arc<Context>, a: &EcsAccount, name: &str) {
    if !reports_on(ctx, a) {
        return;
    }
    let has = a.finalizers().iter().any(|f| f == ACCOUNT_FINALIZER);
    let mut finalizers = a.finalizers().to_vec();
    match (a.metadata.deletion_timestamp.is_some(), has) {
        (false, false) => finalizers.push(ACCOUNT_FINALIZER.to_string()),
        (true, true) => {
            let in_use = match ctx.all_instances().await {
                Ok(all) => all
                    .iter()
                    .any(|o| o.status.as_ref().and_then(|s| s.account.as_deref()) == Some(name)),
                Err(e) => {
                    tracing::info!(account = %name, error = %e, "resources not listed; the account's finalizer stays");
                    true
                }
            };
            if in_use {
                return;
            }
            finalizers.retain(|f| f != ACCOUNT_FINALIZER);
            tracing::info!(account = %name, "no resource uses the account any more: releasing it");
        }
        _ => return,
    }
    let api: Api<EcsAccount> = Api::all(ctx.client.clone());
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": a.resource_version()}});
    if let Err(e) = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::info!(account = %name, error = %e, "account finalizer not written; next pass");
    }
}

/// On every `EcsAccount` while a resource may be bound to it (`keep_finalizer`).
pub const ACCOUNT_FINALIZER: &str = "ecs.volcengine.io/account-in-use";

/// The account's client: the one in use, re-keyed, while its endpoint and region are the
/// same; else a new one.
fn client_for(
    ctx: &Arc<Context>,
    a: &EcsAccount,
    name: &str,
    c: Credentials,
) -> Result<Arc<AccountCloud>, String> {
    let built_for = (a.spec.endpoint.clone(), a.spec.region.clone());
    if let Some(existing) = ctx.accounts.get(&AccountName::Named(name.to_string())) {
        if existing.built_for == built_for {
            existing.rekey(c);
            return Ok(existing);
        }
    }
    let factory = ctx
        .accounts
        .factory
        .as_ref()
        .ok_or_else(|| "this operator cannot build account clients".to_string())?;
    let (cloud, rekey) = factory
        .build(name, &a.spec, c)
        .map_err(|e| format!("endpoint: {e}"))?;
    let mut acct = AccountCloud::new(
        AccountName::Named(name.to_string()),
        cloud,
        ctx.settings.batch,
        &ctx.metrics,
        Some(rekey),
    );
    acct.built_for = built_for;
    tracing::info!(account = %name, "account client built");
    Ok(Arc::new(acct))
}

/// Whether this operator reports on the account: one that watches every namespace does; one
/// limited by `--namespaces` only for an account that allows one of them (two operators
/// sharding a cluster would otherwise overwrite each other's view of the same account).
fn reports_on(ctx: &Context, a: &EcsAccount) -> bool {
    let mine = &ctx.settings.namespaces;
    mine.is_empty()
        || mine.iter().any(|ns| {
            let labels = ctx.accounts.namespace_now(ns).map(|i| i.labels);
            super::allows(&a.spec.allowed_namespaces, ns, &labels.unwrap_or_default())
        })
}

/// Writes the `Ready` condition when what it says changed.
async fn write_status(
    ctx: &Arc<Context>,
    a: &EcsAccount,
    ready: bool,
    reason: &str,
    message: &str,
    rv: Option<String>,
) {
    if !reports_on(ctx, a) {
        return;
    }
    let mut st = a.status.clone().unwrap_or_default();
    let before = st.clone();
    let gen = a.metadata.generation;
    set_condition(&mut st.conditions, "Ready", ready, reason, message, gen);
    st.observed_generation = gen;
    if rv.is_some() {
        st.secret_resource_version = rv;
    }
    let same = |x: &crate::api::EcsAccountStatus| {
        x.observed_generation == st.observed_generation
            && x.secret_resource_version == st.secret_resource_version
            && x.conditions
                .iter()
                .map(|c| (&c.type_, &c.status, &c.reason, &c.message))
                .eq(st
                    .conditions
                    .iter()
                    .map(|c| (&c.type_, &c.status, &c.reason, &c.message)))
    };
    if same(&before) {
        return;
    }
    let api: Api<EcsAccount> = Api::all(ctx.client.clone());
    let patch = json!({"status": st});
    if let Err(e) = api
        .patch_status(
            &a.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::info!(account = %a.name_any(), error = %e, "EcsAccount status not written");
    }
}
