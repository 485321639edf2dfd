//! Fixed-window rate limiting on a manual clock, so window boundaries are deterministic.

use std::time::Duration;

use intercom_sandbox::{
    Clock, ManualClock, PERSONAS_RATE_LIMIT_PER_WINDOW, RateLimitHeaders, SandboxConfig,
};
use reqwest::StatusCode;

use crate::Api;

/// 3 seconds into the window that starts at 1_800_000_000 (a multiple of 10).
const START: u64 = 1_800_000_003;

fn config(limit: u32, clock: &ManualClock) -> SandboxConfig {
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.rate_limit = limit;
    config.window_secs = 10;
    config.clock = Clock::Manual(clock.clone());
    config
}

#[tokio::test]
async fn the_request_after_the_budget_is_429_until_the_window_resets() {
    let clock = ManualClock::at(START);
    let api = Api::with(config(5, &clock)).await;
    for expected_remaining in (0..5).rev() {
        let answer = api.get("/data_attributes").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-ratelimit-limit"), Some("5"));
        let remaining = expected_remaining.to_string();
        assert_eq!(
            answer.header("x-ratelimit-remaining"),
            Some(remaining.as_str())
        );
        assert_eq!(answer.header("x-ratelimit-reset"), Some("1800000010"));
    }
    for _ in 0..3 {
        let answer = api.get("/data_attributes").await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            answer.error(),
            (
                "rate_limit_exceeded",
                "Exceeded rate limit of 5 in 10_seconds"
            )
        );
        assert_eq!(answer.header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(answer.header("x-ratelimit-reset"), Some("1800000010"));
    }
    // Unauthenticated requests neither spend the budget nor see it.
    let answer = api
        .send(
            api.client
                .get(api.url("/data_attributes"))
                .header("Accept", "application/json"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    // At the reset time a fresh window opens.
    clock.advance(Duration::from_secs(7));
    let answer = api.get("/data_attributes").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-ratelimit-remaining"), Some("4"));
    assert_eq!(answer.header("x-ratelimit-reset"), Some("1800000020"));

    let counters = api.sandbox.snapshot().counters;
    assert_eq!(counters.rate_limited, 3);
    assert_eq!(counters.max_requests_in_window, 8);
    assert_eq!(counters.requests["GET /data_attributes"]["429"], 3);
    assert_eq!(counters.requests["GET /data_attributes"]["200"], 6);
    assert_eq!(counters.requests["GET /data_attributes"]["401"], 1);
}

#[tokio::test]
async fn the_personas_budget_is_83_per_window() {
    let clock = ManualClock::at(START);
    let api = Api::with(config(PERSONAS_RATE_LIMIT_PER_WINDOW, &clock)).await;
    let mut statuses = Vec::new();
    for _ in 0..85 {
        statuses.push(api.get("/data_attributes").await.status);
    }
    assert!(statuses[..83].iter().all(|s| *s == StatusCode::OK));
    assert!(
        statuses[83..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS)
    );
}

#[tokio::test]
async fn hidden_headers_still_rate_limit() {
    let clock = ManualClock::at(START);
    let mut config = config(2, &clock);
    config.rate_limit_headers = RateLimitHeaders::Hide;
    let api = Api::with(config).await;
    let statuses: Vec<StatusCode> = {
        let mut all = Vec::new();
        for _ in 0..3 {
            let answer = api.get("/data_attributes").await;
            assert_eq!(answer.header("x-ratelimit-limit"), None);
            assert_eq!(answer.header("x-ratelimit-remaining"), None);
            assert_eq!(answer.header("x-ratelimit-reset"), None);
            all.push(answer.status);
        }
        all
    };
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn the_system_clock_gives_a_future_window_boundary() {
    let api = Api::start().await;
    let answer = api.get("/data_attributes").await;
    let reset: u64 = answer.header("x-ratelimit-reset").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(reset % 10, 0);
    assert!(
        reset + 1 >= now && reset <= now + 10,
        "reset {reset}, now {now}"
    );
    assert_eq!(answer.header("x-ratelimit-limit"), Some("1666"));
}
