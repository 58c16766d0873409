//! The call log (every API request, rejected ones included) and per-action statistics, so
//! tests can assert what the client actually sent: retries, tokens, replays.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CallRecord {
    pub seq: u64,
    /// RFC 3339, when the request arrived.
    pub time: String,
    /// When the request arrived, in Unix milliseconds (`time` has whole seconds).
    pub at_ms: i64,
    pub method: String,
    /// The User-Agent header (the operator appends its replica identity).
    pub user_agent: String,
    /// As sent (may be empty or an unknown action).
    pub action: String,
    /// From the credential scope; empty when the Authorization header was unusable.
    pub region: String,
    /// The account whose active access key signed the request; empty when the key is
    /// unknown or revoked (or the Authorization header was unusable).
    pub account: String,
    /// The access key of the credential scope, as sent (never the secret); empty when the
    /// Authorization header was unusable.
    pub access_key: String,
    pub params: BTreeMap<String, String>,
    pub client_token: Option<String>,
    pub status: u16,
    /// The call-level error code, or "OK".
    pub code: String,
    /// Per-instance outcome of batch actions ("OK" or the error code), in request order.
    pub instance_codes: Vec<String>,
    pub request_id: String,
    /// The recorded answer of an earlier request with the same ClientToken was returned.
    pub replayed: bool,
    /// The call was applied but its response was deliberately dropped, or the client hung up
    /// before it was sent.
    pub lost: bool,
    /// Which injected fault shaped the answer, if any: injected_error, throttle, garbage:KIND,
    /// lost, or client_gone (the client hung up before the answer).
    pub fault: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ActionStats {
    pub calls: u64,
    /// Call-level outcome ("OK" or error code) -> count.
    pub codes: BTreeMap<String, u64>,
    /// Per-instance outcomes of batch actions -> count.
    pub instance_codes: BTreeMap<String, u64>,
    pub replayed: u64,
    pub lost: u64,
}

/// Which calls `CallLog::query` returns; every field given must match.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallFilter<'a> {
    pub action: Option<&'a str>,
    pub account: Option<&'a str>,
    pub access_key: Option<&'a str>,
}

impl CallFilter<'_> {
    fn matches(&self, c: &CallRecord) -> bool {
        self.action.is_none_or(|a| c.action == a)
            && self.account.is_none_or(|a| c.account == a)
            && self.access_key.is_none_or(|k| c.access_key == k)
    }
}

#[derive(Debug)]
pub struct CallLog {
    limit: usize,
    next_seq: u64,
    calls: VecDeque<CallRecord>,
    stats: BTreeMap<String, ActionStats>,
}

impl CallLog {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            next_seq: 1,
            calls: VecDeque::new(),
            stats: BTreeMap::new(),
        }
    }

    pub fn push(&mut self, mut rec: CallRecord) -> u64 {
        rec.seq = self.next_seq;
        self.next_seq += 1;
        let label = if rec.action.is_empty() {
            "(none)".to_string()
        } else {
            rec.action.clone()
        };
        let s = self.stats.entry(label).or_default();
        s.calls += 1;
        *s.codes.entry(rec.code.clone()).or_default() += 1;
        for c in &rec.instance_codes {
            *s.instance_codes.entry(c.clone()).or_default() += 1;
        }
        s.replayed += u64::from(rec.replayed);
        s.lost += u64::from(rec.lost);
        if self.calls.len() >= self.limit {
            self.calls.pop_front();
        }
        let seq = rec.seq;
        self.calls.push_back(rec);
        seq
    }

    /// Records with seq > `since` that pass `filter`, at most `limit` of them.
    pub fn query(&self, filter: &CallFilter<'_>, since: u64, limit: usize) -> Vec<CallRecord> {
        // Sequence numbers are dense within the buffer, so `since` maps to an index.
        let first = self.calls.front().map_or(0, |c| c.seq);
        let skip =
            usize::try_from(since.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        self.calls
            .iter()
            .skip(skip)
            .filter(|c| filter.matches(c))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Forgets the calls; statistics and sequence numbers carry on.
    pub fn clear(&mut self) {
        self.calls.clear();
    }

    pub fn stats(&self) -> &BTreeMap<String, ActionStats> {
        &self.stats
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(action: &str, code: &str) -> CallRecord {
        CallRecord {
            action: action.into(),
            code: code.into(),
            ..Default::default()
        }
    }

    #[test]
    fn bounded_with_dense_seq_queries() {
        let mut log = CallLog::new(3);
        for i in 0..5 {
            log.push(rec(if i % 2 == 0 { "A" } else { "B" }, "OK"));
        }
        let none = CallFilter::default();
        let all = log.query(&none, 0, usize::MAX);
        assert_eq!(all.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        let since = log.query(&none, 3, usize::MAX);
        assert_eq!(since.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![4, 5]);
        let only_a = CallFilter {
            action: Some("A"),
            ..none
        };
        let a = log.query(&only_a, 0, usize::MAX);
        assert_eq!(a.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(log.query(&none, 0, 1).len(), 1);
        assert_eq!(log.stats()["A"].calls, 3);
        log.clear();
        assert!(log.query(&none, 0, usize::MAX).is_empty());
        assert_eq!(log.push(rec("A", "X")), 6);
        assert_eq!(log.query(&none, 5, usize::MAX).len(), 1);
        assert_eq!(log.stats()["A"].codes["X"], 1);
    }

    #[test]
    fn filters_by_account_and_access_key() {
        let mut log = CallLog::new(10);
        for (action, account, ak) in [
            ("A", "default", "AK0"),
            ("A", "team-a", "AKa"),
            ("B", "team-a", "AKa2"),
            ("A", "", "AKrevoked"),
        ] {
            log.push(CallRecord {
                account: account.into(),
                access_key: ak.into(),
                ..rec(action, "OK")
            });
        }
        let seqs = |f: CallFilter<'_>| -> Vec<u64> {
            log.query(&f, 0, usize::MAX).iter().map(|c| c.seq).collect()
        };
        assert_eq!(seqs(CallFilter::default()), [1, 2, 3, 4]);
        let team_a = CallFilter {
            account: Some("team-a"),
            ..Default::default()
        };
        assert_eq!(seqs(team_a), [2, 3]);
        assert_eq!(
            seqs(CallFilter {
                action: Some("A"),
                ..team_a
            }),
            [2]
        );
        assert_eq!(
            seqs(CallFilter {
                access_key: Some("AKrevoked"),
                ..Default::default()
            }),
            [4]
        );
    }
}
