//! track: the `POST /events` request, its identifier and `created_at`, and its metadata (at
//! most [`MAX_METADATA_KEYS`] keys).

use serde_json::{Map, Value, json};

use super::{KnownIds, MapError, MapOptions};
use crate::intercom::requests::{Method, Op, Plan, Request};
use crate::intercom::values::{Warning, metadata_value};
use crate::segment::{Track, non_empty_str};

/// Intercom keeps at most this many metadata keys per event, the first ones sent.
pub const MAX_METADATA_KEYS: usize = 10;

/// track → `POST /events` `{event_name, created_at, id | user_id | email, metadata}`.
/// The identifier is the known Intercom contact id, else `userId`, else the email
/// (`context.traits.email`, else `properties.email`). `created_at` is the message's
/// `timestamp` in unix seconds, else its `originalTimestamp`, else [`MapOptions::now`] (a
/// message `send` queues carries the time it was queued as `originalTimestamp`, so a retry
/// sends the same `created_at` and Intercom de-duplicates it). Metadata: see
/// [`metadata_value`] (scalars, and Intercom's Monetary Amount and Rich Link objects);
/// `revenue` (with `currency`, default `usd`) becomes `price: {amount: cents, currency}` in
/// `revenue`'s place; the first 10 keys are kept.
///
/// The 120-active-event-names guard is [`EventNames`](super::EventNames), which the caller holds
/// (it is workspace state); it is not applied here.
pub fn map_track(
    message: &Track,
    options: &MapOptions,
    known: &KnownIds,
) -> Result<Plan, MapError> {
    let common = &message.common;
    let properties = &message.properties;
    let mut body = Map::new();
    body.insert("event_name".into(), json!(message.event));
    body.insert(
        "created_at".into(),
        json!(
            common
                .event_time()
                .map(|t| t.timestamp())
                .unwrap_or(options.now)
        ),
    );
    let email = common
        .context_email()
        .or_else(|| properties.get("email").and_then(non_empty_str));
    match (&known.contact_id, &common.user_id, email) {
        (Some(id), _, _) => body.insert("id".into(), json!(id)),
        (None, Some(user_id), _) => body.insert("user_id".into(), json!(user_id)),
        (None, None, Some(email)) => body.insert("email".into(), json!(email)),
        (None, None, None) => return Err(MapError::NoIdentifier),
    };

    let mut plan = Plan::default();
    let revenue = properties
        .get("revenue")
        .and_then(|v| v.as_f64().or_else(|| v.as_str()?.trim().parse().ok()));
    let mut metadata = Map::new();
    for (key, value) in properties {
        match (key.as_str(), revenue) {
            ("revenue", Some(revenue)) => {
                let currency = properties
                    .get("currency")
                    .and_then(non_empty_str)
                    .unwrap_or_else(|| "usd".into());
                let amount = (revenue * 100.0).round() as i64;
                metadata.insert(
                    "price".into(),
                    json!({"amount": amount, "currency": currency}),
                );
            }
            ("currency" | "price", Some(_)) => {}
            _ => {
                if let Some(value) = metadata_value(key, value, &mut plan.warnings) {
                    metadata.insert(key.clone(), value);
                }
            }
        }
    }
    if metadata.len() > MAX_METADATA_KEYS {
        let keys = metadata.keys().skip(MAX_METADATA_KEYS).cloned().collect();
        plan.warnings.push(Warning::DroppedMetadataKeys { keys });
        metadata = metadata.into_iter().take(MAX_METADATA_KEYS).collect();
    }
    if !metadata.is_empty() {
        body.insert("metadata".into(), Value::Object(metadata));
    }
    plan.push(
        Op::CreateEvent {
            event_name: message.event.clone(),
        },
        Request::new(Method::Post, "/events", Some(Value::Object(body))),
        Vec::new(),
        None,
    );
    Ok(plan)
}
