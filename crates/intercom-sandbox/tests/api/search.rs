//! Search: filters, AND/OR groups, operators, sort validation, cursor pagination, search lag.

use std::time::Duration;

use intercom_sandbox::{Clock, ManualClock, SandboxConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::Api;

fn external_ids(body: &Value) -> Vec<&str> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["external_id"].as_str().unwrap_or(""))
        .collect()
}

#[tokio::test]
async fn single_filters_and_groups() {
    let api = Api::start().await;
    for id in ["alpha", "beta", "gamma"] {
        api.user(id).await;
    }
    api.post(
        "/contacts",
        json!({"role": "lead", "email": "lead@example.com"}),
    )
    .await;
    let search = |query: Value| api.post("/contacts/search", json!({"query": query}));

    let answer = search(json!({"field": "external_id", "operator": "=", "value": "beta"})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["type"], "list");
    assert_eq!(answer.body["total_count"], 1);
    assert_eq!(external_ids(&answer.body), ["beta"]);

    let answer =
        search(json!({"field": "email", "operator": "=", "value": "GAMMA@example.com"})).await;
    assert_eq!(external_ids(&answer.body), ["gamma"]);

    let answer = search(json!({"operator": "OR", "value": [
        {"field": "external_id", "operator": "=", "value": "alpha"},
        {"field": "email", "operator": "=", "value": "beta@example.com"},
    ]}))
    .await;
    assert_eq!(external_ids(&answer.body), ["alpha", "beta"]);

    let answer = search(json!({"operator": "AND", "value": [
        {"field": "role", "operator": "=", "value": "user"},
        {"field": "external_id", "operator": "NIN", "value": ["alpha"]},
        {"field": "email", "operator": "$", "value": "@example.com"},
    ]}))
    .await;
    assert_eq!(external_ids(&answer.body), ["beta", "gamma"]);

    let answer =
        search(json!({"field": "external_id", "operator": "IN", "value": ["gamma", "zeta"]})).await;
    assert_eq!(external_ids(&answer.body), ["gamma"]);
    let answer = search(json!({"field": "email", "operator": "~", "value": "lead"})).await;
    assert_eq!(answer.body["data"][0]["role"], "lead");
    let answer = search(json!({"field": "external_id", "operator": "^", "value": "g"})).await;
    assert_eq!(external_ids(&answer.body), ["gamma"]);
    let answer = search(json!({"field": "id", "operator": "!=", "value": "x"})).await;
    assert_eq!(answer.body["total_count"], 4);
}

#[tokio::test]
async fn bad_queries_are_400() {
    let api = Api::start().await;
    let search = |body: Value| api.post("/contacts/search", body);
    let filter = json!({"field": "external_id", "operator": "=", "value": "a"});
    for bad in [
        json!({"query": {"field": "external_id", "operator": ">", "value": "a"}}),
        json!({"query": {"field": "external_id", "operator": "IN", "value": "a"}}),
        json!({"query": {"field": "external_id", "operator": "=", "value": 5}}),
        json!({"query": {"operator": "AND", "value": [{"operator": "OR", "value": [{"operator": "AND", "value": [filter.clone()]}]}]}}),
        json!({"query": {"operator": "AND", "value": vec![filter.clone(); 16]}}),
        json!({"query": filter.clone(), "pagination": {"per_page": 151}}),
        json!({"query": filter.clone(), "pagination": {"starting_after": "garbage"}}),
        json!({}),
    ] {
        let answer = search(bad.clone()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(answer.body["type"], "error.list");
    }
    let answer =
        search(json!({"query": filter.clone(), "sort": {"field": "created_at", "order": "desc"}}))
            .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.error(),
        (
            "invalid_sort_order",
            "Invalid sort order 'desc'. Must be one of: ascending, descending"
        )
    );
    // Two levels of nesting are allowed.
    let answer = search(
        json!({"query": {"operator": "AND", "value": [{"operator": "OR", "value": [filter]}]}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn cursor_pagination_in_the_body() {
    let api = Api::start().await;
    for i in 0..7 {
        api.user(&format!("u{i}")).await;
    }
    let query = json!({"field": "role", "operator": "=", "value": "user"});
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut pagination = json!({"per_page": 3});
        if let Some(cursor) = &cursor {
            pagination["starting_after"] = json!(cursor);
        }
        let answer = api
            .post(
                "/contacts/search",
                json!({"query": query, "pagination": pagination}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body["total_count"], 7);
        assert_eq!(answer.body["pages"]["per_page"], 3);
        assert_eq!(answer.body["pages"]["total_pages"], 3);
        seen.extend(external_ids(&answer.body).into_iter().map(str::to_owned));
        pages += 1;
        match answer.body["pages"]["next"]["starting_after"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (0..7).map(|i| format!("u{i}")).collect::<Vec<_>>());
    // Default page size is 50.
    let answer = api.post("/contacts/search", json!({"query": query})).await;
    assert_eq!(answer.body["pages"]["per_page"], 50);
    assert!(answer.body["pages"]["next"].is_null());
}

#[tokio::test]
async fn search_lag_hides_new_contacts_and_create_then_races_into_409() {
    let clock = ManualClock::at(1_800_000_000);
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.search_lag = Duration::from_secs(30);
    config.clock = Clock::Manual(clock.clone());
    let api = Api::with(config).await;
    let id = api.user("u1").await;
    let query = json!({"query": {"field": "external_id", "operator": "=", "value": "u1"}});

    // Not yet in the index: a naive client concludes the contact is missing and creates it.
    let answer = api.post("/contacts/search", query.clone()).await;
    assert_eq!(answer.body["total_count"], 0);
    let answer = api
        .post("/contacts", json!({"role": "user", "external_id": "u1"}))
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(answer.error().1.ends_with(&format!("id={id}")));
    // GET by id is not lagged.
    assert_eq!(
        api.get(&format!("/contacts/{id}")).await.status,
        StatusCode::OK
    );

    clock.advance(Duration::from_secs(30));
    let answer = api.post("/contacts/search", query).await;
    assert_eq!(answer.body["total_count"], 1);
}
