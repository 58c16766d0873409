//! The emulated cloud's memory: instances with a lazily evaluated state machine, ClientToken
//! records and the log of accepted deletions.
//!
//! Transitions are evaluated against the caller's `now` whenever an instance is looked at, so
//! no background task is needed and tests can drive time explicitly.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use volcengine_ecs::model::{Action, Instance};

pub const RUNNING: &str = "RUNNING";
pub const STOPPED: &str = "STOPPED";
pub const CREATING: &str = "CREATING";
pub const STARTING: &str = "STARTING";
pub const STOPPING: &str = "STOPPING";
pub const DELETING: &str = "DELETING";

/// How long each transitional state lasts, in milliseconds (0 = the transition is immediate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delays {
    pub create_ms: u64,
    pub stop_ms: u64,
    pub start_ms: u64,
    pub delete_ms: u64,
}

impl Default for Delays {
    fn default() -> Self {
        Self {
            create_ms: 1000,
            stop_ms: 1000,
            start_ms: 1000,
            delete_ms: 500,
        }
    }
}

impl Delays {
    pub const ZERO: Delays = Delays {
        create_ms: 0,
        stop_ms: 0,
        start_ms: 0,
        delete_ms: 0,
    };

    /// The delay of a transitional state; None for states that only an admin moves out of
    /// (REBUILDING, RESIZING, anything unknown), so tests can hold an instance there.
    fn of(&self, status: &str) -> Option<u64> {
        match status {
            CREATING => Some(self.create_ms),
            STARTING | "REBOOTING" => Some(self.start_ms),
            STOPPING => Some(self.stop_ms),
            DELETING => Some(self.delete_ms),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Status(&'static str),
    Gone,
}

fn next_of(status: &str) -> Option<Next> {
    match status {
        CREATING | STARTING | "REBOOTING" => Some(Next::Status(RUNNING)),
        STOPPING => Some(Next::Status(STOPPED)),
        DELETING => Some(Next::Gone),
        _ => None,
    }
}

/// Only stable states accept a deletion; every other state is "in the middle of something".
pub fn is_deletable(status: &str) -> bool {
    matches!(status, RUNNING | STOPPED | "ERROR")
}

pub fn after(now: Timestamp, ms: u64) -> Timestamp {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    now.checked_add(SignedDuration::from_millis(ms))
        .unwrap_or(Timestamp::MAX)
}

#[derive(Debug, Clone)]
pub struct InstanceRec {
    pub region: String,
    pub inst: Instance,
    /// When the current transitional state ends.
    pub due: Option<Timestamp>,
    /// Eventual consistency after RunInstances: until then the real API does not see the
    /// instance (the admin API always does). None: visible at once.
    pub visible_at: Option<Timestamp>,
    /// Injected fault: when DELETING ends the instance returns to this state instead of
    /// vanishing (a deletion the cloud rolled back).
    pub revert_to: Option<String>,
}

impl InstanceRec {
    /// Whether the real API sees the instance yet (see `visible_at`).
    pub fn visible(&self, now: Timestamp) -> bool {
        self.visible_at.is_none_or(|t| t <= now)
    }

    /// Applies a due transition; true when the instance is gone.
    fn settle(&mut self, now: Timestamp) -> bool {
        let Some(due) = self.due else {
            return false;
        };
        if now < due {
            return false;
        }
        match next_of(&self.inst.status) {
            Some(Next::Status(s)) => {
                self.inst.status = s.to_string();
                self.inst.updated_at = Some(super::wire::rfc3339(due));
                self.due = None;
                false
            }
            Some(Next::Gone) => match self.revert_to.take() {
                Some(back) => {
                    self.inst.status = back;
                    self.inst.updated_at = Some(super::wire::rfc3339(due));
                    self.due = None;
                    false
                }
                None => true,
            },
            None => {
                self.due = None;
                false
            }
        }
    }

    /// PrePaid instances cannot be deleted before they expire.
    pub fn prepaid_unexpired(&self, now: Timestamp) -> bool {
        self.inst.instance_charge_type.as_deref() == Some("PrePaid")
            && self
                .inst
                .expired_at
                .as_deref()
                .and_then(|s| s.parse::<Timestamp>().ok())
                .is_some_and(|exp| exp > now)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deletion {
    /// Injected fault `revert_next_deletions`: accepted, then rolled back (the VM stayed).
    pub reverted: bool,
    pub instance_id: String,
    pub region: String,
    pub time: String,
    /// Milliseconds since the Unix epoch (tests compare it with when a resource was deleted).
    pub at_ms: i64,
    /// The VM's `ecs.volcengine.io/uid` tag when it was deleted (tests map VMs to resources).
    pub owner_uid: Option<String>,
    pub action: String,
    pub client_token: Option<String>,
    pub request_id: String,
}

/// The recorded answer of a completed request with a ClientToken.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub status: u16,
    pub body: Value,
    pub instance_codes: Vec<String>,
}

#[derive(Debug, Clone)]
enum TokenState {
    InFlight,
    Done(Recorded),
}

#[derive(Debug, Clone)]
struct TokenRec {
    fingerprint: String,
    state: TokenState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TokenCheck {
    /// Execute; the token is now in flight.
    Proceed,
    Replay(Recorded),
    Mismatch,
    InProgress,
}

pub type TokenKey = (Action, String);

/// Old token records are forgotten past this many, oldest first.
const MAX_TOKENS: usize = 500_000;

#[derive(Debug, Default)]
pub struct Store {
    instances: BTreeMap<String, InstanceRec>,
    /// (due, id) of DELETING instances, so expired ones are purged without a full scan.
    deleting: BTreeSet<(Timestamp, String)>,
    tokens: HashMap<TokenKey, TokenRec>,
    token_order: VecDeque<TokenKey>,
    deletions: Vec<Deletion>,
    next_ip: u32,
}

impl Store {
    /// Removes instances whose deletion has completed.
    pub fn purge(&mut self, now: Timestamp) {
        while let Some((due, id)) = self.deleting.first().cloned() {
            if due > now {
                break;
            }
            self.deleting.pop_first();
            let done = self
                .instances
                .get(&id)
                .is_some_and(|r| r.inst.status == DELETING && r.due == Some(due))
                && self
                    .instances
                    .get(&id)
                    .is_some_and(|r| r.revert_to.is_none());
            if done {
                self.instances.remove(&id);
            }
        }
    }

    /// A live instance, with any due transition applied.
    pub fn get_mut(&mut self, id: &str, now: Timestamp) -> Option<&mut InstanceRec> {
        let gone = self.instances.get_mut(id)?.settle(now);
        if gone {
            self.instances.remove(id);
            return None;
        }
        self.instances.get_mut(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.instances.contains_key(id)
    }

    /// Every live instance in id order, transitions applied.
    pub fn settled(&mut self, now: Timestamp) -> impl Iterator<Item = &InstanceRec> {
        self.purge(now);
        self.instances
            .values_mut()
            .filter_map(move |r| (!r.settle(now)).then_some(&*r))
    }

    pub fn insert(&mut self, rec: InstanceRec) {
        let id = rec.inst.instance_id.clone();
        if let (DELETING, Some(due)) = (rec.inst.status.as_str(), rec.due) {
            self.deleting.insert((due, id.clone()));
        }
        self.instances.insert(id, rec);
    }

    pub fn remove(&mut self, id: &str) -> Option<InstanceRec> {
        self.instances.remove(id)
    }

    /// Puts an instance into `status`, which ends after its configured delay (at once when
    /// the delay is 0: a 0-delay DELETING removes the instance).
    pub fn enter(&mut self, id: &str, status: &str, delays: &Delays, now: Timestamp) {
        let Some(rec) = self.instances.get_mut(id) else {
            return;
        };
        rec.inst.status = status.to_string();
        rec.inst.updated_at = Some(super::wire::rfc3339(now));
        rec.due = delays.of(status).map(|ms| after(now, ms));
        if let (DELETING, Some(due)) = (status, rec.due) {
            self.deleting.insert((due, id.to_string()));
        }
        self.get_mut(id, now);
    }

    /// Puts an instance into `status` with no end: it stays there, whatever the delays, until
    /// the next `enter` (the admin `Hold`, e.g. a VM held in STOPPING).
    pub fn hold(&mut self, id: &str, status: &str, now: Timestamp) {
        if let Some(rec) = self.instances.get_mut(id) {
            rec.inst.status = status.to_string();
            rec.inst.updated_at = Some(super::wire::rfc3339(now));
            rec.due = None;
        }
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn next_private_ip(&mut self) -> String {
        let n = self.next_ip % (250 * 250);
        self.next_ip = self.next_ip.wrapping_add(1);
        format!("172.16.{}.{}", n / 250, n % 250 + 2)
    }

    pub fn record_deletion(&mut self, d: Deletion) {
        self.deletions.push(d);
    }

    pub fn deletions(&self) -> &[Deletion] {
        &self.deletions
    }

    /// Looks a token up and, unless the answer is to be replayed or refused, marks it in
    /// flight. With `replay` off a completed token is executed again.
    pub fn token_begin(&mut self, key: &TokenKey, fingerprint: &str, replay: bool) -> TokenCheck {
        if let Some(rec) = self.tokens.get_mut(key) {
            if rec.fingerprint != fingerprint {
                return TokenCheck::Mismatch;
            }
            return match &rec.state {
                TokenState::InFlight => TokenCheck::InProgress,
                TokenState::Done(r) if replay => TokenCheck::Replay(r.clone()),
                TokenState::Done(_) => {
                    rec.state = TokenState::InFlight;
                    TokenCheck::Proceed
                }
            };
        }
        self.tokens.insert(
            key.clone(),
            TokenRec {
                fingerprint: fingerprint.to_string(),
                state: TokenState::InFlight,
            },
        );
        self.token_order.push_back(key.clone());
        while self.token_order.len() > MAX_TOKENS {
            if let Some(old) = self.token_order.pop_front() {
                self.tokens.remove(&old);
            }
        }
        TokenCheck::Proceed
    }

    /// Only accepted requests are remembered: a refused one leaves the token free, so a
    /// corrected retry with the same token is not stuck with the refusal.
    pub fn token_finish(&mut self, key: &TokenKey, answer: Recorded) {
        if (200..300).contains(&answer.status) {
            if let Some(rec) = self.tokens.get_mut(key) {
                rec.state = TokenState::Done(answer);
            }
        } else {
            self.token_abort(key);
        }
    }

    pub fn token_abort(&mut self, key: &TokenKey) {
        if matches!(
            self.tokens.get(key).map(|r| &r.state),
            Some(TokenState::InFlight)
        ) {
            self.tokens.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn rec(id: &str, status: &str) -> InstanceRec {
        InstanceRec {
            region: "cn-beijing".into(),
            inst: Instance {
                instance_id: id.into(),
                status: status.into(),
                ..Default::default()
            },
            due: None,
            visible_at: None,
            revert_to: None,
        }
    }

    const D: Delays = Delays {
        create_ms: 1000,
        stop_ms: 2000,
        start_ms: 3000,
        delete_ms: 500,
    };

    fn status(s: &mut Store, id: &str, now: Timestamp) -> Option<String> {
        s.get_mut(id, now).map(|r| r.inst.status.clone())
    }

    #[test]
    fn lifecycle_follows_delays() {
        let mut s = Store::default();
        s.insert(rec("i-1", RUNNING));
        s.enter("i-1", CREATING, &D, t(0));
        assert_eq!(status(&mut s, "i-1", t(0)).unwrap(), CREATING);
        assert_eq!(status(&mut s, "i-1", t(1)).unwrap(), RUNNING);
        s.enter("i-1", STOPPING, &D, t(1));
        assert_eq!(status(&mut s, "i-1", t(2)).unwrap(), STOPPING);
        assert_eq!(status(&mut s, "i-1", t(3)).unwrap(), STOPPED);
        s.enter("i-1", STARTING, &D, t(3));
        assert_eq!(status(&mut s, "i-1", t(5)).unwrap(), STARTING);
        assert_eq!(status(&mut s, "i-1", t(6)).unwrap(), RUNNING);
        s.enter("i-1", DELETING, &D, t(6));
        assert_eq!(status(&mut s, "i-1", t(6)).unwrap(), DELETING);
        assert_eq!(status(&mut s, "i-1", t(7)), None);
        assert!(!s.contains("i-1"));
    }

    #[test]
    fn zero_delay_is_immediate_and_deleting_vanishes() {
        let mut s = Store::default();
        s.insert(rec("i-1", RUNNING));
        s.enter("i-1", STOPPING, &Delays::ZERO, t(0));
        assert_eq!(status(&mut s, "i-1", t(0)).unwrap(), STOPPED);
        s.enter("i-1", DELETING, &Delays::ZERO, t(0));
        assert!(!s.contains("i-1"));
    }

    #[test]
    fn listing_settles_and_purges_due_deletions() {
        let mut s = Store::default();
        for id in ["i-a", "i-b", "i-c"] {
            s.insert(rec(id, RUNNING));
        }
        s.enter("i-a", DELETING, &D, t(0));
        s.enter("i-b", CREATING, &D, t(0));
        let live: Vec<_> = s
            .settled(t(10))
            .map(|r| (r.inst.instance_id.clone(), r.inst.status.clone()))
            .collect();
        assert_eq!(
            live,
            vec![
                ("i-b".into(), RUNNING.into()),
                ("i-c".into(), RUNNING.into())
            ]
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn held_states_stay_until_patched() {
        let mut s = Store::default();
        s.insert(rec("i-1", RUNNING));
        s.enter("i-1", "REBUILDING", &D, t(0));
        assert_eq!(status(&mut s, "i-1", t(1000)).unwrap(), "REBUILDING");
        assert!(!is_deletable("REBUILDING") && !is_deletable(CREATING));
        assert!(is_deletable(RUNNING) && is_deletable(STOPPED) && is_deletable("ERROR"));
    }

    #[test]
    fn a_held_transitional_state_stays_until_entered_again() {
        let mut s = Store::default();
        s.insert(rec("i-1", RUNNING));
        s.enter("i-1", STOPPING, &D, t(0));
        s.hold("i-1", STOPPING, t(1));
        assert_eq!(status(&mut s, "i-1", t(1000)).unwrap(), STOPPING);
        s.enter("i-1", STOPPED, &D, t(1000));
        assert_eq!(status(&mut s, "i-1", t(1000)).unwrap(), STOPPED);
        // A held DELETING never completes (the deletion index ignores it).
        s.enter("i-1", DELETING, &D, t(1000));
        s.hold("i-1", DELETING, t(1000));
        assert_eq!(s.settled(t(5000)).count(), 1);
        assert_eq!(status(&mut s, "i-1", t(5000)).unwrap(), DELETING);
    }

    #[test]
    fn prepaid_rule() {
        let mut r = rec("i-1", RUNNING);
        r.inst.instance_charge_type = Some("PrePaid".into());
        r.inst.expired_at = Some(super::super::wire::rfc3339(t(100)));
        assert!(r.prepaid_unexpired(t(0)));
        assert!(!r.prepaid_unexpired(t(101)));
        r.inst.instance_charge_type = Some("PostPaid".into());
        assert!(!r.prepaid_unexpired(t(0)));
    }

    #[test]
    fn token_rules() {
        let mut s = Store::default();
        let key = (Action::DeleteInstances, "tok".to_string());
        assert_eq!(s.token_begin(&key, "h1", true), TokenCheck::Proceed);
        assert_eq!(s.token_begin(&key, "h1", true), TokenCheck::InProgress);
        assert_eq!(s.token_begin(&key, "h2", true), TokenCheck::Mismatch);
        let answer = Recorded {
            status: 200,
            body: serde_json::json!({"x": 1}),
            instance_codes: vec!["OK".into()],
        };
        s.token_finish(&key, answer.clone());
        assert_eq!(s.token_begin(&key, "h1", true), TokenCheck::Replay(answer));
        assert_eq!(s.token_begin(&key, "h2", true), TokenCheck::Mismatch);
        // Replay off: executed again, and in flight meanwhile.
        assert_eq!(s.token_begin(&key, "h1", false), TokenCheck::Proceed);
        assert_eq!(s.token_begin(&key, "h1", false), TokenCheck::InProgress);
        // The same token on another action is a different request.
        let other = (Action::StopInstances, "tok".to_string());
        assert_eq!(s.token_begin(&other, "h2", true), TokenCheck::Proceed);
    }

    #[test]
    fn refused_requests_free_their_token() {
        let mut s = Store::default();
        let key = (Action::RunInstances, "tok".to_string());
        assert_eq!(s.token_begin(&key, "h1", true), TokenCheck::Proceed);
        s.token_finish(
            &key,
            Recorded {
                status: 400,
                body: Value::Null,
                instance_codes: vec![],
            },
        );
        assert_eq!(s.token_begin(&key, "h2", true), TokenCheck::Proceed);
        s.token_abort(&key);
        assert_eq!(s.token_begin(&key, "h3", true), TokenCheck::Proceed);
    }
}
