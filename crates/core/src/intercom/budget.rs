//! The rate budget every Intercom request goes through: a budget per fixed window, corrected
//! from `X-RateLimit-*` headers and paced across the window, so delivery slows down before a 429
//! instead of after, even when other clients of the same Intercom app spend the same budget.
//!
//! Intercom counts requests in fixed windows (10 s, aligned to the epoch) and announces on every
//! response the window's limit, what is left of it and when it resets. [`Budget`] is the pure
//! state machine (time comes in as an argument, so tests drive it); `RateLimiter` (the daemon
//! crate's `intercom::ratelimit`) shares one budget between every request in flight and makes
//! callers wait.
//!
//! - Budget per window: `min(intercom.rate_limit, X-RateLimit-Limit)`; with the default
//!   `intercom.rate_limit = "auto"` ([`RATE_LIMIT_AUTO`]) there is no cap of our own and the budget
//!   is the one Intercom announces (a private app: 10,000 a minute, about 1,666 per 10 s). Each
//!   request takes one unit when it is sent; a response lowers what is left to what Intercom
//!   says is left, less the requests sent after it that may not have arrived yet.
//! - Pacing: within an announced window, requests are admitted at `remaining / time left`, so
//!   what is left is spread over the window instead of spent in a burst. Intercom's limit is per
//!   app: other integrations (or a second audience-sync) spend the same budget, and every
//!   response's `X-RateLimit-Remaining` shows it. Clients that each pace at what is left over
//!   the time left share a window without exhausting it before its end (with n clients what is
//!   left decays like `(time left / window)^n`). While the budget looks unshared a small burst is
//!   allowed on top of the pace; once other clients' use shows (the window emptied faster than
//!   our own requests explain, or a 429), requests are strictly paced and the last few units of
//!   each window are left alone, so that racing clients meet at that reserve, not at a 429.
//! - A window is *confirmed* by a response naming its reset time. An unconfirmed window (a new
//!   process, or the first moments after a reset) lets one request through and waits for its
//!   headers, so a new process never overspends a window its predecessor used, and a clock that
//!   runs ahead of Intercom's never bursts into the old window.
//! - A 429 empties the window: everybody waits until its reset plus a small margin, jittered per
//!   window so competing clients do not all fire at the boundary, and nobody sleeps longer.
//! - When Intercom does not announce the budget, windows are assumed aligned to the epoch with
//!   the configured length and spent as a burst; the first 429 teaches the real budget (the
//!   requests the window took before it), and later windows stay within it. A number in
//!   `intercom.rate_limit` is the first guess; `"auto"` has none, so it assumes the Personas
//!   destination's budget, [`AUTO_UNANNOUNCED_LIMIT`] (83) per `intercom.rate_limit_window_secs`:
//!   a twentieth of what Intercom documents for an app (10,000 a minute), so the guess is safe
//!   (a guess above the real budget would cost a window of 429s), and a real budget below it
//!   is learned from the first 429 as above. Learning only ever lowers it: an unannounced
//!   budget larger than 83 is not discovered (set the number to use it).
//! - In flight: [`in_flight_target`] is how many requests the drain keeps going so that the
//!   budget is spent at the latency measured (budget rate × latency, with headroom, within
//!   `[1, intercom.max_concurrency]`); the budget still admits each of them and keeps the pace.

use std::collections::BTreeSet;
use std::time::Duration;

/// `intercom.rate_limit = "auto"` in `IntercomSettings::rate_limit`: no cap of our own, the
/// budget is the one Intercom announces (`X-RateLimit-Limit` per window). As a cap it is
/// "unbounded", so `min(cap, announced)` is the announced budget; when Intercom announces
/// nothing, the budget assumes the Personas budget instead ([`AUTO_UNANNOUNCED_LIMIT`]).
pub const RATE_LIMIT_AUTO: u32 = u32::MAX;

/// The budget `intercom.rate_limit = "auto"` assumes per window while Intercom announces none
/// (no `X-RateLimit-*` headers): the Personas destination's 83 per 10 s, far below what
/// Intercom documents for any app. A smaller real budget is learned from the first 429.
pub const AUTO_UNANNOUNCED_LIMIT: u32 = 83;

/// [`in_flight_target`]: requests in flight per request the latency needs (a quarter more, for
/// the pace to catch up after the one-request start of every window).
const IN_FLIGHT_HEADROOM: f64 = 1.25;
/// [`in_flight_target`]: a couple more for the time a message spends between its requests
/// (the database, the coordinator recording the last one).
const IN_FLIGHT_EXTRA: usize = 2;

/// How many requests to keep in flight so that a budget of `rate_per_sec` is spent when a
/// request takes `latency` (Little's law: in flight = rate × latency), with a quarter more and
/// `IN_FLIGHT_EXTRA` (2) on top, within `[1, max]`. Before any latency was measured: one (a window
/// carries one request until an answer is seen anyway). More in flight than this would only
/// wait in the limiter; fewer leave the budget unspent.
pub fn in_flight_target(rate_per_sec: f64, latency: Option<Duration>, max: usize) -> usize {
    let max = max.max(1);
    let Some(latency) = latency else {
        return 1;
    };
    let needed = rate_per_sec.max(0.0) * latency.as_secs_f64();
    if !needed.is_finite() {
        return max;
    }
    let target = (needed * IN_FLIGHT_HEADROOM).ceil() as usize;
    target.saturating_add(IN_FLIGHT_EXTRA).clamp(1, max)
}

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
    /// `intercom.rate_limit`: never more than this per window, whatever Intercom announces
    /// ([`RATE_LIMIT_AUTO`]: no cap, the announced budget).
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
    /// The latest reset a response named (or the predecessor's, persisted).
    confirmed_end: Duration,
    mode: Mode,
    /// Tickets of requests sent and not answered yet.
    in_flight: BTreeSet<u64>,
    next_ticket: u64,
    /// The first ticket of the current window (to learn an unannounced budget from a 429).
    window_first_ticket: u64,
    /// Wait at least this long past a reset before sending into the new window.
    margin: Duration,
    /// This window's extra wait past `margin` (drawn in `[0, margin)` for every window), so
    /// clients sharing the budget do not all fire at the boundary.
    jitter: Duration,
    /// When the last request of the current window was sent (pacing).
    last_sent: Option<Duration>,
    /// Requests sent in the current window.
    sent_in_window: u32,
    /// Units of the current window that responses showed spent by someone else.
    foreign: u32,
    /// How many clients like us the others amount to, from the last window we sent much in.
    others: u32,
    /// Other clients were seen spending the budget: pace strictly and keep a reserve until then.
    contended_until: Duration,
    /// xorshift state for the jitter.
    rng: u64,
    stats: LimiterStats,
}

/// The most requests a window sends at once ahead of the pace (see [`Budget::burst`]).
const MAX_BURST: u32 = 10;

/// How long past a reset to wait before sending into the new window (clocks differ a little).
fn default_margin(window: Duration) -> Duration {
    (window / 40).clamp(Duration::from_millis(25), Duration::from_millis(250))
}

impl Budget {
    /// A fresh budget of `cap` requests per `window` ([`RATE_LIMIT_AUTO`]: what Intercom
    /// announces), optionally seeded with what a previous process saw last.
    pub fn new(cap: u32, window: Duration, persisted: Option<Persisted>, now: Duration) -> Budget {
        let cap = cap.max(1);
        let margin = default_margin(window);
        // Until an answer announces the budget: the cap, or for "auto" the safe assumption
        // (which only matters if the answer announces nothing).
        let first_guess = if cap == RATE_LIMIT_AUTO {
            AUTO_UNANNOUNCED_LIMIT
        } else {
            cap
        };
        let mut budget = Budget {
            cap,
            window,
            limit: first_guess,
            window_end: Duration::ZERO,
            remaining: first_guess,
            confirmed: false,
            confirmed_end: Duration::ZERO,
            mode: Mode::Announced,
            in_flight: BTreeSet::new(),
            next_ticket: 0,
            window_first_ticket: 0,
            margin,
            jitter: Duration::ZERO,
            last_sent: None,
            sent_in_window: 0,
            foreign: 0,
            others: 1,
            contended_until: Duration::ZERO,
            rng: (now.as_nanos() as u64) ^ 0x9e37_79b9_7f4a_7c15 | 1,
            stats: LimiterStats::default(),
        };
        budget.draw_jitter();
        if let Some(p) = persisted {
            let reset = Duration::from_secs(p.reset_at.max(0) as u64);
            if reset > now {
                // The predecessor's window is still running: spend only what it left.
                budget.limit = p.limit.clamp(1, cap);
                budget.window_end = reset;
                budget.confirmed_end = reset;
                budget.remaining = p.remaining.min(budget.limit);
            }
        }
        budget
    }

    pub fn stats(&self) -> LimiterStats {
        self.stats
    }

    /// The budget believed, in requests per second (the limit per window over the window).
    pub fn rate_per_sec(&self) -> f64 {
        f64::from(self.limit) / self.window.as_secs_f64().max(0.001)
    }

    /// When requests may go into the window after the current one.
    pub fn opens_at(&self) -> Duration {
        self.window_end + self.margin + self.jitter
    }

    /// Whether other clients were seen spending this budget lately.
    pub fn contended(&self, now: Duration) -> bool {
        now < self.contended_until
    }

    /// A new extra wait for the next window, in `[0, margin)`.
    fn draw_jitter(&mut self) {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        self.jitter = self.margin.mul_f64(unit);
    }

    /// Units of each window left alone while the budget is shared: racing clients meet there
    /// rather than at a 429.
    fn reserve(&self) -> u32 {
        // One unit for every other client that may send its last one at the same moment.
        let others = if self.sent_in_window >= 5 {
            self.others_now()
        } else {
            self.others
        };
        others
            .max(self.limit / 50)
            .clamp(1, (self.limit / 10).max(1))
    }

    /// Others' use of this window in multiples of ours.
    fn others_now(&self) -> u32 {
        self.foreign.div_ceil(self.sent_in_window.max(1))
    }

    /// Requests sent ahead of the pace that an unshared budget allows (a small burst): a tenth
    /// of the budget, at most [`MAX_BURST`]. Requests sent at the same moment reach Intercom in
    /// any order, and an answer's correction (less the requests sent after it) then counts those
    /// that overtook it twice: a burst of a tenth of 1,666 left tens of units of every window
    /// unspent.
    fn burst(&self) -> u32 {
        (self.limit / 10).clamp(1, MAX_BURST)
    }

    /// Other clients spend the budget: strict pacing and the reserve for a while.
    fn mark_contended(&mut self) {
        self.contended_until = self.window_end + self.window * 3;
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
        if now >= self.opens_at() {
            // The window is over: a new one starts with the full budget, unconfirmed.
            self.window_end = self.next_window_end(now);
            self.start_window(self.limit, self.next_ticket);
            self.confirmed = false;
        }
        if self.remaining == 0 {
            return Admit::Wait(self.opens_at().saturating_sub(now));
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
        if self.mode == Mode::Announced
            && let Some(wait) = self.pace(now)
        {
            return Admit::Wait(wait);
        }
        // A paced request counts as sent at its slot when it is at most one interval late (a
        // timer that fired late, a worker busy for a moment), so such delays do not add up over
        // a window of a thousand slots and leave its end unspent; later than that (nobody was
        // waiting), the pace starts again from now, with no catching up in a burst.
        let sent_at = match self.slot(now) {
            Some((slot, interval))
                if self.mode == Mode::Announced && now.saturating_sub(slot) <= interval =>
            {
                slot.min(now)
            }
            _ => now,
        };
        self.last_sent = Some(sent_at);
        self.sent_in_window += 1;
        self.remaining -= 1;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.in_flight.insert(ticket);
        self.stats.sent += 1;
        Admit::Go(Ticket(ticket))
    }

    /// Two resets `between` apart: Intercom's windows are at most that long (epoch-aligned
    /// windows are a whole number of windows apart), so a configured window longer than the real
    /// one is corrected after two windows.
    fn learn_window(&mut self, between: Duration) {
        if between >= Duration::from_secs(1) && between < self.window {
            self.window = between;
            self.margin = self.margin.min(default_margin(between));
            self.jitter = self.jitter.min(self.margin);
        }
    }

    /// A new window with `remaining` units, whose first request is `first_ticket`.
    fn start_window(&mut self, remaining: u32, first_ticket: u64) {
        if self.sent_in_window >= 5 {
            self.others = self.others_now().max(1);
        }
        self.remaining = remaining;
        self.window_first_ticket = first_ticket;
        self.last_sent = None;
        self.sent_in_window = 0;
        self.foreign = 0;
        self.draw_jitter();
    }

    /// How long to wait before the next request to keep the pace, if at all: what is left
    /// (less the reserve while the budget is shared) spread evenly over the time left since the
    /// last request; while the budget is not shared, the first few requests of a window go at
    /// once.
    fn pace(&self, now: Duration) -> Option<Duration> {
        let contended = self.contended(now);
        let reserve = if contended { self.reserve() } else { 0 };
        let spendable = self.remaining.saturating_sub(reserve);
        if spendable == 0 {
            return Some(
                self.opens_at()
                    .saturating_sub(now)
                    .max(Duration::from_millis(1)),
            );
        }
        let (slot, _) = self.slot(now)?;
        (now < slot).then(|| slot - now)
    }

    /// When the next request is due by the pace, and the interval since the last one: what is
    /// left to spend (less the reserve while the budget is shared) spread evenly over the time
    /// left since the last request. `None` while requests go unpaced (the first few of a window
    /// when the budget is not shared, or nothing sent yet in the window).
    fn slot(&self, now: Duration) -> Option<(Duration, Duration)> {
        let contended = self.contended(now);
        let reserve = if contended { self.reserve() } else { 0 };
        let spendable = self.remaining.saturating_sub(reserve);
        if spendable == 0 || (!contended && self.sent_in_window < self.burst()) {
            return None;
        }
        let last = self.last_sent?;
        let interval = self.window_end.saturating_sub(last) / (spendable + 1);
        Some((last + interval, interval))
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
                // A reset later than any named before is a window Intercom has just started.
                let newest = reset > self.confirmed_end;
                if newest {
                    if self.confirmed_end > Duration::ZERO {
                        self.learn_window(reset - self.confirmed_end);
                    }
                    self.confirmed_end = reset;
                }
                if reset > self.window_end || (newest && reset < self.window_end) {
                    // Intercom is in a newer window than we thought (or its windows are shorter
                    // than `intercom.rate_limit_window_secs`, and we ran ahead of it).
                    self.window_end = reset;
                    self.start_window(left, ticket.0);
                    self.confirmed = true;
                } else if reset == self.window_end {
                    if left < self.remaining && self.confirmed {
                        // The window emptied faster than our own requests explain: someone else
                        // spends this budget (or our requests overtook each other, by a unit
                        // or two).
                        self.foreign += self.remaining - left;
                        if self.foreign >= (limit / 20).max(3) {
                            self.mark_contended();
                        }
                    }
                    // The window's first answer replaces our guess (for "auto", the assumed
                    // budget of a new process); later ones only lower what is left.
                    self.remaining = if self.confirmed {
                        self.remaining.min(left)
                    } else {
                        left
                    };
                    self.confirmed = true;
                }
                if rate_limited {
                    if reset >= self.window_end {
                        self.window_end = reset;
                        self.remaining = 0;
                    }
                    self.mark_contended();
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
                    if self.cap == RATE_LIMIT_AUTO && self.limit > AUTO_UNANNOUNCED_LIMIT {
                        // "auto" with nothing announced: no more than the safe assumption (an
                        // earlier announced budget may no longer hold).
                        self.limit = AUTO_UNANNOUNCED_LIMIT;
                        self.remaining = self
                            .remaining
                            .min(AUTO_UNANNOUNCED_LIMIT.saturating_sub(self.sent_in_window));
                    }
                }
            }
        }
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

    /// The first admission at or after `now`, and when it came.
    fn go_soon(budget: &mut Budget, mut now: Duration) -> (Ticket, Duration) {
        loop {
            match budget.admit(now) {
                Admit::Go(t) => return (t, now),
                Admit::Wait(w) => now += w,
            }
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
        assert_eq!(b.admit(at(1.2)), Admit::Wait(b.opens_at() - at(1.2)));
        assert!(b.opens_at() >= at(10.0) + b.margin && b.opens_at() < at(10.0) + b.margin * 2);
        // The next window starts with the full budget, one request first.
        let open = b.opens_at();
        let t = go(&mut b, open);
        assert!(matches!(b.admit(open), Admit::Wait(_)));
        b.observe(t, headers(83, 82, T0 + 20), open);
        // A small burst, then the rest paced over the window; all of it before the reset.
        let mut now = open;
        let mut times = Vec::new();
        for _ in 0..82 {
            let (_, when) = go_soon(&mut b, now);
            times.push(when);
            now = when;
        }
        assert!(times[..7].iter().all(|t| *t == open), "{times:?}");
        assert!(times[7] > open);
        assert!(*times.last().unwrap() < at(20.0), "{times:?}");
        assert!(*times.last().unwrap() > at(19.0), "{times:?}");
        assert!(matches!(b.admit(now), Admit::Wait(_)));
    }

    #[test]
    fn pacing_spreads_what_is_left_over_the_time_left() {
        let mut b = Budget::new(100, Duration::from_secs(10), None, at(0.0));
        let t = go(&mut b, at(0.0));
        b.observe(t, headers(100, 99, T0 + 10), at(0.0));
        for _ in 0..b.burst() - 1 {
            go(&mut b, at(0.0));
        }
        // 90 left over 10 s: one every 10 / 91 s.
        let Admit::Wait(wait) = b.admit(at(0.0)) else {
            panic!("paced")
        };
        assert_eq!(wait, Duration::from_secs(10) / 91);
        // Someone else took 40 meanwhile: the pace slows down.
        b.observe(Ticket(1), headers(100, 50, T0 + 10), at(0.0));
        let Admit::Wait(slower) = b.admit(at(0.0)) else {
            panic!("paced")
        };
        assert!(slower > wait, "{slower:?} {wait:?}");
    }

    #[test]
    fn headers_lower_the_budget_before_a_429() {
        let mut b = Budget::new(100, Duration::from_secs(10), None, at(0.5));
        let t = go(&mut b, at(0.5));
        b.observe(t, headers(100, 99, T0 + 10), at(0.6));
        let mut now = at(0.6);
        let tickets: Vec<_> = (0..10)
            .map(|_| {
                let (t, when) = go_soon(&mut b, now);
                now = when;
                t
            })
            .collect();
        assert!(!b.contended(now));
        // Another client took 50 meanwhile: the 1st of our 10 answers says 48 left, and
        // 9 more of ours were sent after it.
        b.observe(tickets[0], headers(100, 48, T0 + 10), now);
        assert_eq!(b.remaining, 39);
        for (i, t) in tickets.iter().enumerate().skip(1) {
            b.observe(*t, headers(100, 48 - i as u32, T0 + 10), now);
        }
        assert_eq!(b.remaining, 39);
        // The budget is shared: strict pacing and a reserve from now on.
        assert!(b.contended(now));
        assert!(b.contended(at(25.0)));
        let mut sent = 0;
        while now < at(10.0) {
            match b.admit(now) {
                Admit::Go(_) => sent += 1,
                Admit::Wait(w) => now += w,
            }
        }
        assert_eq!(sent, 39 - b.reserve());
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
    fn a_shorter_window_than_the_settings_is_learned() {
        // Settings: 10 s windows; Intercom (or its sandbox): 2 s.
        let mut b = Budget::new(83, Duration::from_secs(10), None, at(0.5));
        let t = go(&mut b, at(0.5));
        b.observe(t, headers(50, 49, T0 + 2), at(0.5));
        assert_eq!(b.window_end, at(2.0));
        let mut now = at(0.5);
        for _ in 0..49 {
            now = go_soon(&mut b, now).1;
        }
        assert!(now < at(2.0));
        let (t, now) = go_soon(&mut b, now);
        assert!(now >= at(2.0) && now < at(2.6), "{now:?}");
        b.observe(t, headers(50, 49, T0 + 4), now);
        assert_eq!(b.window, Duration::from_secs(2));
        assert_eq!(b.window_end, at(4.0));
        assert_eq!(b.next_window_end(at(4.1)), at(6.0));
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
        assert_eq!(b.admit(at(2.0)), Admit::Wait(b.opens_at() - at(2.0)));
        // Past the reset by the margin and this window's jitter (below the margin), no more.
        assert!(b.opens_at() >= at(10.0) + b.margin);
        assert!(b.opens_at() < at(10.0) + b.margin * 2);
        assert!(b.contended(at(2.0)));
        let later = b.opens_at();
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
        assert_eq!(b.admit(at(1.0)), Admit::Wait(b.opens_at() - at(1.0)));
        let later = b.opens_at();
        for _ in 0..40 {
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
        let later = b.opens_at();
        go(&mut b, later);
    }

    /// A simulated request: client, ticket, when it reaches Intercom, when it is answered, and
    /// the answer (once it reached Intercom).
    type InFlight = (
        usize,
        Ticket,
        Duration,
        Duration,
        Option<(u16, Option<Announced>)>,
    );

    /// What a simulated Intercom counted: requests accepted per window and 429s.
    struct Simulated {
        accepted: Vec<u64>,
        rejected: u64,
        /// When the 429s arrived (seconds into the simulation), for failure messages.
        rejected_at: Vec<f64>,
    }

    /// `clients` processes, each with `lanes` requests always wanting to go, share one budget of
    /// `limit` per `window_secs` for `windows` windows; a request reaches Intercom `latency` / 2
    /// after it is sent and is answered `latency` after.
    fn simulate(
        clients: usize,
        lanes: usize,
        limit: u32,
        window_secs: u64,
        windows: u64,
    ) -> Simulated {
        simulate_at(
            83,
            Duration::from_millis(20),
            &|_| lanes,
            clients,
            limit,
            window_secs,
            windows,
        )
    }

    /// [`simulate`] with the settings' cap, the latency, and the requests each client keeps in
    /// flight (asked of its budget at every step).
    fn simulate_at(
        cap: u32,
        latency: Duration,
        lanes: &dyn Fn(&Budget) -> usize,
        clients: usize,
        limit: u32,
        window_secs: u64,
        windows: u64,
    ) -> Simulated {
        let step = Duration::from_millis(1);
        let start = at(0.0);
        let end = start + Duration::from_secs(window_secs * windows);
        let mut budgets: Vec<Budget> = (0..clients)
            .map(|c| Budget::new(cap, Duration::from_secs(10), None, start + step * c as u32))
            .collect();
        // In flight: (client, ticket, arrives, answered, answer)
        let mut flight: Vec<InFlight> = Vec::new();
        let mut accepted = vec![0u64; windows as usize + 1];
        let mut rejected = 0;
        let mut rejected_at = Vec::new();
        let mut now = start;
        while now < end {
            // Arrivals, in order.
            for f in flight.iter_mut().filter(|f| f.2 <= now && f.4.is_none()) {
                let index = f.2.as_secs() / window_secs;
                let slot = &mut accepted[((index * window_secs - T0) / window_secs) as usize];
                let reset = (index + 1) * window_secs;
                f.4 = if *slot < u64::from(limit) {
                    *slot += 1;
                    headers(limit, limit - *slot as u32, reset)
                } else {
                    rejected += 1;
                    rejected_at.push(f.2.as_secs_f64() - T0 as f64);
                    Some((
                        429,
                        Some(Announced {
                            limit,
                            remaining: 0,
                            reset,
                        }),
                    ))
                };
            }
            flight.retain(|f| {
                if f.3 <= now {
                    budgets[f.0].observe(f.1, f.4, now);
                    false
                } else {
                    true
                }
            });
            for (c, budget) in budgets.iter_mut().enumerate() {
                let busy = flight.iter().filter(|f| f.0 == c).count();
                for _ in busy..lanes(budget) {
                    match budget.admit(now) {
                        Admit::Go(t) => flight.push((c, t, now + latency / 2, now + latency, None)),
                        Admit::Wait(_) => break,
                    }
                }
            }
            now += step;
        }
        accepted.pop();
        Simulated {
            accepted,
            rejected,
            rejected_at,
        }
    }

    #[test]
    fn one_client_uses_the_whole_budget_without_a_429() {
        let s = simulate(1, 8, 50, 2, 10);
        assert_eq!(s.rejected, 0);
        // The first window is where the process started (it opens with one request).
        let used: u64 = s.accepted[1..].iter().sum();
        assert!(used * 100 >= 50 * 9 * 97, "{:?}", s.accepted);
    }

    #[test]
    fn clients_sharing_a_budget_converge_without_a_storm_of_429s() {
        for clients in [2, 3, 4] {
            let s = simulate(clients, 8, 50, 2, 15);
            let used: u64 = s.accepted[1..].iter().sum();
            let requests: u64 = s.accepted.iter().sum::<u64>() + s.rejected;
            assert!(
                s.rejected * 100 <= requests,
                "{clients} clients: {} 429s of {requests}, at {:?}",
                s.rejected,
                s.rejected_at
            );
            assert!(
                used * 100 >= 50 * 14 * 90,
                "{clients} clients: {:?}",
                s.accepted
            );
        }
    }

    #[test]
    fn auto_takes_the_budget_intercom_announces() {
        let mut b = Budget::new(RATE_LIMIT_AUTO, Duration::from_secs(10), None, at(0.5));
        // Until an answer is seen, one request.
        let t = go(&mut b, at(0.5));
        assert!(matches!(b.admit(at(0.5)), Admit::Wait(_)));
        b.observe(t, headers(1666, 1665, T0 + 10), at(0.6));
        assert_eq!(b.limit, 1666);
        assert_eq!(b.remaining, 1665);
        assert!((b.rate_per_sec() - 166.6).abs() < 1e-9);
        // The next window again opens with one request, then the announced budget.
        let open = b.opens_at();
        let t = go(&mut b, open);
        assert!(matches!(b.admit(open), Admit::Wait(_)));
        b.observe(t, headers(1666, 1665, T0 + 20), open);
        let mut now = open;
        let mut sent = 1;
        while now < at(20.0) {
            match b.admit(now) {
                Admit::Go(_) => sent += 1,
                Admit::Wait(w) => now += w,
            }
        }
        assert_eq!(sent, 1666);
        // A number still caps it.
        let mut b = Budget::new(83, Duration::from_secs(10), None, at(0.5));
        let t = go(&mut b, at(0.5));
        b.observe(t, headers(1666, 1665, T0 + 10), at(0.6));
        assert_eq!(b.limit, 83);
    }

    #[test]
    fn auto_without_headers_assumes_the_personas_budget_then_learns_from_a_429() {
        let mut b = Budget::new(RATE_LIMIT_AUTO, Duration::from_secs(10), None, at(0.5));
        let t = go(&mut b, at(0.5));
        b.observe(t, Some((200, None)), at(0.6));
        assert_eq!(b.limit, AUTO_UNANNOUNCED_LIMIT);
        let mut sent = 1;
        while let Admit::Go(_) = b.admit(at(0.7)) {
            sent += 1;
        }
        assert_eq!(
            sent, AUTO_UNANNOUNCED_LIMIT,
            "a burst of the assumed budget, no more"
        );
        // A server that allows only 40: the 41st request of a window meets the 429.
        let open = b.opens_at();
        let tickets: Vec<Ticket> = (0..50).map(|_| go(&mut b, open)).collect();
        for t in &tickets[..40] {
            b.observe(*t, Some((200, None)), open);
        }
        b.observe(tickets[40], Some((429, None)), open);
        assert_eq!(b.limit, 40);
        let next = b.opens_at();
        for _ in 0..40 {
            go(&mut b, next);
        }
        assert!(matches!(b.admit(next), Admit::Wait(_)));

        // A budget persisted from an announcing Intercom does not hold once headers are gone.
        let persisted = Persisted {
            limit: 1666,
            remaining: 1600,
            reset_at: (T0 + 10) as i64,
        };
        let mut b = Budget::new(
            RATE_LIMIT_AUTO,
            Duration::from_secs(10),
            Some(persisted),
            at(2.0),
        );
        assert_eq!(b.limit, 1666);
        let t = go(&mut b, at(2.0));
        b.observe(t, Some((200, None)), at(2.1));
        assert_eq!(b.limit, AUTO_UNANNOUNCED_LIMIT);
        assert!(b.remaining < AUTO_UNANNOUNCED_LIMIT);
    }

    #[test]
    fn in_flight_is_budget_rate_times_latency_within_bounds() {
        let ms = Duration::from_millis;
        // 1,666 per 10 s: 25 needed at 150 ms, with headroom 32 + 2.
        assert_eq!(in_flight_target(166.6, Some(ms(150)), 64), 34);
        assert_eq!(in_flight_target(166.6, Some(ms(50)), 64), 13);
        // 300 ms needs 50: capped by intercom.max_concurrency.
        assert_eq!(in_flight_target(166.6, Some(ms(300)), 64), 64);
        assert_eq!(in_flight_target(166.6, Some(ms(300)), 100), 65);
        // The Personas budget at 20 ms: a request or two is plenty.
        assert_eq!(in_flight_target(8.3, Some(ms(20)), 64), 3);
        // Bounds: never 0, never above the maximum, one before anything is measured.
        assert_eq!(in_flight_target(0.0, Some(ms(100)), 64), 2);
        assert_eq!(in_flight_target(166.6, Some(Duration::ZERO), 64), 2);
        assert_eq!(in_flight_target(166.6, Some(ms(150)), 0), 1);
        assert_eq!(in_flight_target(166.6, Some(ms(150)), 1), 1);
        assert_eq!(in_flight_target(166.6, None, 64), 1);
        assert_eq!(in_flight_target(f64::INFINITY, Some(ms(10)), 64), 64);
        assert_eq!(
            in_flight_target(1e12, Some(Duration::from_secs(30)), 64),
            64
        );
        // Grows with the latency and with the budget.
        let mut last = 0;
        for latency in [10, 50, 100, 150, 200, 300] {
            let n = in_flight_target(166.6, Some(ms(latency)), 1000);
            assert!(n > last, "{latency} ms: {n}");
            last = n;
        }
        assert!(
            in_flight_target(8.3, Some(ms(150)), 64) < in_flight_target(166.6, Some(ms(150)), 64)
        );
    }

    #[test]
    fn the_in_flight_target_fills_an_announced_budget_at_any_latency() {
        for latency in [50, 150, 300] {
            let latency = Duration::from_millis(latency);
            let s = simulate_at(
                RATE_LIMIT_AUTO,
                latency,
                &|b: &Budget| in_flight_target(b.rate_per_sec(), Some(latency), 64),
                1,
                1666,
                10,
                5,
            );
            assert_eq!(s.rejected, 0, "{latency:?}: 429s at {:?}", s.rejected_at);
            let used: u64 = s.accepted[1..].iter().sum();
            assert!(used * 100 >= 1666 * 4 * 97, "{latency:?}: {:?}", s.accepted);
        }
        // A fixed 8 in flight cannot at 150 ms: at most 8 / 0.15 s = 53 a second of 166.
        let latency = Duration::from_millis(150);
        let s = simulate_at(RATE_LIMIT_AUTO, latency, &|_| 8, 1, 1666, 10, 3);
        let used: u64 = s.accepted[1..].iter().sum();
        assert!(used * 100 < 1666 * 2 * 40, "{:?}", s.accepted);
    }

    #[test]
    fn a_large_budget_bursts_little_and_late_timers_do_not_add_up() {
        let mut b = Budget::new(RATE_LIMIT_AUTO, Duration::from_secs(10), None, at(0.0));
        let t = go(&mut b, at(0.0));
        b.observe(t, headers(1666, 1665, T0 + 10), at(0.3));
        // Requests sent together reach Intercom in any order: only a few at once.
        let mut now = at(0.3);
        let mut sent = 1;
        while let Admit::Go(_) = b.admit(now) {
            sent += 1;
        }
        assert_eq!(sent, MAX_BURST, "the window's first request and the burst");
        // Every waiting request is admitted 2 ms after its slot (a timer firing late, a busy
        // worker): the lateness does not add up, the whole window is spent before its end.
        while now < at(10.0) {
            match b.admit(now) {
                Admit::Go(_) => sent += 1,
                Admit::Wait(w) => now += w + Duration::from_millis(2),
            }
        }
        assert_eq!(sent, 1666);
        // Nobody waiting for a while: the pace starts again from then, without a burst.
        let open = b.opens_at();
        let t = go(&mut b, open);
        b.observe(t, headers(1666, 1665, T0 + 20), open);
        for _ in 1..MAX_BURST {
            go(&mut b, open);
        }
        assert!(matches!(b.admit(open), Admit::Wait(_)));
        let idle = open + Duration::from_secs(2);
        go(&mut b, idle);
        assert!(matches!(b.admit(idle), Admit::Wait(_)));
    }
}
