//! Data events: 202 with no body, deduplicated, at most 10 metadata keys, 120 active names.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::{Event, Store, index, object, only_fields};
use crate::error::ApiError;

/// Intercom keeps the first 10 metadata keys of an event and ignores the rest, silently.
pub(crate) const MAX_METADATA_KEYS: usize = 10;

/// What became of an accepted event (both are answered 202).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventOutcome {
    Stored,
    DuplicateDropped,
}

impl Store {
    /// `POST /events`
    pub fn create_event(&mut self, body: &Value) -> Result<EventOutcome, ApiError> {
        let body = object(body)?;
        only_fields(
            body,
            &[
                "event_name",
                "created_at",
                "user_id",
                "id",
                "email",
                "metadata",
            ],
        )?;
        let event_name = match body.get("event_name") {
            Some(Value::String(name)) if !name.trim().is_empty() => name.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(ApiError::missing("event_name is required"));
            }
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "'event_name' must be a string, not {other}"
                )));
            }
        };
        let created_at = match body.get("created_at") {
            Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or_default(),
            None | Some(Value::Null) => return Err(ApiError::missing("created_at is required")),
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "'created_at' must be a unix timestamp in seconds, not {other}"
                )));
            }
        };
        let identifier = |field: &str| -> Result<Option<String>, ApiError> {
            match body.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(ApiError::invalid(format!(
                    "'{field}' must be a string, not {other}"
                ))),
            }
        };
        let (id, user_id, email) = (
            identifier("id")?,
            identifier("user_id")?,
            identifier("email")?,
        );
        if id.is_none() && user_id.is_none() && email.is_none() {
            return Err(ApiError::missing(
                "An event needs one of id, user_id or email",
            ));
        }
        let contact = match (&id, &user_id, &email) {
            (Some(id), _, _) => self.contact_index(id),
            (None, Some(user_id), _) => index::get(&self.indexes.contact_by_external_id, user_id)
                .first()
                .copied(),
            (None, None, Some(email)) => self.email_holders(email).next().copied(),
            (None, None, None) => None,
        }
        .map(|position| self.contacts[position].id.clone())
        .ok_or_else(|| ApiError::not_found("User Not Found"))?;
        let metadata = self.kept_metadata(body.get("metadata"))?;

        let key = event_name.to_lowercase();
        let duplicate =
            self.indexes
                .event_keys
                .contains(&(contact.clone(), created_at, key.clone()));
        if duplicate {
            self.counters.duplicate_events_dropped += 1;
            return Ok(EventOutcome::DuplicateDropped);
        }
        if !self.event_names.contains(&key) && self.event_names.len() >= self.rules.event_name_limit
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable_entity",
                format!(
                    "Cannot have more than {} active event names",
                    self.rules.event_name_limit
                ),
            ));
        }
        self.event_names.insert(key);
        let event = Event {
            contact_id: contact,
            event_name,
            created_at,
            metadata,
        };
        self.indexes.add_event(&event, self.events.len());
        self.events.push(event);
        Ok(EventOutcome::Stored)
    }

    /// The first 10 metadata keys, each checked: strings, numbers, booleans, a rich link
    /// `{url, value}` or an amount `{amount: integer cents, currency}`.
    fn kept_metadata(&self, metadata: Option<&Value>) -> Result<Map<String, Value>, ApiError> {
        let map = match metadata {
            None | Some(Value::Null) => return Ok(Map::new()),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "metadata must be an object, not {other}"
                )));
            }
        };
        let mut kept = Map::new();
        for (key, value) in map.iter().take(MAX_METADATA_KEYS) {
            match value {
                Value::String(text) => {
                    self.check_string_length(&format!("Metadata '{key}'"), text)?
                }
                Value::Number(_) | Value::Bool(_) | Value::Null => {}
                Value::Object(object) if is_rich_link(object) || is_amount(object) => {}
                Value::Object(_) | Value::Array(_) => {
                    return Err(ApiError::invalid(format!(
                        "Metadata '{key}' is nested JSON, which is not supported (only a rich \
                         link {{url, value}} or an amount {{amount, currency}})"
                    )));
                }
            }
            kept.insert(key.clone(), value.clone());
        }
        Ok(kept)
    }
}

fn is_rich_link(object: &Map<String, Value>) -> bool {
    object.len() == 2
        && object.get("url").is_some_and(Value::is_string)
        && object.get("value").is_some_and(Value::is_string)
}

fn is_amount(object: &Map<String, Value>) -> bool {
    object.len() == 2
        && object
            .get("amount")
            .and_then(Value::as_u64)
            .is_some_and(|cents| cents > 0)
        && object.get("currency").is_some_and(Value::is_string)
}
