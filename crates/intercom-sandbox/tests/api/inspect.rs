//! The inspection endpoint and the handle's snapshot agree, and are not rate limited.

use intercom_sandbox::{Sandbox, SandboxConfig, Snapshot};
use reqwest::StatusCode;
use serde_json::json;

use crate::Api;

#[tokio::test]
async fn state_is_served_without_a_token_and_matches_the_handle() {
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.rate_limit = 4;
    let api = Api::with(config).await;
    api.attribute("contact", "vip", "boolean").await;
    let id = api.user("u1").await;
    api.put(
        &format!("/contacts/{id}"),
        json!({"custom_attributes": {"vip": true}}),
    )
    .await;
    api.post(
        "/events",
        json!({"event_name": "x", "created_at": 1, "user_id": "u1"}),
    )
    .await;
    let answer = api.get("/data_attributes").await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);

    // Many inspections, no 429: inspection is outside the budget.
    for _ in 0..5 {
        let response = api
            .client
            .get(api.url("/_sandbox/state"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = api
        .client
        .get(api.url("/_sandbox/state"))
        .send()
        .await
        .unwrap();
    let served: Snapshot = response.json().await.unwrap();
    assert_eq!(served, api.sandbox.snapshot());
    let contact = served.contact_by_external_id("u1").unwrap();
    assert_eq!(contact.custom_attributes["vip"], json!(true));
    assert_eq!(contact.events[0].event_name, "x");
    assert_eq!(served.counters.requests["POST /contacts"]["200"], 1);
    assert_eq!(served.counters.requests["GET /data_attributes"]["429"], 1);
    assert_eq!(served.counters.total_requests, 5);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let sandbox = Sandbox::start(SandboxConfig::new("t")).await.unwrap();
    let url = format!("{}/_sandbox/state", sandbox.base_url());
    let client = reqwest::Client::new();
    assert!(client.get(&url).send().await.is_ok());
    sandbox.shutdown().await;
    let fresh = reqwest::Client::new();
    assert!(fresh.get(&url).send().await.is_err());
}
