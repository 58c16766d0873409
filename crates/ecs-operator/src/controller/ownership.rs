//! One VM, one owner. A VM belongs to the one resource whose identity tags it carries
//! (`ecs.volcengine.io/{cluster,namespace,name,uid}`): creation writes them with
//! RunInstances, adoption writes them with TagResources (the claim) before the resource
//! reports Ready. Two pure decisions, table-tested: may this resource claim the VM
//! (`decide`), and does the deletion path have current proof that it owns it (`proof`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use kube::ResourceExt;

use super::apply::{TAG_CLUSTER, TAG_NAME, TAG_NAMESPACE, TAG_UID};
use crate::api::{EcsInstance, Ownership};
use crate::cloud::model::Tag;
use crate::cloud::Instance;

/// What the cluster says about other resources (gathered only when the VM's tags do not
/// already name this resource).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Others {
    /// The existing EcsInstance (any namespace, `ns/name`) whose uid the VM's uid tag names.
    pub tag_owner: Option<String>,
    /// Another existing EcsInstance (`ns/name`) that names the same instance ID.
    pub naming: Option<String>,
}

/// The VM's identity tags and what is known about other resources.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub uid: &'a str,
    pub cluster: &'a str,
    pub tag_cluster: Option<&'a str>,
    pub tag_uid: Option<&'a str>,
    pub others: &'a Others,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The tags already name this resource in this cluster.
    Ours,
    /// Write this resource's tags. `stale_owner`: the uid tag of an owner that no longer
    /// exists, which the claim overwrites.
    Claim { stale_owner: Option<String> },
    /// Someone else manages the VM: never touch it.
    Conflict(Conflict),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Tagged by another cluster (its identity).
    OtherCluster(String),
    /// Tagged with the uid of another existing resource (`ns/name`).
    OwnedBy(String),
    /// Another existing resource names the same VM (`ns/name`).
    NamedBy(String),
}

impl Conflict {
    pub fn message(&self, id: &str) -> String {
        let who = match self {
            Conflict::OtherCluster(c) => {
                format!("the cluster {c:?} (its ecs.volcengine.io/cluster tag)")
            }
            Conflict::OwnedBy(o) => format!("the EcsInstance {o} (its ecs.volcengine.io/uid tag)"),
            Conflict::NamedBy(o) => format!("the EcsInstance {o}, which names the same VM"),
        };
        format!("VM {id} is managed by {who}; this resource leaves it alone and deleting it will not delete the VM")
    }
}

pub fn decide(f: &Facts<'_>) -> Verdict {
    if f.tag_uid == Some(f.uid) {
        // Our uid is the proof: the API server made it for this object, so no other cluster's
        // resource carries it (an etcd restore copies the kube-system uid too, so the cluster
        // tag could not tell those apart either). A missing or different cluster tag (a VM
        // created before the identity was derived from kube-system, when every installation
        // tagged `default`, or under an earlier --cluster-id) is repaired by claiming again.
        return if f.tag_cluster == Some(f.cluster) {
            Verdict::Ours
        } else {
            Verdict::Claim { stale_owner: None }
        };
    }
    if let Some(c) = f.tag_cluster.filter(|c| *c != f.cluster) {
        return Verdict::Conflict(Conflict::OtherCluster(c.to_string()));
    }
    if let Some(o) = &f.others.tag_owner {
        return Verdict::Conflict(Conflict::OwnedBy(o.clone()));
    }
    if let Some(o) = &f.others.naming {
        return Verdict::Conflict(Conflict::NamedBy(o.clone()));
    }
    Verdict::Claim {
        stale_owner: f.tag_uid.map(str::to_string),
    }
}

/// Whether the VM's tags name this resource of this cluster.
pub fn tagged_ours(inst: &Instance, uid: &str, cluster: &str) -> bool {
    inst.tag(TAG_UID) == Some(uid) && inst.tag(TAG_CLUSTER) == Some(cluster)
}

/// Who else claims the VM, from every EcsInstance in the cluster (all namespaces).
pub fn others(
    all: &[impl std::ops::Deref<Target = EcsInstance>],
    uid: &str,
    id: &str,
    tag_uid: Option<&str>,
) -> Others {
    let mut o = Others::default();
    for r in all {
        let r_uid = r.uid().unwrap_or_default();
        if r_uid == uid {
            continue;
        }
        let who = || format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any());
        if tag_uid == Some(r_uid.as_str()) {
            o.tag_owner.get_or_insert_with(who);
        }
        let names = r.spec.instance_id.as_deref() == Some(id)
            || r.status.as_ref().and_then(|s| s.instance_id.as_deref()) == Some(id);
        // A resource that was refused the VM does not hold it.
        let held = r.status.as_ref().and_then(|s| s.ownership);
        let refused = held == Some(Ownership::Refused);
        // Nor does one that only observes it (it never claims, and its deletion never acts),
        // unless it claimed the VM before it was switched to ObserveOnly.
        let observer = r.observe_only() && held != Some(Ownership::Claimed);
        if names && !refused && !observer {
            o.naming.get_or_insert_with(who);
        }
    }
    o
}

/// The tags a claim writes: the same identity tags creation writes.
pub fn claim_tags(cluster: &str, ns: &str, name: &str, uid: &str) -> Vec<Tag> {
    [
        (TAG_CLUSTER, cluster),
        (TAG_NAMESPACE, ns),
        (TAG_NAME, name),
        (TAG_UID, uid),
    ]
    .into_iter()
    .map(|(k, v)| Tag {
        key: k.to_string(),
        value: v.to_string(),
    })
    .collect()
}

/// What the deletion path may do with the VM, from the recorded claim and what
/// DescribeInstances returned just now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The VM carries this resource's tags now: it may be deleted (or orphaned).
    Proven,
    /// This resource created it moments ago and the cloud does not list it yet: act by ID,
    /// but a NotFound is no proof that it is gone.
    Appearing,
    /// The cloud does not list it, and it is not appearing: it is gone.
    Gone,
    /// This resource never held the VM (refused, never claimed): release, VM untouched.
    NeverOwned,
    /// The claim is recorded but the VM's tags name someone else now: keep it, say so, retry.
    Unproven,
    /// The claim is recorded and the VM carries no uid tag at all now (this resource's
    /// own untag may have landed): Delete keeps it as `Unproven`; Orphan untags again.
    Untagged,
}

/// What DescribeInstances showed of the VM's uid tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// This resource's uid.
    Ours,
    /// No uid tag (or an empty one).
    Untagged,
    /// Another resource's uid.
    Foreign,
}

/// The deletion-time look: does the VM carry this resource's uid (see `decide` for why the
/// uid alone proves it, whatever cluster identity an earlier version tagged)?
pub fn seen(inst: &Instance, uid: &str) -> Seen {
    match inst.tag(TAG_UID).filter(|u| !u.is_empty()) {
        Some(u) if !uid.is_empty() && u == uid => Seen::Ours,
        Some(_) => Seen::Foreign,
        None => Seen::Untagged,
    }
}

/// `seen`: whether DescribeInstances returned the VM, and then what its uid tag says.
pub fn proof(recorded: Option<Ownership>, appearing: bool, seen: Option<Seen>) -> Proof {
    let claimed = recorded == Some(Ownership::Claimed);
    match seen {
        Some(Seen::Ours) => Proof::Proven,
        Some(Seen::Untagged) if claimed => Proof::Untagged,
        Some(Seen::Foreign) if claimed => Proof::Unproven,
        Some(_) => Proof::NeverOwned,
        None if appearing => Proof::Appearing,
        None => Proof::Gone,
    }
}

/// Whether a VM created at `run_at` (RunInstances sent or answered) may still be invisible
/// to DescribeInstances. A clock that went backwards counts as within the window.
pub fn appearing(run_at: Option<&Time>, window: Duration) -> bool {
    appearing_at(run_at, window, now())
}

/// The clock of the appear window (`status.runInstancesAt` and the test against it). Under
/// `testing`, a simulation drives it from tokio's paused clock so that the window opens and
/// closes at the same step of every replay; otherwise it is the system clock.
pub fn now() -> Timestamp {
    #[cfg(any(test, feature = "testing"))]
    if let Some(t) = crate::testing::clock::now() {
        return t;
    }
    Timestamp::now()
}

pub(crate) fn appearing_at(run_at: Option<&Time>, window: Duration, now: Timestamp) -> bool {
    run_at.is_some_and(|t| now.duration_since(t.0).as_secs_f64() < window.as_secs_f64())
}

/// Tags as a map, for messages and tests.
pub fn tag_map(inst: &Instance) -> BTreeMap<&str, &str> {
    inst.tags
        .iter()
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(tag_owner: Option<&str>, naming: Option<&str>) -> Others {
        Others {
            tag_owner: tag_owner.map(str::to_string),
            naming: naming.map(str::to_string),
        }
    }

    #[test]
    fn claim_decision_table() {
        use Verdict::*;
        let none = known(None, None);
        let owned = known(Some("a/first"), None);
        let named = known(None, Some("a/first"));
        let claim = |s: Option<&str>| Claim {
            stale_owner: s.map(str::to_string),
        };
        type Row<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            &'a Others,
            Verdict,
        );
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            // what                                 cluster tag   uid tag       others  verdict
            ("untagged, nobody else",               None,         None,         &none,  claim(None)),
            ("already ours",                        Some("c1"),   Some("me"),   &none,  Ours),
            ("ours, cluster tag missing: repair",   None,         Some("me"),   &none,  claim(None)),
            ("ours even if another names it",       Some("c1"),   Some("me"),   &named, Ours),
            ("another cluster's VM",                Some("c2"),   None,         &none,  Conflict(super::Conflict::OtherCluster("c2".into()))),
            ("our uid, older cluster id: migrate",  Some("default"), Some("me"), &none, claim(None)),
            ("a live owner's uid",                  Some("c1"),   Some("other"),&owned, Conflict(super::Conflict::OwnedBy("a/first".into()))),
            ("untagged, another resource names it", None,         None,         &named, Conflict(super::Conflict::NamedBy("a/first".into()))),
            ("stale owner, another names it",       Some("c1"),   Some("gone"), &named, Conflict(super::Conflict::NamedBy("a/first".into()))),
            ("stale owner: transfer",               Some("c1"),   Some("gone"), &none,  claim(Some("gone"))),
            ("stale owner, no cluster tag",         None,         Some("gone"), &none,  claim(Some("gone"))),
        ];
        for (what, tag_cluster, tag_uid, o, want) in rows {
            let f = Facts {
                uid: "me",
                cluster: "c1",
                tag_cluster,
                tag_uid,
                others: o,
            };
            assert_eq!(decide(&f), want, "{what}");
        }
    }

    #[test]
    fn deletion_proof_table() {
        use Ownership::*;
        use Proof::*;
        #[rustfmt::skip]
        let rows = [
            // recorded        appearing  seen (uid tag)     proof
            (Some(Claimed),    false,     Some(Seen::Ours),     Proven),
            (None,             false,     Some(Seen::Ours),     Proven),     // created before claims were recorded
            (Some(Refused),    false,     Some(Seen::Ours),     Proven),     // the tags are the current proof
            (Some(Claimed),    false,     Some(Seen::Foreign),  Unproven),   // claim lost: keep, tell, retry
            (Some(Claimed),    true,      Some(Seen::Foreign),  Unproven),
            (Some(Claimed),    false,     Some(Seen::Untagged), Untagged),   // no uid at all (an untag landed?)
            (Some(Refused),    false,     Some(Seen::Foreign),  NeverOwned),
            (Some(Refused),    false,     Some(Seen::Untagged), NeverOwned),
            (None,             false,     Some(Seen::Untagged), NeverOwned),
            (Some(Claimed),    true,      None,              Appearing),  // a NotFound now proves nothing
            (None,             true,      None,              Appearing),
            (Some(Claimed),    false,     None,              Gone),
            (Some(Refused),    false,     None,              Gone),
        ];
        for (recorded, appearing, seen, want) in rows {
            assert_eq!(
                proof(recorded, appearing, seen),
                want,
                "{recorded:?} {appearing} {seen:?}"
            );
        }
    }

    #[test]
    fn appearing_window() {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let at = |secs: i64| Timestamp::from_second(1_700_000_000 + secs).unwrap();
        let w = Duration::from_secs(600);
        let run = Some(Time(t0));
        assert!(appearing_at(run.as_ref(), w, at(0)));
        assert!(appearing_at(run.as_ref(), w, at(599)));
        assert!(!appearing_at(run.as_ref(), w, at(600)));
        assert!(appearing_at(run.as_ref(), w, at(-5)), "clock went back");
        assert!(!appearing_at(None, w, at(0)), "never created here");
        assert!(
            !appearing_at(run.as_ref(), Duration::ZERO, at(0)),
            "window off"
        );
    }

    #[test]
    fn others_ignores_self_and_refused_resources() {
        use crate::api::{EcsInstanceSpec, EcsInstanceStatus};
        let mk = |name: &str, uid: &str, spec_id: Option<&str>, st: Option<EcsInstanceStatus>| {
            let mut r = EcsInstance::new(
                name,
                EcsInstanceSpec {
                    instance_id: spec_id.map(str::to_string),
                    ..Default::default()
                },
            );
            r.metadata.namespace = Some("ns".into());
            r.metadata.uid = Some(uid.into());
            r.status = st;
            std::sync::Arc::new(r)
        };
        let refused = EcsInstanceStatus {
            instance_id: Some("i-1".into()),
            ownership: Some(Ownership::Refused),
            ..Default::default()
        };
        let all = vec![
            mk("me", "u-me", Some("i-1"), None),
            mk("loser", "u-loser", Some("i-1"), Some(refused)),
            mk("holder", "u-holder", Some("i-2"), None),
        ];
        assert_eq!(others(&all, "u-me", "i-1", None), Others::default());
        assert_eq!(
            others(&all, "u-me", "i-1", Some("u-holder"))
                .tag_owner
                .as_deref(),
            Some("ns/holder")
        );
        assert_eq!(
            others(&all, "u-loser", "i-2", None).naming.as_deref(),
            Some("ns/holder")
        );
    }

    /// An ObserveOnly resource naming a VM does not stand in the way of the resource that
    /// manages it; one that claimed the VM before it was switched to ObserveOnly does.
    #[test]
    fn an_observer_does_not_hold_the_vm_unless_it_claimed_it() {
        use crate::api::{EcsInstanceSpec, EcsInstanceStatus, ManagementPolicy};
        let mk = |uid: &str, claimed: bool| {
            let mut r = EcsInstance::new(
                uid,
                EcsInstanceSpec {
                    instance_id: Some("i-1".into()),
                    management_policy: Some(ManagementPolicy::ObserveOnly),
                    ..Default::default()
                },
            );
            r.metadata.namespace = Some("ns".into());
            r.metadata.uid = Some(uid.into());
            r.status = claimed.then(|| EcsInstanceStatus {
                instance_id: Some("i-1".into()),
                ownership: Some(Ownership::Claimed),
                ..Default::default()
            });
            std::sync::Arc::new(r)
        };
        let observer = vec![mk("u-obs", false)];
        assert_eq!(others(&observer, "u-me", "i-1", None), Others::default());
        let switched = vec![mk("u-was-manager", true)];
        assert_eq!(
            others(&switched, "u-me", "i-1", None).naming.as_deref(),
            Some("ns/u-was-manager")
        );
    }
}
