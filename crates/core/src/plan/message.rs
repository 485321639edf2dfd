//! Building the Segment-spec messages Personas sends: identify, track and group, with their
//! deterministic `messageId`s and event times. Pure: values in, typed [`Message`]s out (which
//! `Message::into_value` serialises once, into the outbox); no clock.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::domain::Kind;
use crate::segment::{Common, Group, Identify, Message, Object, Track};

/// What `context.personas` names: one computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputationRef<'a> {
    pub id: &'a str,
    pub key: &'a str,
    pub kind: Kind,
}

impl ComputationRef<'_> {
    /// `computation_class`: `audience` or `trait`.
    fn class(&self) -> &'static str {
        self.kind.as_str()
    }
}

/// A user as messages address it: `userId` is the entity id, except for a user known only by
/// email (entity id = its lower-cased email), who is addressed by email alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User<'a> {
    pub entity_id: &'a str,
    pub email: Option<&'a str>,
}

impl<'a> User<'a> {
    pub fn user_id(&self) -> Option<&'a str> {
        match self.email {
            Some(email) if email.eq_ignore_ascii_case(self.entity_id) => None,
            _ => Some(self.entity_id),
        }
    }
}

/// `personas_` + 32 hex characters of SHA-256 over the parts (NUL-separated): the same change
/// of the same entity from the same snapshot always gets the same id.
pub fn message_id(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(9 + 32);
    id.push_str("personas_");
    for byte in &digest[..16] {
        id.push(HEX[usize::from(byte >> 4)] as char);
        id.push(HEX[usize::from(byte & 0xf)] as char);
    }
    id
}

/// The time of a new event: the snapshot time, but always at least one second after the last
/// event of the same name for the same user, so Intercom never de-duplicates it.
pub fn event_time(taken_at: i64, last: Option<i64>) -> i64 {
    match last {
        Some(last) => taken_at.max(last + 1),
        None => taken_at,
    }
}

pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| unix.to_string())
}

fn integrations() -> Object {
    let mut m = Map::new();
    m.insert("All".into(), false.into());
    m.insert("Intercom".into(), true.into());
    m
}

/// `context.personas`: the first computation's fields, and for a message that carries several
/// computations (a coalesced identify or group) every one of them under `computations`. A
/// message that carries none (an attach, or an identify that only detaches) names the space.
pub fn personas(space_id: &str, computations: &[ComputationRef<'_>]) -> Value {
    let mut p = Map::new();
    if let Some(first) = computations.first() {
        p.insert("computation_class".into(), first.class().into());
        p.insert("computation_id".into(), first.id.into());
        p.insert("computation_key".into(), first.key.into());
    }
    p.insert("namespace".into(), format!("spa_{space_id}").into());
    p.insert("space_id".into(), space_id.into());
    if computations.len() > 1 {
        p.insert(
            "computations".into(),
            computations
                .iter()
                .map(|c| {
                    json!({
                        "computation_class": c.class(),
                        "computation_id": c.id,
                        "computation_key": c.key,
                    })
                })
                .collect::<Vec<_>>()
                .into(),
        );
    }
    Value::Object(p)
}

/// What every planned message shares: its id, its time, the user it addresses (if any), the
/// destination selection and `context`.
fn common(message_id: &str, timestamp: i64, user_id: Option<&str>, context: Object) -> Common {
    Common {
        user_id: user_id.map(str::to_string),
        anonymous_id: None,
        message_id: Some(message_id.to_string()),
        // Snapshot times are checked when they are loaded; the epoch stands for none.
        timestamp: Some(DateTime::<Utc>::from_timestamp(timestamp, 0).unwrap_or_default()),
        original_timestamp: None,
        context,
        integrations: integrations(),
    }
}

/// `context` with only `personas`.
fn personas_context(space_id: &str, computations: &[ComputationRef<'_>]) -> Object {
    let mut context = Map::new();
    context.insert("personas".into(), personas(space_id, computations));
    context
}

/// `context` of a message addressed to a user: `traits.email` when known, and `personas`.
fn user_context(space_id: &str, user: User<'_>, computations: &[ComputationRef<'_>]) -> Object {
    let mut context = Map::new();
    if let Some(email) = user.email {
        context.insert("traits".into(), json!({"email": email}));
    }
    context.insert("personas".into(), personas(space_id, computations));
    context
}

/// One identify carrying every changed value of a user (`traits` in computation order) and
/// the accounts the user left (`companies: [{id, remove: true}]`).
pub fn identify(
    space_id: &str,
    user: User<'_>,
    traits: &[(ComputationRef<'_>, Value)],
    detached_from: &[&str],
    timestamp: i64,
    message_id: &str,
) -> Message {
    let mut t = Map::new();
    if let Some(email) = user.email {
        t.insert("email".into(), email.into());
    }
    for (c, v) in traits {
        t.insert(c.key.to_string(), v.clone());
    }
    if !detached_from.is_empty() {
        t.insert(
            "companies".into(),
            detached_from
                .iter()
                .map(|g| json!({"id": g, "remove": true}))
                .collect::<Vec<_>>()
                .into(),
        );
    }
    let computations: Vec<_> = traits.iter().map(|(c, _)| *c).collect();
    let context = personas_context(space_id, &computations);
    Message::Identify(Identify {
        common: common(message_id, timestamp, user.user_id(), context),
        traits: t,
    })
}

/// One track: `Audience Entered` / `Audience Exited` with `{audience_key: KEY, KEY: bool}`,
/// or `Trait Computed` with `{trait_key: KEY, KEY: VALUE}`.
pub fn track(
    space_id: &str,
    user: User<'_>,
    computation: ComputationRef<'_>,
    event: &str,
    value: Value,
    timestamp: i64,
    message_id: &str,
) -> Message {
    let mut props = Map::new();
    let label = match computation.kind {
        Kind::Audience => "audience_key",
        Kind::Trait => "trait_key",
    };
    props.insert(label.into(), computation.key.into());
    props.insert(computation.key.into(), value);
    let context = user_context(space_id, user, &[computation]);
    Message::Track(Track {
        common: common(message_id, timestamp, user.user_id(), context),
        event: event.to_string(),
        properties: props,
    })
}

/// An account's own values: `group {groupId, traits}` with no userId (it upserts the company).
pub fn group_account(
    space_id: &str,
    group_id: &str,
    traits: &[(ComputationRef<'_>, Value)],
    timestamp: i64,
    message_id: &str,
) -> Message {
    let mut t = Map::new();
    for (c, v) in traits {
        t.insert(c.key.to_string(), v.clone());
    }
    let computations: Vec<_> = traits.iter().map(|(c, _)| *c).collect();
    let context = personas_context(space_id, &computations);
    Message::Group(Group {
        common: common(message_id, timestamp, None, context),
        group_id: group_id.to_string(),
        traits: t,
    })
}

/// A user joined an account: `group {userId, groupId, traits: {}}` (attach).
pub fn group_attach(
    space_id: &str,
    user: User<'_>,
    group_id: &str,
    timestamp: i64,
    message_id: &str,
) -> Message {
    let context = user_context(space_id, user, &[]);
    Message::Group(Group {
        common: common(message_id, timestamp, user.user_id(), context),
        group_id: group_id.to_string(),
        traits: Map::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUD: ComputationRef<'static> = ComputationRef {
        id: "aud_1",
        key: "order_completed_last_30days",
        kind: Kind::Audience,
    };
    const TRA: ComputationRef<'static> = ComputationRef {
        id: "tra_1",
        key: "ltv",
        kind: Kind::Trait,
    };

    #[test]
    fn identify_has_every_field_personas_sends() {
        let user = User {
            entity_id: "u1",
            email: Some("a@example.com"),
        };
        let m = identify(
            "local",
            user,
            &[(AUD, json!(true)), (TRA, json!(42))],
            &["acme"],
            0,
            "personas_x",
        )
        .into_value();
        // The bytes the outbox stores: the keys in this order.
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            serde_json::to_string(&json!({
                "type": "identify",
                "messageId": "personas_x",
                "timestamp": "1970-01-01T00:00:00Z",
                "userId": "u1",
                "traits": {
                    "email": "a@example.com",
                    "order_completed_last_30days": true,
                    "ltv": 42,
                    "companies": [{"id": "acme", "remove": true}]
                },
                "integrations": {"All": false, "Intercom": true},
                "context": {"personas": {
                    "computation_class": "audience",
                    "computation_id": "aud_1",
                    "computation_key": "order_completed_last_30days",
                    "namespace": "spa_local",
                    "space_id": "local",
                    "computations": [
                        {"computation_class": "audience", "computation_id": "aud_1", "computation_key": "order_completed_last_30days"},
                        {"computation_class": "trait", "computation_id": "tra_1", "computation_key": "ltv"}
                    ]
                }}
            }))
            .unwrap()
        );
    }

    #[test]
    fn track_properties_and_email_in_context() {
        let user = User {
            entity_id: "b@example.com",
            email: Some("b@example.com"),
        };
        let m = track(
            "s",
            user,
            TRA,
            "Trait Computed",
            json!("x"),
            86400,
            "personas_t",
        )
        .into_value();
        assert!(m.get("userId").is_none(), "email-only users have no userId");
        assert_eq!(m["properties"], json!({"trait_key": "ltv", "ltv": "x"}));
        assert_eq!(m["context"]["traits"]["email"], "b@example.com");
        assert_eq!(m["timestamp"], "1970-01-02T00:00:00Z");
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"track","messageId":"personas_t","timestamp":"1970-01-02T00:00:00Z","event":"Trait Computed","properties":{"trait_key":"ltv","ltv":"x"},"integrations":{"All":false,"Intercom":true},"context":{"traits":{"email":"b@example.com"},"personas":{"computation_class":"trait","computation_id":"tra_1","computation_key":"ltv","namespace":"spa_s","space_id":"s"}}}"#
        );
        let m = track(
            "s",
            user,
            AUD,
            "Audience Exited",
            json!(false),
            0,
            "personas_t",
        )
        .into_value();
        assert_eq!(
            m["properties"],
            json!({"audience_key": "order_completed_last_30days", "order_completed_last_30days": false})
        );
    }

    #[test]
    fn group_shapes() {
        let m =
            group_account("s", "acme", &[(TRA, json!("Enterprise"))], 0, "personas_g").into_value();
        assert!(m.get("userId").is_none());
        assert_eq!(m["groupId"], "acme");
        assert_eq!(m["traits"], json!({"ltv": "Enterprise"}));
        assert_eq!(m["context"]["personas"]["computation_id"], "tra_1");
        let user = User {
            entity_id: "u1",
            email: None,
        };
        let m = group_attach("s", user, "acme", 0, "personas_a").into_value();
        assert_eq!(m["userId"], "u1");
        assert_eq!(m["groupId"], "acme");
        assert_eq!(m["traits"], json!({}));
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"group","messageId":"personas_a","timestamp":"1970-01-01T00:00:00Z","userId":"u1","groupId":"acme","traits":{},"integrations":{"All":false,"Intercom":true},"context":{"personas":{"namespace":"spa_s","space_id":"s"}}}"#
        );
    }

    #[test]
    fn message_ids_are_deterministic_and_distinct() {
        let a = message_id(&["identify", "u1", "aud_1", "7", "1", "true"]);
        assert_eq!(
            a,
            message_id(&["identify", "u1", "aud_1", "7", "1", "true"])
        );
        assert_ne!(
            a,
            message_id(&["identify", "u1", "aud_1", "8", "1", "true"])
        );
        // Parts are separated: ("ab","c") is not ("a","bc").
        assert_ne!(message_id(&["ab", "c"]), message_id(&["a", "bc"]));
        assert!(a.starts_with("personas_") && a.len() == 41);
        // Stable across releases: a re-planned message must keep its id. (Python:
        // "personas_" + hashlib.sha256(b"identify\0u1\0").hexdigest()[:32])
        assert_eq!(
            message_id(&["identify", "u1"]),
            "personas_9bf4db1feec7bdd589ab7440a3527d2b"
        );
    }

    #[test]
    fn event_times_never_repeat() {
        assert_eq!(event_time(100, None), 100);
        assert_eq!(event_time(100, Some(50)), 100);
        assert_eq!(event_time(100, Some(100)), 101);
        assert_eq!(event_time(100, Some(120)), 121);
    }
}
