//! The Intercom destination mapping: one Segment identify / track / group message to the plan of Intercom requests it needs.
//!
//! Architecture Invariant: this module is pure. No IO, no clock, no network: "now" comes in
//! [`MapOptions::now`], what is already known about Intercom comes in [`KnownIds`], and the
//! active event names come in [`EventNames`]. The rules are SPEC section 6.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::plan::{
    AttributeNeed, COMPANY_ID, CONTACT_ID, ContactLookup, Method, OnMissing, Op, Plan, Produces,
    Request, StepId,
};
pub use super::values::MapError;
use super::values::{
    LongStrings, Model, Warning, attribute_value, company_name_hash, fit_string, infer_data_type,
    metadata_value, unix_seconds,
};
use crate::segment::{Common, Group, Identify, Message, Object, Track, non_empty_str};

/// Intercom keeps at most this many metadata keys per event, the first ones sent.
pub const MAX_METADATA_KEYS: usize = 10;

/// What the mapping needs from settings and the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOptions {
    pub long_strings: LongStrings,
    /// Prepended to a Personas account computation's key on the company (SPEC "One name, one
    /// model"), see [`map_group`].
    pub company_attribute_prefix: String,
    /// Unix seconds standing in for a missing `timestamp` (the caller's clock, read once).
    pub now: i64,
}

impl MapOptions {
    /// `intercom.long_strings` and `intercom.company_attribute_prefix`, with the caller's "now"
    /// (the daemon crate's `intercom::map_options` reads them from settings).
    pub fn new(long_strings: LongStrings, company_attribute_prefix: &str, now: i64) -> MapOptions {
        MapOptions {
            long_strings,
            company_attribute_prefix: company_attribute_prefix.to_string(),
            now,
        }
    }
}

/// Intercom ids the caller already holds (its caches). The dry run knows nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KnownIds {
    /// The Intercom id of this message's contact.
    pub contact_id: Option<String>,
    /// Intercom company ids by our `company_id`.
    pub company_ids: BTreeMap<String, String>,
}

impl KnownIds {
    pub fn nothing() -> KnownIds {
        KnownIds::default()
    }
}

/// Map any message.
pub fn map_message(
    message: &Message,
    options: &MapOptions,
    known: &KnownIds,
) -> Result<Plan, MapError> {
    match message {
        Message::Identify(m) => map_identify(m, options, known),
        Message::Track(m) => map_track(m, options, known),
        Message::Group(m) => map_group(m, options, known),
    }
}

// ---------------------------------------------------------------------------------------------
// identify

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

fn contact_lookup(user_id: Option<&str>, email: Option<&str>) -> Result<ContactLookup, MapError> {
    match (user_id, email) {
        (Some(user_id), _) => Ok(ContactLookup::ExternalId(user_id.to_string())),
        (None, Some(email)) => Ok(ContactLookup::Email(email.to_string())),
        (None, None) => Err(MapError::NoIdentifier),
    }
}

/// The `POST /contacts` body of an identify: `role: "user"`, then the update body's fields and
/// custom attributes in its order, without its clears (`null`: a new contact has nothing to
/// clear, and an attribute Intercom does not have need not exist for one).
fn create_contact_body(update: &Map<String, Value>) -> Value {
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

/// The identity-only `POST /contacts` of a group attach (it writes no contact values).
fn create_contact_request(user_id: Option<&str>, email: Option<&str>) -> Request {
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
fn resolve_contact(
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
fn number(value: &Value) -> Option<f64> {
    value
        .as_f64()
        .or_else(|| value.as_str()?.trim().parse().ok())
        .filter(|n: &f64| n.is_finite())
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

/// A string field's value: a string or a number as text, or null (to clear).
fn scalar_text(value: Option<&Value>) -> Option<Value> {
    match value? {
        Value::Null => Some(Value::Null),
        Value::Number(n) => Some(Value::String(n.to_string())),
        other => non_empty_str(other).map(Value::String),
    }
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

/// A company an identify upserts and attaches.
struct CompanyUpsert {
    company_id: String,
    body: Value,
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

/// Upsert the company (unless it is only attached to and its Intercom id is known), then
/// attach the contact to it.
///
/// A company body holding nothing but `company_id` writes nothing: with a cached Intercom id
/// the attach alone goes, with that id literally (a 404 `company_not_found` then means the
/// cache is stale, and the executor maps the message again without it). A company with values
/// is upserted, and the attach takes the id the upsert answers with (`{company_id}`), so a
/// stale cached id is never used after an upsert corrected it.
fn attach_company(
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
fn only_company_id(body: &Value) -> bool {
    body.as_object()
        .is_some_and(|b| b.keys().all(|k| k == "company_id"))
}

fn detach_company(
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

// ---------------------------------------------------------------------------------------------
// group

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
/// nothing (see [`attach_company`]).
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
fn is_exit_value(key: &str, value: &Value, audiences: &Option<BTreeSet<String>>) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(false) => audiences.as_ref().is_none_or(|keys| keys.contains(key)),
        _ => false,
    }
}

/// The keys of the audience computations a Personas message carries, or `None` for a message
/// without `context.personas`. A coalesced identify lists its computations under
/// `computations`; a message of one computation names it at the top level.
fn personas_audience_keys(common: &Common) -> Option<BTreeSet<String>> {
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
fn company_body(
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

// ---------------------------------------------------------------------------------------------
// track

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
/// The 120-active-event-names guard is [`EventNames`], which the caller holds (it is
/// workspace state); it is not applied here.
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

/// Whether an event name is already active in the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Sent before: no new name is used up.
    Known,
    /// A new name, within the limit.
    New,
}

/// The active event names of the workspace (Intercom keeps at most 120 and answers a 121st
/// with an error): a pure guard over the names already sent, compared case-insensitively as
/// Intercom does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNames {
    names: BTreeSet<String>,
    limit: usize,
}

impl EventNames {
    pub const INTERCOM_LIMIT: usize = 120;

    /// The guard over the names this workspace has been sent.
    pub fn new<'a>(sent: impl IntoIterator<Item = &'a str>) -> EventNames {
        EventNames::with_limit(sent, EventNames::INTERCOM_LIMIT)
    }

    pub fn with_limit<'a>(sent: impl IntoIterator<Item = &'a str>, limit: usize) -> EventNames {
        EventNames {
            names: sent.into_iter().map(fold).collect(),
            limit,
        }
    }

    /// May an event with this name be sent? A new name beyond the limit is refused.
    pub fn check(&self, name: &str) -> Result<Admission, MapError> {
        if self.names.contains(&fold(name)) {
            Ok(Admission::Known)
        } else if self.names.len() < self.limit {
            Ok(Admission::New)
        } else {
            Err(MapError::TooManyEventNames {
                name: name.to_string(),
                limit: self.limit,
            })
        }
    }

    /// Count a name as sent (after Intercom accepted it).
    pub fn record(&mut self, name: &str) {
        self.names.insert(fold(name));
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn fold(name: &str) -> String {
    name.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> MapOptions {
        MapOptions {
            long_strings: LongStrings::Truncate,
            company_attribute_prefix: "account_".into(),
            now: 1_700_000_000,
        }
    }

    fn message(value: Value) -> Message {
        Message::from_value(&value).unwrap()
    }

    #[test]
    fn the_create_body_is_the_update_body_as_a_user_without_its_clears() {
        let update = json!({"external_id": "u1", "email": "a@example.com", "name": null,
            "phone": "1", "signed_up_at": 5, "unsubscribed_from_emails": false,
            "custom_attributes": {"vip": false, "gone": null, "ltv": 5}});
        assert_eq!(
            create_contact_body(update.as_object().unwrap()),
            json!({"role": "user", "external_id": "u1", "email": "a@example.com", "phone": "1",
                   "signed_up_at": 5, "unsubscribed_from_emails": false,
                   "custom_attributes": {"vip": false, "ltv": 5}})
        );
        let only_clears = json!({"external_id": "u1", "custom_attributes": {"gone": null}});
        assert_eq!(
            create_contact_body(only_clears.as_object().unwrap()),
            json!({"role": "user", "external_id": "u1"})
        );
    }

    #[test]
    fn an_identify_for_a_new_contact_is_one_create_and_the_update_done_by_it() {
        let plan = map_message(
            &message(json!({"type": "identify", "userId": "u1",
                "traits": {"email": "a@example.com", "vip": true}})),
            &options(),
            &KnownIds::nothing(),
        )
        .unwrap();
        let [resolve, update] = &plan.steps[..] else {
            panic!("{plan:?}")
        };
        let Op::ResolveContact {
            on_missing: OnMissing::Create(create),
            ..
        } = &resolve.op
        else {
            panic!("{resolve:?}")
        };
        assert_eq!(create.method, Method::Post);
        assert_eq!(create.path, "/contacts");
        let mut expected = update.request.body.clone().unwrap();
        expected
            .as_object_mut()
            .unwrap()
            .shift_insert(0, "role".into(), json!("user"));
        assert_eq!(create.body, Some(expected));
        assert_eq!(
            update.op,
            Op::UpdateContact {
                done_by_create: true
            }
        );
        assert_eq!(
            plan.dry_run_requests(),
            vec![&resolve.request, create],
            "the dry run shows the create in place of the update"
        );
    }

    #[test]
    fn only_a_bare_company_with_a_known_id_skips_the_upsert() {
        assert!(only_company_id(&json!({"company_id": "acme"})));
        assert!(!only_company_id(
            &json!({"company_id": "acme", "name": "Acme"})
        ));
        assert!(!only_company_id(
            &json!({"company_id": "acme", "custom_attributes": {"x": null}})
        ));
        let known = KnownIds {
            contact_id: Some("c1".into()),
            company_ids: BTreeMap::from([("acme".to_string(), "i1".to_string())]),
        };
        let attach = map_message(
            &message(json!({"type": "group", "userId": "u1", "groupId": "acme"})),
            &options(),
            &known,
        )
        .unwrap();
        assert_eq!(
            attach.requests().cloned().collect::<Vec<_>>(),
            vec![Request::new(
                Method::Post,
                "/contacts/c1/companies",
                Some(json!({"id": "i1"}))
            )]
        );
    }

    #[test]
    fn a_group_size_trait_is_the_company_size() {
        let mut plan = Plan::default();
        let traits = json!({"size": 12.7, "remote_created_at": "2020-01-01T00:00:00Z"});
        let body = company_body(
            "acme",
            traits.as_object().unwrap(),
            &BTreeSet::new(),
            &options(),
            &mut plan,
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"company_id": "acme", "size": 12, "remote_created_at": 1_577_836_800})
        );
        assert!(plan.attributes.is_empty() && plan.warnings.is_empty());
        // A Personas account computation named `size` is the prefixed custom attribute.
        let body = company_body(
            "acme",
            json!({"size": 3}).as_object().unwrap(),
            &BTreeSet::from(["size".to_string()]),
            &options(),
            &mut plan,
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"company_id": "acme", "custom_attributes": {"account_size": 3}})
        );
    }

    #[test]
    fn the_121st_new_event_name_is_refused_case_insensitively() {
        let sent: Vec<String> = (0..119).map(|i| format!("Event {i}")).collect();
        let mut names = EventNames::new(sent.iter().map(String::as_str));
        assert_eq!(names.check("event 3"), Ok(Admission::Known));
        assert_eq!(names.check("Order Completed"), Ok(Admission::New));
        names.record("Order Completed");
        assert_eq!(names.len(), 120);
        assert_eq!(names.check("ORDER COMPLETED"), Ok(Admission::Known));
        let err = names.check("Signed Up").unwrap_err();
        assert_eq!(
            err,
            MapError::TooManyEventNames {
                name: "Signed Up".into(),
                limit: 120
            }
        );
        assert!(err.to_string().contains("`Signed Up` is new"));
    }
}
