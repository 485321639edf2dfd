//! Injected faults: seeded error statuses, dropped connections, lost responses, latency.

use std::time::{Duration, Instant};

use intercom_sandbox::{FaultPoint, Faults, SandboxConfig, SlowResponses};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::Api;

fn faulty(error_rate: f64, drop_rate: f64, point: FaultPoint, seed: u64) -> SandboxConfig {
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.faults = Faults {
        error_rate,
        drop_rate,
        point,
        seed,
    };
    config
}

async fn statuses(seed: u64) -> (Vec<StatusCode>, u64) {
    let api = Api::with(faulty(0.3, 0.0, FaultPoint::BeforeEffect, seed)).await;
    let mut statuses = Vec::new();
    for _ in 0..200 {
        statuses.push(api.get("/data_attributes").await.status);
    }
    (statuses, api.sandbox.snapshot().counters.faults_injected)
}

#[tokio::test]
async fn a_seeded_share_of_requests_fails_the_same_way_every_time() {
    let (first, counted) = statuses(42).await;
    let failed: Vec<&StatusCode> = first.iter().filter(|s| **s != StatusCode::OK).collect();
    // 30 % of 200 is 60; the seeded draw lands near it.
    assert!(
        (40..=80).contains(&failed.len()),
        "{} failures",
        failed.len()
    );
    assert_eq!(counted, failed.len() as u64);
    let allowed = [500, 502, 503, 504, 408];
    assert!(failed.iter().all(|s| allowed.contains(&s.as_u16())));
    for code in allowed {
        assert!(
            failed.iter().any(|s| s.as_u16() == code),
            "{code} never injected"
        );
    }
    let (again, _) = statuses(42).await;
    assert_eq!(first, again, "same seed, same faults");
    let (other, _) = statuses(43).await;
    assert_ne!(first, other, "another seed, other faults");
}

#[tokio::test]
async fn error_bodies_look_like_intercoms() {
    let api = Api::with(faulty(1.0, 0.0, FaultPoint::BeforeEffect, 7)).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let answer = api.get("/data_attributes").await;
        match answer.status.as_u16() {
            502 | 504 => assert!(answer.text.starts_with("<html>"), "{}", answer.text),
            500 => assert_eq!(answer.error().0, "server_error"),
            503 => assert_eq!(answer.error().0, "service_unavailable"),
            408 => assert_eq!(answer.error().0, "request_timeout"),
            other => panic!("unexpected {other}"),
        }
        seen.insert(answer.status.as_u16());
    }
    assert_eq!(seen.len(), 5);
}

#[tokio::test]
async fn a_dropped_connection_is_a_transport_error_and_nothing_is_applied_before_the_effect() {
    let api = Api::with(faulty(0.0, 1.0, FaultPoint::BeforeEffect, 7)).await;
    let error = api
        .request(Method::POST, "/contacts")
        .json(&json!({"role": "user", "external_id": "u1"}))
        .send()
        .await
        .expect_err("the connection is closed without a response");
    assert!(error.status().is_none());
    assert!(!error.is_timeout());
    assert!(error.is_request(), "{error:?}");
    let state = api.sandbox.snapshot();
    assert!(state.contacts.is_empty());
    assert_eq!(state.counters.connections_dropped, 1);
    assert_eq!(state.counters.requests["POST /contacts"]["dropped"], 1);
}

#[tokio::test]
async fn a_lost_response_applies_the_effect_then_drops_the_connection() {
    let api = Api::with(faulty(0.0, 1.0, FaultPoint::AfterEffect, 7)).await;
    let body = json!({"role": "user", "external_id": "u1"});
    for _ in 0..2 {
        let result = api
            .request(Method::POST, "/contacts")
            .json(&body)
            .send()
            .await;
        assert!(result.is_err(), "dropped");
    }
    let state = api.sandbox.snapshot();
    assert_eq!(state.contacts.len(), 1, "the first attempt created it");
    assert_eq!(
        state.counters.conflicts, 1,
        "the retry met a 409 it never saw"
    );
    assert_eq!(state.counters.lost_responses, 2);
}

#[tokio::test]
async fn a_lost_error_status_after_the_effect() {
    let api = Api::with(faulty(1.0, 0.0, FaultPoint::AfterEffect, 7)).await;
    let answer = api.post("/contacts", json!({"external_id": "u1"})).await;
    assert!(answer.status.is_server_error() || answer.status == StatusCode::REQUEST_TIMEOUT);
    assert_eq!(api.sandbox.snapshot().contacts.len(), 1);
}

#[tokio::test]
async fn latency_and_slow_responses_delay_answers() {
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.latency = Duration::from_millis(40);
    config.slow = SlowResponses {
        rate: 1.0,
        delay: Duration::from_millis(60),
    };
    let api = Api::with(config).await;
    let started = Instant::now();
    assert_eq!(api.get("/data_attributes").await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn out_of_range_settings_are_refused() {
    let config = faulty(0.8, 0.5, FaultPoint::Either, 1);
    assert!(intercom_sandbox::Sandbox::start(config).await.is_err());
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.rate_limit = 0;
    assert!(intercom_sandbox::Sandbox::start(config).await.is_err());
}
