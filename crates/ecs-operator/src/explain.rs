//! `ecs-operator explain NAMESPACE/NAME` (`kubectl ecs explain` as a kubectl plugin): what
//! the operator is waiting for on one resource, and why, in plain words. It reads the
//! resource, its namespace, the CRD and the resource's Events with the caller's kubeconfig;
//! it makes no cloud call and changes nothing. `render` is pure and table-tested.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::ResourceExt;

use crate::api::{
    DeletionPolicy, EcsInstance, CRD_NAME, FINALIZER, NAMESPACE_ACCOUNT_ANNOTATION,
    NAMESPACE_POLICY_ANNOTATION, PAUSED_ANNOTATION, RELEASE_ANNOTATION,
};
use crate::controller::cleanup::delete_token;
use crate::controller::policy::{self, CrdState, NsAnnotation, Source};

/// One Event about the resource, newest last.
#[derive(Debug, Clone, PartialEq)]
pub struct EventLine {
    pub warning: bool,
    pub reason: String,
    pub note: String,
    pub time: Option<Timestamp>,
}

/// Everything `render` reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub obj: EcsInstance,
    pub crd: CrdState,
    /// The namespace's deletion-policy annotation as explain could read it.
    pub ns_annotation: NsAnnotation,
    /// The operator's `--default-deletion-policy` (explain cannot see the running flag).
    pub default_policy: DeletionPolicy,
    pub events: Vec<EventLine>,
    pub now: Timestamp,
}

fn age(now: Timestamp, t: Timestamp) -> String {
    let secs = now.duration_since(t).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// The deletion policy that applies, and where it comes from.
fn policy_line(i: &Inputs) -> String {
    let ns = i.obj.namespace().unwrap_or_default();
    let spec = i.obj.spec.deletion_policy;
    match policy::resolve(&i.crd, spec, &ns, &i.ns_annotation, i.default_policy) {
        Ok((p, source)) => {
            let from = match source {
                Source::CrdDeleting => format!("the CRD {CRD_NAME} is being deleted, so every VM is kept"),
                Source::Spec => "spec.deletionPolicy".to_string(),
                Source::Namespace => format!("annotation {NAMESPACE_POLICY_ANNOTATION} on namespace {ns}"),
                Source::Default => "the operator's --default-deletion-policy (explain assumes Delete unless told with --default-deletion-policy)".to_string(),
            };
            let verb = match p {
                DeletionPolicy::Delete => "deleting the resource deletes the VM",
                DeletionPolicy::Orphan => "deleting the resource keeps the VM",
            };
            format!("{p:?} ({verb}), from {from}")
        }
        // explain's own read failed: what the operator sees may differ; say so.
        Err(_) if matches!(i.ns_annotation, NsAnnotation::Unreadable(_)) => format!(
            "unknown to explain: it could not read namespace {ns} ({}); the operator decides with its own read",
            match &i.ns_annotation {
                NsAnnotation::Unreadable(e) => e.as_str(),
                _ => "",
            }
        ),
        Err(doubt) => format!("unknown: {}", doubt.message()),
    }
}

/// What the operator waits for, and what the user can do, from the conditions, the status
/// and the latest Events.
fn waiting(i: &Inputs) -> (String, Vec<String>) {
    let o = &i.obj;
    let ns = o.namespace().unwrap_or_default();
    let name = o.name_any();
    let st = o.status.clone().unwrap_or_default();
    let texts: Vec<String> = o
        .status
        .iter()
        .flat_map(|s| s.conditions.iter())
        .map(|c| format!("{} {}", c.reason, c.message))
        .chain(
            i.events
                .iter()
                .rev()
                .take(3)
                .map(|e| format!("{} {}", e.reason, e.note)),
        )
        .collect();
    let says = |needle: &str| texts.iter().any(|t| t.contains(needle));
    let account = st.account.clone().unwrap_or_else(|| "default".into());
    let mut todo = Vec::new();
    let what = if o.paused() {
        todo.push(format!(
            "remove the annotation: kubectl -n {ns} annotate ecsi {name} {PAUSED_ANNOTATION}-"
        ));
        format!("nothing: the resource is paused (annotation {PAUSED_ANNOTATION}=true), so the operator makes no cloud call for it, deletion included")
    } else if says("OperationDenied.DeletionProtection")
        || (says("DeletionRefused") && st.deletion_protection == Some(true))
    {
        todo.push(format!("turn deletion protection off: kubectl -n {ns} patch ecsi {name} --type merge -p '{{\"spec\":{{\"deletionProtection\":false}}}}' (the operator never turns it off on its own)"));
        "you: the VM has deletion protection on, and the cloud refuses to delete it".to_string()
    } else if says("CloudAuthError")
        || says("InvalidAccessKey")
        || says("SignatureDoesNotMatch")
        || says("AccessDenied")
    {
        todo.push(match st.account.as_deref() {
            Some(a) if a != "default" => format!("fix the key of EcsAccount {a}: its Secret (see `kubectl get ecsaccount {a}`); a new key is used within seconds"),
            _ => "fix the operator's own credentials (Secret ecs-operator-credentials, VOLCENGINE_ACCESS_KEY / VOLCENGINE_SECRET_KEY) and restart it".to_string(),
        });
        format!("the cloud to accept the credentials of account {account}: it refuses them (authentication or permission)")
    } else if says("InvalidInstanceStatus")
        || says("DeletionPending")
        || says("InstanceTransitioning")
    {
        let vm = st
            .instance_status
            .clone()
            .unwrap_or_else(|| "a transitional state".into());
        todo.push("wait: the operator retries with backoff until the VM settles".to_string());
        format!("the VM to leave {vm}: the cloud refuses to delete a VM in that state")
    } else if let Some(r) = [
        "AccountNotFound",
        "AccountNotAllowed",
        "AccountChanged",
        "AccountNotReady",
        "AccountUnverified",
    ]
    .iter()
    .find(|r| says(r))
    {
        todo.push(format!("fix the account: the EcsAccount named by spec.accountRef or the namespace annotation {NAMESPACE_ACCOUNT_ANNOTATION} (`kubectl get ecsaccount`)"));
        format!("an account it may act in ({r}): see the Synced condition")
    } else if o.metadata.deletion_timestamp.is_some()
        && !o.finalizers().iter().any(|f| f == FINALIZER)
    {
        "nothing: the operator released the resource; Kubernetes removes it once its other finalizers are gone".to_string()
    } else {
        "see the conditions: the latest one says what happens next".to_string()
    };
    if o.metadata.deletion_timestamp.is_some() {
        todo.push(format!("to keep the VM: kubectl -n {ns} patch ecsi {name} --type merge -p '{{\"spec\":{{\"deletionPolicy\":\"Orphan\"}}}}' (its ownership tags are removed, so no sweeper takes it for a leak)"));
        todo.push(format!("if no account can act or the VM is gone and cannot be proven so: release the resource without any cloud call (the escape hatch): kubectl -n {ns} annotate ecsi {name} {RELEASE_ANNOTATION}=\"<why>\"; the VM keeps its ownership tags, so a sweeper in delete mode would take it for a leak: remove its ecs.volcengine.io/* tags if it must live"));
    }
    (what, todo)
}

/// The explanation. Pure.
pub fn render(i: &Inputs) -> String {
    let o = &i.obj;
    let ns = o.namespace().unwrap_or_default();
    let uid = o.uid().unwrap_or_default();
    let st = o.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    out.push(format!("EcsInstance {ns}/{} (uid {uid})", o.name_any()));
    let holds = o.finalizers().iter().any(|f| f == FINALIZER);
    out.push(match &o.metadata.deletion_timestamp {
        Some(t) => format!(
            "State:        being deleted for {}; finalizer {FINALIZER} {}",
            age(i.now, t.0),
            if holds {
                "still set: the operator holds the deletion until the VM is dealt with"
            } else {
                "gone: the operator is done"
            }
        ),
        None => "State:        live (not being deleted)".to_string(),
    });
    out.push(format!("Policy:       {}", policy_line(i)));
    out.push(format!(
        "Management:   {}; paused: {}; updates: {}",
        if o.observe_only() {
            "ObserveOnly"
        } else {
            "Manage"
        },
        if o.paused() { "yes" } else { "no" },
        o.update_policy().as_str()
    ));
    out.push(format!(
        "Account:      {}",
        match (&st.account, &o.spec.account_ref) {
            (Some(a), _) => format!("{a} (bound in status.account)"),
            (None, Some(r)) => format!("{} (spec.accountRef, not bound yet)", r.name),
            (None, None) =>
                "not bound yet (the namespace annotation or the operator's own credentials decide)"
                    .into(),
        }
    ));
    out.push(format!(
        "VM:           {} in {}, last seen {}, deletion protection {}, ownership {}",
        o.owned_instance_id().unwrap_or("(none recorded)"),
        st.region.as_deref().unwrap_or("(default region)"),
        st.instance_status.as_deref().unwrap_or("(never observed)"),
        match st.deletion_protection {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        },
        st.ownership
            .map(|x| format!("{x:?}"))
            .unwrap_or_else(|| "not claimed".into())
    ));
    if o.metadata.deletion_timestamp.is_some() {
        let attempt = o.deletion_attempt();
        out.push(format!(
            "ClientToken:  {} (status.deletionAttempt {attempt}; a retry of an unanswered call re-sends it, a new attempt after a definitive answer gets a new one)",
            delete_token(&uid, attempt)
        ));
    }
    out.push("Conditions:".to_string());
    for c in st.conditions.iter() {
        out.push(format!(
            "  {}={} {}: {}",
            c.type_, c.status, c.reason, c.message
        ));
    }
    let last = i.events.iter().rev().find(|e| e.note.contains("RequestId"));
    out.push(format!(
        "Last cloud answer: {}",
        match last {
            Some(e) => format!(
                "{} ({}): {}",
                e.reason,
                e.time
                    .map(|t| format!("{} ago", age(i.now, t)))
                    .unwrap_or_default(),
                e.note
            ),
            None => "none recorded in the resource's Events".to_string(),
        }
    ));
    if o.metadata.deletion_timestamp.is_some() {
        out.push(format!(
            "Next attempt: {}",
            match (&st.deletion_retry_at, o.paused()) {
                (_, true) => "none while paused".to_string(),
                (Some(t), _) if t.0 > i.now => format!(
                    "at {} (in {}; backoff per resource, --backoff-base-secs doubling up to --backoff-max-secs)",
                    t.0,
                    age(t.0, i.now)
                ),
                (Some(t), _) => format!("due since {} (at the operator's next pass)", t.0),
                (None, _) => "not recorded (the latest report did not change the status, or the operator restarted); it retries with backoff, at most --backoff-max-secs apart, or when the resource changes".to_string(),
            }
        ));
    }
    if let Some(e) = i.events.last() {
        out.push(format!(
            "Latest Event: {} {}, {}",
            if e.warning { "Warning" } else { "Normal" },
            e.reason,
            e.time
                .map(|t| format!("{} ago", age(i.now, t)))
                .unwrap_or_else(|| "at an unknown time".into())
        ));
    }
    let (what, todo) = waiting(i);
    out.push(format!("Waiting for:  {what}"));
    out.push("What you can do:".to_string());
    for t in todo {
        out.push(format!("  - {t}"));
    }
    out.join("\n") + "\n"
}

/// Reads what `render` needs.
pub async fn gather(
    client: &kube::Client,
    target: &str,
    default_policy: DeletionPolicy,
) -> Result<Inputs, String> {
    let (ns, name) = target
        .split_once('/')
        .filter(|(n, m)| !n.is_empty() && !m.is_empty())
        .ok_or_else(|| format!("{target:?}: expected NAMESPACE/NAME"))?;
    let obj = Api::<EcsInstance>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("EcsInstance {ns}/{name}: {e}"))?;
    let crd = match Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(CRD_NAME)
        .await
    {
        Ok(Some(c)) if c.metadata.deletion_timestamp.is_some() => CrdState::Deleting,
        Ok(Some(_)) => CrdState::Live,
        Ok(None) => CrdState::Unreadable("not found".into()),
        // A user may not read CRDs: the usual case is a live one.
        Err(_) => CrdState::Live,
    };
    let ns_annotation = match Api::<Namespace>::all(client.clone()).get_opt(ns).await {
        Ok(Some(n)) => match n.annotations().get(NAMESPACE_POLICY_ANNOTATION) {
            Some(v) => NsAnnotation::Value(v.clone()),
            None => NsAnnotation::Absent,
        },
        Ok(None) => NsAnnotation::NotFound,
        Err(e) => NsAnnotation::Unreadable(e.to_string()),
    };
    let uid = obj.uid().unwrap_or_default();
    let mut events: Vec<EventLine> = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid.as_str()))
        .map(|e| EventLine {
            warning: e.type_.as_deref() == Some("Warning"),
            reason: e.reason.unwrap_or_default(),
            note: e.note.unwrap_or_default(),
            time: e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0)),
        })
        .collect();
    events.sort_by_key(|e| e.time);
    Ok(Inputs {
        obj,
        crd,
        ns_annotation,
        default_policy,
        events,
        now: Timestamp::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{set_condition, EcsInstanceSpec, EcsInstanceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn deleting(reason: &str, message: &str, protection: Option<bool>) -> Inputs {
        let mut o = EcsInstance::new("web", EcsInstanceSpec::default());
        o.metadata.namespace = Some("team-a".into());
        o.metadata.uid = Some("u-1".into());
        o.metadata.finalizers = Some(vec![FINALIZER.into()]);
        o.metadata.deletion_timestamp = Some(Time(t(0)));
        let mut st = EcsInstanceStatus {
            instance_id: Some("i-1".into()),
            instance_status: Some("STOPPING".into()),
            deletion_protection: protection,
            deletion_attempt: Some(3),
            deletion_retry_at: Some(Time(t(185))),
            ..Default::default()
        };
        set_condition(&mut st.conditions, "Ready", false, reason, message, Some(1));
        o.status = Some(st);
        Inputs {
            obj: o,
            crd: CrdState::Live,
            ns_annotation: NsAnnotation::Absent,
            default_policy: DeletionPolicy::Delete,
            events: vec![EventLine {
                warning: true,
                reason: reason.into(),
                note: format!("DeleteInstances: {message} (RequestId req-7)"),
                time: Some(t(60)),
            }],
            now: t(125),
        }
    }

    /// One row per waiting state: what the operator waits for and the first thing to do.
    #[test]
    fn explain_table() {
        let paused = {
            let mut i = deleting("Paused", "paused", None);
            i.obj.metadata.annotations =
                Some([(PAUSED_ANNOTATION.to_string(), "true".to_string())].into());
            i
        };
        let rows = [
            (
                "transitional VM",
                deleting(
                    "DeletionPending",
                    "InvalidInstanceStatus: the VM is STOPPING",
                    None,
                ),
                "the VM to leave STOPPING",
                "wait",
            ),
            (
                "protection on",
                deleting(
                    "DeletionRefused",
                    "OperationDenied.DeletionProtection",
                    Some(true),
                ),
                "deletion protection on",
                "deletionProtection\":false",
            ),
            (
                "auth failure",
                deleting(
                    "CloudAuthError",
                    "InvalidAccessKey: the key is unknown",
                    None,
                ),
                "accept the credentials of account default",
                "ecs-operator-credentials",
            ),
            (
                "paused",
                paused,
                "the resource is paused",
                "ecs.volcengine.io/paused-",
            ),
        ];
        for (what, i, waits, todo) in rows {
            let text = render(&i);
            assert!(
                text.lines()
                    .any(|l| l.starts_with("Waiting for:") && l.contains(waits)),
                "{what}:\n{text}"
            );
            assert!(text.contains(todo), "{what}:\n{text}");
            assert!(text.contains("ecsop-del-u-1-3"), "{what}: token:\n{text}");
            assert!(
                text.contains("RequestId req-7"),
                "{what}: last answer:\n{text}"
            );
            assert!(
                text.contains(RELEASE_ANNOTATION),
                "{what}: escape hatch:\n{text}"
            );
            assert!(text.contains("being deleted for 2m 5s"), "{what}:\n{text}");
            let next = text
                .lines()
                .find(|l| l.starts_with("Next attempt:"))
                .unwrap();
            if what == "paused" {
                assert!(next.contains("none while paused"), "{next}");
            } else {
                assert!(next.contains("(in 60s;"), "{what}: {next}");
            }
            assert!(text.contains("Delete (deleting the resource deletes the VM), from the operator's --default-deletion-policy"), "{what}:\n{text}");
        }
    }

    #[test]
    fn policy_sources() {
        let mut i = deleting("DeletionPending", "m", None);
        i.ns_annotation = NsAnnotation::Value("Orphan".into());
        assert!(render(&i).contains("Orphan (deleting the resource keeps the VM), from annotation"));
        i.ns_annotation = NsAnnotation::Value("orphan".into());
        assert!(render(&i).contains("Policy:       unknown: namespace team-a has annotation"));
        // explain may not read the namespace: it never claims the VM is kept.
        i.ns_annotation = NsAnnotation::Unreadable("forbidden".into());
        let text = render(&i);
        assert!(
            text.contains("unknown to explain: it could not read namespace team-a (forbidden)"),
            "{text}"
        );
        assert!(!text.contains("the VM is kept"), "{text}");
        i.obj.spec.deletion_policy = Some(DeletionPolicy::Orphan);
        assert!(render(&i).contains("from spec.deletionPolicy"));
        i.crd = CrdState::Deleting;
        assert!(render(&i).contains("is being deleted, so every VM is kept"));
    }
}
