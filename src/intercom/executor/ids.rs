//! Contact and company ids: the contact a resolve step finds or creates (searching unless a
//! bulk lookup found it absent, trusting a 409's id), the cache key of a message's contact,
//! the ids in Intercom's answers, and why a cached id turned out stale.

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Executor;
use super::{Step, retry_db};
use crate::intercom::disposition::{ApiError, Disposition};
use crate::intercom::requests::{ContactLookup, OnMissing, Op, Request};
use crate::segment::{Message, non_empty_str};
use crate::store::cache;

/// The contact a resolve step found or created.
pub(super) struct Resolved {
    pub(super) id: String,
    /// Created by this step's `POST /contacts`, which carried every value of the updates marked
    /// `done_by_create` (not found by the search, nor named by a 409).
    pub(super) created: bool,
}

impl Executor {
    /// A bulk lookup found no contact for these users.
    pub fn mark_absent(&self, keys: impl IntoIterator<Item = String>) {
        self.absent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(keys);
    }

    /// Forget what bulk lookups found absent (a new drain looks again).
    pub fn clear_absent(&self) {
        self.absent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether a bulk lookup found no contact for `key`; the answer is used once.
    fn take_absent(&self, key: Option<&str>) -> bool {
        key.is_some_and(|key| {
            self.absent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key)
        })
    }

    /// Search for the contact; create it when the plan allows. `Ok(None)`: not found and not
    /// to be created (the steps that need it are skipped).
    pub(super) async fn resolve_contact(
        &self,
        search: &Request,
        lookup: &ContactLookup,
        on_missing: &OnMissing,
        key: Option<&str>,
        attempt: u32,
        cancel: &CancellationToken,
    ) -> Result<Option<Resolved>, Step> {
        // A bulk lookup of this drain found no contact (`resolve.rs`): no search of its own.
        let found = if self.take_absent(key) {
            None
        } else {
            let answer = self.send(search, cancel).await?;
            if !answer.is_success() {
                return Err(Step::Done(self.error_disposition(search, &answer)));
            }
            search_hit(&answer.body)
        };
        let mut created = false;
        let id = match (found, on_missing) {
            (Some(id), _) => id,
            (None, OnMissing::Skip) => {
                debug!(
                    user = key.unwrap_or(""),
                    "No Intercom contact, and the message creates none."
                );
                return Ok(None);
            }
            (None, OnMissing::Create(create)) => {
                let answer = self.send(create, cancel).await?;
                if answer.is_success() {
                    created = true;
                    match answer.body.get("id").and_then(Value::as_str) {
                        Some(id) => id.to_string(),
                        None => {
                            return Err(Step::Done(Disposition::DeadLetter {
                                reason: "POST /contacts: the answer carries no contact id"
                                    .to_string(),
                            }));
                        }
                    }
                } else {
                    let error = ApiError::from_body(answer.status, &answer.body, &answer.text);
                    match error.conflicting_contact_id() {
                        // It exists (search lags, our earlier create lost its answer, or
                        // another client created it): the update steps still run.
                        Some(id) => id.to_string(),
                        None => {
                            return Err(Step::Done(self.error_disposition(create, &answer)));
                        }
                    }
                }
            }
        };
        let cache_key = key.map(str::to_string).unwrap_or_else(|| match lookup {
            ContactLookup::ExternalId(v) => v.clone(),
            ContactLookup::Email(v) => v.to_lowercase(),
        });
        if let Err(error) = cache::set_contact_id(&self.db(), &cache_key, &id) {
            return Err(Step::Done(retry_db(&error, attempt, self.jitter())));
        }
        Ok(Some(Resolved { id, created }))
    }
}

/// The cache key of the message's contact: its `userId`, else its email lower-cased (the
/// user's entity id, SPEC section 2).
pub fn contact_key(message: &Message) -> Option<String> {
    let common = message.common();
    if let Some(user_id) = &common.user_id {
        return Some(user_id.clone());
    }
    let email = match message {
        Message::Identify(m) => m
            .traits
            .get("email")
            .and_then(non_empty_str)
            .or_else(|| common.context_email()),
        Message::Track(m) => common
            .context_email()
            .or_else(|| m.properties.get("email").and_then(non_empty_str)),
        Message::Group(_) => common.context_email(),
    };
    email.map(|e| e.to_lowercase())
}

pub(super) fn op_company(op: &Op) -> Option<&str> {
    match op {
        Op::UpsertCompany { company_id }
        | Op::ResolveCompany { company_id }
        | Op::AttachCompany { company_id }
        | Op::DetachCompany { company_id } => Some(company_id),
        _ => None,
    }
}

/// The contact a search found: a `user` first, else the first hit.
fn search_hit(body: &Value) -> Option<String> {
    let data = body.get("data")?.as_array()?;
    let id = |c: &Value| c.get("id").and_then(Value::as_str).map(str::to_string);
    data.iter()
        .find(|c| c.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(id)
        .or_else(|| data.first().and_then(id))
}

/// The Intercom id in a company answer: the company itself, or the first of a list.
pub(super) fn company_intercom_id(body: &Value) -> Option<String> {
    let company = if body.get("type").and_then(Value::as_str) == Some("list") {
        body.get("data")?.as_array()?.first()?
    } else {
        body
    };
    company
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::super::steps::path_shape;
    use super::*;
    use serde_json::json;

    #[test]
    fn search_answers_and_company_answers_give_ids() {
        let hits = json!({"type": "list", "data": [
            {"type": "contact", "id": "lead1", "role": "lead"},
            {"type": "contact", "id": "user1", "role": "user"}
        ]});
        assert_eq!(search_hit(&hits).as_deref(), Some("user1"));
        assert_eq!(search_hit(&json!({"type": "list", "data": []})), None);
        assert_eq!(
            company_intercom_id(&json!({"type": "company", "id": "x1"})).as_deref(),
            Some("x1")
        );
        assert_eq!(
            company_intercom_id(&json!({"type": "list", "data": [{"id": "x2"}]})).as_deref(),
            Some("x2")
        );
    }

    #[test]
    fn contact_keys_are_entity_ids() {
        let m = Message::from_value(
            &json!({"type": "identify", "userId": "u1", "traits": {"email": "A@B.C"}}),
        )
        .unwrap();
        assert_eq!(contact_key(&m).as_deref(), Some("u1"));
        let m = Message::from_value(&json!({"type": "identify", "traits": {"email": "A@B.C"}}))
            .unwrap();
        assert_eq!(contact_key(&m).as_deref(), Some("a@b.c"));
        let m = Message::from_value(&json!({"type": "group", "groupId": "g"})).unwrap();
        assert_eq!(contact_key(&m), None);
        assert_eq!(
            path_shape("/contacts/5f1e2d3c4b5a697887766554/companies"),
            "/contacts/{id}/companies"
        );
        assert_eq!(path_shape("/companies?company_id=acme"), "/companies");
    }
}
