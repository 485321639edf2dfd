//! What becomes of a message after an Intercom answer: one [`Disposition`] for every response.
//!
//! Transient (408, 5xx, timeouts, connection errors: Intercom, not the message) →
//! [`Disposition::Transient`]: retried with capped back-off for up to `intercom.retry_for_secs`,
//! never counted as an attempt, and what the drain's outage breaker watches; failures that may be
//! the message's own (the local database, a crash while delivering) → [`Disposition::Retry`],
//! counted toward `intercom.max_attempts`; 429 →
//! [`Disposition::Throttled`]: throttling says nothing about the message, so it never counts
//! as an attempt nor dead-letters anything (the rate limiter holds every request until the
//! window resets, and the client already sent the request again a few times); 401 / 403 → [`Disposition::Stop`] (no message can get through
//! with that token); any other 4xx → [`Disposition::DeadLetter`] with Intercom's error text.
//! 404 and 409 are first given to the executor, which knows when they mean "resolve again" or
//! "already done" (see `executor.rs`).

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// How a message's delivery ended (or did not, yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Intercom confirmed every request of the message.
    Delivered,
    /// Try the whole message again after this long (every step is idempotent); one attempt.
    Retry { after: Duration, reason: String },
    /// Intercom did not answer, or answered 408 / 5xx: try again later, without counting an
    /// attempt (the drain picks the back-off from how long the message has been failing, and
    /// pauses delivery as a whole when failures across lanes show an outage).
    Transient { reason: String },
    /// Intercom kept answering 429: try the message again when the budget allows, without
    /// counting an attempt (the rate limiter decides when).
    Throttled { reason: String },
    /// The message can never be delivered as it is: it becomes a dead letter.
    DeadLetter { reason: String },
    /// Nothing can be delivered (the token is wrong or lacks permission): stop the drain.
    Stop { reason: String },
}

/// Intercom's `error.list` answer (or whatever text came instead, such as a proxy's HTML page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// The first error's `code`, when the body was an `error.list`.
    pub code: Option<String>,
    /// The first error's `message`, else the start of the body.
    pub message: String,
}

impl ApiError {
    pub fn from_body(status: u16, body: &Value, text: &str) -> ApiError {
        let first = body
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|errors| errors.first());
        let code = first
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let message = first
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                let text = text.trim();
                let short: String = text.chars().take(200).collect();
                if short.is_empty() {
                    "no error text".to_string()
                } else {
                    short
                }
            });
        ApiError {
            status,
            code,
            message,
        }
    }

    /// "Contact Not Found" and friends: the contact id we used is unknown to Intercom.
    pub fn is_contact_not_found(&self) -> bool {
        self.status == 404
            && self.code.as_deref() != Some("company_not_found")
            && matches!(
                self.message.as_str(),
                "User Not Found" | "Contact Not Found" | "Resource Not Found"
            )
    }

    pub fn is_company_not_found(&self) -> bool {
        self.status == 404 && self.code.as_deref() == Some("company_not_found")
    }

    /// The id in Intercom's 409 "A contact matching those details already exists with id=X"
    /// (also "An archived contact …").
    pub fn conflicting_contact_id(&self) -> Option<&str> {
        if self.status != 409 {
            return None;
        }
        conflicting_id(&self.message)
    }

    /// Intercom's "You already have 'x' in your … data" answer to `POST /data_attributes`.
    pub fn is_attribute_taken(&self) -> bool {
        self.status == 400 && self.message.starts_with("You already have")
    }

    /// "Custom attribute 'x' does not exist": the attribute list we hold is out of date.
    pub fn is_unknown_attribute(&self) -> bool {
        self.status == 400
            && self.message.starts_with("Custom attribute '")
            && self.message.ends_with("does not exist")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} {code}: {}", self.status, self.message),
            None => write!(f, "{}: {}", self.status, self.message),
        }
    }
}

/// Parse the id out of "… already exists with id=5f1e…" (the id runs to the end or to the
/// first character that cannot be in an id).
pub fn conflicting_id(message: &str) -> Option<&str> {
    let start = message.find("id=")? + 3;
    let rest = &message[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(rest.len());
    let id = &rest[..end];
    (!id.is_empty()).then_some(id)
}

/// The disposition of an error answer that the executor did not handle itself. `what` names the
/// request (`PUT /contacts/{id}`).
pub fn for_error(what: &str, error: &ApiError) -> Disposition {
    match error.status {
        401 => Disposition::Stop {
            reason: format!(
                "Intercom refused the access token ({error}): the token is wrong, expired or \
                 revoked; set intercom.access_token (or AUDIENCE_SYNC__INTERCOM__ACCESS_TOKEN)"
            ),
        },
        403 => Disposition::Stop {
            reason: format!(
                "Intercom refused {what} ({error}): the access token lacks permission for it; \
                 give the app the read and write scopes for contacts, companies, events and \
                 data attributes"
            ),
        },
        // Not a failure of the message: the rate limiter holds everyone until the reset.
        429 => Disposition::Throttled {
            reason: format!("{what}: {error}"),
        },
        408 | 500..=599 => Disposition::Transient {
            reason: format!("{what}: {error}"),
        },
        _ => Disposition::DeadLetter {
            reason: format!("{what}: {error}"),
        },
    }
}

/// A request that got no answer: a timeout or a connection error. Transient.
pub fn for_transport(what: &str, error: &str) -> Disposition {
    Disposition::Transient {
        reason: format!("{what}: {error}"),
    }
}

/// Back-off before the next try of a message that has been failing with transient errors for
/// `failing_for`: about as long again (so waits double), at least 0.5 s, at most `cap`, with
/// equal jitter (`jitter` uniform in [0, 1)).
pub fn transient_backoff(failing_for: Duration, cap: Duration, jitter: f64) -> Duration {
    let wait = failing_for.max(Duration::from_millis(500)).min(cap);
    wait / 2 + wait.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// Back-off before attempt `attempt + 1`: 0.5 s doubling per attempt, capped at 60 s, with
/// "equal jitter" (half fixed, half random; `jitter` is uniform in [0, 1)) so retries of many
/// lanes spread out instead of returning together.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(500);
    let cap = Duration::from_secs(60);
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap);
    exp / 2 + exp.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error(status: u16, code: &str, message: &str) -> ApiError {
        let body = json!({"type": "error.list", "errors": [{"code": code, "message": message}]});
        ApiError::from_body(status, &body, &body.to_string())
    }

    #[test]
    fn every_status_has_one_disposition() {
        let cases: [(u16, &str); 10] = [
            (401, "stop"),
            (403, "stop"),
            (429, "throttled"),
            (408, "transient"),
            (500, "transient"),
            (502, "transient"),
            (503, "transient"),
            (504, "transient"),
            (400, "dead"),
            (422, "dead"),
        ];
        for (status, expected) in cases {
            let d = for_error("POST /events", &error(status, "x", "y"));
            let got = match d {
                Disposition::Stop { .. } => "stop",
                Disposition::Retry { .. } => "retry",
                Disposition::Transient { .. } => "transient",
                Disposition::Throttled { .. } => "throttled",
                Disposition::DeadLetter { .. } => "dead",
                Disposition::Delivered => "delivered",
            };
            assert_eq!(got, expected, "{status}");
        }
        let Disposition::Stop { reason } = for_error(
            "GET /x",
            &error(401, "unauthorized", "Access Token Invalid"),
        ) else {
            panic!()
        };
        assert!(reason.contains("token is wrong"), "{reason}");
        let Disposition::DeadLetter { reason } = for_error(
            "POST /companies",
            &error(
                400,
                "parameter_invalid",
                "Custom attribute 'x' does not exist",
            ),
        ) else {
            panic!()
        };
        assert!(reason.contains("Custom attribute 'x' does not exist"));
    }

    #[test]
    fn conflict_ids_are_parsed() {
        let e = error(
            409,
            "conflict",
            "A contact matching those details already exists with id=5f1e2d3c4b5a697887766554",
        );
        assert_eq!(e.conflicting_contact_id(), Some("5f1e2d3c4b5a697887766554"));
        let archived = error(
            409,
            "conflict",
            "An archived contact matching those details already exists with id=abc123.",
        );
        assert_eq!(archived.conflicting_contact_id(), Some("abc123"));
        assert_eq!(
            error(409, "conflict", "Multiple existing users match").conflicting_contact_id(),
            None
        );
    }

    #[test]
    fn html_error_pages_are_summarised() {
        let e = ApiError::from_body(
            502,
            &Value::Null,
            "<html><head><title>502 Bad Gateway</title></head></html>",
        );
        assert_eq!(e.code, None);
        assert!(e.message.starts_with("<html>"));
    }

    #[test]
    fn transient_backoff_follows_the_failure_and_is_capped() {
        let cap = Duration::from_secs(30);
        assert_eq!(
            transient_backoff(Duration::ZERO, cap, 0.0),
            Duration::from_millis(250)
        );
        assert_eq!(
            transient_backoff(Duration::from_secs(8), cap, 0.0),
            Duration::from_secs(4)
        );
        assert_eq!(
            transient_backoff(Duration::from_secs(8), cap, 1.0),
            Duration::from_secs(8)
        );
        assert_eq!(
            transient_backoff(Duration::from_secs(3600), cap, 0.999_999),
            cap.mul_f64(0.5 + 0.999_999 / 2.0)
        );
        assert!(
            transient_backoff(Duration::from_secs(3600), Duration::from_millis(200), 1.0)
                <= Duration::from_millis(200)
        );
        let t = for_transport("POST /events", "connection failed: reset");
        assert_eq!(
            t,
            Disposition::Transient {
                reason: "POST /events: connection failed: reset".into()
            }
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(3, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(30, 0.0), Duration::from_secs(30));
        assert!(backoff(30, 0.999) < Duration::from_secs(60));
    }
}
