//! The sandbox's configuration: a plain struct of documented fields, and the clock it reads.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::outage::ScheduledOutage;

/// Everything a sandbox needs to start. Build it with [`SandboxConfig::new`], which gives
/// Intercom's own figures and no imperfections, then change the fields a test cares about.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Address to listen on. `127.0.0.1:0` picks a free port (see `SandboxHandle::base_url`).
    pub listen: SocketAddr,
    /// The one access token accepted as `Authorization: Bearer <token>`.
    pub token: String,
    /// Requests allowed per rate-limit window. Intercom's per-app figure is 10,000 a minute,
    /// which is 1,666 per 10-second window; the Personas destination's budget is 83 per 10 s.
    pub rate_limit: u32,
    /// Length of a fixed rate-limit window in whole seconds (Intercom: 10). Windows are aligned
    /// to multiples of this length since the Unix epoch, so `X-RateLimit-Reset` is a boundary.
    pub window_secs: u64,
    /// Whether `X-RateLimit-*` headers are sent. 429s happen either way.
    pub rate_limit_headers: RateLimitHeaders,
    /// Injected failures: 5xx / 408 responses and dropped connections.
    pub faults: Faults,
    /// Added to every API request before it is answered.
    pub latency: Duration,
    /// A seeded share of API requests is additionally delayed by this much.
    pub slow: SlowResponses,
    /// A newly created contact stays invisible to `POST /contacts/search` for this long
    /// (Intercom's search index lags; this is what makes search-then-create race into 409).
    pub search_lag: Duration,
    /// Most distinct active event names (Intercom: 120). The next new name gets 422.
    pub event_name_limit: usize,
    /// Most values an `IN` or `NIN` array of `POST /contacts/search` may hold; a longer one
    /// gets 400 `parameter_invalid`. `None` (the default): no limit, since Intercom documents
    /// none (only 15 filters per group and 2 levels of nesting).
    pub in_values_limit: Option<usize>,
    /// Whether string values longer than 255 characters are refused (custom attributes and
    /// event metadata). Intercom's limit on attributes is documented only by third parties.
    pub long_strings: LongStrings,
    /// Where "now" comes from: the system clock, or a manual clock that tests advance.
    pub clock: Clock,
    /// An outage that begins by itself after a number of answered API requests. Outages can
    /// also be begun at any time with `SandboxHandle::begin_outage` or `POST /_sandbox/outage`.
    pub outage: Option<ScheduledOutage>,
}

impl SandboxConfig {
    /// Intercom's figures (1,666 requests per 10 s, headers announced, 120 event names, 255
    /// character strings refused), no faults, no latency, no search lag, no limit on `IN`
    /// values, no outage, on `127.0.0.1:0`.
    pub fn new(token: impl Into<String>) -> SandboxConfig {
        SandboxConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: token.into(),
            rate_limit: INTERCOM_RATE_LIMIT_PER_WINDOW,
            window_secs: INTERCOM_WINDOW_SECS,
            rate_limit_headers: RateLimitHeaders::Announce,
            faults: Faults::none(),
            latency: Duration::ZERO,
            slow: SlowResponses::none(),
            search_lag: Duration::ZERO,
            event_name_limit: INTERCOM_EVENT_NAME_LIMIT,
            in_values_limit: None,
            long_strings: LongStrings::Refuse,
            clock: Clock::System,
            outage: None,
        }
    }
}

/// Intercom's per-app limit of 10,000 requests a minute, spread over six 10-second windows.
pub const INTERCOM_RATE_LIMIT_PER_WINDOW: u32 = 1666;
/// The Personas Intercom destination's budget per 10-second window.
pub const PERSONAS_RATE_LIMIT_PER_WINDOW: u32 = 83;
/// Intercom's rate-limit window.
pub const INTERCOM_WINDOW_SECS: u64 = 10;
/// Intercom's limit on active event names.
pub const INTERCOM_EVENT_NAME_LIMIT: usize = 120;
/// The longest string value accepted when [`LongStrings::Refuse`] is set.
pub const MAX_STRING_CHARS: usize = 255;

/// Whether the rate-limit headers are announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitHeaders {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` on every authenticated response (Intercom).
    Announce,
    /// No headers: a client has to discover the budget from 429s.
    Hide,
}

/// What happens to string values longer than [`MAX_STRING_CHARS`] characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongStrings {
    /// 400 `parameter_invalid`, nothing applied.
    Refuse,
    /// Stored as sent.
    Allow,
}

/// When an injected fault strikes relative to the request's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// The fault replaces the request: nothing is applied. A retry is harmless.
    BeforeEffect,
    /// The request is applied, then its response is lost (an error status or a dropped
    /// connection). A retry meets the effect: a 409 on create, a deduplicated event.
    AfterEffect,
    /// Each fault picks one of the two above with the seeded generator, half and half.
    Either,
}

/// Injected failures. Each API request draws from one generator seeded with `seed`, so the
/// same sequence of requests meets the same faults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Share of requests (0.0 – 1.0) answered with 500, 502, 503, 504 or 408 (chosen evenly).
    pub error_rate: f64,
    /// Share of requests (0.0 – 1.0) whose connection is closed without any response.
    pub drop_rate: f64,
    /// Whether the request's effect is applied before the fault.
    pub point: FaultPoint,
    /// Seed of the generator behind faults and slow responses.
    pub seed: u64,
}

impl Faults {
    /// No faults.
    pub fn none() -> Faults {
        Faults {
            error_rate: 0.0,
            drop_rate: 0.0,
            point: FaultPoint::BeforeEffect,
            seed: 1,
        }
    }
}

/// A seeded share of requests answered late.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowResponses {
    /// Share of requests (0.0 – 1.0) that are slow.
    pub rate: f64,
    /// How much later a slow request is answered.
    pub delay: Duration,
}

impl SlowResponses {
    /// No slow responses.
    pub fn none() -> SlowResponses {
        SlowResponses {
            rate: 0.0,
            delay: Duration::ZERO,
        }
    }
}

/// Where the sandbox reads the time: timestamps, rate-limit windows, search lag.
/// Latency, slow responses and outages always use real time.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system clock.
    System,
    /// A clock that only moves when a test advances it.
    Manual(ManualClock),
}

impl Clock {
    /// Time since the Unix epoch.
    pub fn now(&self) -> Duration {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
            Clock::Manual(manual) => manual.now(),
        }
    }
}

/// A shared, manually advanced clock. Clones see the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Duration>>);

impl ManualClock {
    /// A clock standing at `unix_secs` seconds since the epoch.
    pub fn at(unix_secs: u64) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(Duration::from_secs(unix_secs))))
    }

    /// The current time since the epoch.
    pub fn now(&self) -> Duration {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Move the clock forward.
    pub fn advance(&self, by: Duration) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) += by;
    }
}
