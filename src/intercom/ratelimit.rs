//! The rate limiter every Intercom request goes through: one [`Budget`] (the pure state machine,
//! `audience_sync_core::intercom::budget`, which documents the rules) shared by every request
//! in flight, with the system clock as its "now"; callers wait here for their turn.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use audience_sync_core::intercom::budget::{
    AUTO_UNANNOUNCED_LIMIT, Admit, Announced, Budget, LimiterStats, Persisted, RATE_LIMIT_AUTO,
    Ticket, in_flight_target,
};

/// The budget shared by every request of a process.
#[derive(Debug)]
pub struct RateLimiter {
    budget: Mutex<Budget>,
    changed: Notify,
    /// [`Budget::rate_per_sec`] as of the last answer (`f64` bits), read without the lock.
    rate: AtomicU64,
}

/// Time since the epoch by the system clock (what `X-RateLimit-Reset` is measured against).
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

impl RateLimiter {
    pub fn new(cap: u32, window: Duration, persisted: Option<Persisted>) -> RateLimiter {
        let budget = Budget::new(cap, window, persisted, unix_now());
        RateLimiter {
            rate: AtomicU64::new(budget.rate_per_sec().to_bits()),
            budget: Mutex::new(budget),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for permission to send one request; `None` when `cancel` fires first.
    pub async fn acquire(&self, cancel: &CancellationToken) -> Option<Ticket> {
        loop {
            let notified = self.changed.notified();
            let admit = self.lock().admit(unix_now());
            match admit {
                Admit::Go(ticket) => return Some(ticket),
                Admit::Wait(wait) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                        _ = notified => {}
                    }
                }
            }
        }
    }

    /// Hand back a ticket with what its response said (see [`Budget::observe`]).
    pub fn observe(&self, ticket: Ticket, answer: Option<(u16, Option<Announced>)>) {
        let rate = {
            let mut budget = self.lock();
            budget.observe(ticket, answer, unix_now());
            budget.rate_per_sec()
        };
        self.rate.store(rate.to_bits(), Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// The budget believed, in requests per second (cheap: no lock).
    pub fn rate_per_sec(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    /// How many requests to keep in flight when one takes `latency` (see [`in_flight_target`]).
    pub fn in_flight_target(&self, latency: Option<Duration>, max: usize) -> usize {
        in_flight_target(self.rate_per_sec(), latency, max)
    }

    pub fn persisted(&self) -> Persisted {
        self.lock().persisted()
    }

    pub fn stats(&self) -> LimiterStats {
        self.lock().stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_starts_from_the_budgets_assumption() {
        let limiter = RateLimiter::new(RATE_LIMIT_AUTO, Duration::from_secs(10), None);
        assert!(
            (limiter.rate_per_sec() - 8.3).abs() < 1e-9,
            "the assumption until told"
        );
        assert_eq!(limiter.in_flight_target(None, 64), 1);
    }
}
