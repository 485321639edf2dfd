//! What identify and group calls share about the contact: how it is looked up, the
//! identity-only create of a group attach, the resolve step, and the value helpers both use.

use serde_json::{Map, Value, json};

use super::{KnownIds, MapError};
use crate::intercom::requests::{
    CONTACT_ID, ContactLookup, Method, OnMissing, Op, Plan, Produces, Request, StepId,
};
use crate::segment::non_empty_str;

pub(super) fn contact_lookup(
    user_id: Option<&str>,
    email: Option<&str>,
) -> Result<ContactLookup, MapError> {
    match (user_id, email) {
        (Some(user_id), _) => Ok(ContactLookup::ExternalId(user_id.to_string())),
        (None, Some(email)) => Ok(ContactLookup::Email(email.to_string())),
        (None, None) => Err(MapError::NoIdentifier),
    }
}

/// The identity-only `POST /contacts` of a group attach (it writes no contact values).
pub(super) fn create_contact_request(user_id: Option<&str>, email: Option<&str>) -> Request {
    let mut body = Map::new();
    body.insert("role".into(), json!("user"));
    if let Some(user_id) = user_id {
        body.insert("external_id".into(), json!(user_id));
    }
    if let Some(email) = email {
        body.insert("email".into(), json!(email));
    }
    Request::new(Method::Post, "/contacts", Some(Value::Object(body)))
}

/// Adds the resolve step unless the contact id is known; returns the contact's path
/// (`/contacts/{contact_id}` or with the known id) and the step that produces it.
pub(super) fn resolve_contact(
    plan: &mut Plan,
    known: &KnownIds,
    lookup: ContactLookup,
    on_missing: OnMissing,
) -> (String, Option<StepId>) {
    if let Some(id) = &known.contact_id {
        return (format!("/contacts/{id}"), None);
    }
    let (field, value) = match &lookup {
        ContactLookup::ExternalId(v) => ("external_id", v),
        ContactLookup::Email(v) => ("email", v),
    };
    let search = Request::new(
        Method::Post,
        "/contacts/search",
        Some(json!({"query": {"field": field, "operator": "=", "value": value}})),
    );
    let step = plan.push(
        Op::ResolveContact { lookup, on_missing },
        search,
        Vec::new(),
        Some(Produces::ContactId),
    );
    (format!("/contacts/{CONTACT_ID}"), Some(step))
}

/// A number, or a string holding one (`"155.98"`).
pub(super) fn number(value: &Value) -> Option<f64> {
    value
        .as_f64()
        .or_else(|| value.as_str()?.trim().parse().ok())
        .filter(|n: &f64| n.is_finite())
}

/// A string field's value: a string or a number as text, or null (to clear).
pub(super) fn scalar_text(value: Option<&Value>) -> Option<Value> {
    match value? {
        Value::Null => Some(Value::Null),
        Value::Number(n) => Some(Value::String(n.to_string())),
        other => non_empty_str(other).map(Value::String),
    }
}
