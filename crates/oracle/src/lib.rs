//! What Intercom must hold after a series of complete snapshots, computed from SPEC sections 5
//! and 6 alone — never by audience-sync's own diff — and the comparison with the sandbox's state.
//!
//! This is the one oracle of the project: the demo's self-check (`audience-sync demo`) and every
//! test that checks an end state (the delivery scenarios, the fault and crash campaigns) describe
//! what they loaded as [`Step`]s and compare the sandbox with [`expected`] through
//! [`differences`]. It is written from the rules, not from the product's code: user values are
//! the snapshot's (user scope) or derived through the membership (account scope: for audiences,
//! a member of any account in it; for traits, the value of the smallest `group_id` with one);
//! an audience a user left reads `false`; a trait that lost its value keeps the last one; events
//! are sent only by incremental runs (`track_on_initial_sync = false`), one per entered or left
//! audience and per changed trait value.

use std::collections::{BTreeMap, BTreeSet};

pub use audience_sync_core::domain::{Kind, Scope};
use intercom_sandbox::{ContactSnapshot, Snapshot};
use serde_json::Value;

/// A computation the steps load.
#[derive(Clone, Debug)]
pub struct Computation {
    pub key: String,
    pub kind: Kind,
    pub scope: Scope,
}

/// One complete snapshot of computation `comp` (an index into the computations): entity →
/// value, `true` for audience members. A `Null` value (traits only) means "no value".
#[derive(Clone, Debug)]
pub struct Load {
    pub comp: usize,
    pub rows: Vec<(String, Value)>,
}

/// What one step loads before a complete sync.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub loads: Vec<Load>,
    /// A new membership snapshot of (group, user entity) pairs.
    pub members: Option<Vec<(String, String)>>,
    /// The sync is a full resync (`sync --full`), which sends no events.
    pub full: bool,
}

/// What Intercom must hold.
#[derive(Debug, Default)]
pub struct Expected {
    /// Contact (external id, or lower-cased email when there is none) → attribute → value.
    pub users: BTreeMap<String, BTreeMap<String, Value>>,
    /// Contact → its email (lower-cased) or none.
    pub emails: BTreeMap<String, Option<String>>,
    /// Contact → (event name, computation key) → how many stored.
    pub events: BTreeMap<String, BTreeMap<(String, String), usize>>,
    /// Contact → attached companies.
    pub companies: BTreeMap<String, BTreeSet<String>>,
    /// Company → attribute → value.
    pub accounts: BTreeMap<String, BTreeMap<String, Value>>,
    /// Tracks expected in total.
    pub tracks: usize,
}

/// What Intercom holds for a snapshot value: arrays of scalars joined by ", ", strings cut to
/// 255 characters.
pub fn intercom_value(value: &Value) -> Value {
    match value {
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            intercom_value(&Value::String(parts.join(", ")))
        }
        Value::String(s) => Value::String(s.chars().take(255).collect()),
        other => other.clone(),
    }
}

/// Per computation, per user: the user-level values (user scope: the snapshot's; account
/// scope: derived through the membership, SPEC section 5 Rules).
fn user_values(
    comps: &[Computation],
    latest: &BTreeMap<usize, BTreeMap<String, Value>>,
    members: &BTreeSet<(String, String)>,
) -> BTreeMap<usize, BTreeMap<String, Value>> {
    let mut groups_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (g, u) in members {
        groups_of.entry(u).or_default().insert(g);
    }
    let mut out = BTreeMap::new();
    for (&ci, rows) in latest {
        let comp = &comps[ci];
        let values = match comp.scope {
            Scope::User => rows.clone(),
            Scope::Account => groups_of
                .iter()
                .filter_map(|(u, groups)| {
                    let value = match comp.kind {
                        Kind::Audience => groups
                            .iter()
                            .any(|g| rows.contains_key(*g))
                            .then_some(Value::Bool(true)),
                        // BTreeSet: the smallest group_id with a value wins.
                        Kind::Trait => groups.iter().find_map(|g| rows.get(*g).cloned()),
                    };
                    value.map(|v| (u.to_string(), v))
                })
                .collect(),
        };
        out.insert(ci, values);
    }
    out
}

/// The expected state after `steps` (each followed by a complete sync). `email` gives a user
/// entity's email as Intercom stores it (lower-cased), or none.
pub fn expected(
    comps: &[Computation],
    steps: &[Step],
    email: impl Fn(&str) -> Option<String>,
) -> Expected {
    let mut latest: BTreeMap<usize, BTreeMap<String, Value>> = BTreeMap::new();
    let mut members: BTreeSet<(String, String)> = BTreeSet::new();
    let mut previous: BTreeMap<usize, BTreeMap<String, Value>> = BTreeMap::new();
    let mut ever_user: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut ever_account: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut ever_member_users: BTreeSet<String> = BTreeSet::new();
    let mut ever_member_groups: BTreeSet<String> = BTreeSet::new();
    let mut expected = Expected::default();
    for step in steps {
        let mut fresh = BTreeSet::new();
        for load in &step.loads {
            if !latest.contains_key(&load.comp) {
                fresh.insert(load.comp);
            }
            let rows = load
                .rows
                .iter()
                .filter(|(_, v)| !v.is_null())
                .cloned()
                .collect();
            latest.insert(load.comp, rows);
        }
        if let Some(pairs) = &step.members {
            members = pairs.iter().cloned().collect();
        }
        for (g, u) in &members {
            ever_member_users.insert(u.clone());
            ever_member_groups.insert(g.clone());
        }
        let now = user_values(comps, &latest, &members);
        for (ci, values) in &now {
            let comp = &comps[*ci];
            // Initial syncs and full resyncs send no events (track_on_initial_sync = false).
            if !fresh.contains(ci) && !step.full {
                let empty = BTreeMap::new();
                let before = previous.get(ci).unwrap_or(&empty);
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
                        *expected
                            .events
                            .entry(user.clone())
                            .or_default()
                            .entry((event.to_string(), comp.key.clone()))
                            .or_default() += 1;
                        expected.tracks += 1;
                    }
                }
            }
            ever_user
                .entry(*ci)
                .or_default()
                .extend(values.keys().cloned());
            if comp.scope == Scope::Account {
                ever_account
                    .entry(*ci)
                    .or_default()
                    .extend(latest[ci].keys().cloned());
            }
        }
        previous = now;
    }
    // Contacts: every user that ever had a value, and every user ever attached to an account.
    for user in ever_user.values().flatten().chain(&ever_member_users) {
        expected.users.entry(user.clone()).or_default();
        expected.emails.insert(user.clone(), email(user));
    }
    for (ci, users) in &ever_user {
        let comp = &comps[*ci];
        for user in users {
            let value = match previous[ci].get(user) {
                Some(v) => Some(intercom_value(v)),
                None if comp.kind == Kind::Audience => Some(Value::Bool(false)),
                None => None,
            };
            if let Some(value) = value {
                expected
                    .users
                    .get_mut(user)
                    .expect("every valued user is a contact")
                    .insert(comp.key.clone(), value);
            }
        }
    }
    for group in &ever_member_groups {
        expected.accounts.entry(group.clone()).or_default();
    }
    for (ci, accounts) in &ever_account {
        let comp = &comps[*ci];
        for account in accounts {
            let value = match latest[ci].get(account) {
                Some(v) => Some(intercom_value(v)),
                None if comp.kind == Kind::Audience => Some(Value::Bool(false)),
                None => None,
            };
            let attrs = expected.accounts.entry(account.clone()).or_default();
            if let Some(value) = value {
                attrs.insert(format!("account_{}", comp.key), value);
            }
        }
    }
    for user in expected.users.keys() {
        expected.companies.insert(user.clone(), BTreeSet::new());
    }
    for (g, u) in &members {
        expected
            .companies
            .get_mut(u)
            .expect("members are contacts")
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

fn same_attrs(got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>) -> bool {
    got.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| got.get(k).is_some_and(|g| same(g, v)))
}

/// The computation key an event's metadata names (`audience_key` or `trait_key`).
pub fn event_key(metadata: &serde_json::Map<String, Value>) -> &str {
    metadata
        .get("audience_key")
        .or_else(|| metadata.get("trait_key"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Every difference between the sandbox and the expectation (empty: equal): contacts (exactly
/// the expected ones, none twice, each a `user`), their attributes, emails, companies and events
/// (per name and key exactly the expected count, never two with one name and time), and
/// companies with their attributes.
pub fn differences(state: &Snapshot, expected: &Expected) -> Vec<String> {
    let mut problems = Vec::new();
    let key_of = |c: &ContactSnapshot| {
        c.external_id
            .clone()
            .or_else(|| c.email.as_ref().map(|e| e.to_lowercase()))
            .unwrap_or_else(|| format!("<no id {}>", c.id))
    };
    let mut contacts: BTreeMap<String, &ContactSnapshot> = BTreeMap::new();
    for c in &state.contacts {
        if let Some(earlier) = contacts.insert(key_of(c), c) {
            problems.push(format!(
                "two contacts for {}: {} and {}",
                key_of(c),
                earlier.id,
                c.id
            ));
        }
        if c.role != "user" {
            problems.push(format!("{}: role {}", key_of(c), c.role));
        }
    }
    let got: BTreeSet<&String> = contacts.keys().collect();
    let want: BTreeSet<&String> = expected.users.keys().collect();
    if got != want {
        problems.push(format!(
            "unexpected contacts {:?}; missing contacts {:?}",
            got.difference(&want).collect::<Vec<_>>(),
            want.difference(&got).collect::<Vec<_>>()
        ));
    }
    let company_ids: BTreeMap<&str, &str> = state
        .companies
        .iter()
        .map(|c| (c.id.as_str(), c.company_id.as_str()))
        .collect();
    for (user, attrs) in &expected.users {
        let Some(contact) = contacts.get(user) else {
            continue;
        };
        let got = non_null(&contact.custom_attributes);
        if !same_attrs(&got, attrs) {
            problems.push(format!("{user}: attributes {got:?}, expected {attrs:?}"));
        }
        let email = contact.email.as_ref().map(|e| e.to_lowercase());
        if email != expected.emails[user] {
            problems.push(format!(
                "{user}: email {:?}, expected {:?}",
                contact.email, expected.emails[user]
            ));
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
        let want = &expected.companies[user];
        if &attached != want {
            problems.push(format!("{user}: companies {attached:?}, expected {want:?}"));
        }
        let mut got: BTreeMap<(String, String), usize> = BTreeMap::new();
        for e in &contact.events {
            let key = event_key(&e.metadata).to_string();
            *got.entry((e.event_name.clone(), key)).or_default() += 1;
        }
        let want = expected.events.get(user).cloned().unwrap_or_default();
        if got != want {
            problems.push(format!("{user}: events {got:?}, expected {want:?}"));
        }
        let mut times = BTreeSet::new();
        for e in &contact.events {
            if !times.insert((e.event_name.to_lowercase(), e.created_at)) {
                problems.push(format!(
                    "{user}: two {:?} events at {}",
                    e.event_name, e.created_at
                ));
            }
        }
    }
    let got: BTreeSet<&str> = state
        .companies
        .iter()
        .map(|c| c.company_id.as_str())
        .collect();
    let want: BTreeSet<&str> = expected.accounts.keys().map(String::as_str).collect();
    if got != want {
        problems.push(format!(
            "unexpected companies {:?}; missing companies {:?}",
            got.difference(&want).collect::<Vec<_>>(),
            want.difference(&got).collect::<Vec<_>>()
        ));
    }
    for (account, attrs) in &expected.accounts {
        let Some(company) = state.company_by_company_id(account) else {
            continue;
        };
        let got = non_null(&company.custom_attributes);
        if !same_attrs(&got, attrs) {
            problems.push(format!(
                "company {account}: attributes {got:?}, expected {attrs:?}"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn audience(key: &str, scope: Scope) -> Computation {
        Computation {
            key: key.to_string(),
            kind: Kind::Audience,
            scope,
        }
    }

    fn members_of(comp: usize, entities: &[&str]) -> Load {
        Load {
            comp,
            rows: entities
                .iter()
                .map(|e| (e.to_string(), json!(true)))
                .collect(),
        }
    }

    #[test]
    fn an_initial_sync_sends_no_events_and_a_user_who_left_reads_false() {
        let comps = [audience("vip", Scope::User)];
        let steps = [
            Step {
                loads: vec![members_of(0, &["u1", "u2"])],
                ..Step::default()
            },
            Step {
                loads: vec![members_of(0, &["u2", "u3"])],
                ..Step::default()
            },
        ];
        let e = expected(&comps, &steps, |u| Some(format!("{u}@x.test")));
        assert_eq!(e.users["u1"]["vip"], json!(false));
        assert_eq!(e.users["u3"]["vip"], json!(true));
        assert_eq!(e.tracks, 2);
        assert_eq!(e.events["u1"][&("Audience Exited".into(), "vip".into())], 1);
        assert_eq!(
            e.events["u3"][&("Audience Entered".into(), "vip".into())],
            1
        );
        assert!(!e.events.contains_key("u2"), "u2 stayed: no event");
        // A full resync of the same change would send none.
        let full = [
            steps[0].clone(),
            Step {
                full: true,
                ..steps[1].clone()
            },
        ];
        assert_eq!(expected(&comps, &full, |_| None).tracks, 0);
    }

    #[test]
    fn an_account_audience_reaches_its_members_and_its_company() {
        let comps = [audience("enterprise", Scope::Account)];
        let steps = [Step {
            loads: vec![members_of(0, &["acme"])],
            members: Some(vec![
                ("acme".into(), "u1".into()),
                ("globex".into(), "u2".into()),
            ]),
            full: false,
        }];
        let e = expected(&comps, &steps, |_| None);
        assert_eq!(e.users["u1"]["enterprise"], json!(true));
        assert!(e.users["u2"].is_empty(), "u2 is a contact, with no value");
        assert_eq!(e.accounts["acme"]["account_enterprise"], json!(true));
        assert!(e.accounts["globex"].is_empty());
        assert_eq!(e.companies["u2"], BTreeSet::from(["globex".to_string()]));
    }

    fn empty() -> Snapshot {
        Snapshot {
            contacts: Vec::new(),
            companies: Vec::new(),
            data_attributes: Vec::new(),
            event_names: Vec::new(),
            counters: Default::default(),
        }
    }

    #[test]
    fn an_empty_sandbox_differs_from_any_expectation_by_name() {
        let comps = [audience("vip", Scope::User)];
        let steps = [Step {
            loads: vec![members_of(0, &["u1"])],
            ..Step::default()
        }];
        let e = expected(&comps, &steps, |_| None);
        let problems = differences(&empty(), &e);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("missing contacts [\"u1\"]"),
            "{problems:?}"
        );
        assert!(differences(&empty(), &Expected::default()).is_empty());
    }
}
