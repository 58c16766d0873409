//! The cluster identity: the value of the `ecs.volcengine.io/cluster` tag on every VM this
//! operator creates, and the only VMs its leak sweeper looks at.
//!
//! Without `--cluster-id` it is the uid of the `kube-system` Namespace, which the API server
//! generates when the cluster is created: two clusters never share it, and it survives
//! operator upgrades and reinstalls. An explicit `--cluster-id` wins (for tagging and report
//! mode), but the sweeper's delete mode accepts only the derived identity (see
//! [`delete_mode_allowed`]): a configured value is unique only if every person who ever
//! configured a cluster in the account made it so, and a copied value makes one cluster's
//! sweeper delete another cluster's VMs.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, ResourceExt};

/// The namespace whose uid names the cluster.
pub const IDENTITY_NAMESPACE: &str = "kube-system";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// `--cluster-id` / `ECS_CLUSTER_ID`.
    Flag,
    /// The uid of the kube-system Namespace.
    KubeSystemUid,
}

impl IdentitySource {
    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            IdentitySource::Flag => "flag",
            IdentitySource::KubeSystemUid => "kube_system_uid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub id: String,
    pub source: IdentitySource,
    /// The kube-system uid when it was read (always, unless an explicit id made it
    /// unnecessary).
    pub kube_system_uid: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading the uid of Namespace {IDENTITY_NAMESPACE} (the cluster identity; RBAC: get namespaces) failed after {attempts} attempt(s): {source}")]
    Read {
        attempts: u32,
        #[source]
        source: kube::Error,
    },
    #[error("Namespace {IDENTITY_NAMESPACE} has no uid; set --cluster-id")]
    NoUid,
    #[error("--sweep-mode delete refuses the cluster identity {id:?} from --cluster-id: delete mode needs an identity that is unique by construction, the uid of Namespace {IDENTITY_NAMESPACE} ({derived}); drop --cluster-id (VMs tagged with another identity are then never swept) or use --sweep-mode report")]
    NotUniqueForDelete { id: String, derived: String },
}

/// The effective identity from the flag (if set) and the kube-system uid (if read). Pure.
pub fn effective(
    explicit: Option<&str>,
    kube_system_uid: Option<&str>,
) -> Result<ClusterIdentity, IdentityError> {
    let uid = kube_system_uid.filter(|u| !u.trim().is_empty());
    match explicit.map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) => Ok(ClusterIdentity {
            id: e.to_string(),
            source: IdentitySource::Flag,
            kube_system_uid: uid.map(str::to_string),
        }),
        None => {
            let uid = uid.ok_or(IdentityError::NoUid)?;
            Ok(ClusterIdentity {
                id: uid.to_string(),
                source: IdentitySource::KubeSystemUid,
                kube_system_uid: Some(uid.to_string()),
            })
        }
    }
}

/// Delete mode acts only on an identity that is unique by construction: the kube-system uid,
/// whether derived or (identically) given by flag. Any other configured value, `default`
/// above all (every earlier installation used it), is refused. Pure.
pub fn delete_mode_allowed(id: &ClusterIdentity) -> Result<(), IdentityError> {
    match id.kube_system_uid.as_deref() {
        Some(uid) if uid == id.id => Ok(()),
        other => Err(IdentityError::NotUniqueForDelete {
            id: id.id.clone(),
            derived: other.unwrap_or("unknown").to_string(),
        }),
    }
}

/// Whether a read failure can heal by itself (connection, 5xx, throttling); RBAC and a
/// missing namespace cannot.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        _ => true,
    }
}

/// Reads the kube-system uid. Transient failures (connection, 5xx, throttling) are retried
/// with backoff up to `max_attempts` (an API server that is briefly away must not crash-loop
/// the operator); RBAC refusals and a missing namespace fail at once. Never a guessed id.
pub async fn read_kube_system_uid(
    client: &Client,
    max_attempts: u32,
) -> Result<String, IdentityError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut delay = Duration::from_millis(500);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match api.get(IDENTITY_NAMESPACE).await {
            Ok(ns) => {
                return ns
                    .uid()
                    .filter(|u| !u.is_empty())
                    .ok_or(IdentityError::NoUid)
            }
            Err(e) if attempts < max_attempts && transient(&e) => {
                tracing::warn!(error = %e, attempt = attempts, "reading the cluster identity (uid of Namespace kube-system) failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(source) => return Err(IdentityError::Read { attempts, source }),
        }
    }
}

/// The effective identity for `run` and `sweep`. The kube-system uid is read unless an
/// explicit id is given and delete mode is off (nothing then needs it).
pub async fn resolve(
    client: &Client,
    explicit: Option<&str>,
    delete_mode: bool,
    max_attempts: u32,
) -> Result<ClusterIdentity, IdentityError> {
    let has_explicit = explicit.is_some_and(|e| !e.trim().is_empty());
    let uid = if has_explicit && !delete_mode {
        None
    } else {
        Some(read_kube_system_uid(client, max_attempts).await?)
    };
    let id = effective(explicit, uid.as_deref())?;
    if delete_mode {
        delete_mode_allowed(&id)?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2a4e-0d7b-4f57-9a53-2b0f8f5e9c11";

    /// (flag, kube-system uid, expected (id, source) or NoUid, delete mode allowed)
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        Option<(&'static str, IdentitySource)>,
        bool,
    );

    #[test]
    fn effective_identity_and_delete_mode() {
        use IdentitySource::*;
        // (flag, kube-system uid) -> (id, source) or error; delete mode allowed?
        let cases: &[Case] = &[
            (None, Some(UID), Some((UID, KubeSystemUid)), true),
            (Some(""), Some(UID), Some((UID, KubeSystemUid)), true),
            (Some("  "), Some(UID), Some((UID, KubeSystemUid)), true),
            (Some(UID), Some(UID), Some((UID, Flag)), true),
            (Some("default"), Some(UID), Some(("default", Flag)), false),
            (
                Some("prod-east"),
                Some(UID),
                Some(("prod-east", Flag)),
                false,
            ),
            (Some("prod-east"), None, Some(("prod-east", Flag)), false),
            (Some(UID), None, Some((UID, Flag)), false),
            (None, None, None, false),
            (None, Some(""), None, false),
        ];
        for (flag, uid, want, delete_ok) in cases {
            let got = effective(*flag, *uid);
            match (want, &got) {
                (Some((id, src)), Ok(g)) => {
                    assert_eq!((g.id.as_str(), g.source), (*id, *src), "{flag:?} {uid:?}");
                    assert_eq!(
                        delete_mode_allowed(g).is_ok(),
                        *delete_ok,
                        "{flag:?} {uid:?}"
                    );
                }
                (None, Err(IdentityError::NoUid)) => {}
                _ => panic!("{flag:?} {uid:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn refusal_names_both_identities() {
        let id = effective(Some("default"), Some(UID)).unwrap();
        let msg = delete_mode_allowed(&id).unwrap_err().to_string();
        assert!(msg.contains("\"default\"") && msg.contains(UID), "{msg}");
    }
}
