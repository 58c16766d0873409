//! Client-side rate limits: one token bucket per region and action (Volcengine's Terraform provider
//! uses 4 requests/s with a burst of 10), paused for a while when the cloud says we are
//! throttled, so the whole operator slows down instead of every caller retrying at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::model::Action;

#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Requests per second; 0 disables the limit.
    pub rate: f64,
    pub burst: u32,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    paused_until: Option<Instant>,
    penalty: Duration,
}

#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: HashMap<Action, Mutex<Bucket>>,
}

const MIN_PENALTY: Duration = Duration::from_millis(500);
const MAX_PENALTY: Duration = Duration::from_secs(10);
/// A longer `Retry-After` is read as this, the longest pause the limiter ever had: a call
/// waiting here was planned on a check (the ownership proof before DeleteInstances, the
/// sweeper's listing) that grows stale while it waits, so the wait stays short and a
/// longer one fails the call instead (`client::MAX_IN_CALL_WAIT`), to be planned afresh.
pub const MAX_RETRY_AFTER: Duration = MAX_PENALTY;

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let now = Instant::now();
        let buckets = Action::ALL
            .into_iter()
            .map(|a| {
                (
                    a,
                    Mutex::new(Bucket {
                        tokens: f64::from(limit.burst.max(1)),
                        last: now,
                        paused_until: None,
                        penalty: MIN_PENALTY,
                    }),
                )
            })
            .collect();
        Self { limit, buckets }
    }

    /// Waits for a token; returns how long it waited.
    pub async fn acquire(&self, action: Action) -> Duration {
        let start = Instant::now();
        let Some(bucket) = self.buckets.get(&action) else {
            return Duration::ZERO;
        };
        loop {
            let wait = {
                let mut b = match bucket.lock() {
                    Ok(b) => b,
                    Err(p) => p.into_inner(),
                };
                let now = Instant::now();
                match b.paused_until {
                    Some(until) if until > now => until - now,
                    _ => {
                        b.paused_until = None;
                        if self.limit.rate <= 0.0 {
                            return start.elapsed();
                        }
                        let burst = f64::from(self.limit.burst.max(1));
                        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
                        b.tokens = (b.tokens + elapsed * self.limit.rate).min(burst);
                        b.last = now;
                        if b.tokens >= 1.0 {
                            b.tokens -= 1.0;
                            return start.elapsed();
                        }
                        Duration::from_secs_f64((1.0 - b.tokens) / self.limit.rate)
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The cloud throttled us: stop sending this action for a growing pause, and at least
    /// as long as the answer's `Retry-After` said (up to `MAX_RETRY_AFTER`).
    pub fn on_throttled(&self, action: Action, retry_after: Option<Duration>) {
        if let Some(bucket) = self.buckets.get(&action) {
            let mut b = match bucket.lock() {
                Ok(b) => b,
                Err(p) => p.into_inner(),
            };
            let asked = retry_after.unwrap_or_default().min(MAX_RETRY_AFTER);
            let until = Instant::now() + b.penalty.max(asked);
            b.paused_until = Some(b.paused_until.map_or(until, |u| u.max(until)));
            b.tokens = 0.0;
            b.penalty = (b.penalty * 2).min(MAX_PENALTY);
        }
    }

    pub fn on_success(&self, action: Action) {
        if let Some(bucket) = self.buckets.get(&action) {
            let mut b = match bucket.lock() {
                Ok(b) => b,
                Err(p) => p.into_inner(),
            };
            b.penalty = MIN_PENALTY;
        }
    }
}

/// One `RateLimiter` per region, made on first use: a region whose host throttles or fails
/// (a 503 counts as throttling) pauses that region's calls, not every region's.
#[derive(Debug)]
pub struct RegionLimiters {
    limit: RateLimit,
    by_region: Mutex<HashMap<String, std::sync::Arc<RateLimiter>>>,
}

impl RegionLimiters {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            by_region: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, region: &str) -> std::sync::Arc<RateLimiter> {
        let mut m = match self.by_region.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(region.to_string())
            .or_insert_with(|| std::sync::Arc::new(RateLimiter::new(self.limit)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throttled region pauses itself only.
    #[tokio::test(start_paused = true)]
    async fn a_throttled_region_does_not_pause_another() {
        let l = RegionLimiters::new(RateLimit {
            rate: 0.0,
            burst: 1,
        });
        l.get("cn-beijing")
            .on_throttled(Action::DeleteInstances, Some(Duration::from_secs(5)));
        let other = l.get("cn-shanghai").acquire(Action::DeleteInstances).await;
        assert_eq!(other, Duration::ZERO);
        let same = l.get("cn-beijing").acquire(Action::DeleteInstances).await;
        assert_eq!(same, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let l = RateLimiter::new(RateLimit {
            rate: 4.0,
            burst: 10,
        });
        let start = Instant::now();
        for _ in 0..10 {
            l.acquire(Action::DeleteInstances).await;
        }
        assert!(start.elapsed() < Duration::from_millis(1));
        for _ in 0..8 {
            l.acquire(Action::DeleteInstances).await;
        }
        let e = start.elapsed().as_secs_f64();
        assert!((1.9..2.2).contains(&e), "8 more at 4/s took {e}s");
        // Other actions have their own bucket.
        let t = Instant::now();
        l.acquire(Action::DescribeInstances).await;
        assert!(t.elapsed() < Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_pauses_and_grows() {
        let l = RateLimiter::new(RateLimit {
            rate: 0.0,
            burst: 1,
        });
        l.on_throttled(Action::RunInstances, None);
        let waited = l.acquire(Action::RunInstances).await;
        assert_eq!(waited, MIN_PENALTY);
        l.on_throttled(Action::RunInstances, None);
        assert_eq!(l.acquire(Action::RunInstances).await, MIN_PENALTY * 2);
        l.on_success(Action::RunInstances);
        l.on_throttled(Action::RunInstances, None);
        assert_eq!(l.acquire(Action::RunInstances).await, MIN_PENALTY);
    }

    /// A `Retry-After` longer than the penalty sets the pause; a bogus huge one is capped.
    #[tokio::test(start_paused = true)]
    async fn retry_after_sets_the_pause_up_to_a_cap() {
        let l = RateLimiter::new(RateLimit {
            rate: 0.0,
            burst: 1,
        });
        l.on_throttled(Action::DeleteInstances, Some(Duration::from_secs(7)));
        assert_eq!(
            l.acquire(Action::DeleteInstances).await,
            Duration::from_secs(7)
        );
        l.on_throttled(Action::DeleteInstances, Some(Duration::from_millis(1)));
        assert_eq!(l.acquire(Action::DeleteInstances).await, MIN_PENALTY * 2);
        l.on_throttled(Action::DeleteInstances, Some(Duration::from_secs(86_400)));
        assert_eq!(l.acquire(Action::DeleteInstances).await, MAX_RETRY_AFTER);
    }
}
