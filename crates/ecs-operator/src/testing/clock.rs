//! A wall clock that follows tokio's clock, for one thread. The controller reads wall-clock
//! time for the appear window (`controller::ownership::now`); a simulation with paused
//! tokio time starts this clock so that every replay of a schedule sees the same times.

use std::cell::Cell;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

thread_local! {
    static SIM: Cell<Option<(Timestamp, Instant)>> = const { Cell::new(None) };
}

/// Starts the simulated clock on this thread at `epoch`, now in tokio's clock. Stopped when
/// the guard is dropped.
pub fn start(epoch: Timestamp) -> Guard {
    SIM.with(|c| c.set(Some((epoch, Instant::now()))));
    Guard(())
}

pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        SIM.with(|c| c.set(None));
    }
}

/// The simulated time, when this thread runs a simulated clock.
pub fn now() -> Option<Timestamp> {
    let (epoch, anchor) = SIM.with(Cell::get)?;
    let elapsed = Instant::now().saturating_duration_since(anchor);
    epoch.checked_add(signed(elapsed)).ok()
}

/// The simulated time, or the system clock.
pub fn now_or_system() -> Timestamp {
    now().unwrap_or_else(Timestamp::now)
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}
