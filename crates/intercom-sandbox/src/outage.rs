//! Outage windows: while one lasts, every API request is refused the way a down Intercom refuses.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::error::SandboxError;
use crate::snapshot::OutageCounters;

/// An Intercom outage: for `length` (or until ended by hand), every API request is refused
/// before authentication, before rate limiting and before its effect. Nothing a refused request
/// asks for is applied, and it does not count toward the rate-limit window.
///
/// Outages run on real time (`std::time::Instant`), as latency does, not on the sandbox
/// [`Clock`](crate::Clock): a manual clock neither starts nor ends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// How requests are refused.
    pub kind: OutageKind,
    /// How long the outage lasts once begun; `None` lasts until it is ended by hand
    /// (`SandboxHandle::end_outage` or `DELETE /_sandbox/outage`).
    pub length: Option<Duration>,
}

impl Outage {
    /// An outage that lasts until it is ended by hand.
    pub fn until_ended(kind: OutageKind) -> Outage {
        Outage { kind, length: None }
    }

    /// An outage that ends by itself once `length` of real time has passed since it began.
    pub fn lasting(kind: OutageKind, length: Duration) -> Outage {
        Outage {
            kind,
            length: Some(length),
        }
    }
}

/// How an outage refuses requests. Everything here comes from Intercom's load balancers, not from
/// its API: no `error.list` body and no `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutageKind {
    /// 502, 503, 504, 502, … in turn: 502 and 504 as an HTML page, 503 as plain text.
    Errors,
    /// The connection is closed without any response, as a dropped-connection fault does.
    Drops,
    /// The two alternate, starting with an error: error, drop, error, drop, … (the errors
    /// rotate through 502, 503, 504 as with [`OutageKind::Errors`]).
    Mixed,
}

impl OutageKind {
    /// The name used on the command line and by `POST /_sandbox/outage`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutageKind::Errors => "errors",
            OutageKind::Drops => "drops",
            OutageKind::Mixed => "mixed",
        }
    }
}

impl fmt::Display for OutageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutageKind {
    type Err = SandboxError;

    /// `errors`, `drops` or `mixed`.
    fn from_str(name: &str) -> Result<OutageKind, SandboxError> {
        match name {
            "errors" => Ok(OutageKind::Errors),
            "drops" => Ok(OutageKind::Drops),
            "mixed" => Ok(OutageKind::Mixed),
            other => Err(SandboxError::Config(format!(
                "an outage kind is errors, drops or mixed, not {other:?}"
            ))),
        }
    }
}

/// An outage that begins by itself once `after_requests` API requests have been answered, so a
/// test can put it at a fixed point of a sync. It begins at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledOutage {
    /// API requests answered (any status, dropped connections included, as counted in
    /// `total_requests`) before the outage begins; `0` begins it when the sandbox starts.
    pub after_requests: u64,
    /// The outage to begin; its `length` is measured from the moment it begins.
    pub outage: Outage,
}

/// How an outage refuses one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Answer with this load-balancer status.
    Status(StatusCode),
    /// Close the connection without a response.
    Drop,
}

/// The statuses an [`OutageKind::Errors`] outage answers with, in turn.
const STATUSES: [StatusCode; 3] = [
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// The outage under way, if any, and the scheduled one still to come. Every method takes the
/// counters it keeps up to date and the current instant, so the logic is testable without sleeps.
#[derive(Debug)]
pub(crate) struct Outages {
    scheduled: Option<ScheduledOutage>,
    current: Option<Running>,
}

#[derive(Debug)]
struct Running {
    outage: Outage,
    began: Instant,
    /// Requests refused by this outage so far.
    refused: u64,
}

impl Running {
    /// Whether the outage has run its length by `now`.
    fn over(&self, now: Instant) -> bool {
        self.outage
            .length
            .is_some_and(|length| now.saturating_duration_since(self.began) >= length)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Outages {
    /// No outage under way; `scheduled` waits for its request count.
    pub fn new(scheduled: Option<ScheduledOutage>) -> Outages {
        Outages {
            scheduled,
            current: None,
        }
    }

    /// Begin `outage` at `now`. One already under way ends first (at `now`).
    pub fn begin(&mut self, outage: Outage, counters: &mut OutageCounters, now: Instant) {
        self.end(counters, now);
        self.current = Some(Running {
            outage,
            began: now,
            refused: 0,
        });
        counters.outages += 1;
        counters.active = true;
    }

    /// End the outage under way, if any, at `now` (or when its length ran out, if earlier).
    pub fn end(&mut self, counters: &mut OutageCounters, now: Instant) {
        if let Some(running) = self.current.take() {
            let lasted = now.saturating_duration_since(running.began);
            let lasted = running.outage.length.map_or(lasted, |l| lasted.min(l));
            counters.last_ended_after_ms = Some(millis(lasted));
        }
        counters.active = false;
    }

    /// End the outage under way if its length has passed by `now`.
    pub fn refresh(&mut self, counters: &mut OutageCounters, now: Instant) {
        if self.current.as_ref().is_some_and(|r| r.over(now)) {
            self.end(counters, now);
        }
    }

    /// `answered` API requests have now been answered: begin the scheduled outage when its
    /// count is reached.
    pub fn answered(&mut self, answered: u64, counters: &mut OutageCounters, now: Instant) {
        if let Some(scheduled) = self.scheduled
            && answered >= scheduled.after_requests
        {
            self.scheduled = None;
            self.begin(scheduled.outage, counters, now);
        }
    }

    /// Whether an outage is under way at `now`.
    pub fn active(&mut self, counters: &mut OutageCounters, now: Instant) -> bool {
        self.refresh(counters, now);
        self.current.is_some()
    }

    /// How the outage under way at `now` refuses a request arriving then, counting it; `None`
    /// when there is no outage and the request goes on.
    pub fn refuse(&mut self, counters: &mut OutageCounters, now: Instant) -> Option<Refusal> {
        self.refresh(counters, now);
        let running = self.current.as_mut()?;
        let n = running.refused;
        running.refused += 1;
        let status = |turn: u64| STATUSES[(turn % STATUSES.len() as u64) as usize];
        let refusal = match running.outage.kind {
            OutageKind::Errors => Refusal::Status(status(n)),
            OutageKind::Drops => Refusal::Drop,
            OutageKind::Mixed if n % 2 == 0 => Refusal::Status(status(n / 2)),
            OutageKind::Mixed => Refusal::Drop,
        };
        counters.refused += 1;
        counters
            .refused_at_ms
            .push(millis(now.saturating_duration_since(running.began)));
        if refusal == Refusal::Drop {
            counters.dropped += 1;
        }
        Some(refusal)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use axum::http::StatusCode;

    use super::{Outage, OutageKind, Outages, Refusal, ScheduledOutage};
    use crate::snapshot::OutageCounters;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn errors_rotate_and_a_length_ends_the_outage_at_its_length() {
        let start = Instant::now();
        let mut counters = OutageCounters::default();
        let mut outages = Outages::new(None);
        assert_eq!(outages.refuse(&mut counters, start), None);
        outages.begin(
            Outage::lasting(OutageKind::Errors, 100 * MS),
            &mut counters,
            start,
        );
        let codes: Vec<u16> = [0u32, 10, 20, 99]
            .into_iter()
            .map(|ms| match outages.refuse(&mut counters, start + ms * MS) {
                Some(Refusal::Status(status)) => status.as_u16(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(codes, [502, 503, 504, 502]);
        assert!(outages.active(&mut counters, start + 99 * MS));
        // Noticed late, the outage still ended after exactly its length.
        assert_eq!(outages.refuse(&mut counters, start + 250 * MS), None);
        assert_eq!(
            counters,
            OutageCounters {
                active: false,
                outages: 1,
                refused: 4,
                dropped: 0,
                refused_at_ms: vec![0, 10, 20, 99],
                last_ended_after_ms: Some(100),
            }
        );
    }

    #[test]
    fn mixed_alternates_and_ending_by_hand_records_how_long_it_lasted() {
        let start = Instant::now();
        let mut counters = OutageCounters::default();
        let mut outages = Outages::new(None);
        outages.begin(Outage::until_ended(OutageKind::Mixed), &mut counters, start);
        let refusals: Vec<Refusal> = (0..5)
            .filter_map(|i| outages.refuse(&mut counters, start + i * MS))
            .collect();
        assert_eq!(
            refusals,
            [
                Refusal::Status(StatusCode::BAD_GATEWAY),
                Refusal::Drop,
                Refusal::Status(StatusCode::SERVICE_UNAVAILABLE),
                Refusal::Drop,
                Refusal::Status(StatusCode::GATEWAY_TIMEOUT),
            ]
        );
        assert!(outages.active(&mut counters, start + 3_600_000 * MS));
        outages.end(&mut counters, start + 42 * MS);
        assert!(!counters.active);
        assert_eq!(counters.last_ended_after_ms, Some(42));
        assert_eq!((counters.refused, counters.dropped), (5, 2));
    }

    #[test]
    fn a_scheduled_outage_begins_once_its_count_is_reached() {
        let start = Instant::now();
        let mut counters = OutageCounters::default();
        let mut outages = Outages::new(Some(ScheduledOutage {
            after_requests: 3,
            outage: Outage::until_ended(OutageKind::Drops),
        }));
        outages.answered(2, &mut counters, start);
        assert!(!outages.active(&mut counters, start));
        outages.answered(3, &mut counters, start + 5 * MS);
        assert_eq!(
            outages.refuse(&mut counters, start + 7 * MS),
            Some(Refusal::Drop)
        );
        assert_eq!(counters.refused_at_ms, [2]);
        outages.end(&mut counters, start + 8 * MS);
        outages.answered(4, &mut counters, start + 9 * MS);
        assert!(!outages.active(&mut counters, start + 9 * MS), "only once");
        assert_eq!(counters.outages, 1);
    }

    #[test]
    fn kinds_parse_from_their_names() {
        for kind in [OutageKind::Errors, OutageKind::Drops, OutageKind::Mixed] {
            assert_eq!(kind.as_str().parse::<OutageKind>().unwrap(), kind);
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.to_string())
            );
        }
        assert!("down".parse::<OutageKind>().is_err());
    }
}
