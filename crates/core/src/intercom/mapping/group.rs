//! group: the company's `POST /companies` body (its own fields, custom attributes, a Personas
//! account's prefixed computation keys), and attaching or detaching a member contact.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::contact::{
    contact_lookup, create_contact_request, number, resolve_contact, scalar_text,
};
use super::{KnownIds, MapError, MapOptions};
use crate::intercom::requests::{
    AttributeNeed, COMPANY_ID, Method, OnMissing, Op, Plan, Produces, Request, StepId,
};
use crate::intercom::values::{
    Model, Warning, attribute_value, fit_string, infer_data_type, unix_seconds,
};
use crate::segment::{Common, Group, Object, non_empty_str};

/// Company traits with a field of their own in `POST /companies` (Intercom's standard company
/// fields `name`, `plan`, `size`, `website`, `industry`, `monthly_spend`, `remote_created_at`,
/// and the Segment names that map to them): never custom attributes, never data attributes to
/// create.
const COMPANY_SPECIAL: [&str; 11] = [
    "name",
    "plan",
    "size",
    "employees",
    "website",
    "industry",
    "monthly_spend",
    "monthlySpend",
    "remote_created_at",
    "createdAt",
    "created_at",
];

/// group → `POST /companies` (upsert by `company_id` = `groupId`), then, when the message names
/// a user (`userId`, else `context.traits.email`), resolve that contact (creating a missing
/// member with its identity) and attach it: `POST /contacts/{contact_id}/companies` `{"id":
/// "{company_id}"}`. A group without a user upserts the company only. A membership group (a
/// user, no traits) whose company's Intercom id is known attaches with that id and upserts
/// nothing (see `attach_company`).
///
/// "One name, one model": a message carrying `context.personas` is a Personas account message
/// (the emitter decides that by setting it, as Personas does). Its computation keys
/// (`context.personas.computation_key`, and every `computation_key` listed under
/// `context.personas.computations`) land on the company as
/// [`MapOptions::company_attribute_prefix`] + KEY custom attributes, never as Intercom's own
/// company fields; every other trait, and every trait of a generic group, keeps its name.
pub fn map_group(
    message: &Group,
    options: &MapOptions,
    known: &KnownIds,
) -> Result<Plan, MapError> {
    let common = &message.common;
    let mut plan = Plan::default();
    let prefixed = personas_keys(common);
    let body = company_body(
        &message.group_id,
        &message.traits,
        &prefixed,
        options,
        &mut plan,
    )?;
    let company = CompanyUpsert {
        company_id: message.group_id.clone(),
        body,
    };
    let email = common.context_email();
    match contact_lookup(common.user_id.as_deref(), email.as_deref()) {
        Ok(lookup) => {
            // Joining an account is not an exit: a member Intercom does not know yet is created
            // (as the classic integration's identify-with-companies did), or the membership
            // would be confirmed without ever reaching Intercom.
            let create = create_contact_request(common.user_id.as_deref(), email.as_deref());
            let (path, step) = resolve_contact(&mut plan, known, lookup, OnMissing::Create(create));
            attach_company(&mut plan, known, &path, step, company);
        }
        Err(_) => {
            plan.push(
                Op::UpsertCompany {
                    company_id: company.company_id.clone(),
                },
                Request::new(Method::Post, "/companies", Some(company.body)),
                Vec::new(),
                Some(Produces::CompanyId {
                    company_id: company.company_id,
                }),
            );
        }
    }
    Ok(plan)
}

/// Whether a custom attribute value only takes something away, so that on its own it must not
/// create a contact: `null` (a trait that went away) always; `false` only for an audience exit.
/// A Personas message says which of its keys are audiences (`context.personas`); there a trait
/// whose computed value is `false` is a value like any other and does create the contact. A
/// generic message (from `send`) has no such context, and its `false` counts as an exit.
pub(super) fn is_exit_value(
    key: &str,
    value: &Value,
    audiences: &Option<BTreeSet<String>>,
) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(false) => audiences.as_ref().is_none_or(|keys| keys.contains(key)),
        _ => false,
    }
}

/// The keys of the audience computations a Personas message carries, or `None` for a message
/// without `context.personas`. A coalesced identify lists its computations under
/// `computations`; a message of one computation names it at the top level.
pub(super) fn personas_audience_keys(common: &Common) -> Option<BTreeSet<String>> {
    let personas = common.personas()?;
    let audience = |c: &Object| {
        (c.get("computation_class").and_then(Value::as_str) == Some("audience"))
            .then(|| c.get("computation_key").and_then(non_empty_str))
            .flatten()
    };
    let keys = match personas.get("computations").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(Value::as_object)
            .filter_map(audience)
            .collect(),
        None => audience(personas).into_iter().collect(),
    };
    Some(keys)
}

/// The computation keys a Personas message carries.
fn personas_keys(common: &Common) -> BTreeSet<String> {
    let Some(personas) = common.personas() else {
        return BTreeSet::new();
    };
    let listed = personas
        .get("computations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| match c {
            Value::String(key) => Some(key.clone()),
            other => other.get("computation_key").and_then(non_empty_str),
        });
    personas
        .get("computation_key")
        .and_then(non_empty_str)
        .into_iter()
        .chain(listed)
        .collect()
}

/// The `POST /companies` body: `company_id`, Intercom's own fields, then `custom_attributes`.
/// Keys in `prefixed` go to custom attributes as prefix + key.
pub(super) fn company_body(
    company_id: &str,
    traits: &Object,
    prefixed: &BTreeSet<String>,
    options: &MapOptions,
    plan: &mut Plan,
) -> Result<Value, MapError> {
    let mut body = Map::new();
    body.insert("company_id".into(), json!(company_id));
    let own = |key: &str| (!prefixed.contains(key)).then(|| traits.get(key)).flatten();
    for (field, keys) in [
        ("name", &["name"][..]),
        ("plan", &["plan"]),
        ("website", &["website"]),
        ("industry", &["industry"]),
    ] {
        let Some((key, value)) = keys
            .iter()
            .find_map(|k| own(k).filter(|v| !v.is_null()).map(|v| (*k, v)))
        else {
            continue;
        };
        match scalar_text(Some(value)) {
            Some(Value::String(s)) => {
                let s = fit_string(field, &s, options.long_strings, &mut plan.warnings)?;
                body.insert(field.into(), json!(s));
            }
            // An empty string: nothing to write.
            _ if value.is_string() => {}
            _ => plan.warnings.push(Warning::WrongFieldType {
                field: key.to_string(),
                expected: "a string",
            }),
        }
    }
    // Integer fields: Intercom truncates a float itself; the request schema wants an integer.
    for (field, keys) in [
        ("size", &["size", "employees"][..]),
        ("monthly_spend", &["monthly_spend", "monthlySpend"]),
    ] {
        let Some((key, value)) = keys
            .iter()
            .find_map(|k| own(k).filter(|v| !v.is_null()).map(|v| (*k, v)))
        else {
            continue;
        };
        match number(value) {
            Some(n) => {
                body.insert(
                    field.into(),
                    json!(n.trunc().clamp(0.0, f64::from(i32::MAX)) as i64),
                );
            }
            None => plan.warnings.push(Warning::WrongFieldType {
                field: key.to_string(),
                expected: "a number",
            }),
        }
    }
    let created = ["remote_created_at", "createdAt", "created_at"]
        .iter()
        .find_map(|k| own(k).filter(|v| !v.is_null()).map(|v| (*k, v)));
    if let Some((key, value)) = created {
        match unix_seconds(value) {
            Some(seconds) => {
                body.insert("remote_created_at".into(), json!(seconds));
            }
            None => plan.warnings.push(Warning::UnparsableDate {
                field: key.to_string(),
            }),
        }
    }
    let mut custom = Map::new();
    for (key, value) in traits {
        let name = if prefixed.contains(key) {
            format!("{}{key}", options.company_attribute_prefix)
        } else if COMPANY_SPECIAL.contains(&key.as_str()) {
            continue;
        } else {
            key.clone()
        };
        let Some(value) = attribute_value(&name, value, options.long_strings, &mut plan.warnings)?
        else {
            continue;
        };
        if let Some(data_type) = infer_data_type(&value) {
            plan.need(AttributeNeed {
                model: Model::Company,
                name: name.clone(),
                data_type,
            });
        }
        custom.insert(name, value);
    }
    if !custom.is_empty() {
        body.insert("custom_attributes".into(), Value::Object(custom));
    }
    Ok(Value::Object(body))
}

/// A company an identify upserts and attaches.
pub(super) struct CompanyUpsert {
    pub(super) company_id: String,
    pub(super) body: Value,
}

/// Upsert the company (unless it is only attached to and its Intercom id is known), then
/// attach the contact to it.
///
/// A company body holding nothing but `company_id` writes nothing: with a cached Intercom id
/// the attach alone goes, with that id literally (a 404 `company_not_found` then means the
/// cache is stale, and the executor maps the message again without it). A company with values
/// is upserted, and the attach takes the id the upsert answers with (`{company_id}`), so a
/// stale cached id is never used after an upsert corrected it.
pub(super) fn attach_company(
    plan: &mut Plan,
    known: &KnownIds,
    contact_path: &str,
    contact_step: Option<StepId>,
    company: CompanyUpsert,
) {
    let mut depends_on: Vec<StepId> = contact_step.into_iter().collect();
    let cached = known
        .company_ids
        .get(&company.company_id)
        .filter(|_| only_company_id(&company.body));
    let intercom_id = match cached {
        Some(id) => id.clone(),
        None => {
            depends_on.push(plan.push(
                Op::UpsertCompany {
                    company_id: company.company_id.clone(),
                },
                Request::new(Method::Post, "/companies", Some(company.body)),
                Vec::new(),
                Some(Produces::CompanyId {
                    company_id: company.company_id.clone(),
                }),
            ));
            COMPANY_ID.to_string()
        }
    };
    plan.push(
        Op::AttachCompany {
            company_id: company.company_id,
        },
        Request::new(
            Method::Post,
            format!("{contact_path}/companies"),
            Some(json!({ "id": intercom_id })),
        ),
        depends_on,
        None,
    );
}

/// Whether a company body carries nothing to write but the company's own id.
pub(super) fn only_company_id(body: &Value) -> bool {
    body.as_object()
        .is_some_and(|b| b.keys().all(|k| k == "company_id"))
}

pub(super) fn detach_company(
    plan: &mut Plan,
    known: &KnownIds,
    contact_path: &str,
    contact_step: Option<StepId>,
    company_id: String,
) {
    let mut depends_on: Vec<StepId> = contact_step.into_iter().collect();
    let intercom_id = match known.company_ids.get(&company_id) {
        Some(id) => id.clone(),
        None => {
            let query: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("company_id", &company_id)
                .finish();
            depends_on.push(plan.push(
                Op::ResolveCompany {
                    company_id: company_id.clone(),
                },
                Request::new(Method::Get, format!("/companies?{query}"), None),
                Vec::new(),
                Some(Produces::CompanyId {
                    company_id: company_id.clone(),
                }),
            ));
            COMPANY_ID.to_string()
        }
    };
    plan.push(
        Op::DetachCompany { company_id },
        Request::new(
            Method::Delete,
            format!("{contact_path}/companies/{intercom_id}"),
            None,
        ),
        depends_on,
        None,
    );
}
