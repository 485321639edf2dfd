//! Outage windows: every API request refused before auth, rate limit and effect, then recovery.

use std::time::Duration;

use intercom_sandbox::{
    Clock, ManualClock, Outage, OutageCounters, OutageKind, SandboxConfig, ScheduledOutage,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{Answer, Api};

fn contact(external_id: &str) -> Value {
    json!({"role": "user", "external_id": external_id})
}

/// A load-balancer answer: a 5xx with no `error.list` and no rate-limit headers.
fn assert_refused(answer: &Answer, status: u16) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.text);
    assert_eq!(answer.body, Value::Null, "not JSON: {}", answer.text);
    for header in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert_eq!(answer.header(header), None, "{header} on {status}");
    }
    let content_type = answer.header("content-type").unwrap_or_default();
    if status == 503 {
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        assert!(answer.text.contains("503"), "{}", answer.text);
    } else {
        assert_eq!(content_type, "text/html");
        assert!(answer.text.starts_with("<html>"), "{}", answer.text);
    }
}

async fn admin(api: &Api, method: Method, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = api.client.request(method, api.url("/_sandbox/outage"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("a response");
    let status = response.status();
    (status, response.json().await.expect("JSON"))
}

#[tokio::test]
async fn an_outage_refuses_every_request_before_auth_and_applies_nothing() {
    let api = Api::start().await;
    assert!(!api.sandbox.outage_active());
    api.sandbox
        .begin_outage(Outage::until_ended(OutageKind::Errors));
    assert!(api.sandbox.outage_active());

    assert_refused(&api.post("/contacts", contact("u1")).await, 502);
    assert_refused(&api.get("/data_attributes").await, 503);
    // Not even authentication answers: a wrong token meets the outage, not a 401.
    let unauthenticated = api
        .send(
            api.client
                .get(api.url("/contacts/abc"))
                .bearer_auth("wrong")
                .header("Accept", "application/json"),
        )
        .await;
    assert_refused(&unauthenticated, 504);
    assert_refused(&api.post("/contacts", contact("u1")).await, 502);
    assert!(api.sandbox.outage_active(), "no length: it lasts");

    let during = api.sandbox.snapshot();
    assert!(during.contacts.is_empty(), "nothing applied");
    assert_eq!(during.counters.requests["POST /contacts"]["502"], 2);
    assert_eq!(during.counters.requests["GET /data_attributes"]["503"], 1);
    assert_eq!(during.counters.requests["GET /contacts/{id}"]["504"], 1);
    assert_eq!(during.counters.total_requests, 4);
    assert_eq!(during.counters.faults_injected, 0, "outages are not faults");
    assert_eq!(during.counters.connections_dropped, 0);
    assert!(during.counters.outage.active);
    assert_eq!(during.counters.outage.outages, 1);
    assert_eq!(during.counters.outage.refused, 4);
    assert_eq!(during.counters.outage.refused_at_ms.len(), 4);
    assert_eq!(during.counters.outage.last_ended_after_ms, None);

    api.sandbox.end_outage();
    assert!(!api.sandbox.outage_active());
    let answer = api.post("/contacts", contact("u1")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.header("x-ratelimit-limit"), Some("1666"));
    let after = api.sandbox.snapshot();
    assert_eq!(after.contacts.len(), 1);
    assert!(!after.counters.outage.active);
    assert!(after.counters.outage.last_ended_after_ms.is_some());
    assert_eq!(after.counters.outage.refused, 4);
}

#[tokio::test]
async fn an_outage_with_a_length_ends_by_itself() {
    let api = Api::start().await;
    api.sandbox.begin_outage(Outage::lasting(
        OutageKind::Errors,
        Duration::from_millis(300),
    ));
    assert_refused(&api.get("/data_attributes").await, 502);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(!api.sandbox.outage_active());
    assert_eq!(api.get("/data_attributes").await.status, StatusCode::OK);
    let outage = api.sandbox.snapshot().counters.outage;
    assert!(!outage.active);
    assert_eq!(
        outage.last_ended_after_ms,
        Some(300),
        "it ended at its length, not when noticed"
    );
    assert_eq!(outage.refused, 1);
}

#[tokio::test]
async fn a_drops_outage_closes_the_connection_without_a_response() {
    let api = Api::start().await;
    api.sandbox
        .begin_outage(Outage::until_ended(OutageKind::Drops));
    for _ in 0..2 {
        let error = api
            .request(Method::POST, "/contacts")
            .json(&contact("u1"))
            .send()
            .await
            .expect_err("the connection is closed without a response");
        assert!(error.status().is_none());
        assert!(error.is_request(), "{error:?}");
    }
    api.sandbox.end_outage();
    assert_eq!(
        api.post("/contacts", contact("u1")).await.status,
        StatusCode::OK,
        "the retry after the outage creates it: nothing was applied before"
    );
    let state = api.sandbox.snapshot();
    assert_eq!(state.contacts.len(), 1);
    assert_eq!(state.counters.conflicts, 0);
    assert_eq!(state.counters.requests["POST /contacts"]["dropped"], 2);
    assert_eq!(state.counters.requests["POST /contacts"]["200"], 1);
    assert_eq!(
        state.counters.connections_dropped, 0,
        "outages are not faults"
    );
    assert_eq!(
        (state.counters.outage.refused, state.counters.outage.dropped),
        (2, 2)
    );
}

#[tokio::test]
async fn a_mixed_outage_alternates_errors_and_drops() {
    let api = Api::start().await;
    api.sandbox
        .begin_outage(Outage::until_ended(OutageKind::Mixed));
    let mut seen = Vec::new();
    for _ in 0..6 {
        match api.request(Method::GET, "/data_attributes").send().await {
            Ok(response) => seen.push(response.status().as_u16().to_string()),
            Err(error) => {
                assert!(error.is_request(), "{error:?}");
                seen.push("dropped".into());
            }
        }
    }
    assert_eq!(seen, ["502", "dropped", "503", "dropped", "504", "dropped"]);
    let outage = api.sandbox.snapshot().counters.outage;
    assert_eq!((outage.refused, outage.dropped), (6, 3));
}

#[tokio::test]
async fn a_scheduled_outage_begins_after_that_many_answered_requests() {
    assert!(SandboxConfig::new(crate::TOKEN).outage.is_none());
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.outage = Some(ScheduledOutage {
        after_requests: 3,
        outage: Outage::lasting(OutageKind::Errors, Duration::from_millis(300)),
    });
    let api = Api::with(config).await;
    assert!(!api.sandbox.outage_active());
    api.user("u1").await;
    // A 404 and a 401 are answered requests too.
    assert_eq!(
        api.get("/contacts/nobody").await.status,
        StatusCode::NOT_FOUND
    );
    let unauthenticated = api.send(api.client.get(api.url("/data_attributes"))).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert!(api.sandbox.outage_active(), "began with the third answer");

    assert_refused(&api.post("/contacts", contact("u2")).await, 502);
    assert_refused(&api.post("/contacts", contact("u2")).await, 503);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        api.post("/contacts", contact("u2")).await.status,
        StatusCode::OK
    );
    // It begins once only.
    assert!(!api.sandbox.outage_active());
    let state = api.sandbox.snapshot();
    assert_eq!(state.contacts.len(), 2);
    assert_eq!(state.counters.outage.outages, 1);
    assert_eq!(state.counters.outage.refused, 2);
    assert_eq!(state.counters.total_requests, 6);

    // After 0 requests, it begins with the sandbox.
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.outage = Some(ScheduledOutage {
        after_requests: 0,
        outage: Outage::until_ended(OutageKind::Errors),
    });
    let api = Api::with(config).await;
    assert!(api.sandbox.outage_active());
    assert_refused(&api.get("/data_attributes").await, 502);
}

#[tokio::test]
async fn the_admin_endpoint_begins_and_ends_outages_without_a_token_and_is_not_counted() {
    let api = Api::start().await;
    let (status, body) = admin(&api, Method::POST, Some(json!({"kind": "drops"}))).await;
    assert_eq!(status, StatusCode::OK);
    let counters: OutageCounters = serde_json::from_value(body).unwrap();
    assert!(counters.active);
    assert_eq!(counters.outages, 1);
    assert!(api.sandbox.outage_active());
    assert!(
        api.request(Method::GET, "/data_attributes")
            .send()
            .await
            .is_err()
    );
    // Inspection still answers during an outage.
    let state = api
        .client
        .get(api.url("/_sandbox/state"))
        .send()
        .await
        .unwrap();
    assert_eq!(state.status(), StatusCode::OK);
    let (status, body) = admin(&api, Method::GET, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["refused"], 1);

    let (status, body) = admin(&api, Method::DELETE, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["active"], false);
    assert!(body["last_ended_after_ms"].is_u64());
    assert!(!api.sandbox.outage_active());
    assert_eq!(api.get("/data_attributes").await.status, StatusCode::OK);

    // A length in seconds (fractions allowed); no kind means errors.
    let (status, body) = admin(&api, Method::POST, Some(json!({"secs": 0.3}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outages"], 2);
    assert_refused(&api.get("/data_attributes").await, 502);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(api.get("/data_attributes").await.status, StatusCode::OK);
    let (_, body) = admin(&api, Method::GET, None).await;
    assert_eq!(body["active"], false);
    assert_eq!(body["last_ended_after_ms"], 300);

    for bad in [
        json!({"kind": "down"}),
        json!({"kind": "errors", "secs": -1}),
        json!({"kind": "errors", "secs": 0}),
        json!({"kind": "errors", "minutes": 2}),
    ] {
        let (status, body) = admin(&api, Method::POST, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["errors"][0]["code"], "parameter_invalid");
    }
    assert!(
        !api.sandbox.outage_active(),
        "a refused admin request begins nothing"
    );

    let state = api.sandbox.snapshot();
    assert_eq!(
        state.counters.total_requests, 4,
        "admin routes are not counted"
    );
    assert_eq!(state.counters.outage.outages, 2);
    assert_eq!(state.counters.outage.refused, 2);
    assert!(
        state
            .counters
            .requests
            .keys()
            .all(|endpoint| !endpoint.contains("_sandbox"))
    );
}

#[tokio::test]
async fn refused_at_ms_measures_from_the_start_of_each_outage() {
    let api = Api::start().await;
    api.sandbox
        .begin_outage(Outage::until_ended(OutageKind::Errors));
    api.get("/data_attributes").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.get("/data_attributes").await;
    api.sandbox.end_outage();
    let first = api.sandbox.snapshot().counters.outage;
    let lasted = first.last_ended_after_ms.expect("it ended");
    assert!(lasted >= 300, "{lasted}");

    api.sandbox
        .begin_outage(Outage::until_ended(OutageKind::Errors));
    api.get("/data_attributes").await;
    let outage = api.sandbox.snapshot().counters.outage;
    let at = &outage.refused_at_ms;
    assert_eq!(at.len(), 3, "{at:?}");
    assert!(at[0] < 250, "{at:?}");
    assert!(at[1] >= 300 && at[1] <= lasted, "{at:?}");
    assert!(at[2] < 250, "measured from the second outage: {at:?}");
    assert_eq!(outage.outages, 2);
    assert!(outage.active);
}

#[tokio::test]
async fn refused_requests_do_not_use_the_rate_limit_window() {
    let clock = ManualClock::at(1_800_000_003);
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.rate_limit = 2;
    config.clock = Clock::Manual(clock);
    let api = Api::with(config).await;
    api.sandbox
        .begin_outage(Outage::until_ended(OutageKind::Mixed));
    for _ in 0..6 {
        let _ = api.request(Method::GET, "/data_attributes").send().await;
    }
    api.sandbox.end_outage();
    for remaining in ["1", "0"] {
        let answer = api.get("/data_attributes").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-ratelimit-remaining"), Some(remaining));
    }
    assert_eq!(
        api.get("/data_attributes").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let counters = api.sandbox.snapshot().counters;
    assert_eq!(
        counters.max_requests_in_window, 3,
        "refusals not in the window"
    );
    assert_eq!(counters.rate_limited, 1);
    assert_eq!(counters.total_requests, 9);
    assert_eq!(counters.outage.refused, 6);
}
