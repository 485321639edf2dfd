//! identify: the contact's lookup (by `userId`, else `email`), its update or the one create
//! that carries every value, the contact fields Intercom has its own names for, and the
//! companies an identify names (each upserted and attached, or resolved and detached).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::contact::{contact_lookup, resolve_contact, scalar_text};
use super::group::{
    CompanyUpsert, attach_company, company_body, detach_company, is_exit_value,
    personas_audience_keys,
};
use super::{KnownIds, MapError, MapOptions};
use crate::intercom::requests::{
    AttributeNeed, ContactLookup, Method, OnMissing, Op, Plan, Request,
};
use crate::intercom::values::{
    Model, Warning, attribute_value, company_name_hash, fit_string, infer_data_type, unix_seconds,
};
use crate::segment::{Common, Identify, Object, non_empty_str};

/// Traits that map to Intercom's own contact fields (or steer the mapping) and so never become
/// custom attributes.
const CONTACT_SPECIAL: [&str; 14] = [
    "email",
    "name",
    "firstName",
    "lastName",
    "first_name",
    "last_name",
    "phone",
    "avatar",
    "createdAt",
    "created_at",
    "lastRequestAt",
    "last_request_at",
    "company",
    "companies",
];

/// identify → resolve the contact (search by `external_id` = `userId`, else `email`), `PUT
/// /contacts/{contact_id}`, then per company: upsert + attach, or resolve + detach. A contact
/// the search does not find is created, when the message may create it, by one `POST
/// /contacts` carrying every value (the update is then done by it, see [`OnMissing::Create`]).
pub fn map_identify(
    message: &Identify,
    options: &MapOptions,
    known: &KnownIds,
) -> Result<Plan, MapError> {
    let common = &message.common;
    let traits = &message.traits;
    let email = traits
        .get("email")
        .and_then(non_empty_str)
        .or_else(|| common.context_email());
    let lookup = contact_lookup(common.user_id.as_deref(), email.as_deref())?;
    let found_by_email = matches!(lookup, ContactLookup::Email(_));

    let mut plan = Plan::default();
    let mut body = Map::new();
    // Whether the message sets anything other than an exit value: only then may it create.
    let mut enters = false;

    // The userId goes into every write: a contact found through a 409 on its email (created
    // earlier by email only) gets it that way.
    if let Some(user_id) = &common.user_id {
        body.insert("external_id".into(), json!(user_id));
    }
    if let Some(email) = &email {
        body.insert("email".into(), json!(email));
    }
    let name = match traits.get("name") {
        Some(Value::Null) => Some(Value::Null),
        Some(value) => non_empty_str(value).map(Value::String),
        None => full_name(traits).map(Value::String),
    };
    for (field, value) in [
        ("name", name),
        ("phone", scalar_text(traits.get("phone"))),
        ("avatar", scalar_text(traits.get("avatar"))),
    ] {
        match value {
            Some(Value::String(s)) => {
                let s = fit_string(field, &s, options.long_strings, &mut plan.warnings)?;
                body.insert(field.into(), Value::String(s));
                enters = true;
            }
            Some(Value::Null) => {
                body.insert(field.into(), Value::Null);
            }
            _ => {}
        }
    }
    if let Some(signed_up_at) = date_trait(traits, &["createdAt", "created_at"], &mut plan) {
        body.insert("signed_up_at".into(), json!(signed_up_at));
        enters = true;
    }
    if common.context.get("active") == Some(&Value::Bool(true)) {
        let last_request = common
            .context
            .get("lastRequestAt")
            .and_then(unix_seconds)
            .or_else(|| date_trait(traits, &["lastRequestAt", "last_request_at"], &mut plan));
        let last_seen = last_request
            .or_else(|| common.timestamp.map(|t| t.timestamp()))
            .unwrap_or(options.now);
        body.insert("last_seen_at".into(), json!(last_seen));
        enters = true;
    }
    if let Some(unsubscribed) = unsubscribed_from_emails(common) {
        body.insert("unsubscribed_from_emails".into(), json!(unsubscribed));
        enters = true;
    }

    let audiences = personas_audience_keys(common);
    let mut custom = Map::new();
    for (key, value) in traits {
        if CONTACT_SPECIAL.contains(&key.as_str()) {
            continue;
        }
        let Some(value) = attribute_value(key, value, options.long_strings, &mut plan.warnings)?
        else {
            continue;
        };
        if !is_exit_value(key, &value, &audiences) {
            enters = true;
        }
        if let Some(data_type) = infer_data_type(&value) {
            plan.need(AttributeNeed {
                model: Model::Contact,
                name: key.clone(),
                data_type,
            });
        }
        custom.insert(key.clone(), value);
    }
    if !custom.is_empty() {
        body.insert("custom_attributes".into(), Value::Object(custom));
    }

    let companies = identify_companies(traits, options, &mut plan)?;
    if companies
        .iter()
        .any(|c| matches!(c, CompanyChange::Attach(_)))
    {
        enters = true;
    }

    // An identify that carries only its identity (a plain "this user exists") may create too.
    let only_identity =
        body.keys().all(|k| k == "email" || k == "external_id") && companies.is_empty();
    let creates = enters || only_identity;
    let on_missing = if creates {
        // One request for a new contact: the create carries every value the update writes.
        OnMissing::Create(Request::new(
            Method::Post,
            "/contacts",
            Some(create_contact_body(&body)),
        ))
    } else {
        OnMissing::Skip
    };

    let (contact_path, mut contact_step) = resolve_contact(&mut plan, known, lookup, on_missing);
    // Writing only the identifier a contact was just found by would change nothing.
    let found_by = if found_by_email {
        "email"
    } else {
        "external_id"
    };
    let writes_nothing = body.keys().all(|k| k == found_by);
    if !writes_nothing {
        let id = plan.push(
            Op::UpdateContact {
                // Only a resolve step creates; with a known id there is none.
                done_by_create: creates && contact_step.is_some(),
            },
            Request::new(Method::Put, contact_path.clone(), Some(Value::Object(body))),
            contact_step.into_iter().collect(),
            None,
        );
        contact_step = Some(id);
    }
    for change in companies {
        match change {
            CompanyChange::Attach(company) => {
                attach_company(&mut plan, known, &contact_path, contact_step, company)
            }
            CompanyChange::Detach(company_id) => {
                detach_company(&mut plan, known, &contact_path, contact_step, company_id)
            }
        }
    }
    Ok(plan)
}

/// The `POST /contacts` body of an identify: `role: "user"`, then the update body's fields and
/// custom attributes in its order, without its clears (`null`: a new contact has nothing to
/// clear, and an attribute Intercom does not have need not exist for one).
pub(super) fn create_contact_body(update: &Map<String, Value>) -> Value {
    let mut body = Map::new();
    body.insert("role".into(), json!("user"));
    for (field, value) in update {
        match value {
            Value::Null => {}
            Value::Object(custom) if field == "custom_attributes" => {
                let custom: Map<String, Value> = custom
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !custom.is_empty() {
                    body.insert(field.clone(), Value::Object(custom));
                }
            }
            _ => {
                body.insert(field.clone(), value.clone());
            }
        }
    }
    Value::Object(body)
}

/// `name`, else `firstName` + `lastName` (each trimmed), when there is any.
fn full_name(traits: &Object) -> Option<String> {
    let part = |keys: [&str; 2]| {
        keys.iter()
            .find_map(|k| traits.get(*k).and_then(non_empty_str))
    };
    let parts: Vec<String> = [
        part(["firstName", "first_name"]),
        part(["lastName", "last_name"]),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The first of `keys` present, as unix seconds; a present but unreadable date is a warning.
fn date_trait(traits: &Object, keys: &[&str], plan: &mut Plan) -> Option<i64> {
    let (key, value) = keys
        .iter()
        .find_map(|k| traits.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))?;
    let seconds = unix_seconds(value);
    if seconds.is_none() {
        plan.warnings.push(Warning::UnparsableDate {
            field: key.to_string(),
        });
    }
    seconds
}

/// `unsubscribedFromEmails` (or the mobile libraries' `unsubscribed`) in `context.Intercom`,
/// else in `integrations.Intercom`.
fn unsubscribed_from_emails(common: &Common) -> Option<bool> {
    common.intercom_options().into_iter().find_map(|options| {
        ["unsubscribedFromEmails", "unsubscribed"]
            .iter()
            .find_map(|k| options.get(*k).and_then(Value::as_bool))
    })
}

enum CompanyChange {
    Attach(CompanyUpsert),
    Detach(String),
}

/// `company` (object or string) and `companies` (array of them), in that order.
fn identify_companies(
    traits: &Object,
    options: &MapOptions,
    plan: &mut Plan,
) -> Result<Vec<CompanyChange>, MapError> {
    let mut entries: Vec<(String, &Value)> = Vec::new();
    if let Some(company) = traits.get("company") {
        entries.push(("company".into(), company));
    }
    match traits.get("companies") {
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                entries.push((format!("companies[{i}]"), item));
            }
        }
        Some(Value::Null) | None => {}
        Some(_) => plan.warnings.push(Warning::DroppedObject {
            field: "companies".into(),
        }),
    }
    let mut changes = Vec::new();
    for (field, value) in entries {
        let company: Object = match value {
            Value::Object(map) => map.clone(),
            Value::String(_) | Value::Number(_) => {
                let mut map = Object::new();
                map.insert("name".into(), json!(scalar_text(Some(value))));
                map
            }
            _ => continue,
        };
        let company_id = ["id", "company_id"]
            .iter()
            .find_map(|k| scalar_text(company.get(*k)).and_then(|v| v.as_str().map(String::from)))
            .or_else(|| {
                company
                    .get("name")
                    .and_then(non_empty_str)
                    .map(|name| company_name_hash(&name).to_string())
            });
        let Some(company_id) = company_id else {
            plan.warnings.push(Warning::CompanyWithoutId { field });
            continue;
        };
        if company.get("remove") == Some(&Value::Bool(true)) {
            changes.push(CompanyChange::Detach(company_id));
            continue;
        }
        let traits: Object = company
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "id" | "company_id" | "remove"))
            .collect();
        let body = company_body(&company_id, &traits, &BTreeSet::new(), options, plan)?;
        changes.push(CompanyChange::Attach(CompanyUpsert { company_id, body }));
    }
    Ok(changes)
}
