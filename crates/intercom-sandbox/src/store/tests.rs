//! Unit tests of the store: the indexes agree with linear scans, and stay fast at scale.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Contact, Rules, Store};
use crate::config::{INTERCOM_EVENT_NAME_LIMIT, LongStrings};
use crate::error::ApiError;
use crate::rng::Rng;

const START: u64 = 1_800_000_000;

fn store(search_lag_secs: u64, in_values_limit: Option<usize>) -> Store {
    Store::new(Rules {
        long_strings: LongStrings::Refuse,
        event_name_limit: INTERCOM_EVENT_NAME_LIMIT,
        search_lag: Duration::from_secs(search_lag_secs),
        in_values_limit,
    })
}

struct Gen(Rng);

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        self.0.next_f64() < p
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    fn external_id(&mut self) -> String {
        // "U3" and "u3" are different external ids: they are compared exactly.
        let n = self.below(40);
        if self.chance(0.1) {
            format!("U{n}")
        } else {
            format!("u{n}")
        }
    }

    /// Emails whose spellings differ in ASCII case (one identity) or only in non-ASCII case
    /// (two identities that search still folds together), with a final sigma for good measure.
    fn email(&mut self) -> String {
        let local = self.pick(&["ann", "bob", "cy", "dee", "é", "été", "οδος", "zoë", "x.y"]);
        let domain = self.pick(&["example.com", "x.io", "Ünï.de"]);
        let email = format!("{local}@{domain}");
        match self.below(5) {
            0 => email.to_uppercase(),
            1 => email.to_ascii_uppercase(),
            2 => {
                let mut chars = email.chars();
                let first = chars.next().unwrap_or('a');
                first.to_uppercase().chain(chars).collect()
            }
            _ => email,
        }
    }

    fn text(&mut self) -> String {
        self.pick(&[
            "a",
            "ex",
            "user",
            "lead",
            "@x.io",
            "x.io",
            "EXAMPLE.com",
            "Ada",
            "ü",
            "",
            "é",
            "u1",
        ])
        .to_owned()
    }
}

/// A value a filter on `field` may compare against, often one that some contact holds.
fn value_for(g: &mut Gen, store: &Store, field: &str) -> String {
    let held = if store.contacts.is_empty() || g.chance(0.3) {
        None
    } else {
        let contact = &store.contacts[g.below(store.contacts.len())];
        match field {
            "id" => Some(contact.id.clone()),
            "external_id" => contact.external_id.clone(),
            "email" => contact.email.clone().map(|e| {
                if g.chance(0.5) {
                    e.to_uppercase()
                } else {
                    e.to_ascii_lowercase()
                }
            }),
            "name" => contact.name.clone(),
            _ => None,
        }
    };
    held.unwrap_or_else(|| match field {
        "id" => format!("6762f0dd{:016x}", g.below(3000)),
        "external_id" => g.external_id(),
        "email" => g.email(),
        _ => g.text(),
    })
}

fn random_filter(g: &mut Gen, store: &Store) -> Value {
    let field = if g.chance(0.7) {
        g.pick(&["id", "external_id", "email"])
    } else {
        g.pick(&["email_domain", "role", "name", "phone", "external_id"])
    };
    let operator = if g.chance(0.6) {
        g.pick(&["=", "IN"])
    } else {
        g.pick(&["=", "!=", "IN", "NIN", "~", "!~", "^", "$"])
    };
    let value = match operator {
        "IN" | "NIN" => {
            let count = g.below(7);
            let mut values: Vec<Value> = (0..count)
                .map(|_| json!(value_for(g, store, field)))
                .collect();
            if g.chance(0.02) {
                values.push(json!(5));
            }
            json!(values)
        }
        _ if g.chance(0.08) => Value::Null,
        _ if g.chance(0.01) => json!(["not", "a", "string"]),
        _ => json!(value_for(g, store, field)),
    };
    json!({"field": field, "operator": operator, "value": value})
}

fn random_query(g: &mut Gen, store: &Store, depth: usize) -> Value {
    if depth > 1 && g.chance(0.6) || depth > 3 {
        return random_filter(g, store);
    }
    if depth == 1 && g.chance(0.4) {
        return random_filter(g, store);
    }
    let count = if g.chance(0.02) { 16 } else { 1 + g.below(4) };
    let parts: Vec<Value> = (0..count)
        .map(|_| random_query(g, store, depth + 1))
        .collect();
    let operator = if g.chance(0.65) { "AND" } else { "OR" };
    json!({"operator": operator, "value": parts})
}

fn random_search(g: &mut Gen, store: &Store) -> Value {
    let mut body = json!({"query": random_query(g, store, 1)});
    if g.chance(0.3) {
        let field = g.pick(&[
            "external_id",
            "email",
            "name",
            "created_at",
            "id",
            "custom_attributes.tier",
        ]);
        let mut sort = json!({"field": field});
        if g.chance(0.7) {
            sort["order"] = json!(g.pick(&["ascending", "descending"]));
        }
        body["sort"] = sort;
    }
    if g.chance(0.5) {
        let per_page = 1 + g.below(6);
        let offset = g.below(12);
        body["pagination"] = json!({
            "per_page": per_page,
            "starting_after": format!("c2FuZGJveA{offset:x}"),
        });
    }
    body
}

/// The contact a linear scan finds holding this external id or email, as `holder_of` did.
fn linear_holder<'a>(
    contacts: &'a [Contact],
    external_id: Option<&str>,
    email: Option<&str>,
    except: Option<&str>,
) -> Option<&'a Contact> {
    let others = || contacts.iter().filter(|c| Some(c.id.as_str()) != except);
    external_id
        .and_then(|x| others().find(|c| c.external_id.as_deref() == Some(x)))
        .or_else(|| {
            email.and_then(|e| {
                others().find(|c| {
                    c.email
                        .as_deref()
                        .is_some_and(|h| h.eq_ignore_ascii_case(e))
                })
            })
        })
}

fn conflict_holder(result: &Result<Value, ApiError>) -> Option<String> {
    match result {
        Err(error) if error.status == 409 => error.message.split("id=").nth(1).map(str::to_owned),
        _ => None,
    }
}

/// The ids and pages of a search answer, short enough to read in a failure.
fn summary(answer: &Result<Value, ApiError>) -> String {
    match answer {
        Ok(answer) => {
            let ids: Vec<&str> = answer["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["id"].as_str())
                .collect();
            format!("{} of {}: {ids:?}", ids.len(), answer["total_count"])
        }
        Err(error) => format!("{} {}", error.status, error.message),
    }
}

/// What the snapshot says about events, companies and user counts equals a linear scan.
fn check_snapshot(store: &Store) {
    let snapshot = store.snapshot();
    assert_eq!(snapshot.contacts.len(), store.contacts.len());
    for (shot, contact) in snapshot.contacts.iter().zip(&store.contacts) {
        assert_eq!(shot.id, contact.id);
        let events: Vec<(String, i64)> = store
            .events
            .iter()
            .filter(|e| e.contact_id == contact.id)
            .map(|e| (e.event_name.clone(), e.created_at))
            .collect();
        let shot_events: Vec<(String, i64)> = shot
            .events
            .iter()
            .map(|e| (e.event_name.clone(), e.created_at))
            .collect();
        assert_eq!(shot_events, events);
        let companies: Vec<String> = contact
            .companies
            .iter()
            .map(|id| {
                store
                    .companies
                    .iter()
                    .find(|c| c.id == *id)
                    .map(|c| c.company_id.clone())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(shot.companies, companies);
    }
    for (shot, company) in snapshot.companies.iter().zip(&store.companies) {
        let users = store
            .contacts
            .iter()
            .filter(|c| c.companies.contains(&company.id))
            .count();
        assert_eq!(shot.user_count, users, "{}", company.company_id);
    }
}

fn create_body(g: &mut Gen) -> Value {
    let mut body = json!({});
    if g.chance(0.85) {
        body["role"] = json!(if g.chance(0.8) { "user" } else { "lead" });
    }
    if g.chance(0.75) {
        body["external_id"] = json!(g.external_id());
    }
    if g.chance(0.75) {
        body["email"] = json!(g.email());
    }
    if g.chance(0.5) {
        body["name"] = json!(g.text());
    }
    if g.chance(0.2) {
        body["custom_attributes"] = json!({"tier": g.pick(&["gold", "silver"])});
    }
    body
}

fn update_body(g: &mut Gen) -> Value {
    let mut body = json!({});
    if g.chance(0.5) {
        body["external_id"] = if g.chance(0.15) {
            Value::Null
        } else {
            json!(g.external_id())
        };
    }
    if g.chance(0.5) {
        body["email"] = if g.chance(0.15) {
            Value::Null
        } else {
            json!(g.email())
        };
    }
    if g.chance(0.3) {
        body["name"] = json!(g.text());
    }
    body
}

#[test]
fn indexed_paths_agree_with_linear_scans_over_random_histories() {
    let mut searches = 0;
    let mut indexed = 0;
    let mut indexed_hits = 0;
    let mut conflicts = 0;
    for seed in 1..=4 {
        let mut g = Gen(Rng::seeded(seed));
        let lag = [0, 5][seed as usize % 2];
        let mut store = store(lag, None);
        let mut now = Duration::from_secs(START);
        store
            .create_data_attribute(
                &json!({"name": "tier", "model": "contact", "data_type": "string"}),
                START,
            )
            .unwrap();
        for step in 0..400 {
            now += Duration::from_millis(g.below(3000) as u64);
            match g.below(20) {
                0..=8 => {
                    let body = create_body(&mut g);
                    let expected = linear_holder(
                        &store.contacts,
                        body["external_id"].as_str(),
                        body["email"].as_str(),
                        None,
                    )
                    .map(|c| c.id.clone());
                    let result = store.create_contact(&body, now);
                    if result.as_ref().is_err_and(|e| e.status == 409) || expected.is_some() {
                        assert_eq!(conflict_holder(&result), expected, "{body}");
                        conflicts += 1;
                    }
                }
                9..=12 if !store.contacts.is_empty() => {
                    let id = store.contacts[g.below(store.contacts.len())].id.clone();
                    let body = update_body(&mut g);
                    let expected = linear_holder(
                        &store.contacts,
                        body["external_id"].as_str(),
                        body["email"].as_str(),
                        Some(&id),
                    )
                    .map(|c| c.id.clone());
                    let result = store.update_contact(&id, &body, now.as_secs());
                    assert_eq!(conflict_holder(&result), expected, "{body}");
                    assert_eq!(result.is_ok(), expected.is_none(), "{body}");
                }
                13 | 14 if !store.contacts.is_empty() => {
                    let contact = &store.contacts[g.below(store.contacts.len())];
                    let mut body = json!({
                        "event_name": g.pick(&["Signed Up", "signed up", "paid"]),
                        "created_at": g.below(3),
                    });
                    match g.below(3) {
                        0 => body["id"] = json!(contact.id),
                        1 => body["user_id"] = json!(value_for(&mut g, &store, "external_id")),
                        _ => body["email"] = json!(value_for(&mut g, &store, "email")),
                    }
                    let target = if let Some(id) = body["id"].as_str() {
                        store.contacts.iter().find(|c| c.id == id)
                    } else if let Some(user_id) = body["user_id"].as_str() {
                        store
                            .contacts
                            .iter()
                            .find(|c| c.external_id.as_deref() == Some(user_id))
                    } else {
                        let email = body["email"].as_str().unwrap_or_default();
                        store.contacts.iter().find(|c| {
                            c.email
                                .as_deref()
                                .is_some_and(|e| e.eq_ignore_ascii_case(email))
                        })
                    }
                    .map(|c| c.id.clone());
                    let name = body["event_name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_lowercase();
                    let duplicate = store.events.iter().any(|e| {
                        Some(&e.contact_id) == target.as_ref()
                            && e.created_at == body["created_at"].as_i64().unwrap_or_default()
                            && e.event_name.to_lowercase() == name
                    });
                    let events = store.events.len();
                    let result = store.create_event(&body);
                    match &target {
                        None => assert!(result.is_err_and(|e| e.status == 404), "{body}"),
                        Some(target) => {
                            assert!(result.is_ok(), "{body}");
                            let stored = store.events.len() > events;
                            assert_eq!(stored, !duplicate, "{body}");
                            if stored {
                                assert_eq!(store.events[events].contact_id, *target);
                            }
                        }
                    }
                }
                15..=17 if !store.contacts.is_empty() => {
                    let company_id = format!("co{}", g.below(8));
                    let company = store
                        .upsert_company(&json!({"company_id": company_id, "name": "C"}), START)
                        .unwrap();
                    assert_eq!(company["company_id"], company_id.as_str());
                    let company = company["id"].as_str().unwrap_or_default().to_owned();
                    let contact = store.contacts[g.below(store.contacts.len())].id.clone();
                    if g.chance(0.7) {
                        store
                            .attach_company(&contact, &json!({"id": company}))
                            .unwrap();
                    } else {
                        let attached = store.contacts[store.contact_index(&contact).unwrap()]
                            .companies
                            .contains(&company);
                        let result = store.detach_company(&contact, &company);
                        assert_eq!(result.is_ok(), attached);
                    }
                    let found = store.find_companies(Some(&company_id), None).unwrap();
                    assert_eq!(found["id"], company.as_str());
                }
                _ => {}
            }
            store.assert_indexes_consistent();
            let queries = if step % 50 == 49 { 30 } else { 2 };
            for _ in 0..queries {
                let body = random_search(&mut g, &store);
                let fast = store.search_contacts(&body, now);
                let linear = store.search_contacts_linear(&body, now);
                assert!(
                    fast == linear,
                    "seed {seed} step {step}: {body}\nindexed: {}\nlinear:  {}",
                    summary(&fast),
                    summary(&linear)
                );
                searches += 1;
                if fast.is_ok() && store.search_uses_index(&body) {
                    indexed += 1;
                    if fast.as_ref().is_ok_and(|answer| answer["total_count"] != 0) {
                        indexed_hits += 1;
                    }
                }
            }
        }
        check_snapshot(&store);
    }
    // The comparison means something only if both paths were exercised often.
    assert!(
        indexed > searches / 5,
        "{indexed} of {searches} used an index"
    );
    assert!(
        indexed < searches * 4 / 5,
        "{indexed} of {searches} used an index"
    );
    assert!(
        indexed_hits > indexed / 3,
        "{indexed_hits} of {indexed} found something"
    );
    assert!(conflicts > 50, "{conflicts} conflicts");
}

#[test]
fn the_fast_path_is_taken_only_for_pinning_queries() {
    let store = store(0, None);
    let uses = |query: Value| store.search_uses_index(&json!({"query": query}));
    let pin = json!({"field": "external_id", "operator": "IN", "value": ["a"]});
    let other = json!({"field": "role", "operator": "=", "value": "user"});
    assert!(uses(pin.clone()));
    assert!(uses(
        json!({"field": "email", "operator": "=", "value": "A@x"})
    ));
    assert!(uses(json!({"field": "id", "operator": "=", "value": "x"})));
    assert!(uses(json!({"operator": "AND", "value": [other, pin]})));
    // `= null` matches every contact without the field: not indexed.
    assert!(!uses(
        json!({"field": "external_id", "operator": "=", "value": null})
    ));
    assert!(!uses(json!({"operator": "OR", "value": [pin, other]})));
    assert!(!uses(
        json!({"operator": "AND", "value": [{"operator": "OR", "value": [pin]}, other]})
    ));
    assert!(!uses(
        json!({"field": "external_id", "operator": "NIN", "value": ["a"]})
    ));
    assert!(!uses(
        json!({"field": "email_domain", "operator": "=", "value": "x"})
    ));
}

#[test]
fn twenty_thousand_contacts_are_created_updated_and_searched_quickly() {
    const CONTACTS: usize = 20_000;
    let mut store = store(0, Some(150));
    let now = Duration::from_secs(START);
    let mut ids = Vec::with_capacity(CONTACTS);
    for i in 0..CONTACTS {
        let contact = store
            .create_contact(
                &json!({"role": "user", "external_id": format!("user-{i}"),
                        "email": format!("User-{i}@Example.com")}),
                now,
            )
            .unwrap();
        ids.push(contact["id"].as_str().unwrap().to_owned());
    }
    let again = store.create_contact(
        &json!({"role": "user", "email": format!("user-{}@example.COM", CONTACTS - 1)}),
        now,
    );
    assert_eq!(
        conflict_holder(&again).as_deref(),
        Some(ids[CONTACTS - 1].as_str())
    );

    // Batches of 150 external ids, asked for in reverse: answered in creation order. Most pages
    // hold one contact, since rendering contacts (not finding them) is what costs in debug.
    let mut found = 0;
    for (batch, start) in (0..CONTACTS).step_by(150).enumerate() {
        let end = (start + 150).min(CONTACTS);
        let values: Vec<String> = (start..end).rev().map(|i| format!("user-{i}")).collect();
        let per_page = if batch % 40 == 0 { 150 } else { 1 };
        let answer = store
            .search_contacts(
                &json!({"query": {"field": "external_id", "operator": "IN", "value": values},
                        "pagination": {"per_page": per_page}}),
                now,
            )
            .unwrap();
        assert_eq!(answer["total_count"], end - start);
        let got: Vec<&str> = answer["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["external_id"].as_str().unwrap())
            .collect();
        let want: Vec<String> = (start..end)
            .take(per_page)
            .map(|i| format!("user-{i}"))
            .collect();
        assert_eq!(got, want);
        found += answer["total_count"].as_u64().unwrap() as usize;
    }
    assert_eq!(found, CONTACTS);

    let companies: Vec<Value> = (0..100)
        .map(|n| {
            let company = store
                .upsert_company(&json!({"company_id": format!("co{n}")}), START)
                .unwrap();
            json!({"id": company["id"]})
        })
        .collect();
    // Every fourth contact is renamed, gets an event and a company.
    for (i, id) in ids.iter().enumerate().step_by(4) {
        store
            .update_contact(
                id,
                &json!({"external_id": format!("renamed-{i}"), "name": "N"}),
                START + 1,
            )
            .unwrap();
        store
            .create_event(&json!({"event_name": "synced", "created_at": 1,
                                  "user_id": format!("renamed-{i}")}))
            .unwrap();
        store.attach_company(id, &companies[i / 4 % 100]).unwrap();
    }
    let answer = store
        .search_contacts(
            &json!({"query": {"operator": "AND", "value": [
                {"field": "email", "operator": "=", "value": "user-8@example.com"},
                {"field": "external_id", "operator": "IN", "value": ["renamed-8", "user-8"]},
            ]}}),
            now,
        )
        .unwrap();
    assert_eq!(answer["total_count"], 1);
    assert_eq!(answer["data"][0]["id"], ids[8].as_str());
    assert_eq!(answer["data"][0]["external_id"], "renamed-8");
    // The old external id is free again; the new one is held.
    let old = store.create_contact(&json!({"external_id": "user-8", "role": "lead"}), now);
    assert!(old.is_ok());
    let new = store.create_contact(&json!({"external_id": "renamed-8"}), now);
    assert_eq!(conflict_holder(&new).as_deref(), Some(ids[8].as_str()));

    let snapshot = store.snapshot();
    assert_eq!(snapshot.contacts.len(), CONTACTS + 1);
    assert_eq!(snapshot.contacts[8].events.len(), 1);
    assert_eq!(snapshot.contacts[8].companies, ["co2"]);
    assert!(snapshot.contacts[9].events.is_empty());
    assert!(
        snapshot
            .companies
            .iter()
            .all(|c| c.user_count == CONTACTS / 400),
        "every company has {} users",
        CONTACTS / 400
    );
}
