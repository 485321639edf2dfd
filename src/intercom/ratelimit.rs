//! The rate limiter every Intercom request goes through: a budget per fixed window, corrected
//! from `X-RateLimit-*` headers, so delivery slows down before a 429 instead of after.
//!
//! Intercom counts requests in fixed windows (10 s, aligned to the epoch) and announces on every
//! response the window's limit, what is left of it and when it resets. [`Budget`] is the pure
//! state machine (time comes in as an argument, so tests drive it); [`RateLimiter`] shares one
//! budget between every request in flight and makes callers wait.
//!
//! - Budget per window: `min(intercom.rate_limit, X-RateLimit-Limit)`. Each request takes one
//!   unit when it is sent; a response lowers what is left to what Intercom says is left, less
//!   the requests sent after it that may not have arrived yet.
//! - A window is *confirmed* by a response naming its reset time. An unconfirmed window (a new
//!   process, or the first moments after a reset) lets one request through and waits for its
//!   headers, so a new process never overspends a window its predecessor used, and a clock that
//!   runs ahead of Intercom's never bursts into the old window.
//! - A 429 empties the window: everybody waits until its reset (plus a small margin), nobody
//!   sleeps longer.
//! - When Intercom does not announce the budget, windows are assumed aligned to the epoch with
//!   the configured length; the first 429 teaches the real budget (the requests the window took
//!   before it), and later windows stay within it.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What one response said about the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announced {
    /// `X-RateLimit-Limit`: requests per window.
    pub limit: u32,
    /// `X-RateLimit-Remaining`: requests left in the window the request was counted in.
    pub remaining: u32,
    /// `X-RateLimit-Reset`: unix seconds when that window ends.
    pub reset: u64,
}

/// A permission to send one request; give it back with [`Budget::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// What the budget says to a caller that wants to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Go(Ticket),
    /// Try again after this long (or when a response arrives).
    Wait(Duration),
}

/// The last budget seen, as persisted between processes (`intercom_rate_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persisted {
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds.
    pub reset_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Intercom announces its budget: windows end where `X-RateLimit-Reset` says.
    Announced,
    /// No headers seen: windows of the configured length, aligned to the epoch.
    Unannounced,
}

/// Counters for reports and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    pub sent: u64,
    pub rate_limited: u64,
}

/// The shared budget, a pure state machine over "now" (time since the epoch).
#[derive(Debug)]
pub struct Budget {
    /// `intercom.rate_limit`: never more than this per window, whatever Intercom announces.
    cap: u32,
    /// `intercom.rate_limit_window_secs`.
    window: Duration,
    /// The budget per window now believed: `min(cap, announced or learned limit)`.
    limit: u32,
    /// End of the current window (time since the epoch).
    window_end: Duration,
    /// Requests that may still be sent in the current window.
    remaining: u32,
    /// Whether a response has named the current window's reset (see the module docs).
    confirmed: bool,
    mode: Mode,
    /// Tickets of requests sent and not answered yet.
    in_flight: BTreeSet<u64>,
    next_ticket: u64,
    /// The first ticket of the current window (to learn an unannounced budget from a 429).
    window_first_ticket: u64,
    /// Wait this long past a reset before sending into the new window.
    margin: Duration,
    stats: LimiterStats,
}

impl Budget {
    /// A fresh budget of `cap` requests per `window`, optionally seeded with what a previous
    /// process saw last.
    pub fn new(cap: u32, window: Duration, persisted: Option<Persisted>, now: Duration) -> Budget {
        let cap = cap.max(1);
        let margin = (window / 40).clamp(Duration::from_millis(25), Duration::from_millis(250));
        let mut budget = Budget {
            cap,
            window,
            limit: cap,
            window_end: Duration::ZERO,
            remaining: cap,
            confirmed: false,
            mode: Mode::Announced,
            in_flight: BTreeSet::new(),
            next_ticket: 0,
            window_first_ticket: 0,
            margin,
            stats: LimiterStats::default(),
        };
        if let Some(p) = persisted {
            let reset = Duration::from_secs(p.reset_at.max(0) as u64);
            if reset > now {
                // The predecessor's window is still running: spend only what it left.
                budget.limit = p.limit.clamp(1, cap);
                budget.window_end = reset;
                budget.remaining = p.remaining.min(budget.limit);
            }
        }
        budget
    }

    pub fn stats(&self) -> LimiterStats {
        self.stats
    }

    /// What to persist for the next process.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            limit: self.limit,
            remaining: self.remaining,
            reset_at: self.window_end.as_secs() as i64,
        }
    }

    /// The end of the window after `end` that contains `now` (windows of `self.window`).
    fn next_window_end(&self, now: Duration) -> Duration {
        let w = self.window.as_millis().max(1);
        match self.mode {
            Mode::Announced if self.window_end > Duration::ZERO => {
                let behind = now.saturating_sub(self.window_end).as_millis();
                let k = behind / w + 1;
                self.window_end + Duration::from_millis((k * w) as u64)
            }
            // Epoch-aligned windows, as Intercom and its sandbox keep them.
            _ => Duration::from_millis(((now.as_millis() / w + 1) * w) as u64),
        }
    }

    /// May a request go now?
    pub fn admit(&mut self, now: Duration) -> Admit {
        if now >= self.window_end + self.margin {
            // The window is over: a new one starts with the full budget, unconfirmed.
            self.window_end = self.next_window_end(now);
            self.remaining = self.limit;
            self.confirmed = false;
            self.window_first_ticket = self.next_ticket;
        }
        if self.remaining == 0 {
            return Admit::Wait(self.window_end + self.margin - now);
        }
        if self.mode == Mode::Announced
            && !self.confirmed
            && self
                .in_flight
                .range(self.window_first_ticket..)
                .next()
                .is_some()
        {
            // One request at a time until a response confirms the window (requests of the
            // previous window still in flight do not count).
            return Admit::Wait(Duration::from_millis(50));
        }
        self.remaining -= 1;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.in_flight.insert(ticket);
        self.stats.sent += 1;
        Admit::Go(Ticket(ticket))
    }

    /// The request of `ticket` is over: `answer` is its status and headers, `None` when it got
    /// no response at all (a timeout or a connection error).
    pub fn observe(
        &mut self,
        ticket: Ticket,
        answer: Option<(u16, Option<Announced>)>,
        now: Duration,
    ) {
        self.in_flight.remove(&ticket.0);
        let Some((status, announced)) = answer else {
            return;
        };
        let rate_limited = status == 429;
        if rate_limited {
            self.stats.rate_limited += 1;
        }
        // Requests sent after this one may reach Intercom after it: not counted in its header.
        let later = self.in_flight.range(ticket.0 + 1..).count() as u32;
        match announced {
            Some(a) => {
                self.mode = Mode::Announced;
                let limit = a.limit.clamp(1, self.cap);
                self.limit = limit;
                let reset = Duration::from_secs(a.reset);
                // What the window has left for us: Intercom's remaining, and our cap less all
                // that the window has taken (other clients of the app included).
                let used = a.limit.saturating_sub(a.remaining);
                let left = a
                    .remaining
                    .min(limit.saturating_sub(used))
                    .saturating_sub(later);
                if reset > self.window_end {
                    // Intercom is in a newer window than we thought.
                    self.window_end = reset;
                    self.remaining = left;
                    self.confirmed = true;
                    self.window_first_ticket = ticket.0;
                } else if reset == self.window_end {
                    self.remaining = self.remaining.min(left);
                    self.confirmed = true;
                }
                if rate_limited {
                    if reset >= self.window_end {
                        self.window_end = reset;
                        self.remaining = 0;
                    }
                    if reset + self.margin <= now {
                        // Our clock runs ahead of Intercom's: keep further from the boundary.
                        self.margin = (self.margin * 2).min(Duration::from_secs(1));
                    }
                }
            }
            None if rate_limited => {
                // The budget is not announced: this window took what it could. Learn it.
                if self.mode == Mode::Announced && self.window_end == Duration::ZERO {
                    self.window_end = self.next_window_end(now);
                }
                let taken = ticket.0.saturating_sub(self.window_first_ticket) as u32;
                self.limit = self.limit.min(taken.max(1));
                self.remaining = 0;
                if self.mode == Mode::Announced && !self.confirmed {
                    self.mode = Mode::Unannounced;
                }
            }
            None => {
                if !self.confirmed {
                    // Nothing to wait for: Intercom does not announce its budget.
                    self.mode = Mode::Unannounced;
                    self.confirmed = true;
                }
            }
        }
    }
}

/// The budget shared by every request of a process.
#[derive(Debug)]
pub struct RateLimiter {
    budget: Mutex<Budget>,
    changed: Notify,
}

/// Time since the epoch by the system clock (what `X-RateLimit-Reset` is measured against).
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

impl RateLimiter {
    pub fn new(cap: u32, window: Duration, persisted: Option<Persisted>) -> RateLimiter {
        RateLimiter {
            budget: Mutex::new(Budget::new(cap, window, persisted, unix_now())),
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
        self.lock().observe(ticket, answer, unix_now());
        self.changed.notify_waiters();
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

    const T0: u64 = 1_000_000; // a window boundary for 10 s windows

    fn at(secs: f64) -> Duration {
        Duration::from_secs_f64(T0 as f64 + secs)
    }

    fn go(budget: &mut Budget, now: Duration) -> Ticket {
        match budget.admit(now) {
            Admit::Go(t) => t,
            Admit::Wait(w) => panic!("expected to go, told to wait {w:?}"),
        }
    }

    fn headers(limit: u32, remaining: u32, reset: u64) -> Option<(u16, Option<Announced>)> {
        Some((
            200,
            Some(Announced {
                limit,
                remaining,
                reset,
            }),
        ))
    }

    #[test]
    fn a_new_process_sends_one_request_then_trusts_the_headers() {
        let mut b = Budget::new(83, Duration::from_secs(10), None, at(1.0));
        let first = go(&mut b, at(1.0));
        assert!(matches!(b.admit(at(1.0)), Admit::Wait(_)), "one at a time");
        // The predecessor used 80 of this window: only 3 are left.
        b.observe(first, headers(83, 3, T0 + 10), at(1.1));
        for _ in 0..3 {
            go(&mut b, at(1.1));
        }
        assert_eq!(b.admit(at(1.2)), Admit::Wait(at(10.0) + b.margin - at(1.2)));
        // The next window starts with the full budget, one request first.
        let t = go(&mut b, at(10.3));
        assert!(matches!(b.admit(at(10.3)), Admit::Wait(_)));
        b.observe(t, headers(83, 82, T0 + 20), at(10.35));
        for _ in 0..82 {
            go(&mut b, at(10.4));
        }
        assert!(matches!(b.admit(at(10.5)), Admit::Wait(_)));
    }

    #[test]
    fn headers_lower_the_budget_before_a_429() {
        let mut b = Budget::new(100, Duration::from_secs(10), None, at(0.5));
        let t = go(&mut b, at(0.5));
        b.observe(t, headers(100, 99, T0 + 10), at(0.6));
        let tickets: Vec<_> = (0..10).map(|_| go(&mut b, at(0.6))).collect();
        // Another client took 50 meanwhile: the 1st of our 10 answers says 48 left, and
        // 9 more of ours were sent after it.
        b.observe(tickets[0], headers(100, 48, T0 + 10), at(0.7));
        assert_eq!(b.remaining, 39);
        for (i, t) in tickets.iter().enumerate().skip(1) {
            b.observe(*t, headers(100, 48 - i as u32, T0 + 10), at(0.7));
        }
        assert_eq!(b.remaining, 39);
    }

    #[test]
    fn the_settings_cap_wins_over_a_larger_announced_limit() {
        let mut b = Budget::new(83, Duration::from_secs(10), None, at(0.5));
        let t = go(&mut b, at(0.5));
        b.observe(t, headers(1666, 1665, T0 + 10), at(0.6));
        assert_eq!(b.limit, 83);
        assert_eq!(b.remaining, 82);
    }

    #[test]
    fn a_429_makes_everyone_wait_for_the_reset_and_no_longer() {
        let mut b = Budget::new(100, Duration::from_secs(10), None, at(0.5));
        let t = go(&mut b, at(0.5));
        b.observe(t, headers(100, 99, T0 + 10), at(0.6));
        let t = go(&mut b, at(0.6));
        b.observe(
            t,
            Some((
                429,
                Some(Announced {
                    limit: 100,
                    remaining: 0,
                    reset: T0 + 10,
                }),
            )),
            at(0.7),
        );
        assert_eq!(b.admit(at(2.0)), Admit::Wait(at(10.0) + b.margin - at(2.0)));
        let later = at(10.0) + b.margin;
        go(&mut b, later);
        assert_eq!(b.stats().rate_limited, 1);
    }

    #[test]
    fn an_unannounced_budget_is_learned_from_the_first_429() {
        let mut b = Budget::new(83, Duration::from_secs(10), None, at(0.5));
        let t = go(&mut b, at(0.5));
        b.observe(t, Some((200, None)), at(0.6));
        let mut tickets = vec![t];
        for _ in 0..40 {
            let t = go(&mut b, at(0.7));
            tickets.push(t);
        }
        // The server allows 40 a window: the 41st request (ticket 40) gets the 429.
        for t in &tickets[1..40] {
            b.observe(*t, Some((200, None)), at(0.8));
        }
        b.observe(tickets[40], Some((429, None)), at(0.8));
        assert_eq!(b.limit, 40);
        assert_eq!(b.admit(at(1.0)), Admit::Wait(at(10.0) + b.margin - at(1.0)));
        for _ in 0..40 {
            let later = at(10.0) + b.margin;
            go(&mut b, later);
        }
        assert!(matches!(b.admit(at(11.0)), Admit::Wait(_)));
    }

    #[test]
    fn a_persisted_window_is_not_overspent() {
        let persisted = Persisted {
            limit: 83,
            remaining: 0,
            reset_at: (T0 + 10) as i64,
        };
        let mut b = Budget::new(83, Duration::from_secs(10), Some(persisted), at(3.0));
        assert!(matches!(b.admit(at(3.0)), Admit::Wait(_)));
        let later = at(10.0) + b.margin;
        go(&mut b, later);
    }
}
