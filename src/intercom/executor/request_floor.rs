//! The request floor, end to end against the sandbox: what one message costs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use intercom_sandbox::{Sandbox, SandboxConfig, SandboxHandle, Snapshot};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Executor, Outcome};
use crate::intercom::client::Client;
use crate::intercom::disposition::Disposition;
use crate::intercom::ratelimit::RateLimiter;
use crate::segment::Message;
use crate::settings::{Secret, Settings};
use crate::store::cache;

const TOKEN: &str = "floor-token";

struct World {
    sandbox: SandboxHandle,
    executor: Executor,
    db: Arc<Mutex<rusqlite::Connection>>,
}

async fn world(search_lag: Duration) -> World {
    let mut config = SandboxConfig::new(TOKEN);
    config.search_lag = search_lag;
    let sandbox = Sandbox::start(config).await.unwrap();
    let mut settings = Settings::defaults().unwrap().intercom;
    settings.base_url = sandbox.base_url().parse().unwrap();
    settings.access_token = Secret::new(TOKEN);
    settings.rate_limit = 1000;
    let limiter = Arc::new(RateLimiter::new(
        settings.rate_limit,
        settings.rate_limit_window,
        None,
    ));
    let client = Client::new(&settings, limiter).unwrap();
    let db = Arc::new(Mutex::new(crate::store::open_in_memory().unwrap()));
    let executor = Executor::new(client, db.clone(), &settings).unwrap();
    World {
        sandbox,
        executor,
        db,
    }
}

impl World {
    async fn deliver(&self, message: Value) {
        let outcome = self
            .executor
            .execute(
                &Message::from_value(&message).unwrap(),
                1,
                &CancellationToken::new(),
            )
            .await;
        assert_eq!(
            outcome,
            Outcome::Finished(Disposition::Delivered),
            "{message}"
        );
    }

    /// The requests (`"POST /contacts 200"` → count) `message` costs.
    async fn cost(&self, message: Value) -> BTreeMap<String, u64> {
        let before = calls(&self.sandbox.snapshot());
        self.deliver(message).await;
        let mut after = calls(&self.sandbox.snapshot());
        for (call, n) in before {
            *after.get_mut(&call).unwrap() -= n;
        }
        after.retain(|_, n| *n > 0);
        after
    }
}

fn calls(snapshot: &Snapshot) -> BTreeMap<String, u64> {
    snapshot
        .counters
        .requests
        .iter()
        .flat_map(|(endpoint, answers)| {
            answers
                .iter()
                .map(move |(status, n)| (format!("{endpoint} {status}"), *n))
        })
        .collect()
}

fn expect(calls: &[(&str, u64)]) -> BTreeMap<String, u64> {
    calls.iter().map(|(c, n)| (c.to_string(), *n)).collect()
}

#[tokio::test]
async fn a_new_contact_costs_the_search_and_one_create_carrying_every_value() {
    let world = world(Duration::ZERO).await;
    // Without custom attributes: nothing to list or create first.
    let cost = world
        .cost(json!({"type": "identify", "userId": "u1",
            "traits": {"email": "u1@example.com", "name": "Ann Lee", "phone": "+353871234567"}}))
        .await;
    assert_eq!(
        cost,
        expect(&[("POST /contacts/search 200", 1), ("POST /contacts 200", 1)])
    );
    let state = world.sandbox.snapshot();
    let contact = state.contact_by_external_id("u1").unwrap();
    assert_eq!(contact.email.as_deref(), Some("u1@example.com"));
    assert_eq!(contact.name.as_deref(), Some("Ann Lee"));
    assert_eq!(contact.phone.as_deref(), Some("+353871234567"));

    // With one: the attribute is made first (the list, once per process, and its create),
    // then the create writes it; still no PUT.
    let cost = world
        .cost(json!({"type": "identify", "userId": "u2",
            "traits": {"vip": true, "createdAt": "2020-01-01T00:00:00Z"}}))
        .await;
    assert_eq!(
        cost,
        expect(&[
            ("GET /data_attributes 200", 2),
            ("POST /data_attributes 200", 1),
            ("POST /contacts/search 200", 1),
            ("POST /contacts 200", 1),
        ])
    );
    let state = world.sandbox.snapshot();
    let contact = state.contact_by_external_id("u2").unwrap();
    assert_eq!(contact.custom_attributes["vip"], json!(true));
    assert_eq!(contact.signed_up_at, Some(1_577_836_800));

    // The id is cached: the next identify is its one PUT.
    let cost = world
        .cost(json!({"type": "identify", "userId": "u2", "traits": {"vip": false}}))
        .await;
    assert_eq!(cost, expect(&[("PUT /contacts/{id} 200", 1)]));
    let state = world.sandbox.snapshot();
    assert_eq!(
        state
            .contact_by_external_id("u2")
            .unwrap()
            .custom_attributes["vip"],
        json!(false)
    );
}

#[tokio::test]
async fn a_contact_another_client_created_costs_search_create_409_and_the_update() {
    // Intercom's search lags a new contact: ours misses the one another client just made.
    let world = world(Duration::from_secs(600)).await;
    let other = reqwest::Client::new()
        .post(format!("{}/contacts", world.sandbox.base_url()))
        .bearer_auth(TOKEN)
        .header("Accept", "application/json")
        .json(&json!({"role": "user", "external_id": "u1"}))
        .send()
        .await
        .unwrap();
    assert!(other.status().is_success());
    let id = world
        .sandbox
        .snapshot()
        .contact_by_external_id("u1")
        .unwrap()
        .id
        .clone();
    let cost = world
        .cost(json!({"type": "identify", "userId": "u1",
            "traits": {"email": "u1@example.com", "name": "Ann"}}))
        .await;
    assert_eq!(
        cost,
        expect(&[
            ("POST /contacts/search 200", 1),
            ("POST /contacts 409", 1),
            ("PUT /contacts/{id} 200", 1),
        ])
    );
    let state = world.sandbox.snapshot();
    assert_eq!(state.contacts.len(), 1);
    let contact = state.contact_by_external_id("u1").unwrap();
    assert_eq!(contact.name.as_deref(), Some("Ann"));
    assert_eq!(contact.email.as_deref(), Some("u1@example.com"));
    let cached = cache::contact_id(&world.db.lock().unwrap(), "u1").unwrap();
    assert_eq!(cached, Some(id));
}

#[tokio::test]
async fn a_membership_attach_with_a_cached_company_id_is_one_request() {
    let world = world(Duration::ZERO).await;
    // The account's own values upsert the company (its id is cached), and the member is
    // known (its id is cached).
    world
        .deliver(json!({"type": "group", "groupId": "acme", "traits": {"name": "Acme"}}))
        .await;
    world
        .deliver(json!({"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com"}}))
        .await;
    let membership = json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {},
        "context": {"traits": {"email": "u1@example.com"},
                    "personas": {"computation_class": "audience", "computation_key": "high_value"}}});
    let cost = world.cost(membership.clone()).await;
    assert_eq!(cost, expect(&[("POST /contacts/{id}/companies 200", 1)]));
    let state = world.sandbox.snapshot();
    assert_eq!(
        state.contact_by_external_id("u1").unwrap().companies,
        vec!["acme".to_string()]
    );

    // A group with traits still upserts (and attaches by the upsert's answer).
    let cost = world
        .cost(
            json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {"plan": "Pro"}}),
        )
        .await;
    assert_eq!(
        cost,
        expect(&[
            ("POST /companies 200", 1),
            ("POST /contacts/{id}/companies 200", 1),
        ])
    );

    // A cached company id Intercom no longer has: the attach's 404 makes the cache stale,
    // and the message is mapped again, upserting the company.
    let real = state.company_by_company_id("acme").unwrap().id.clone();
    cache::set_company_id(
        &world.db.lock().unwrap(),
        "acme",
        "0123456789abcdef01234567",
    )
    .unwrap();
    let cost = world.cost(membership).await;
    assert_eq!(
        cost,
        expect(&[
            ("POST /contacts/{id}/companies 404", 1),
            ("POST /companies 200", 1),
            ("POST /contacts/{id}/companies 200", 1),
        ])
    );
    let cached = cache::company_id(&world.db.lock().unwrap(), "acme").unwrap();
    assert_eq!(cached, Some(real));
}
