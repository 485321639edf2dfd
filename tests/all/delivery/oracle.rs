//! What Intercom must hold after a series of snapshots, computed independently of the product
//! from SPEC sections 5 and 6, and the comparison with the sandbox's state.

use std::collections::{BTreeMap, BTreeSet};

use intercom_sandbox::Snapshot;
use serde_json::{Value, json};

use crate::harness::{World, file_arg};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Audience,
    Trait,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Account,
}

/// One snapshot: entity → value (`true` for audience members).
#[derive(Clone)]
pub struct Load {
    pub key: &'static str,
    pub kind: Kind,
    pub scope: Scope,
    pub rows: Vec<(String, Value)>,
}

/// What one step loads before it syncs.
#[derive(Clone)]
pub struct Step {
    pub taken_at: &'static str,
    pub loads: Vec<Load>,
    /// A new membership snapshot: (group, user).
    pub members: Option<Vec<(String, String)>>,
}

pub fn email(user: &str) -> String {
    format!("{user}@example.com")
}

/// Load a step's snapshots with the real `load` / `load-members` commands.
pub fn load_step(world: &World, index: usize, step: &Step) {
    for load in &step.loads {
        let lines: Vec<Value> = load
            .rows
            .iter()
            .map(|(entity, value)| match load.scope {
                Scope::User => match load.kind {
                    Kind::Audience => json!({"user_id": entity, "email": email(entity)}),
                    Kind::Trait => {
                        json!({"user_id": entity, "email": email(entity), "value": value})
                    }
                },
                Scope::Account => match load.kind {
                    Kind::Audience => json!({"group_id": entity}),
                    Kind::Trait => json!({"group_id": entity, "value": value}),
                },
            })
            .collect();
        let path = world.write(&format!("{}-{index}.ndjson", load.key), &lines);
        let kind = if load.kind == Kind::Audience {
            "audience"
        } else {
            "trait"
        };
        let scope = if load.scope == Scope::User {
            "user"
        } else {
            "account"
        };
        world.ok(&[
            "load",
            "--computation",
            load.key,
            "--kind",
            kind,
            "--scope",
            scope,
            "--taken-at",
            step.taken_at,
            &file_arg(&path),
        ]);
    }
    if let Some(members) = &step.members {
        let lines: Vec<Value> = members
            .iter()
            .map(|(g, u)| json!({"group_id": g, "user_id": u, "email": email(u)}))
            .collect();
        let path = world.write(&format!("members-{index}.ndjson"), &lines);
        world.ok(&[
            "load-members",
            "--taken-at",
            step.taken_at,
            &file_arg(&path),
        ]);
    }
}

/// The expected end state.
#[derive(Debug, Default)]
pub struct Expected {
    /// user → attribute → value (nulls left out).
    pub users: BTreeMap<String, BTreeMap<String, Value>>,
    /// user → (event name, computation key) in no particular order.
    pub events: BTreeMap<String, Vec<(String, String)>>,
    /// user → attached company ids.
    pub companies: BTreeMap<String, BTreeSet<String>>,
    /// company → attribute → value (nulls left out).
    pub accounts: BTreeMap<String, BTreeMap<String, Value>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Comp {
    kind: Kind,
    scope: Scope,
}

/// The user-level values of every computation after a step.
fn user_values(
    comps: &BTreeMap<&'static str, Comp>,
    latest: &BTreeMap<&'static str, BTreeMap<String, Value>>,
    members: &[(String, String)],
) -> BTreeMap<&'static str, BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for (key, comp) in comps {
        let rows = &latest[key];
        let values: BTreeMap<String, Value> = match comp.scope {
            Scope::User => rows.clone(),
            Scope::Account => {
                let mut by_user: BTreeMap<String, Vec<&String>> = BTreeMap::new();
                for (g, u) in members {
                    by_user.entry(u.clone()).or_default().push(g);
                }
                by_user
                    .into_iter()
                    .filter_map(|(u, mut groups)| {
                        groups.sort();
                        let value = match comp.kind {
                            Kind::Audience => groups
                                .iter()
                                .any(|g| rows.contains_key(*g))
                                .then_some(Value::Bool(true)),
                            Kind::Trait => groups.iter().find_map(|g| rows.get(*g).cloned()),
                        };
                        value.map(|v| (u, v))
                    })
                    .collect()
            }
        };
        out.insert(*key, values);
    }
    out
}

pub fn expected(steps: &[Step]) -> Expected {
    let mut comps: BTreeMap<&'static str, Comp> = BTreeMap::new();
    let mut latest: BTreeMap<&'static str, BTreeMap<String, Value>> = BTreeMap::new();
    let mut members: Vec<(String, String)> = Vec::new();
    let mut previous: BTreeMap<&'static str, BTreeMap<String, Value>> = BTreeMap::new();
    let mut ever_user: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let mut ever_account: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let mut expected = Expected::default();
    for step in steps {
        let mut new_comps = BTreeSet::new();
        for load in &step.loads {
            if !comps.contains_key(load.key) {
                new_comps.insert(load.key);
            }
            comps.insert(
                load.key,
                Comp {
                    kind: load.kind,
                    scope: load.scope,
                },
            );
            latest.insert(load.key, load.rows.iter().cloned().collect());
        }
        if let Some(m) = &step.members {
            members = m.clone();
        }
        let now = user_values(&comps, &latest, &members);
        for (key, values) in &now {
            let comp = comps[key];
            if !new_comps.contains(key) {
                let empty = BTreeMap::new();
                let before = previous.get(key).unwrap_or(&empty);
                let users: BTreeSet<&String> = before.keys().chain(values.keys()).collect();
                for user in users {
                    let (old, new) = (before.get(user), values.get(user));
                    let event = match comp.kind {
                        Kind::Audience => match (old.is_some(), new.is_some()) {
                            (false, true) => Some("Audience Entered"),
                            (true, false) => Some("Audience Exited"),
                            _ => None,
                        },
                        Kind::Trait => match (old, new) {
                            (_, Some(n)) if old != Some(n) => Some("Trait Computed"),
                            _ => None,
                        },
                    };
                    if let Some(event) = event {
                        expected
                            .events
                            .entry(user.clone())
                            .or_default()
                            .push((event.to_string(), key.to_string()));
                    }
                }
            }
            ever_user
                .entry(key)
                .or_default()
                .extend(values.keys().cloned());
            if comp.scope == Scope::Account {
                ever_account
                    .entry(key)
                    .or_default()
                    .extend(latest[key].keys().cloned());
            }
        }
        previous = now;
    }
    for (key, users) in &ever_user {
        let comp = comps[key];
        for user in users {
            let value = match previous[key].get(user) {
                Some(v) => Some(v.clone()),
                None if comp.kind == Kind::Audience => Some(Value::Bool(false)),
                None => None,
            };
            let attrs = expected.users.entry(user.clone()).or_default();
            if let Some(value) = value {
                attrs.insert(key.to_string(), value);
            }
        }
    }
    for (key, accounts) in &ever_account {
        let comp = comps[key];
        for account in accounts {
            let value = match latest[key].get(account) {
                Some(v) => Some(v.clone()),
                None if comp.kind == Kind::Audience => Some(Value::Bool(false)),
                None => None,
            };
            let attrs = expected.accounts.entry(account.clone()).or_default();
            if let Some(value) = value {
                attrs.insert(format!("account_{key}"), value);
            }
        }
    }
    for (g, u) in &members {
        expected
            .companies
            .entry(u.clone())
            .or_default()
            .insert(g.clone());
    }
    expected
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => a == b,
    }
}

fn non_null(map: &serde_json::Map<String, Value>) -> BTreeMap<String, Value> {
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Compare the sandbox with the expectation; every difference is listed in the panic.
pub fn check(state: &Snapshot, expected: &Expected) {
    let mut problems = Vec::new();
    // Contacts: exactly the users with a value ever delivered, each with the right attributes.
    let contacts: BTreeSet<String> = state
        .contacts
        .iter()
        .filter_map(|c| c.external_id.clone())
        .collect();
    let wanted: BTreeSet<String> = expected.users.keys().cloned().collect();
    if contacts != wanted {
        problems.push(format!(
            "contacts {:?} but expected {:?}",
            contacts.difference(&wanted).collect::<Vec<_>>(),
            wanted.difference(&contacts).collect::<Vec<_>>()
        ));
    }
    if state.contacts.len() != contacts.len() {
        problems.push(format!(
            "{} contacts for {} users: duplicates",
            state.contacts.len(),
            contacts.len()
        ));
    }
    let company_ids: BTreeMap<&str, &str> = state
        .companies
        .iter()
        .map(|c| (c.id.as_str(), c.company_id.as_str()))
        .collect();
    for (user, attrs) in &expected.users {
        let Some(contact) = state.contact_by_external_id(user) else {
            continue;
        };
        let got = non_null(&contact.custom_attributes);
        let equal = got.len() == attrs.len()
            && attrs
                .iter()
                .all(|(k, v)| got.get(k).is_some_and(|g| same(g, v)));
        if !equal {
            problems.push(format!("{user}: attributes {got:?}, expected {attrs:?}"));
        }
        if contact.email.as_deref() != Some(email(user).as_str()) {
            problems.push(format!("{user}: email {:?}", contact.email));
        }
        let attached: BTreeSet<String> = contact
            .companies
            .iter()
            .map(|c| {
                company_ids
                    .get(c.as_str())
                    .copied()
                    .unwrap_or(c)
                    .to_string()
            })
            .collect();
        let want = expected.companies.get(user).cloned().unwrap_or_default();
        if attached != want {
            problems.push(format!("{user}: companies {attached:?}, expected {want:?}"));
        }
        // Events: the expected multiset, never two with one name and time.
        let mut got: Vec<(String, String)> = contact
            .events
            .iter()
            .map(|e| {
                let key = e
                    .metadata
                    .get("audience_key")
                    .or_else(|| e.metadata.get("trait_key"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                (e.event_name.clone(), key)
            })
            .collect();
        got.sort();
        let mut want = expected.events.get(user).cloned().unwrap_or_default();
        want.sort();
        if got != want {
            problems.push(format!("{user}: events {got:?}, expected {want:?}"));
        }
        let mut times = BTreeSet::new();
        for e in &contact.events {
            if !times.insert((e.event_name.to_lowercase(), e.created_at)) {
                problems.push(format!(
                    "{user}: two {} events at {}",
                    e.event_name, e.created_at
                ));
            }
        }
    }
    for (account, attrs) in &expected.accounts {
        let Some(company) = state.company_by_company_id(account) else {
            problems.push(format!("company {account} missing"));
            continue;
        };
        let got = non_null(&company.custom_attributes);
        let equal = got.len() == attrs.len()
            && attrs
                .iter()
                .all(|(k, v)| got.get(k).is_some_and(|g| same(g, v)));
        if !equal {
            problems.push(format!(
                "company {account}: attributes {got:?}, expected {attrs:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the sandbox differs from the snapshots:\n  {}",
        problems.join("\n  ")
    );
}
