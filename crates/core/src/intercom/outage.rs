//! The outage breaker: when Intercom stops answering, delivery pauses as a whole instead of every
//! lane hammering it, and one probe at a time decides when to resume.
//!
//! The drain reports every message's end to it. A transient failure (408, 5xx, a timeout, no
//! connection) adds to a streak; anything that shows Intercom answering (a delivery, a 4xx, a
//! 429) ends the streak. [`TRIP_FAILURES`] transient failures in a row from at least two lanes
//! mean Intercom is down, not one message: the breaker opens. While it is open the drain starts
//! no message but one probe, when [`Breaker::probe_due`] says so: the first 1 s after the
//! breaker opened (or `cap` if shorter), each failed probe doubling the wait up to `cap`
//! (`intercom.outage_probe_secs`, 30 s by default). The first answer closes it.
//!
//! Pure: the caller passes the time in, so the schedule is tested without waiting.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::domain::Lane;

/// Transient failures in a row (no answer from Intercom between them), from at least
/// [`TRIP_LANES`] lanes, that open the breaker. Random faults (a few percent of requests) make
/// this many in a row across lanes rare; an outage makes it within a round of requests.
pub const TRIP_FAILURES: usize = 5;
/// Distinct lanes the streak must span: one user's message failing again and again is that
/// message's back-off, not an outage.
pub const TRIP_LANES: usize = 2;
/// The first wait before a probe (capped by the breaker's `cap`).
pub const FIRST_PROBE: Duration = Duration::from_secs(1);

/// What a report changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    None,
    /// The breaker opened: delivery pauses.
    Opened,
    /// A probe failed; the next one is this far off.
    ProbeFailed {
        next_in: Duration,
    },
    /// Intercom answered: delivery resumes after this long paused and this many failed probes.
    Closed {
        paused: Duration,
        probes: u64,
    },
}

#[derive(Debug)]
struct Open {
    since: Instant,
    next_probe: Instant,
    wait: Duration,
    /// The message (outbox seq) that is the probe now, if one runs.
    probing: Option<i64>,
    probes: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Breaker {
    cap: Duration,
    streak: usize,
    lanes: BTreeSet<Lane>,
    open: Option<Open>,
}

impl Breaker {
    /// A closed breaker whose probes are at most `cap` apart.
    pub fn new(cap: Duration) -> Breaker {
        Breaker {
            cap,
            streak: 0,
            lanes: BTreeSet::new(),
            open: None,
        }
    }

    /// Delivery is paused.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Failed probes since the breaker opened.
    pub fn probes(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| o.probes)
    }

    /// Open: when the next probe may start (`None` while one runs, or when closed).
    pub fn next_probe(&self) -> Option<Instant> {
        let open = self.open.as_ref()?;
        open.probing.is_none().then_some(open.next_probe)
    }

    /// Open, no probe running, and its time has come.
    pub fn probe_due(&self, now: Instant) -> bool {
        self.next_probe().is_some_and(|at| at <= now)
    }

    /// The message `seq` is the probe now.
    pub fn start_probe(&mut self, seq: i64) {
        if let Some(open) = self.open.as_mut() {
            open.probing = Some(seq);
        }
    }

    /// Message `seq` of `lane` failed with a transient error at `now`.
    pub fn transient(&mut self, seq: i64, lane: &Lane, now: Instant) -> Transition {
        if let Some(open) = self.open.as_mut() {
            if open.probing != Some(seq) {
                // A message that was in flight when the breaker opened.
                return Transition::None;
            }
            open.probes += 1;
            open.probing = None;
            open.wait = (open.wait * 2).min(self.cap);
            open.next_probe = now + open.wait;
            return Transition::ProbeFailed { next_in: open.wait };
        }
        self.streak += 1;
        if self.lanes.len() < TRIP_LANES {
            self.lanes.insert(lane.clone());
        }
        if self.streak >= TRIP_FAILURES && self.lanes.len() >= TRIP_LANES {
            let wait = FIRST_PROBE.min(self.cap);
            self.open = Some(Open {
                since: now,
                next_probe: now + wait,
                wait,
                probing: None,
                probes: 0,
            });
            return Transition::Opened;
        }
        Transition::None
    }

    /// A message ended with an answer from Intercom (delivered, refused, throttled): the
    /// streak ends and an open breaker closes.
    pub fn answered(&mut self, now: Instant) -> Transition {
        self.streak = 0;
        self.lanes.clear();
        match self.open.take() {
            Some(open) => Transition::Closed {
                paused: now.saturating_duration_since(open.since),
                probes: open.probes,
            },
            None => Transition::None,
        }
    }

    /// Message `seq` ended without telling anything about Intercom (interrupted, a local
    /// error): if it was the probe, the next probe may start now.
    pub fn inconclusive(&mut self, seq: i64) {
        if let Some(open) = self.open.as_mut()
            && open.probing == Some(seq)
        {
            open.probing = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trip(breaker: &mut Breaker, now: Instant) {
        for i in 0..TRIP_FAILURES as i64 {
            let lane = Lane::user(if i % 2 == 0 { "u1" } else { "u2" });
            let t = breaker.transient(i, &lane, now);
            let last = i == TRIP_FAILURES as i64 - 1;
            assert_eq!(t == Transition::Opened, last, "failure {i}");
        }
    }

    #[test]
    fn failures_of_one_lane_never_open_it() {
        let mut b = Breaker::new(Duration::from_secs(30));
        let now = Instant::now();
        for i in 0..100 {
            assert_eq!(b.transient(i, &Lane::user("u1"), now), Transition::None);
        }
        assert!(!b.is_open());
    }

    #[test]
    fn an_answer_between_failures_resets_the_streak() {
        let mut b = Breaker::new(Duration::from_secs(30));
        let now = Instant::now();
        for round in 0..10 {
            for i in 0..(TRIP_FAILURES as i64 - 1) {
                b.transient(
                    round * 10 + i,
                    &Lane::user(if i % 2 == 0 { "a" } else { "b" }),
                    now,
                );
            }
            assert_eq!(b.answered(now), Transition::None);
        }
        assert!(!b.is_open());
    }

    #[test]
    fn probes_start_at_one_second_and_double_up_to_the_cap() {
        let mut b = Breaker::new(Duration::from_secs(30));
        let start = Instant::now();
        trip(&mut b, start);
        assert!(b.is_open());
        assert_eq!(b.next_probe(), Some(start + Duration::from_secs(1)));
        assert!(!b.probe_due(start));
        // A message in flight when it opened fails too: nothing changes.
        assert_eq!(b.transient(99, &Lane::user("u3"), start), Transition::None);

        let mut now = start + Duration::from_secs(1);
        let mut waits = Vec::new();
        for probe in 0..8 {
            assert!(b.probe_due(now));
            b.start_probe(1000 + probe);
            assert_eq!(b.next_probe(), None, "one probe at a time");
            let Transition::ProbeFailed { next_in } =
                b.transient(1000 + probe, &Lane::user("u1"), now)
            else {
                panic!("a failed probe");
            };
            waits.push(next_in.as_secs());
            now += next_in;
        }
        assert_eq!(waits, vec![2, 4, 8, 16, 30, 30, 30, 30]);
        assert_eq!(b.probes(), 8);

        b.start_probe(2000);
        let closed = b.answered(now);
        assert_eq!(
            closed,
            Transition::Closed {
                paused: now - start,
                probes: 8
            }
        );
        assert!(!b.is_open());
    }

    #[test]
    fn a_short_cap_bounds_the_first_probe_too() {
        let mut b = Breaker::new(Duration::from_millis(200));
        let now = Instant::now();
        trip(&mut b, now);
        assert_eq!(b.next_probe(), Some(now + Duration::from_millis(200)));
    }

    #[test]
    fn an_inconclusive_probe_frees_the_slot() {
        let mut b = Breaker::new(Duration::from_secs(30));
        let now = Instant::now();
        trip(&mut b, now);
        b.start_probe(7);
        assert_eq!(b.next_probe(), None);
        b.inconclusive(7);
        assert!(b.next_probe().is_some());
        assert!(b.is_open());
    }
}
