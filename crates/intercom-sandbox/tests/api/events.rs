//! Events: 202 with no body, contact first, dedup, 10 metadata keys, 120 names.

use reqwest::StatusCode;
use serde_json::json;

use crate::Api;
use intercom_sandbox::SandboxConfig;

#[tokio::test]
async fn an_event_is_202_with_an_empty_body_by_any_identifier() {
    let api = Api::start().await;
    let id = api.user("u1").await;
    for (i, identity) in [
        json!({"user_id": "u1"}),
        json!({"id": id}),
        json!({"email": "U1@example.com"}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body =
            json!({"event_name": "Order Completed", "created_at": 1_700_000_000 + i as i64});
        body.as_object_mut()
            .unwrap()
            .extend(identity.as_object().unwrap().clone());
        let answer = api.post("/events", body).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
        assert!(answer.text.is_empty());
    }
    assert_eq!(api.sandbox.snapshot().contacts[0].events.len(), 3);
}

#[tokio::test]
async fn an_event_for_an_unknown_user_is_404() {
    let api = Api::start().await;
    let answer = api
        .post(
            "/events",
            json!({"event_name": "x", "created_at": 1, "user_id": "ghost"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error(), ("not_found", "User Not Found"));
}

#[tokio::test]
async fn event_name_created_at_and_an_identifier_are_required() {
    let api = Api::start().await;
    api.user("u1").await;
    for body in [
        json!({"created_at": 1, "user_id": "u1"}),
        json!({"event_name": "x", "user_id": "u1"}),
        json!({"event_name": "x", "created_at": 1}),
        json!({"event_name": "x", "created_at": "yesterday", "user_id": "u1"}),
    ] {
        let answer = api.post("/events", body.clone()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.body["type"], "error.list");
    }
    assert!(api.sandbox.snapshot().contacts[0].events.is_empty());
}

#[tokio::test]
async fn a_repeated_event_is_accepted_but_not_stored() {
    let api = Api::start().await;
    api.user("u1").await;
    let event =
        |name: &str, at: i64| json!({"event_name": name, "created_at": at, "user_id": "u1"});
    assert_eq!(
        api.post("/events", event("Signed Up", 100)).await.status,
        StatusCode::ACCEPTED
    );
    // Same contact, same name (case-insensitively), same time: dropped.
    assert_eq!(
        api.post("/events", event("signed up", 100)).await.status,
        StatusCode::ACCEPTED
    );
    // Another time is another event.
    assert_eq!(
        api.post("/events", event("Signed Up", 101)).await.status,
        StatusCode::ACCEPTED
    );
    let state = api.sandbox.snapshot();
    assert_eq!(state.contacts[0].events.len(), 2);
    assert_eq!(state.counters.duplicate_events_dropped, 1);
    assert_eq!(state.event_names, vec!["signed up".to_owned()]);
}

#[tokio::test]
async fn only_the_first_ten_metadata_keys_are_kept() {
    let api = Api::start().await;
    api.user("u1").await;
    let mut metadata = serde_json::Map::new();
    for i in 0..12 {
        metadata.insert(format!("k{i:02}"), json!(i));
    }
    let answer = api
        .post(
            "/events",
            json!({"event_name": "x", "created_at": 1, "user_id": "u1", "metadata": metadata}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let state = api.sandbox.snapshot();
    let kept: Vec<&String> = state.contacts[0].events[0].metadata.keys().collect();
    assert_eq!(kept.len(), 10);
    assert_eq!(kept[0], "k00");
    assert_eq!(kept[9], "k09");
}

#[tokio::test]
async fn metadata_takes_scalars_links_and_amounts_but_not_other_nesting() {
    let api = Api::start().await;
    api.user("u1").await;
    let ok = json!({"s": "a", "n": 2.5, "link": {"url": "https://x.y", "value": "x"},
                    "price": {"amount": 3499, "currency": "eur"}});
    let answer = api
        .post(
            "/events",
            json!({"event_name": "x", "created_at": 1, "user_id": "u1", "metadata": ok}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    for bad in [
        json!({"list": [1, 2]}),
        json!({"deep": {"a": {"b": 1}}}),
        json!({"s": "x".repeat(256)}),
    ] {
        let answer = api
            .post(
                "/events",
                json!({"event_name": "y", "created_at": 2, "user_id": "u1", "metadata": bad}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
    }
}

#[tokio::test]
async fn the_name_after_the_limit_is_422() {
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.event_name_limit = 3;
    let api = Api::with(config).await;
    api.user("u1").await;
    for (at, name) in ["a", "b", "c"].into_iter().enumerate() {
        let answer = api
            .post(
                "/events",
                json!({"event_name": name, "created_at": at, "user_id": "u1"}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
    }
    let answer = api
        .post(
            "/events",
            json!({"event_name": "d", "created_at": 9, "user_id": "u1"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        answer.error().1,
        "Cannot have more than 3 active event names"
    );
    // A known name (any case) still goes through.
    let answer = api
        .post(
            "/events",
            json!({"event_name": "A", "created_at": 10, "user_id": "u1"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_default_limit_is_120_names() {
    let api = Api::start().await;
    api.user("u1").await;
    for i in 0..120 {
        let answer = api
            .post(
                "/events",
                json!({"event_name": format!("e{i}"), "created_at": 1, "user_id": "u1"}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
    }
    let answer = api
        .post(
            "/events",
            json!({"event_name": "e120", "created_at": 1, "user_id": "u1"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        answer.error().1,
        "Cannot have more than 120 active event names"
    );
}
