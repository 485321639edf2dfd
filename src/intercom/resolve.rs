//! Bulk contact-id resolution: the contacts of many messages looked up with one search, so an
//! unknown id costs a share of a request instead of a `POST /contacts/search` each.
//!
//! The drain collects the users of pending identifies and attaches whose Intercom contact id is
//! not cached, and asks for them [`BATCH`] at a time: `POST /contacts/search` with `external_id IN
//! [...]` (or `email IN [...]` for users known only by email), following
//! `pages.next.starting_after` in the body. Found ids go to the id cache (so the message's own
//! resolve step is skipped); users the search does not return are *absent*, and their message
//! goes straight to its create (or, for an exit, to nothing) without a search of its own. A
//! contact the search cannot see yet (Intercom's search lags new contacts by minutes) still ends
//! right: the create answers 409 with its id.
//!
//! Batch size: Intercom documents at most 15 filters per AND/OR group and 2 levels of nesting,
//! and at most 150 contacts a page; one `IN` filter is one filter, and how many values an `IN`
//! array may hold is not documented. 150 values make one page when every user exists. A batch
//! Intercom refuses (a 4xx other than 401/403/429) is split in half and asked again, down to one
//! user; a user no batch could ask about is left to its message's own search.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::client::{Client, Transport};
use super::requests::{Method, Request};

/// Users asked about in one search (also its page size).
pub const BATCH: usize = 150;

/// How a user is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    ExternalId,
    Email,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::ExternalId => "external_id",
            Field::Email => "email",
        }
    }
}

/// What one lookup of a batch found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// key (the user's entity id: `userId`, or the lower-cased email) → Intercom contact id.
    pub ids: Vec<(String, String)>,
    /// Keys no contact matched.
    pub absent: Vec<String>,
    /// Keys left to their message's own search (a batch of one Intercom refused).
    pub unresolved: Vec<String>,
    /// Keys whose lookup got no answer (a 5xx, 429s, no connection, interrupted): worth asking
    /// again in a later batch.
    pub failed: Vec<String>,
    /// Requests the lookup sent.
    pub requests: u64,
}

/// The search body for `keys` looked up by `field`, at `cursor`, `per_page` contacts a page.
pub fn search_request(
    field: Field,
    keys: &[String],
    per_page: usize,
    cursor: Option<&str>,
) -> Request {
    let mut pagination = json!({ "per_page": per_page });
    if let Some(cursor) = cursor {
        pagination["starting_after"] = json!(cursor);
    }
    Request::new(
        Method::Post,
        "/contacts/search",
        Some(json!({
            "query": { "field": field.as_str(), "operator": "IN", "value": keys },
            "pagination": pagination,
        })),
    )
}

/// Look `keys` up (all by `field`), splitting a batch Intercom refuses.
pub async fn lookup(
    client: &Client,
    field: Field,
    keys: Vec<String>,
    cancel: &CancellationToken,
) -> Found {
    lookup_paged(client, field, keys, BATCH, cancel).await
}

/// [`lookup`] with pages of `per_page` contacts.
pub async fn lookup_paged(
    client: &Client,
    field: Field,
    keys: Vec<String>,
    per_page: usize,
    cancel: &CancellationToken,
) -> Found {
    let mut found = Found::default();
    let mut todo = vec![keys];
    while let Some(keys) = todo.pop() {
        match lookup_one(client, field, &keys, per_page, cancel, &mut found.requests).await {
            Ok((ids, absent)) => {
                found.ids.extend(ids);
                found.absent.extend(absent);
            }
            Err(Failure::Refused) if keys.len() > 1 => {
                let half = keys.len() / 2;
                let (a, b) = keys.split_at(half);
                todo.push(b.to_vec());
                todo.push(a.to_vec());
            }
            Err(Failure::Refused) => found.unresolved.extend(keys),
            Err(Failure::Error(reason)) => {
                tracing::debug!(%reason, users = keys.len(), "A bulk contact lookup failed.");
                found.failed.extend(keys);
            }
        }
    }
    found
}

enum Failure {
    /// Intercom refused the query (a 4xx): a smaller batch may go through.
    Refused,
    /// Anything else (no answer, 5xx, 429s, interrupted): leave the users to their messages.
    Error(String),
}

type Lookup = (Vec<(String, String)>, Vec<String>);

async fn lookup_one(
    client: &Client,
    field: Field,
    keys: &[String],
    per_page: usize,
    cancel: &CancellationToken,
    requests: &mut u64,
) -> Result<Lookup, Failure> {
    let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
    // Per key: the id of a contact with role user if there is one, else the first match.
    let mut hits: HashMap<String, (String, bool)> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let request = search_request(field, keys, per_page, cursor.as_deref());
        *requests += 1;
        let answer = match client.send(&request, cancel).await {
            Ok(answer) => answer,
            Err(Transport::Interrupted) => return Err(Failure::Error("interrupted".into())),
            Err(error) => return Err(Failure::Error(error.to_string())),
        };
        if !answer.is_success() {
            return Err(match answer.status {
                400..=499 if ![401, 403, 404, 408, 409, 429].contains(&answer.status) => {
                    Failure::Refused
                }
                status => Failure::Error(format!("{status}")),
            });
        }
        for contact in answer
            .body
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(id) = contact.get("id").and_then(Value::as_str) else {
                continue;
            };
            let key = match field {
                Field::ExternalId => contact
                    .get("external_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                Field::Email => contact
                    .get("email")
                    .and_then(Value::as_str)
                    .map(str::to_lowercase),
            };
            let Some(key) = key.filter(|k| wanted.contains(k.as_str())) else {
                continue;
            };
            let user = contact.get("role").and_then(Value::as_str) == Some("user");
            match hits.get(&key) {
                Some((_, true)) => {}
                Some((_, false)) if !user => {}
                _ => {
                    hits.insert(key, (id.to_string(), user));
                }
            }
        }
        cursor = answer
            .body
            .pointer("/pages/next/starting_after")
            .and_then(Value::as_str)
            .map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    let absent = keys
        .iter()
        .filter(|k| !hits.contains_key(k.as_str()))
        .cloned()
        .collect();
    let mut ids: Vec<(String, String)> = hits.into_iter().map(|(k, (id, _))| (k, id)).collect();
    ids.sort();
    Ok((ids, absent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_asks_for_every_key_with_in_and_pages_in_the_body() {
        let keys = vec!["u1".to_string(), "u2".to_string()];
        let first = search_request(Field::ExternalId, &keys, BATCH, None);
        assert_eq!(first.path, "/contacts/search");
        assert_eq!(
            first.body.unwrap(),
            json!({
                "query": {"field": "external_id", "operator": "IN", "value": ["u1", "u2"]},
                "pagination": {"per_page": 150},
            })
        );
        let next = search_request(Field::Email, &keys, BATCH, Some("abc"));
        assert_eq!(
            next.body.unwrap()["pagination"],
            json!({"per_page": 150, "starting_after": "abc"})
        );
    }

    /// A sandbox holding the users u0 … u{n-1} (emails in mixed case), and a client of it.
    async fn sandbox_with(
        users: usize,
    ) -> (intercom_sandbox::SandboxHandle, Client, reqwest::Client) {
        let sandbox = intercom_sandbox::Sandbox::start(intercom_sandbox::SandboxConfig::new("t"))
            .await
            .unwrap();
        let raw = reqwest::Client::new();
        for i in 0..users {
            let response = raw
                .post(format!("{}/contacts", sandbox.base_url()))
                .bearer_auth("t")
                .header("Accept", "application/json")
                .json(&json!({"role": "user", "external_id": format!("u{i}"), "email": format!("U{i}@Example.com")}))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
        let mut settings = crate::settings::Settings::defaults().unwrap().intercom;
        settings.base_url = sandbox.base_url().parse().unwrap();
        settings.access_token = crate::settings::Secret::new("t");
        let limiter = std::sync::Arc::new(super::super::ratelimit::RateLimiter::new(
            settings.rate_limit,
            settings.rate_limit_window,
            None,
        ));
        let client = Client::new(&settings, limiter).unwrap();
        (sandbox, client, raw)
    }

    #[tokio::test]
    async fn a_lookup_follows_pages_and_tells_found_from_absent() {
        let (sandbox, client, _) = sandbox_with(7).await;
        let mut keys: Vec<String> = (0..7).map(|i| format!("u{i}")).collect();
        keys.push("nobody".into());
        let found = lookup_paged(
            &client,
            Field::ExternalId,
            keys,
            3,
            &CancellationToken::new(),
        )
        .await;
        let state = sandbox.snapshot();
        let expected: Vec<(String, String)> = {
            let mut ids: Vec<_> = (0..7)
                .map(|i| {
                    let key = format!("u{i}");
                    let id = state.contact_by_external_id(&key).unwrap().id.clone();
                    (key, id)
                })
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(found.ids, expected);
        assert_eq!(found.absent, vec!["nobody".to_string()]);
        assert!(found.unresolved.is_empty());
        // 7 contacts at 3 a page: three pages, the cursor in the body.
        assert_eq!(found.requests, 3);
        assert_eq!(state.counters.requests["POST /contacts/search"]["200"], 3);

        // By email: Intercom's emails match whatever their case; keys are lower-cased.
        let by_email = lookup(
            &client,
            Field::Email,
            vec!["u1@example.com".into(), "u9@example.com".into()],
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(by_email.ids.len(), 1, "{by_email:?}");
        assert_eq!(by_email.ids[0].0, "u1@example.com");
        assert_eq!(by_email.absent, vec!["u9@example.com".to_string()]);
        sandbox.shutdown().await;
    }
}
