//! What a worker or indexer knows about its own state, kept in atomics the
//! processing loops update and the probes (`api::probes`) read. No HTTP here, so
//! the runners depend on it without depending on the API.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a runner reports about itself, read by the probes.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix milliseconds of the poll loop's last turn.
    last_poll_ms: AtomicU64,
    broker_up: AtomicBool,
    /// Lanes waiting out a store or broker failure.
    stalled_lanes: AtomicUsize,
    draining: AtomicBool,
    /// An indexer that has not yet applied what the changes topic held when
    /// it started: it would answer searches from a partial index.
    catching_up: AtomicBool,
    /// How long the poll loop may be silent before the process counts as hung.
    liveness_window_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Health {
    pub fn new(liveness_window: Duration) -> Self {
        let health = Self::default();
        health.liveness_window_ms.store(u64::try_from(liveness_window.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        health.polled();
        health
    }

    pub fn polled(&self) {
        self.last_poll_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
    }

    pub fn stall(&self) {
        self.stalled_lanes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unstall(&self) {
        self.stalled_lanes.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn set_catching_up(&self, catching_up: bool) {
        self.catching_up.store(catching_up, Ordering::Relaxed);
    }

    pub fn is_live(&self) -> bool {
        now_ms().saturating_sub(self.last_poll_ms.load(Ordering::Relaxed)) <= self.liveness_window_ms.load(Ordering::Relaxed)
    }

    /// Why the worker should not get traffic now, if it should not.
    pub fn not_ready_because(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining for shutdown")
        } else if !self.broker_up.load(Ordering::Relaxed) {
            Some("no broker reachable")
        } else if self.stalled_lanes.load(Ordering::Relaxed) > 0 {
            Some("waiting out a store or broker failure")
        } else if self.catching_up.load(Ordering::Relaxed) {
            Some("catching up with the changes topic")
        } else {
            None
        }
    }
}
