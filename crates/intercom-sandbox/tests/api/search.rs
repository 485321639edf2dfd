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

/// Contacts with a spread of identities, some of them sharing a lower-cased email.
async fn varied_contacts(api: &Api) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, body) in [
        json!({"role": "user", "external_id": "u3", "email": "Zed@Example.com", "name": "Zed"}),
        json!({"role": "user", "external_id": "u1", "email": "amy@example.com"}),
        json!({"role": "lead", "email": "É@x.io"}),
        json!({"role": "user", "external_id": "u2"}),
        json!({"role": "user", "external_id": "U1", "email": "é@x.io", "name": "Bo"}),
        json!({"role": "lead", "external_id": "u4", "email": "bo@example.com"}),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = api.post("/contacts", body).await;
        assert_eq!(answer.status, StatusCode::OK, "{i}: {}", answer.text);
        ids.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test]
async fn indexed_searches_answer_exactly_like_scans() {
    let api = Api::start().await;
    let ids = varied_contacts(&api).await;
    let search = |body: Value| api.post("/contacts/search", body);
    let filter = |field: &str, operator: &str, value: Value| json!({"field": field, "operator": operator, "value": value});
    // An OR group, or an AND group whose pinning filter sits in a nested group, is never
    // answered from an index; the plain or AND-ed filter is. Both must give the same body.
    let pairs = [
        (
            filter("external_id", "IN", json!(["u4", "u1", "zz", "u3", "u1"])),
            json!({"operator": "OR", "value": [
                filter("external_id", "=", json!("u4")), filter("external_id", "=", json!("u1")),
                filter("external_id", "=", json!("zz")), filter("external_id", "=", json!("u3")),
            ]}),
        ),
        (
            filter("email", "=", json!("É@X.IO")),
            json!({"operator": "OR", "value": [filter("email", "=", json!("É@X.IO"))]}),
        ),
        (
            filter(
                "email",
                "IN",
                json!(["ZED@example.com", "é@x.io", "BO@example.com"]),
            ),
            json!({"operator": "OR", "value": [
                filter("email", "IN", json!(["ZED@example.com", "é@x.io", "BO@example.com"]))
            ]}),
        ),
        (
            filter(
                "id",
                "IN",
                json!([ids[5], ids[0], ids[2], "6762f0dd0000000000ffffff"]),
            ),
            json!({"operator": "OR", "value": [filter("id", "IN", json!([ids[5], ids[0], ids[2]]))]}),
        ),
        (
            json!({"operator": "AND", "value": [
                filter("role", "=", json!("user")),
                filter("external_id", "IN", json!(["u1", "U1", "u2", "u3", "u4"])),
            ]}),
            json!({"operator": "AND", "value": [
                filter("role", "=", json!("user")),
                {"operator": "OR", "value": [filter("external_id", "IN", json!(["u1", "U1", "u2", "u3", "u4"]))]},
            ]}),
        ),
        (
            json!({"operator": "AND", "value": [
                filter("email", "IN", json!(["amy@example.com", "é@x.io", "zed@example.com"])),
                filter("external_id", "NIN", json!(["u3"])),
                {"operator": "OR", "value": [filter("name", "=", json!("Bo")), filter("role", "=", json!("user"))]},
            ]}),
            json!({"operator": "AND", "value": [
                {"operator": "AND", "value": [filter("email", "IN", json!(["amy@example.com", "é@x.io", "zed@example.com"]))]},
                filter("external_id", "NIN", json!(["u3"])),
                {"operator": "OR", "value": [filter("name", "=", json!("Bo")), filter("role", "=", json!("user"))]},
            ]}),
        ),
    ];
    let all_ids = json!(["u1", "U1", "u2", "u3", "u4"]);
    for (indexed, scanned) in pairs {
        for extra in [
            json!({}),
            json!({"sort": {"field": "email", "order": "ascending"}}),
            json!({"sort": {"field": "name"}}),
            json!({"pagination": {"per_page": 1}}),
            json!({"pagination": {"per_page": 2, "starting_after": "c2FuZGJveA1"}}),
        ] {
            let mut a = extra.clone();
            a["query"] = indexed.clone();
            let mut b = extra.clone();
            b["query"] = scanned.clone();
            let (a_answer, b_answer) = (search(a.clone()).await, search(b).await);
            assert_eq!(a_answer.status, StatusCode::OK, "{a}: {}", a_answer.text);
            assert_eq!(a_answer.body, b_answer.body, "{a}");
        }
    }
    // Creation order, whatever order the values come in.
    let answer = search(
        json!({"query": filter("external_id", "IN", json!(["u4", "u3", "U1", "u2", "u1"]))}),
    )
    .await;
    assert_eq!(external_ids(&answer.body), ["u3", "u1", "u2", "U1", "u4"]);
    let answer = search(json!({"query": filter("external_id", "IN", all_ids)})).await;
    assert_eq!(answer.body["total_count"], 5);
    // "É" and "é" are different identities but one email to search.
    let answer = search(json!({"query": filter("email", "=", json!("é@X.io"))})).await;
    assert_eq!(answer.body["total_count"], 2);
    // `= null` is a scan: contacts without an external id.
    let answer = search(json!({"query": filter("external_id", "=", Value::Null)})).await;
    assert_eq!(answer.body["data"][0]["id"], ids[2].as_str());
    assert_eq!(answer.body["total_count"], 1);
}

#[tokio::test]
async fn indexed_searches_respect_search_lag() {
    let clock = ManualClock::at(1_800_000_000);
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.search_lag = Duration::from_secs(10);
    config.clock = Clock::Manual(clock.clone());
    let api = Api::with(config).await;
    api.user("old").await;
    clock.advance(Duration::from_secs(6));
    api.user("new").await;
    clock.advance(Duration::from_secs(5));
    let query =
        json!({"query": {"field": "external_id", "operator": "IN", "value": ["new", "old"]}});
    let answer = api.post("/contacts/search", query.clone()).await;
    assert_eq!(external_ids(&answer.body), ["old"]);
    let answer = api
        .post(
            "/contacts/search",
            json!({"query": {"field": "email", "operator": "=", "value": "NEW@example.com"}}),
        )
        .await;
    assert_eq!(answer.body["total_count"], 0);
    clock.advance(Duration::from_secs(5));
    let answer = api.post("/contacts/search", query).await;
    assert_eq!(external_ids(&answer.body), ["old", "new"]);
}

#[tokio::test]
async fn in_and_nin_arrays_longer_than_the_configured_limit_are_400() {
    let mut config = SandboxConfig::new(crate::TOKEN);
    config.in_values_limit = Some(3);
    let api = Api::with(config).await;
    api.user("a").await;
    let search = |query: Value| api.post("/contacts/search", json!({"query": query}));
    let answer =
        search(json!({"field": "external_id", "operator": "IN", "value": ["a", "b", "c"]})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["total_count"], 1);
    let answer =
        search(json!({"field": "external_id", "operator": "IN", "value": ["a", "b", "c", "d"]}))
            .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.error(),
        (
            "parameter_invalid",
            "There's a limit of max 3 values for an IN filter; the filter on 'external_id' has 4"
        )
    );
    let answer = search(json!({"operator": "AND", "value": [
        {"field": "role", "operator": "=", "value": "user"},
        {"operator": "OR", "value": [{"field": "email", "operator": "NIN", "value": ["1", "2", "3", "4", "5"]}]},
    ]}))
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.error().1,
        "There's a limit of max 3 values for an NIN filter; the filter on 'email' has 5"
    );
    // Other operators and other arrays are not counted.
    let answer = search(json!({"field": "name", "operator": "~", "value": "abcd"})).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn by_default_in_arrays_have_no_limit() {
    let api = Api::start().await;
    api.user("v999").await;
    let values: Vec<String> = (0..2000).map(|i| format!("v{i}")).collect();
    let answer = api
        .post(
            "/contacts/search",
            json!({"query": {"field": "external_id", "operator": "IN", "value": values}}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(external_ids(&answer.body), ["v999"]);
}
