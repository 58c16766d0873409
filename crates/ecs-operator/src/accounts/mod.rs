//! Which Volcengine account acts for a resource, and whether it may.
//!
//! Precedence: `spec.accountRef`, else the namespace annotation `ecs.volcengine.io/account`,
//! else the operator's own credentials (the `default` account, its `VOLCENGINE_*`
//! environment). A named `EcsAccount` must exist, allow the resource's namespace (by name or
//! label selector; neither set allows none) and hold a usable key. Once a resource may have
//! acted in an account (`status.account`, or a VM recorded without it: the default), that
//! account is kept: naming another is refused, since a VM cannot move between accounts and
//! a deletion sent to the wrong one would find nothing and leak the VM.
//!
//! `decide` is pure and tested row by row; `registry` holds the accounts' clients and
//! `manager` keeps them in step with the `EcsAccount`s and their Secrets.

pub mod factory;
pub mod manager;
pub mod registry;
pub mod secret;

use std::collections::BTreeMap;

use kube::core::{Selector, SelectorExt};

use crate::api::{AllowedNamespaces, EcsInstance, EcsInstanceStatus};
use crate::controller::reasons::Reason;

/// The metric label and log name of the operator's own credentials. No `EcsAccount` may be
/// called this (a CEL rule on the CRD), so the label is never ambiguous.
pub const DEFAULT_ACCOUNT: &str = "default";

/// An account, as a resource names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccountName {
    /// The operator's own credentials (environment).
    Default,
    /// An `EcsAccount`.
    Named(String),
}

impl AccountName {
    pub fn label(&self) -> &str {
        match self {
            AccountName::Default => DEFAULT_ACCOUNT,
            AccountName::Named(n) => n,
        }
    }

    /// How `status.account` records it (the default account as `default`, a name no
    /// `EcsAccount` may take).
    pub fn as_status(&self) -> String {
        self.label().to_string()
    }
}

impl std::fmt::Display for AccountName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccountName::Default => f.write_str("the operator's default account"),
            AccountName::Named(n) => write!(f, "EcsAccount {n}"),
        }
    }
}

/// The account a resource asks for. Bound (`pinned`): its own account, unless
/// `spec.accountRef` names another (then `decide` refuses it); a namespace annotation added
/// later moves only resources that never acted. Unbound: spec, then the namespace
/// annotation, then the default. An empty name counts as unset.
pub fn wanted_given(
    obj: &EcsInstance,
    pinned: Option<&AccountName>,
    ns_annotation: Option<&str>,
) -> AccountName {
    let spec = obj
        .spec
        .account_ref
        .as_ref()
        .map(|r| r.name.trim())
        .filter(|n| !n.is_empty());
    match (pinned, spec) {
        (Some(p), None) => p.clone(),
        _ => wanted(obj, ns_annotation),
    }
}

/// The account an unbound resource asks for: spec, then namespace annotation, then the
/// default. An empty name counts as unset.
pub fn wanted(obj: &EcsInstance, ns_annotation: Option<&str>) -> AccountName {
    obj.spec
        .account_ref
        .as_ref()
        .map(|r| r.name.as_str())
        .or(ns_annotation)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| AccountName::Named(n.to_string()))
        .unwrap_or(AccountName::Default)
}

/// The account the resource is bound to, if any: the one recorded in status, or, for a
/// resource that may have acted before accounts existed (a VM recorded, a creation
/// requested, a claim), the default.
pub fn pinned(status: Option<&EcsInstanceStatus>) -> Option<AccountName> {
    let s = status?;
    match s.account.as_deref().filter(|n| !n.is_empty()) {
        Some(DEFAULT_ACCOUNT) => return Some(AccountName::Default),
        Some(n) => return Some(AccountName::Named(n.to_string())),
        None => {}
    }
    let acted =
        s.instance_id.is_some() || s.create_requested == Some(true) || s.ownership.is_some();
    acted.then_some(AccountName::Default)
}

/// What the resolver knows of one `EcsAccount`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountView {
    pub allowed: AllowedNamespaces,
    /// `Err`: why its key cannot be used now (the Secret is missing, malformed, ...).
    pub usable: Result<(), String>,
    /// The `EcsAccount` is being deleted: resources bound to it go on (their deletions must
    /// complete), no new one binds to it.
    pub deleting: bool,
}

/// What is known of the resource's namespace.
#[derive(Debug, Clone, Copy)]
pub enum NsLabels<'a> {
    Known(&'a BTreeMap<String, String>),
    /// Not known yet (the namespace cache has not synced, or lost it): no decision.
    Unknown,
}

/// Why a resource may not act in an account. Each is a condition reason and an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound {
        name: String,
    },
    NotAllowed {
        name: String,
        namespace: String,
    },
    Unverified {
        name: String,
        namespace: String,
    },
    Changed {
        pinned: AccountName,
        wanted: AccountName,
    },
    NotReady {
        name: String,
        why: String,
    },
}

impl Refusal {
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::NotFound { .. } => Reason::AccountNotFound,
            Refusal::NotAllowed { .. } => Reason::AccountNotAllowed,
            Refusal::Unverified { .. } => Reason::AccountUnverified,
            Refusal::Changed { .. } => Reason::AccountChanged,
            Refusal::NotReady { .. } => Reason::AccountNotReady,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::NotFound { name } => format!("EcsAccount {name} does not exist: this resource makes no cloud call until it does (or names another account)"),
            Refusal::NotAllowed { name, namespace } => format!("EcsAccount {name} does not allow namespace {namespace} (spec.allowedNamespaces): this resource makes no cloud call with it"),
            Refusal::Unverified { name, namespace } => format!("whether EcsAccount {name} allows namespace {namespace} is not known yet (namespace not read): no cloud call until it is"),
            Refusal::Changed { pinned, wanted } => format!("this resource acts in {pinned} (status.account), where its VM lives, but now names {wanted}: a VM cannot move between accounts, so nothing is done. Name {pinned} again, or create a new resource for the other account"),
            Refusal::NotReady { name, why } => format!("EcsAccount {name} has no usable key ({why}): no cloud call until its Secret is fixed"),
        }
    }

    /// Whether retrying soon can change the answer without a person acting.
    pub fn transient(&self) -> bool {
        matches!(self, Refusal::Unverified { .. })
    }
}

/// Whether `namespace` with these labels may use an account that allows `allowed`.
pub fn allows(
    allowed: &AllowedNamespaces,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    if allowed.names.iter().any(|n| n == namespace) {
        return true;
    }
    // An invalid selector (the schema cannot rule out every bad operator) allows nothing.
    allowed
        .selector
        .clone()
        .and_then(|s| Selector::try_from(s).ok())
        .is_some_and(|s| s.matches(labels))
}

/// The account that acts for a resource, or why none may. Pure.
///
/// `view`: the named account's view, `None` when no such `EcsAccount` exists; unused for the
/// default account, which every namespace the operator watches may use.
pub fn decide(
    wanted: &AccountName,
    pinned: Option<&AccountName>,
    namespace: &str,
    view: Option<&AccountView>,
    labels: NsLabels<'_>,
) -> Result<AccountName, Refusal> {
    if let Some(p) = pinned.filter(|p| *p != wanted) {
        return Err(Refusal::Changed {
            pinned: p.clone(),
            wanted: wanted.clone(),
        });
    }
    let AccountName::Named(name) = wanted else {
        return Ok(AccountName::Default);
    };
    let Some(view) = view else {
        return Err(Refusal::NotFound { name: name.clone() });
    };
    let NsLabels::Known(labels) = labels else {
        return Err(Refusal::Unverified {
            name: name.clone(),
            namespace: namespace.to_string(),
        });
    };
    if !allows(&view.allowed, namespace, labels) {
        return Err(Refusal::NotAllowed {
            name: name.clone(),
            namespace: namespace.to_string(),
        });
    }
    if let Err(why) = &view.usable {
        return Err(Refusal::NotReady {
            name: name.clone(),
            why: why.clone(),
        });
    }
    if view.deleting && pinned.is_none() {
        return Err(Refusal::NotReady {
            name: name.clone(),
            why: "the EcsAccount is being deleted; no new resource may start using it".into(),
        });
    }
    Ok(wanted.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AccountRef, EcsInstanceSpec, Ownership};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn named(n: &str) -> AccountName {
        AccountName::Named(n.into())
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn view(
        names: &[&str],
        selector: Option<LabelSelector>,
        usable: Result<(), &str>,
    ) -> AccountView {
        AccountView {
            allowed: AllowedNamespaces {
                names: names.iter().map(|s| s.to_string()).collect(),
                selector,
            },
            usable: usable.map_err(str::to_string),
            deleting: false,
        }
    }

    #[test]
    fn precedence_spec_then_namespace_annotation_then_default() {
        let mut o = EcsInstance::new("vm", EcsInstanceSpec::default());
        assert_eq!(wanted(&o, None), AccountName::Default);
        assert_eq!(wanted(&o, Some("team-b")), named("team-b"));
        assert_eq!(wanted(&o, Some("  ")), AccountName::Default);
        o.spec.account_ref = Some(AccountRef {
            name: "team-a".into(),
        });
        assert_eq!(wanted(&o, Some("team-b")), named("team-a"));
        assert_eq!(wanted(&o, None), named("team-a"));
    }

    #[test]
    fn a_resource_that_may_have_acted_is_pinned() {
        assert_eq!(pinned(None), None);
        let mut s = EcsInstanceStatus::default();
        assert_eq!(pinned(Some(&s)), None, "never acted: not bound");
        s.create_requested = Some(true);
        assert_eq!(
            pinned(Some(&s)),
            Some(AccountName::Default),
            "created before accounts existed"
        );
        s = EcsInstanceStatus {
            ownership: Some(Ownership::Refused),
            ..Default::default()
        };
        assert_eq!(pinned(Some(&s)), Some(AccountName::Default));
        s = EcsInstanceStatus {
            instance_id: Some("i-1".into()),
            ..Default::default()
        };
        assert_eq!(pinned(Some(&s)), Some(AccountName::Default));
        s.account = Some("team-a".into());
        assert_eq!(pinned(Some(&s)), Some(named("team-a")));
        s = EcsInstanceStatus {
            account: Some("team-a".into()),
            ..Default::default()
        };
        assert_eq!(
            pinned(Some(&s)),
            Some(named("team-a")),
            "recorded before any call"
        );
    }

    /// One row per branch of `decide`.
    #[test]
    fn decision_table() {
        let team = labels(&[("team", "a")]);
        let other = labels(&[("team", "b")]);
        let sel = |op: &str, v: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: op.into(),
                values: Some(v.iter().map(|s| s.to_string()).collect()),
            }]),
            ..Default::default()
        };
        let by_label = LabelSelector {
            match_labels: Some(labels(&[("team", "a")])),
            ..Default::default()
        };
        let listed = view(&["ns-a"], None, Ok(()));
        let labelled = view(&[], Some(by_label.clone()), Ok(()));
        let expr = view(&[], Some(sel("In", &["a", "c"])), Ok(()));
        let bad_op = view(&[], Some(sel("Bogus", &["a"])), Ok(()));
        let nobody = view(&[], None, Ok(()));
        let everyone = view(&[], Some(LabelSelector::default()), Ok(()));
        let broken = view(&["ns-a"], None, Err("Secret ecs/a not found"));
        let leaving = AccountView {
            deleting: true,
            ..listed.clone()
        };
        let d = AccountName::Default;
        let a = named("a");
        type Row<'a> = (
            AccountName,
            Option<AccountName>,
            &'a str,
            Option<&'a AccountView>,
            NsLabels<'a>,
            Result<AccountName, Reason>,
        );
        let rows: Vec<Row> = vec![
            // The default account: every watched namespace, no view needed.
            (
                d.clone(),
                None,
                "ns-x",
                None,
                NsLabels::Unknown,
                Ok(d.clone()),
            ),
            (
                d.clone(),
                Some(d.clone()),
                "ns-x",
                None,
                NsLabels::Unknown,
                Ok(d.clone()),
            ),
            // Bound to one account, naming another: refused either way round.
            (
                a.clone(),
                Some(d.clone()),
                "ns-a",
                Some(&listed),
                NsLabels::Known(&team),
                Err(Reason::AccountChanged),
            ),
            (
                d.clone(),
                Some(a.clone()),
                "ns-a",
                None,
                NsLabels::Known(&team),
                Err(Reason::AccountChanged),
            ),
            (
                named("b"),
                Some(a.clone()),
                "ns-a",
                Some(&listed),
                NsLabels::Known(&team),
                Err(Reason::AccountChanged),
            ),
            // A named account that does not exist.
            (
                a.clone(),
                None,
                "ns-a",
                None,
                NsLabels::Known(&team),
                Err(Reason::AccountNotFound),
            ),
            // Namespace not known: no decision.
            (
                a.clone(),
                None,
                "ns-a",
                Some(&listed),
                NsLabels::Unknown,
                Err(Reason::AccountUnverified),
            ),
            // Allowed by name, by matchLabels, by an expression.
            (
                a.clone(),
                None,
                "ns-a",
                Some(&listed),
                NsLabels::Known(&other),
                Ok(a.clone()),
            ),
            (
                a.clone(),
                Some(a.clone()),
                "ns-a",
                Some(&listed),
                NsLabels::Known(&other),
                Ok(a.clone()),
            ),
            (
                a.clone(),
                None,
                "ns-z",
                Some(&labelled),
                NsLabels::Known(&team),
                Ok(a.clone()),
            ),
            (
                a.clone(),
                None,
                "ns-z",
                Some(&expr),
                NsLabels::Known(&team),
                Ok(a.clone()),
            ),
            // Not allowed: another name, other labels, nothing set, a bad selector.
            (
                a.clone(),
                None,
                "ns-b",
                Some(&listed),
                NsLabels::Known(&team),
                Err(Reason::AccountNotAllowed),
            ),
            (
                a.clone(),
                None,
                "ns-z",
                Some(&labelled),
                NsLabels::Known(&other),
                Err(Reason::AccountNotAllowed),
            ),
            (
                a.clone(),
                None,
                "ns-z",
                Some(&expr),
                NsLabels::Known(&other),
                Err(Reason::AccountNotAllowed),
            ),
            (
                a.clone(),
                None,
                "ns-a",
                Some(&nobody),
                NsLabels::Known(&team),
                Err(Reason::AccountNotAllowed),
            ),
            (
                a.clone(),
                None,
                "ns-a",
                Some(&bad_op),
                NsLabels::Known(&team),
                Err(Reason::AccountNotAllowed),
            ),
            // `{}` matches every namespace, as in Kubernetes.
            (
                a.clone(),
                None,
                "ns-q",
                Some(&everyone),
                NsLabels::Known(&other),
                Ok(a.clone()),
            ),
            // Allowed, but its key is not usable.
            (
                a.clone(),
                None,
                "ns-a",
                Some(&broken),
                NsLabels::Known(&team),
                Err(Reason::AccountNotReady),
            ),
            // Being deleted: those bound to it go on, no new one binds.
            (
                a.clone(),
                None,
                "ns-a",
                Some(&leaving),
                NsLabels::Known(&team),
                Err(Reason::AccountNotReady),
            ),
            (
                a.clone(),
                Some(a.clone()),
                "ns-a",
                Some(&leaving),
                NsLabels::Known(&team),
                Ok(a.clone()),
            ),
            // Not allowed wins over not ready: the message must not reveal the key's state.
            (
                a.clone(),
                None,
                "ns-b",
                Some(&broken),
                NsLabels::Known(&team),
                Err(Reason::AccountNotAllowed),
            ),
        ];
        for (i, (w, p, ns, v, l, want)) in rows.into_iter().enumerate() {
            let got = decide(&w, p.as_ref(), ns, v, l).map_err(|r| r.reason());
            assert_eq!(got, want, "row {i}");
        }
    }
}
