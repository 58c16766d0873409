//! In-place updates as data: what differs between the VM and `spec.create`'s mutable
//! fields (`diff`), the next call that converges it as `spec.updatePolicy` allows (`plan`),
//! and the words and numbers that report it (`describe`). Pure: no cloud, no Kubernetes.
//!
//! Only these fields are managed: the name, the description (when the spec sets one), the
//! user tags the spec lists or the operator put there itself (`status.managedTagKeys`), and
//! the instance type. Ownership tags (`ecs.volcengine.io/*`), system tags (`volc:`, `sys:`)
//! and tags someone else added are never touched and never drift.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::ResourceExt;

use crate::api::{EcsInstance, EcsInstanceStatus, UpdatePolicy, MAX_COUNTER};
use crate::cloud::model::Tag;
use crate::cloud::{CloudError, ErrorClass, Instance};

/// A managed field (the metric label and the words of the condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    InstanceName,
    Description,
    Tags,
    InstanceType,
}

impl Field {
    pub const ALL: [Field; 4] = [
        Field::InstanceName,
        Field::Description,
        Field::Tags,
        Field::InstanceType,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::InstanceName => "instanceName",
            Field::Description => "description",
            Field::Tags => "tags",
            Field::InstanceType => "instanceTypeId",
        }
    }
}

/// What the spec wants of the mutable fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub name: String,
    /// `None`: the spec sets none, the VM's is left alone.
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub instance_type: String,
    pub policy: UpdatePolicy,
}

/// The mutable fields of a resource that created its VM; `None` for an adopted or
/// ObserveOnly one (the operator manages only deletion protection there).
pub fn wanted(obj: &EcsInstance) -> Option<Wanted> {
    if obj.observe_only() {
        return None;
    }
    let c = obj.spec.create.as_ref()?;
    Some(Wanted {
        name: c.instance_name.clone().unwrap_or_else(|| obj.name_any()),
        description: c.description.clone(),
        tags: c.tags.clone(),
        instance_type: c.instance_type_id.clone(),
        policy: obj.update_policy(),
    })
}

/// A tag key the operator never manages as a user tag.
pub fn reserved_tag(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    key.starts_with("ecs.volcengine.io/") || lower.starts_with("volc:") || lower.starts_with("sys:")
}

/// What differs, field by field: `(on the VM, in the spec)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    pub name: Option<(String, String)>,
    pub description: Option<(String, String)>,
    /// Tags to add or overwrite (TagResources).
    pub tags_set: Vec<Tag>,
    /// Keys the operator put on the VM and the spec no longer lists (UntagResources).
    pub tags_remove: Vec<String>,
    pub instance_type: Option<(String, String)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.fields().is_empty()
    }

    pub fn fields(&self) -> Vec<Field> {
        let mut out = Vec::new();
        if self.name.is_some() {
            out.push(Field::InstanceName);
        }
        if self.description.is_some() {
            out.push(Field::Description);
        }
        if !self.tags_set.is_empty() || !self.tags_remove.is_empty() {
            out.push(Field::Tags);
        }
        if self.instance_type.is_some() {
            out.push(Field::InstanceType);
        }
        out
    }

    /// One phrase per differing field, naming both values.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        let pair = |f: Field, (have, want): &(String, String)| {
            format!(
                "{} is {have:?} on the VM, the spec says {want:?}",
                f.as_str()
            )
        };
        if let Some(p) = &self.name {
            out.push(pair(Field::InstanceName, p));
        }
        if let Some(p) = &self.description {
            out.push(pair(Field::Description, p));
        }
        if !self.tags_set.is_empty() || !self.tags_remove.is_empty() {
            let set: Vec<String> = self
                .tags_set
                .iter()
                .map(|t| format!("{}={:?}", t.key, t.value))
                .collect();
            let mut s = String::from("tags differ:");
            if !set.is_empty() {
                s.push_str(&format!(" to set {}", set.join(", ")));
            }
            if !self.tags_remove.is_empty() {
                s.push_str(&format!(" to remove {}", self.tags_remove.join(", ")));
            }
            out.push(s);
        }
        if let Some(p) = &self.instance_type {
            out.push(pair(Field::InstanceType, p));
        }
        out
    }
}

/// Compares the VM with the spec. A value the cloud did not return (`null`) is not a
/// difference: nothing is changed on a guess.
pub fn diff(w: &Wanted, inst: &Instance, managed_keys: &[String]) -> Diff {
    let mut d = Diff::default();
    if let Some(have) = inst.instance_name.as_deref() {
        if have != w.name {
            d.name = Some((have.to_string(), w.name.clone()));
        }
    }
    if let Some(want) = &w.description {
        // An empty description comes back as "" or null (the realism of both SDKs).
        let have = inst.description.as_deref().unwrap_or("");
        if have != want {
            d.description = Some((have.to_string(), want.clone()));
        }
    }
    for (k, v) in &w.tags {
        if reserved_tag(k) {
            continue;
        }
        if inst.tag(k) != Some(v.as_str()) {
            d.tags_set.push(Tag {
                key: k.clone(),
                value: v.clone(),
            });
        }
    }
    for k in managed_keys {
        if !w.tags.contains_key(k) && !reserved_tag(k) && inst.tag(k).is_some() {
            d.tags_remove.push(k.clone());
        }
    }
    if let Some(have) = inst.instance_type_id.as_deref() {
        if have != w.instance_type {
            d.instance_type = Some((have.to_string(), w.instance_type.clone()));
        }
    }
    d
}

/// The same differences are not sent again within this long of an accepted update.
pub const UPDATE_SETTLE: Duration = Duration::from_secs(120);
/// A stop the cloud accepted that DescribeInstances does not show yet is not re-sent
/// within this long.
pub const STOP_SETTLE: Duration = Duration::from_secs(60);
/// A VM the operator stopped is started again at the latest this long after, whether or
/// not its new type showed: the operator's own downtime is bounded.
pub const RESTORE_AFTER: Duration = Duration::from_secs(15 * 60);

/// What an update decision reads: the spec, the VM, the status bookkeeping, and the
/// answers of this reconcile's calls.
#[derive(Debug, Clone, Default)]
pub struct UpdateFacts {
    pub wanted: Option<Wanted>,
    pub diff: Diff,
    /// The VM's status, type and tag keys as observed.
    pub vm_status: String,
    pub vm_type: Option<String>,
    pub vm_tag_keys: Vec<String>,
    /// How long ago the operator decided to stop the VM (`status.stoppedForUpdateAt`).
    pub stopped_for: Option<Duration>,
    /// A type change of this target was refused for good after the operator stopped the
    /// VM: it was started again and is not stopped for this type again.
    pub type_change_refused: bool,
    /// These very differences were sent and accepted moments ago (`UPDATE_SETTLE`).
    pub recently_sent: bool,
    /// `status.updateAttempt` reached its bound: no token is left.
    pub exhausted: bool,
    /// Something else holds the resource (an immutable field edited, a protection call
    /// failing): only a VM the operator stopped is started again.
    pub restore_only: bool,
    /// The answers of this reconcile's calls, in the order `plan` asks for them.
    pub attr: Option<Result<String, CloudError>>,
    pub tag: Option<Result<String, CloudError>>,
    pub untag: Option<Result<String, CloudError>>,
    pub marked_stopping: bool,
    pub stop: Option<Result<String, CloudError>>,
    pub spec: Option<Result<String, CloudError>>,
    pub start: Option<Result<String, CloudError>>,
}

/// The next update call.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateStep {
    /// ModifyInstanceAttribute with the fields that differ.
    ModifyAttribute {
        name: Option<String>,
        description: Option<String>,
    },
    /// TagResources (the spec's values win over the VM's).
    Tag(Vec<Tag>),
    /// UntagResources of keys the operator put there and the spec dropped.
    Untag(Vec<String>),
    /// Record `status.stoppedForUpdateAt` (guarded write) before StopInstances: whoever
    /// reconciles next knows the operator stopped the VM and starts it again.
    MarkStopping,
    /// StopInstances (KeepCharging, clean shutdown).
    Stop,
    ModifySpec(String),
    /// StartInstances of a VM the operator stopped.
    Start,
}

const SETTLED: [&str; 2] = ["RUNNING", "STOPPED"];

impl UpdateFacts {
    /// This reconcile's update answers, by the action that gave them, in call order: the
    /// one list the planner and the reporter read.
    pub fn answers(&self) -> [(&'static str, &Option<Result<String, CloudError>>); 6] {
        [
            ("ModifyInstanceAttribute", &self.attr),
            ("TagResources", &self.tag),
            ("UntagResources", &self.untag),
            ("StopInstances", &self.stop),
            ("ModifyInstanceSpec", &self.spec),
            ("StartInstances", &self.start),
        ]
    }

    /// The first update call of this reconcile that failed, with its action.
    pub fn failure(&self) -> Option<(&'static str, &CloudError)> {
        self.answers()
            .into_iter()
            .find_map(|(what, a)| Some((what, a.as_ref()?.as_ref().err()?)))
    }

    fn failed(&self) -> Option<&CloudError> {
        self.failure().map(|(_, e)| e)
    }

    pub fn policy(&self) -> UpdatePolicy {
        self.wanted.as_ref().map(|w| w.policy).unwrap_or_default()
    }

    /// The type change just sent was refused for good.
    pub fn spec_refused(&self) -> bool {
        matches!(&self.spec, Some(Err(e)) if refused_for_good(e))
    }

    /// The VM has been down because of us for longer than `RESTORE_AFTER`.
    pub fn overdue(&self) -> bool {
        self.stopped_for.is_some_and(|d| d >= RESTORE_AFTER)
    }

    /// The operator decided to stop this VM (it may not show STOPPED yet).
    pub fn stopped_by_us(&self) -> bool {
        self.stopped_for.is_some()
    }

    /// The operator may still change the type of a VM it stopped.
    fn type_change_allowed(&self, restore_only: bool) -> bool {
        self.diff.instance_type.is_some()
            && !self.type_change_refused
            && !self.spec_refused()
            && !self.overdue()
            && !self.exhausted
            && !restore_only
            && self.policy() != UpdatePolicy::Never
    }
}

/// `InvalidInstanceStatus`: the VM is busy; wait and try again.
pub fn bad_status(e: &CloudError) -> bool {
    e.code() == "InvalidInstanceStatus"
}

/// A refusal that says the type itself cannot be had: not the VM being busy, not a token
/// clash (`IdempotentParameterMismatch`, `InvalidClientToken.*`), not an outage,
/// throttling or a credentials problem.
pub fn refused_for_good(e: &CloudError) -> bool {
    let code = e.code();
    e.class() == ErrorClass::Terminal
        && !bad_status(e)
        && code != "IdempotentParameterMismatch"
        && !code.starts_with("InvalidClientToken")
}

/// The planner. Pure. `None`: nothing (more) to send in this reconcile.
pub fn plan(u: &UpdateFacts) -> Option<UpdateStep> {
    // A VM down because of us comes first: its type change, then its start. Nothing else
    // (a failing rename, a tag limit, a held resource) may keep it down.
    if u.stopped_by_us() && u.vm_status == "STOPPED" {
        return restore(u);
    }
    let policy = u.policy();
    if u.restore_only || u.exhausted || policy == UpdatePolicy::Never {
        return None;
    }
    if !SETTLED.contains(&u.vm_status.as_str()) || u.failed().is_some() || u.recently_sent {
        return None;
    }
    let d = &u.diff;
    if (d.name.is_some() || d.description.is_some()) && u.attr.is_none() {
        return Some(UpdateStep::ModifyAttribute {
            name: d.name.as_ref().map(|(_, w)| w.clone()),
            description: d.description.as_ref().map(|(_, w)| w.clone()),
        });
    }
    if !d.tags_set.is_empty() && u.tag.is_none() {
        return Some(UpdateStep::Tag(d.tags_set.clone()));
    }
    if !d.tags_remove.is_empty() && u.untag.is_none() {
        return Some(UpdateStep::Untag(d.tags_remove.clone()));
    }
    let (_, want) = d.instance_type.as_ref()?;
    if u.type_change_refused {
        return None;
    }
    if u.vm_status == "STOPPED" && u.spec.is_none() {
        return Some(UpdateStep::ModifySpec(want.clone()));
    }
    if u.vm_status != "RUNNING" || policy != UpdatePolicy::Restart || u.stop.is_some() {
        return None;
    }
    match u.stopped_for {
        None if !u.marked_stopping => Some(UpdateStep::MarkStopping),
        // Marked in this reconcile, or marked and not shown stopped for a while.
        None => Some(UpdateStep::Stop),
        Some(d) if d >= STOP_SETTLE => Some(UpdateStep::Stop),
        Some(_) if u.marked_stopping => Some(UpdateStep::Stop),
        Some(_) => None,
    }
}

/// A VM the operator stopped, now STOPPED: change its type if that is still wanted and
/// allowed, else start it.
fn restore(u: &UpdateFacts) -> Option<UpdateStep> {
    if u.start.is_some() {
        return None;
    }
    if u.type_change_allowed(u.restore_only) {
        let (_, want) = u.diff.instance_type.as_ref()?;
        return match &u.spec {
            None if !u.recently_sent => Some(UpdateStep::ModifySpec(want.clone())),
            // Sent: wait for the new type to show (bounded by RESTORE_AFTER); a busy or
            // failed call is tried again after the backoff.
            _ => None,
        };
    }
    Some(UpdateStep::Start)
}

/// What is left undone and why, per differing field (the condition's message).
pub fn pending_words(u: &UpdateFacts) -> Vec<String> {
    let mut out = Vec::new();
    let d = &u.diff;
    let policy = u.policy();
    if d.is_empty() {
        return out;
    }
    if u.exhausted {
        out.push(format!("not corrected: status.updateAttempt reached {MAX_COUNTER}, no ClientToken is left (delete and re-create the resource, or reset the counter)"));
        return out;
    }
    if policy == UpdatePolicy::Never {
        out.push("not corrected (spec.updatePolicy Never)".to_string());
        return out;
    }
    if !SETTLED.contains(&u.vm_status.as_str()) {
        out.push(format!(
            "waiting for the VM to leave {} before updating it",
            u.vm_status
        ));
        return out;
    }
    if u.recently_sent {
        out.push(format!(
            "an update for these differences was accepted less than {}s ago; waiting for DescribeInstances to show it",
            UPDATE_SETTLE.as_secs()
        ));
    }
    if d.instance_type.is_some() && u.spec.is_none() {
        let why = match (policy, u.type_change_refused, u.stopped_by_us()) {
            (_, true, _) => "the cloud refused this instance type; the VM was started again and is not stopped for it again until spec.create.instanceTypeId changes",
            (_, _, true) => "stopping the VM to change its type (spec.updatePolicy Restart); it is started again afterwards",
            (UpdatePolicy::WhenStopped, ..) => "the instance type changes only while the VM is STOPPED (spec.updatePolicy WhenStopped): stop the VM, or set spec.updatePolicy Restart",
            _ => "the instance type changes once the VM is STOPPED",
        };
        out.push(why.to_string());
    }
    out
}

/// Digest of a set of differences (what `status.lastUpdate` remembers). Pure.
pub fn digest(d: &Diff) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(d.describe().join("\n").as_bytes())[..8])
}

/// ClientToken of an in-place update call: one per resource, action and attempt, so a
/// retry of a lost answer re-sends it and every new attempt gets a new one.
pub fn update_token(uid: &str, action: &str, attempt: u32) -> String {
    let uid: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    format!("ecsop-{action}-{uid}-{}", attempt.min(MAX_COUNTER))
}

/// After a call's answer: a definitive one (success, or a refusal: the request was not
/// applied and will not be) moves the token to the next attempt; a lost or unknown one
/// (timeout, 5xx, `IdempotentProcessing`, throttling) keeps it, so the retry is the same
/// request and the cloud answers it once.
pub fn next_attempt<T>(st: &mut EcsInstanceStatus, r: &Result<T, CloudError>) {
    let definitive = match r {
        Ok(_) => true,
        Err(e) => matches!(e.class(), ErrorClass::Terminal | ErrorClass::Auth),
    };
    if definitive {
        let n = st.update_attempt.unwrap_or(0);
        st.update_attempt = Some(n.saturating_add(1).min(MAX_COUNTER));
    }
}

/// The managed tag keys after the spec's tags were written: the spec's keys join them.
pub fn with_spec_keys(managed: &[String], w: &Wanted) -> Vec<String> {
    let mut keys: Vec<String> = managed.to_vec();
    for k in w.tags.keys() {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    keys.sort();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::model::Action;

    fn tag(k: &str, v: &str) -> Tag {
        Tag {
            key: k.into(),
            value: v.into(),
        }
    }

    fn vm(name: &str, ty: &str, tags: &[(&str, &str)]) -> Instance {
        Instance {
            instance_id: "i-1".into(),
            instance_name: Some(name.into()),
            instance_type_id: Some(ty.into()),
            status: "RUNNING".into(),
            tags: tags.iter().map(|(k, v)| tag(k, v)).collect(),
            ..Default::default()
        }
    }

    fn want(policy: UpdatePolicy) -> Wanted {
        Wanted {
            name: "web".into(),
            description: None,
            tags: [("team".to_string(), "a".to_string())].into(),
            instance_type: "ecs.g3i.large".into(),
            policy,
        }
    }

    fn err(code: &str) -> CloudError {
        CloudError::Api {
            action: Action::ModifyInstanceSpec,
            code: code.into(),
            code_n: None,
            message: "m".into(),
            status: 400,
            request_id: "req-1".into(),
        }
    }

    #[test]
    fn diff_names_only_managed_fields() {
        let w = want(UpdatePolicy::WhenStopped);
        let synced = vm("web", "ecs.g3i.large", &[("team", "a")]);
        assert!(diff(&w, &synced, &[]).is_empty());
        // Someone else's tag, ownership and system tags: never drift.
        let extra = vm(
            "web",
            "ecs.g3i.large",
            &[
                ("team", "a"),
                ("cost-center", "x"),
                ("ecs.volcengine.io/uid", "u"),
                ("volc:auto", "1"),
            ],
        );
        assert!(diff(&w, &extra, &[]).is_empty());
        // A key the operator put there and the spec dropped is removed; others stay.
        let d = diff(&w, &extra, &["team".into(), "cost-center".into()]);
        assert_eq!(d.tags_remove, vec!["cost-center".to_string()]);
        // Changed in the console.
        let console = vm("renamed", "ecs.g3i.xlarge", &[("team", "b")]);
        let d = diff(&w, &console, &[]);
        assert_eq!(
            d.fields(),
            vec![Field::InstanceName, Field::Tags, Field::InstanceType]
        );
        assert_eq!(d.tags_set, vec![tag("team", "a")]);
        assert!(
            d.describe()[0].contains(r#"instanceName is "renamed" on the VM, the spec says "web""#)
        );
        // A field the cloud did not return is not a difference.
        let mut unknown = vm("web", "x", &[("team", "a")]);
        unknown.instance_name = None;
        unknown.instance_type_id = None;
        assert!(diff(&w, &unknown, &[]).is_empty());
        // Description: managed only when the spec sets one; null reads as "".
        let mut w2 = w.clone();
        w2.description = Some(String::new());
        assert!(diff(&w2, &synced, &[]).is_empty());
        w2.description = Some("db".into());
        assert_eq!(
            diff(&w2, &synced, &[]).description,
            Some((String::new(), "db".into()))
        );
    }

    fn facts(policy: UpdatePolicy, status: &str, d: Diff) -> UpdateFacts {
        UpdateFacts {
            wanted: Some(want(policy)),
            diff: d,
            vm_status: status.into(),
            ..Default::default()
        }
    }

    fn type_diff() -> Diff {
        Diff {
            instance_type: Some(("ecs.g3i.large".into(), "ecs.g3i.xlarge".into())),
            ..Default::default()
        }
    }

    /// One row per rule of the planner.
    #[test]
    fn update_plan_table() {
        use UpdatePolicy::*;
        use UpdateStep as S;
        let renamed = Diff {
            name: Some(("old".into(), "web".into())),
            ..Default::default()
        };
        let tags = Diff {
            tags_set: vec![tag("team", "a")],
            tags_remove: vec!["old".into()],
            ..Default::default()
        };
        let both = Diff {
            instance_type: type_diff().instance_type,
            ..renamed.clone()
        };
        let with = |mut u: UpdateFacts, f: &dyn Fn(&mut UpdateFacts)| {
            f(&mut u);
            u
        };
        let ok = || Some(Ok("req".to_string()));
        let secs = |s: u64| Some(Duration::from_secs(s));
        let xl = || Some(S::ModifySpec("ecs.g3i.xlarge".into()));
        #[rustfmt::skip]
        let rows: Vec<(&str, UpdateFacts, Option<UpdateStep>)> = vec![
            ("in sync: nothing",                       facts(WhenStopped, "RUNNING", Diff::default()), None),
            ("renamed: ModifyInstanceAttribute",       facts(WhenStopped, "RUNNING", renamed.clone()), Some(S::ModifyAttribute { name: Some("web".into()), description: None })),
            ("renamed, Never: report only",            facts(Never, "RUNNING", renamed.clone()), None),
            ("renamed while STOPPING: wait",           facts(Restart, "STOPPING", renamed.clone()), None),
            ("renamed, sent: done",                    with(facts(WhenStopped, "RUNNING", renamed.clone()), &|u| u.attr = ok()), None),
            ("renamed, refused: stop planning",        with(facts(WhenStopped, "RUNNING", renamed.clone()), &|u| u.attr = Some(Err(err("InvalidInstanceName.Malformed")))), None),
            ("renamed, accepted moments ago: wait",    with(facts(WhenStopped, "RUNNING", renamed.clone()), &|u| u.recently_sent = true), None),
            ("renamed, no token left: nothing",        with(facts(WhenStopped, "RUNNING", renamed.clone()), &|u| u.exhausted = true), None),
            ("renamed, immutable field edited",        with(facts(WhenStopped, "RUNNING", renamed.clone()), &|u| u.restore_only = true), None),
            ("tags: TagResources first",               facts(WhenStopped, "RUNNING", tags.clone()), Some(S::Tag(vec![tag("team", "a")]))),
            ("tags: then UntagResources",              with(facts(WhenStopped, "RUNNING", tags), &|u| u.tag = ok()), Some(S::Untag(vec!["old".into()]))),
            ("type, RUNNING, WhenStopped: wait",       facts(WhenStopped, "RUNNING", type_diff()), None),
            ("type, STOPPED, WhenStopped: change",     facts(WhenStopped, "STOPPED", type_diff()), xl()),
            ("type refused, user-stopped: not again",  with(facts(WhenStopped, "STOPPED", type_diff()), &|u| u.type_change_refused = true), None),
            ("type, STOPPED, Never: report only",      facts(Never, "STOPPED", type_diff()), None),
            ("type, RUNNING, Restart: mark first",     facts(Restart, "RUNNING", type_diff()), Some(S::MarkStopping)),
            ("type, RUNNING, Restart, marked: stop",   with(facts(Restart, "RUNNING", type_diff()), &|u| u.marked_stopping = true), Some(S::Stop)),
            ("type, Restart, stop sent: poll",         with(facts(Restart, "RUNNING", type_diff()), &|u| { u.marked_stopping = true; u.stop = ok(); }), None),
            ("stop not shown yet: wait, no re-send",   with(facts(Restart, "RUNNING", type_diff()), &|u| u.stopped_for = secs(20)), None),
            ("stop not shown after a minute: re-send", with(facts(Restart, "RUNNING", type_diff()), &|u| u.stopped_for = secs(61)), Some(S::Stop)),
            ("type, STOPPING: wait",                   with(facts(Restart, "STOPPING", type_diff()), &|u| u.stopped_for = secs(5)), None),
            ("type, STOPPED by us: change",            with(facts(Restart, "STOPPED", type_diff()), &|u| u.stopped_for = secs(5)), xl()),
            ("stopped by us: type before the rename",  with(facts(Restart, "STOPPED", both.clone()), &|u| u.stopped_for = secs(5)), xl()),
            ("stopped by us, rename refused: change",  with(facts(Restart, "STOPPED", both.clone()), &|u| { u.stopped_for = secs(5); u.attr = Some(Err(err("InvalidDescription.Malformed"))); }), xl()),
            ("stopped by us, held: start",             with(facts(Restart, "STOPPED", both), &|u| { u.stopped_for = secs(5); u.restore_only = true; }), Some(S::Start)),
            ("type changed, not yet seen: poll",       with(facts(Restart, "STOPPED", type_diff()), &|u| { u.stopped_for = secs(5); u.spec = ok(); }), None),
            ("type sent moments ago: no re-send",      with(facts(Restart, "STOPPED", type_diff()), &|u| { u.stopped_for = secs(50); u.recently_sent = true; }), None),
            ("type never shows: start after 15 min",   with(facts(Restart, "STOPPED", type_diff()), &|u| { u.stopped_for = Some(RESTORE_AFTER); u.recently_sent = true; }), Some(S::Start)),
            ("type seen, stopped by us: start",        with(facts(Restart, "STOPPED", Diff::default()), &|u| u.stopped_for = secs(5)), Some(S::Start)),
            ("type refused, stopped by us: start",     with(facts(Restart, "STOPPED", type_diff()), &|u| { u.stopped_for = secs(5); u.spec = Some(Err(err("InvalidInstanceTypeId.Malformed"))); }), Some(S::Start)),
            ("type busy, stopped by us: retry later",  with(facts(Restart, "STOPPED", type_diff()), &|u| { u.stopped_for = secs(5); u.spec = Some(Err(err("InvalidInstanceStatus"))); }), None),
            ("token clash, stopped by us: retry later", with(facts(Restart, "STOPPED", type_diff()), &|u| { u.stopped_for = secs(5); u.spec = Some(Err(err("IdempotentParameterMismatch"))); }), None),
            ("type refused before: not stopped again", with(facts(Restart, "RUNNING", type_diff()), &|u| u.type_change_refused = true), None),
            ("refused before, stopped by us: start",   with(facts(Restart, "STOPPED", type_diff()), &|u| { u.type_change_refused = true; u.stopped_for = secs(5); }), Some(S::Start)),
            ("stopped by us, now Never: start",        with(facts(Never, "STOPPED", type_diff()), &|u| u.stopped_for = secs(5)), Some(S::Start)),
            ("stopped by us, type reverted: start",    with(facts(WhenStopped, "STOPPED", Diff::default()), &|u| u.stopped_for = secs(5)), Some(S::Start)),
            ("started: done",                          with(facts(Restart, "STOPPED", Diff::default()), &|u| { u.stopped_for = secs(5); u.start = ok(); }), None),
            ("stopped by the user: never started",     facts(Restart, "STOPPED", Diff::default()), None),
        ];
        for (what, u, want) in rows {
            assert_eq!(plan(&u), want, "{what}");
        }
    }

    #[test]
    fn tokens_and_attempts() {
        assert_eq!(update_token("u-1", "attr", 3), "ecsop-attr-u-1-3");
        let longest = update_token(&"x".repeat(100), "start", u32::MAX);
        assert!(longest.len() <= 64, "{longest}");
        let mut st = EcsInstanceStatus::default();
        next_attempt::<()>(&mut st, &Ok(()));
        assert_eq!(st.update_attempt, Some(1));
        next_attempt::<()>(&mut st, &Err(err("InvalidInstanceStatus")));
        assert_eq!(st.update_attempt, Some(2));
        // An answer that does not say whether it was applied keeps the token.
        let unknown = CloudError::Api {
            action: Action::ModifyInstanceSpec,
            code: "InternalError".into(),
            code_n: None,
            message: "m".into(),
            status: 500,
            request_id: "r".into(),
        };
        next_attempt::<()>(&mut st, &Err(unknown));
        assert_eq!(st.update_attempt, Some(2), "a 5xx keeps its token");
        let lost = CloudError::Timeout {
            action: Action::ModifyInstanceSpec,
            after: std::time::Duration::from_secs(1),
        };
        next_attempt::<()>(&mut st, &Err(lost));
        assert_eq!(st.update_attempt, Some(2), "a lost answer keeps its token");
        let w = want(UpdatePolicy::Never);
        assert_eq!(
            with_spec_keys(&["z".into()], &w),
            vec!["team".to_string(), "z".to_string()]
        );
    }

    #[test]
    fn pending_words_say_why() {
        use UpdatePolicy::*;
        assert!(pending_words(&facts(Never, "RUNNING", type_diff()))[0].contains("Never"));
        assert!(
            pending_words(&facts(WhenStopped, "RUNNING", type_diff()))[0]
                .contains("only while the VM is STOPPED")
        );
        assert!(pending_words(&facts(Restart, "STOPPING", type_diff()))[0].contains("STOPPING"));
        let mut u = facts(WhenStopped, "RUNNING", type_diff());
        u.exhausted = true;
        assert!(pending_words(&u)[0].contains("no ClientToken is left"));
        assert!(pending_words(&facts(Restart, "RUNNING", Diff::default())).is_empty());
    }
}
