//! The HTTP client for Intercom's REST API: headers, timeout, the shared rate limiter, and
//! answers reduced to status + JSON. It also measures how long Intercom takes to answer (an
//! EWMA of response times, [`Latency`]), from which [`Client::in_flight_target`] says how many
//! requests the drain keeps in flight to spend the whole budget.
//!
//! Architecture Invariant: this is the only place that sends HTTP to Intercom. The token goes
//! into a header marked sensitive and nowhere else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::ratelimit::{Announced, RateLimiter};
use super::requests::{Method, Request};
use crate::metrics::{HttpStatus, NoLabels, RequestLabels, metrics};
use crate::settings::IntercomSettings;

/// How many 429s in a row one request waits out in place before its message is handed back to
/// the drain (which queues it again without counting an attempt, see `Disposition::Throttled`).
pub const MAX_THROTTLED_IN_PLACE: u32 = 8;

/// The endpoint a request goes to, as Intercom's reference names it: `PUT /contacts/{id}`,
/// `DELETE /contacts/{id}/companies/{company_id}` (ids replaced, the query left out). The
/// metric label, so series do not grow with the number of contacts.
pub fn endpoint(request: &Request) -> String {
    const WORDS: [&str; 5] = [
        "contacts",
        "search",
        "companies",
        "data_attributes",
        "events",
    ];
    let path = request.path.split('?').next().unwrap_or_default();
    let mut ids = 0;
    let segments: Vec<&str> = path
        .split('/')
        .map(|segment| {
            if segment.is_empty() || WORDS.contains(&segment) {
                segment
            } else {
                ids += 1;
                if ids == 1 { "{id}" } else { "{company_id}" }
            }
        })
        .collect();
    format!("{} {}", request.method.as_str(), segments.join("/"))
}

/// A response: its status and body (JSON, or `Value::Null` with the raw text kept).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Transport {
    #[error("no answer within {0} s (timeout)")]
    Timeout(u64),
    #[error("connection failed: {0}")]
    Connection(String),
    /// The caller asked to stop before the request was sent.
    #[error("interrupted before sending")]
    Interrupted,
}

/// How long Intercom takes to answer: an exponentially weighted moving average of response
/// times (each new one weighs [`Latency::WEIGHT`]), lock-free so the drain can read it at every
/// turn. Only answers count: a timeout or a dropped connection says nothing about the latency
/// (the outage breaker deals with those), and a 429 is answered without doing the work.
#[derive(Debug, Default)]
pub struct Latency {
    /// Microseconds; 0 until the first answer.
    micros: AtomicU64,
}

impl Latency {
    /// The weight of each new response time.
    pub const WEIGHT: f64 = 0.1;

    pub fn new() -> Latency {
        Latency::default()
    }

    /// One response took `took`.
    pub fn record(&self, took: Duration) {
        let sample = (took.as_micros().min(u128::from(u64::MAX / 2)) as u64).max(1);
        let _ = self
            .micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    let next =
                        old as f64 * (1.0 - Latency::WEIGHT) + sample as f64 * Latency::WEIGHT;
                    (next.round() as u64).max(1)
                })
            });
    }

    /// The average so far; `None` before the first answer.
    pub fn get(&self) -> Option<Duration> {
        match self.micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    headers: HeaderMap,
    timeout_secs: u64,
    limiter: Arc<RateLimiter>,
    latency: Arc<Latency>,
}

impl Client {
    pub fn new(settings: &IntercomSettings, limiter: Arc<RateLimiter>) -> anyhow::Result<Client> {
        let mut headers = HeaderMap::new();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", settings.access_token.expose()))
            .map_err(|_| {
                anyhow::anyhow!(
                    "intercom.access_token holds characters an HTTP header cannot carry"
                )
            })?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        headers.insert(
            "Intercom-Version",
            HeaderValue::from_str(&settings.api_version).map_err(|_| {
                anyhow::anyhow!(
                    "intercom.api_version {:?} is not a header value",
                    settings.api_version
                )
            })?,
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .pool_max_idle_per_host(settings.max_concurrency.max(1))
            .user_agent(concat!("audience-sync/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            http,
            base: settings.base_url.as_str().trim_end_matches('/').to_string(),
            headers,
            timeout_secs: settings.request_timeout.as_secs(),
            limiter,
            latency: Arc::new(Latency::new()),
        })
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Intercom's response time, averaged (`None` before the first answer).
    pub fn latency(&self) -> Option<Duration> {
        self.latency.get()
    }

    /// How many messages to have in flight, at most `max` (`intercom.max_concurrency`), so that
    /// the budget is spent at the latency measured: budget rate × latency with some headroom
    /// (see `ratelimit::in_flight_target`). Cheap (no lock): the drain asks at every turn.
    pub fn in_flight_target(&self, max: usize) -> usize {
        self.limiter.in_flight_target(self.latency.get(), max)
    }

    /// Send one request within the rate limit. Waiting for the budget ends early when `cancel`
    /// fires (nothing is sent then); a request once sent is always waited for.
    ///
    /// A 429 means Intercom did not run the request: it is sent again once the window resets
    /// (the limiter holds every request until then), up to [`MAX_THROTTLED_IN_PLACE`] times;
    /// after that the 429 is returned.
    pub async fn send(
        &self,
        request: &Request,
        cancel: &CancellationToken,
    ) -> Result<Answer, Transport> {
        let mut throttled = 0;
        loop {
            let answer = self.send_once(request, cancel).await?;
            if answer.status != 429 || throttled + 1 >= MAX_THROTTLED_IN_PLACE {
                return Ok(answer);
            }
            throttled += 1;
            tracing::debug!(
                endpoint = %endpoint(request),
                throttled,
                "Rate limited (429); sending again after the reset."
            );
        }
    }

    async fn send_once(
        &self,
        request: &Request,
        cancel: &CancellationToken,
    ) -> Result<Answer, Transport> {
        let Some(ticket) = self.limiter.acquire(cancel).await else {
            return Err(Transport::Interrupted);
        };
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self
            .http
            .request(method, format!("{}{}", self.base, request.path))
            .headers(self.headers.clone());
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let endpoint = endpoint(request);
        let sent_at = Instant::now();
        let response = match builder.send().await {
            Ok(response) => response,
            Err(error) => {
                self.limiter.observe(ticket, None);
                metrics()
                    .intercom_requests
                    .get_or_create(&RequestLabels {
                        endpoint,
                        status: HttpStatus::NoResponse,
                    })
                    .inc();
                return Err(self.transport(&error));
            }
        };
        let status = response.status().as_u16();
        let announced = announced(response.headers());
        self.limiter.observe(ticket, Some((status, announced)));
        metrics()
            .intercom_requests
            .get_or_create(&RequestLabels {
                endpoint,
                status: HttpStatus::Code(status),
            })
            .inc();
        if status == 429 {
            metrics().intercom_rate_limited.inc();
        }
        let budget = self.limiter.persisted();
        metrics()
            .rate_limit_remaining
            .get_or_create(&NoLabels)
            .set(i64::from(budget.remaining));
        let text = match response.text().await {
            Ok(text) => text,
            Err(error) => return Err(self.transport(&error)),
        };
        if status != 429 {
            self.latency.record(sent_at.elapsed());
        }
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer { status, body, text })
    }

    fn transport(&self, error: &reqwest::Error) -> Transport {
        if error.is_timeout() {
            Transport::Timeout(self.timeout_secs)
        } else {
            // The chain without the URL's query: reqwest's text names the URL, never headers.
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            Transport::Connection(text)
        }
    }
}

/// The `X-RateLimit-*` headers, when all three are there and readable.
pub fn announced(headers: &HeaderMap) -> Option<Announced> {
    let number =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    Some(Announced {
        limit: u32::try_from(number("x-ratelimit-limit")?).ok()?,
        remaining: u32::try_from(number("x-ratelimit-remaining")?).ok()?,
        reset: number("x-ratelimit-reset")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers_are_read_whole_or_not_at_all() {
        let mut h = HeaderMap::new();
        h.insert("X-RateLimit-Limit", HeaderValue::from_static("83"));
        h.insert("X-RateLimit-Remaining", HeaderValue::from_static("12"));
        assert_eq!(announced(&h), None);
        h.insert("X-RateLimit-Reset", HeaderValue::from_static("1700000010"));
        assert_eq!(
            announced(&h),
            Some(Announced {
                limit: 83,
                remaining: 12,
                reset: 1_700_000_010
            })
        );
    }
}

#[cfg(test)]
mod latency_tests {
    use super::*;

    #[test]
    fn latency_is_a_moving_average_of_answers() {
        let latency = Latency::new();
        assert_eq!(latency.get(), None);
        latency.record(Duration::from_millis(150));
        assert_eq!(latency.get(), Some(Duration::from_millis(150)));
        // One slow answer moves it by a tenth of the difference.
        latency.record(Duration::from_millis(1150));
        assert_eq!(latency.get(), Some(Duration::from_millis(250)));
        // A steady latency is reached again.
        for _ in 0..200 {
            latency.record(Duration::from_millis(300));
        }
        let settled = latency.get().unwrap();
        assert!(
            settled.abs_diff(Duration::from_millis(300)) < Duration::from_millis(1),
            "{settled:?}"
        );
        // Never back to "nothing measured".
        let fast = Latency::new();
        fast.record(Duration::ZERO);
        assert!(fast.get().is_some());
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;

    #[test]
    fn endpoints_name_routes_not_ids() {
        let cases = [
            (Method::Put, "/contacts/6762f0dd", "PUT /contacts/{id}"),
            (Method::Post, "/contacts/search", "POST /contacts/search"),
            (
                Method::Post,
                "/contacts/abc/companies",
                "POST /contacts/{id}/companies",
            ),
            (
                Method::Delete,
                "/contacts/abc/companies/9",
                "DELETE /contacts/{id}/companies/{company_id}",
            ),
            (Method::Get, "/companies?company_id=acme", "GET /companies"),
            (
                Method::Get,
                "/data_attributes?model=contact",
                "GET /data_attributes",
            ),
            (Method::Post, "/events", "POST /events"),
        ];
        for (method, path, expected) in cases {
            assert_eq!(endpoint(&Request::new(method, path, None)), expected);
        }
    }
}
