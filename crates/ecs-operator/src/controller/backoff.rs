//! Per-resource exponential backoff: one slow VM never slows down the others, and a
//! success resets it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Delay before the next try of this resource; grows 2x per consecutive failure, with
    /// up to 20% jitter so resources that failed together do not retry together.
    pub fn next(&self, key: &str) -> Duration {
        let n = {
            let mut m = match self.failures.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            let n = m.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let exp = self
            .base
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(self.max);
        let jitter = rand::rng().random_range(0.0..0.2);
        exp.mul_f64(1.0 + jitter).min(self.max)
    }

    /// The longest delay, for answers that only a person can change.
    pub fn slow(&self) -> Duration {
        self.max
    }

    pub fn reset(&self, key: &str) {
        let mut m = match self.failures.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets_per_key() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
        let d: Vec<f64> = (0..8).map(|_| b.next("a").as_secs_f64()).collect();
        for (i, want) in [2.0, 4.0, 8.0, 16.0, 32.0].iter().enumerate() {
            assert!(d[i] >= *want && d[i] <= want * 1.2, "{i}: {d:?}");
        }
        assert!(
            d[5..]
                .iter()
                .all(|x| *x <= 60.0 && *x >= 60.0 * 0.99 || *x == 60.0),
            "{d:?}"
        );
        // Another resource starts from the base.
        assert!(b.next("b") < Duration::from_secs(3));
        b.reset("a");
        assert!(b.next("a") < Duration::from_secs(3));
    }
}
