//! Every condition reason, Event reason and `ecs_operator_deletions_held{reason}` label the
//! controller writes, as one enum. The strings are part of the interface (README, e2e tests,
//! alerts): `as_str` is the only place they are spelled, and the table test pins them.

use crate::cloud::ErrorClass;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // Deletion path.
    Deleting,
    DeletionRequested,
    Deleted,
    AlreadyGone,
    DeletionAccepted,
    DeletionPending,
    DeletionRefused,
    DeletionReverted,
    TerminationTimeout,
    DeletionAttemptsExhausted,
    InstanceAppearing,
    NotFoundReplayed,
    OwnershipUnproven,
    ReleasedWithoutVm,
    ReleasedWithoutDelete,
    ReleaseAnnotationIgnored,
    Orphaned,
    UntagUnconfirmed,
    CrdDeleting,
    // Policy doubts (`policy::Doubt`).
    CrdUnreadable,
    InvalidDeletionPolicy,
    NamespaceNotFound,
    NamespaceUnreadable,
    // A failed cloud call, by `ErrorClass` (`ErrorClass::condition_reason`).
    CloudError,
    CloudThrottled,
    CloudAuthError,
    // Apply path.
    DeletionProtectionSet,
    InstanceRunning,
    InstanceNotRunning,
    InstanceTransitioning,
    InstanceNotFound,
    Observed,
    Ready,
    ImmutableFieldChanged,
    Recreating,
    ManagementConflict,
    Claimed,
    OwnershipTransferred,
    InvalidSpec,
    Adopted,
    UserDataNotFound,
    UserDataForbidden,
    UserDataTooLarge,
    Creating,
    Created,
    // Accounts (`accounts::Refusal`), pause and management policy.
    AccountNotFound,
    AccountNotAllowed,
    AccountUnverified,
    AccountChanged,
    AccountNotReady,
    Paused,
    ObserveOnly,
    // In-place updates and outputs.
    Drifted,
    Updated,
    ConnectionInfoConflict,
    ConnectionInfoFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        use Reason::*;
        match self {
            Deleting => "Deleting",
            DeletionRequested => "DeletionRequested",
            Deleted => "Deleted",
            AlreadyGone => "AlreadyGone",
            DeletionAccepted => "DeletionAccepted",
            DeletionPending => "DeletionPending",
            DeletionRefused => "DeletionRefused",
            DeletionReverted => "DeletionReverted",
            TerminationTimeout => "TerminationTimeout",
            DeletionAttemptsExhausted => "DeletionAttemptsExhausted",
            InstanceAppearing => "InstanceAppearing",
            NotFoundReplayed => "NotFoundReplayed",
            OwnershipUnproven => "OwnershipUnproven",
            ReleasedWithoutVm => "ReleasedWithoutVM",
            ReleasedWithoutDelete => "ReleasedWithoutDelete",
            ReleaseAnnotationIgnored => "ReleaseAnnotationIgnored",
            Orphaned => "Orphaned",
            UntagUnconfirmed => "UntagUnconfirmed",
            CrdDeleting => "CrdDeleting",
            CrdUnreadable => "CrdUnreadable",
            InvalidDeletionPolicy => "InvalidDeletionPolicy",
            NamespaceNotFound => "NamespaceNotFound",
            NamespaceUnreadable => "NamespaceUnreadable",
            CloudError => "CloudError",
            CloudThrottled => "CloudThrottled",
            CloudAuthError => "CloudAuthError",
            DeletionProtectionSet => "DeletionProtectionSet",
            InstanceRunning => "InstanceRunning",
            InstanceNotRunning => "InstanceNotRunning",
            InstanceTransitioning => "InstanceTransitioning",
            InstanceNotFound => "InstanceNotFound",
            Observed => "Observed",
            Ready => "Ready",
            ImmutableFieldChanged => "ImmutableFieldChanged",
            Recreating => "Recreating",
            ManagementConflict => "ManagementConflict",
            Claimed => "Claimed",
            OwnershipTransferred => "OwnershipTransferred",
            InvalidSpec => "InvalidSpec",
            Adopted => "Adopted",
            UserDataNotFound => "UserDataNotFound",
            UserDataForbidden => "UserDataForbidden",
            UserDataTooLarge => "UserDataTooLarge",
            Creating => "Creating",
            Created => "Created",
            AccountNotFound => "AccountNotFound",
            AccountNotAllowed => "AccountNotAllowed",
            AccountUnverified => "AccountUnverified",
            AccountChanged => "AccountChanged",
            AccountNotReady => "AccountNotReady",
            Paused => "Paused",
            ObserveOnly => "ObserveOnly",
            Drifted => "Drifted",
            Updated => "Updated",
            ConnectionInfoConflict => "ConnectionInfoConflict",
            ConnectionInfoFailed => "ConnectionInfoFailed",
        }
    }

    /// An Event with this reason is the only record of what happened: the resource is
    /// released (and gone, its conditions with it) right after it. Such Events are never
    /// dropped from a full Event backlog (`status::event`).
    pub fn is_release_record(self) -> bool {
        use Reason::*;
        matches!(
            self,
            Deleted
                | AlreadyGone
                | DeletionAccepted
                | ReleasedWithoutVm
                | ReleasedWithoutDelete
                | Orphaned
                | ObserveOnly
        )
    }

    /// The reason for a failed cloud call of this class.
    pub fn cloud(class: ErrorClass) -> Reason {
        match class {
            ErrorClass::Auth => Reason::CloudAuthError,
            ErrorClass::Throttled => Reason::CloudThrottled,
            ErrorClass::Retryable | ErrorClass::Terminal => Reason::CloudError,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Kubernetes condition types the controller sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    Ready,
    Synced,
    Stalled,
    Reconciling,
}

impl Cond {
    pub fn as_str(self) -> &'static str {
        match self {
            Cond::Ready => "Ready",
            Cond::Synced => "Synced",
            Cond::Stalled => "Stalled",
            Cond::Reconciling => "Reconciling",
        }
    }
}

/// An Event to publish: Warning or Normal, reason, action, note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: Reason,
    pub action: &'static str,
    pub note: String,
}

impl EventNote {
    pub fn normal(reason: Reason, action: &'static str, note: String) -> Self {
        Self {
            warning: false,
            reason,
            action,
            note,
        }
    }

    pub fn warning(reason: Reason, action: &'static str, note: String) -> Self {
        Self {
            warning: true,
            reason,
            action,
            note,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_reasons_match_the_error_class_strings() {
        use ErrorClass::*;
        for c in [Auth, Throttled, Retryable, Terminal] {
            assert_eq!(Reason::cloud(c).as_str(), c.condition_reason());
        }
    }

    #[test]
    fn reason_strings_are_the_documented_ones() {
        // Spelled out once more: a renamed variant must not change what users match on.
        use Reason::*;
        let rows = [
            (ReleasedWithoutVm, "ReleasedWithoutVM"),
            (DeletionAttemptsExhausted, "DeletionAttemptsExhausted"),
            (InvalidDeletionPolicy, "InvalidDeletionPolicy"),
            (TerminationTimeout, "TerminationTimeout"),
            (InstanceAppearing, "InstanceAppearing"),
            (NotFoundReplayed, "NotFoundReplayed"),
            (UntagUnconfirmed, "UntagUnconfirmed"),
            (ManagementConflict, "ManagementConflict"),
            (Observed, "Observed"),
            (AccountNotAllowed, "AccountNotAllowed"),
            (AccountChanged, "AccountChanged"),
            (AccountNotReady, "AccountNotReady"),
            (Paused, "Paused"),
            (ObserveOnly, "ObserveOnly"),
            (Drifted, "Drifted"),
            (Updated, "Updated"),
            (ConnectionInfoConflict, "ConnectionInfoConflict"),
        ];
        for (r, s) in rows {
            assert_eq!(r.as_str(), s);
            assert_eq!(r.to_string(), s);
        }
    }
}
