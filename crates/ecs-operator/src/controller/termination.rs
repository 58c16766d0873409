//! wait-for-termination: after DeleteInstances was accepted, what the next DescribeInstances
//! means for the resource. Pure: no cloud, no Kubernetes, no clock.
//!
//! An accepted deletion is not a deleted VM: the cloud may roll it back (the VM returns to
//! RUNNING, STOPPED or ERROR). Only DELETING means the deletion is still under way, so any
//! other listed state is a deletion that did not happen and must be sent again, as a new
//! request: the accepted answer is recorded under the old ClientToken, and re-sending that
//! token would only replay "accepted".

use std::time::Duration;

/// What DescribeInstances showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// Not listed: the VM is gone.
    Gone,
    /// Listed, in this state.
    Listed(&'a str),
    /// The call failed: nothing is known.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The VM is gone: the finalizer may go.
    Release,
    /// Still DELETING (or unreadable) within the bound: look again later.
    Wait,
    /// The deletion was rolled back: send DeleteInstances again with a new attempt (token),
    /// after a fresh ownership proof.
    Resend,
    /// Past the bound and not known to be gone: keep the finalizer, keep looking, and report
    /// `Stalled=True`.
    Stalled,
}

pub const DELETING: &str = "DELETING";

/// `waited`: time since DeleteInstances was accepted; `bound`: `--termination-timeout-secs`.
pub fn decide(seen: Seen<'_>, waited: Duration, bound: Duration) -> Next {
    match seen {
        Seen::Gone => Next::Release,
        // A listing without a status (`"Status": null` reads as empty) says nothing of a
        // rollback: wait as for an unknown answer, never re-send on it.
        Seen::Listed(status) if status != DELETING && !status.is_empty() => Next::Resend,
        Seen::Listed(_) | Seen::Unknown if waited > bound => Next::Stalled,
        Seen::Listed(_) | Seen::Unknown => Next::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_table() {
        let bound = Duration::from_secs(1800);
        let early = Duration::from_secs(10);
        let late = Duration::from_secs(1801);
        // (seen, waited, next)
        let rows = [
            (Seen::Gone, early, Next::Release),
            (Seen::Gone, late, Next::Release),
            (Seen::Listed(DELETING), early, Next::Wait),
            (Seen::Listed(DELETING), bound, Next::Wait),
            (Seen::Listed(DELETING), late, Next::Stalled),
            (Seen::Unknown, early, Next::Wait),
            (Seen::Unknown, late, Next::Stalled),
            // Rolled back: whatever the time, a new request (new token) is due.
            (Seen::Listed("RUNNING"), early, Next::Resend),
            (Seen::Listed("STOPPED"), early, Next::Resend),
            (Seen::Listed("ERROR"), late, Next::Resend),
            // A busy state: the new request gets InvalidInstanceStatus and retries as usual.
            (Seen::Listed("STOPPING"), early, Next::Resend),
            (Seen::Listed(""), early, Next::Wait),
            (Seen::Listed(""), late, Next::Stalled),
        ];
        for (i, (seen, waited, next)) in rows.into_iter().enumerate() {
            assert_eq!(
                decide(seen, waited, bound),
                next,
                "row {i}: {seen:?} {waited:?}"
            );
        }
    }
}
