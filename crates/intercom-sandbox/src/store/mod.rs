//! The sandbox's state and Intercom's rules over it: plain functions of a body and the time.

mod attributes;
mod companies;
mod contacts;
mod events;
mod index;
mod search;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{LongStrings, MAX_STRING_CHARS};
use crate::error::ApiError;
use crate::snapshot::{
    CompanySnapshot, ContactSnapshot, Counters, DataAttributeSnapshot, EventSnapshot, Snapshot,
};
use index::Indexes;

pub(crate) use attributes::{DataAttribute, Model};

/// Rules that come from the configuration rather than from Intercom.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub long_strings: LongStrings,
    pub event_name_limit: usize,
    pub search_lag: Duration,
    /// Most values an `IN`/`NIN` search array may hold; `None`: no limit.
    pub in_values_limit: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct Store {
    pub rules: Rules,
    /// The data below is changed only inside this module, so that `indexes` stays in step.
    contacts: Vec<Contact>,
    companies: Vec<Company>,
    attributes: Vec<DataAttribute>,
    events: Vec<Event>,
    indexes: Indexes,
    /// Lower-cased active event names.
    pub event_names: BTreeSet<String>,
    pub counters: Counters,
    next_seq: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Contact {
    pub id: String,
    pub role: String,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub avatar: Option<String>,
    pub signed_up_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub unsubscribed_from_emails: bool,
    pub custom_attributes: Map<String, Value>,
    /// Intercom ids of attached companies, in attach order.
    pub companies: Vec<String>,
    pub created_at: u64,
    pub updated_at: u64,
    /// When the contact was created, precisely: search lag is measured from here.
    pub created: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct Company {
    pub id: String,
    pub company_id: String,
    pub name: Option<String>,
    pub plan: Option<String>,
    pub size: Option<i64>,
    pub website: Option<String>,
    pub industry: Option<String>,
    pub monthly_spend: i64,
    pub remote_created_at: Option<i64>,
    pub custom_attributes: Map<String, Value>,
    pub created_at: u64,
    pub updated_at: u64,
    pub last_request_at: Option<u64>,
}

#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub contact_id: String,
    pub event_name: String,
    pub created_at: i64,
    pub metadata: Map<String, Value>,
}

impl Store {
    pub fn new(rules: Rules) -> Store {
        Store {
            rules,
            contacts: Vec::new(),
            companies: Vec::new(),
            attributes: Vec::new(),
            events: Vec::new(),
            indexes: Indexes::default(),
            event_names: BTreeSet::new(),
            counters: Counters::default(),
            next_seq: 1,
        }
    }

    /// A fresh 24-hex-digit id, shaped like Intercom's object ids.
    fn next_object_id(&mut self) -> String {
        let seq = self.next_seq;
        self.next_seq += 1;
        format!("6762f0dd{seq:016x}")
    }

    fn next_attribute_id(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    pub fn contact_index(&self, id: &str) -> Option<usize> {
        self.indexes.contact_by_id.get(id).copied()
    }

    pub fn company_index(&self, id: &str) -> Option<usize> {
        self.indexes.company_by_id.get(id).copied()
    }

    /// The number of contacts attached to the company with this Intercom id.
    pub fn user_count(&self, company_id: &str) -> usize {
        self.indexes
            .users_of_company
            .get(company_id)
            .copied()
            .unwrap_or(0)
    }

    /// The active attribute of this model with exactly this name.
    fn active_attribute(&self, model: Model, name: &str) -> Option<&DataAttribute> {
        index::get(&self.indexes.attribute_by_name, &name.to_ascii_lowercase())
            .iter()
            .map(|&position| &self.attributes[position])
            .find(|a| a.model == model && !a.archived && a.name == name)
    }

    /// Panic unless the maintained indexes equal indexes built afresh from the data.
    #[cfg(test)]
    pub fn assert_indexes_consistent(&self) {
        let rebuilt = Indexes::rebuilt(
            &self.contacts,
            &self.companies,
            &self.attributes,
            &self.events,
        );
        assert!(self.indexes == rebuilt, "indexes out of step with the data");
    }

    /// Check a `custom_attributes` value against the model's registry and return it as a map.
    /// The whole value is refused at the first bad key: nothing is applied in part.
    pub fn check_custom_attributes(
        &self,
        model: Model,
        value: Option<&Value>,
    ) -> Result<Map<String, Value>, ApiError> {
        let map = match value {
            None | Some(Value::Null) => return Ok(Map::new()),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "custom_attributes must be an object, not {other}"
                )));
            }
        };
        for (key, value) in map {
            let attribute = self.active_attribute(model, key).ok_or_else(|| {
                ApiError::invalid(format!("Custom attribute '{key}' does not exist"))
            })?;
            if value.is_null() {
                continue;
            }
            if value.is_object() || value.is_array() {
                return Err(ApiError::invalid(format!(
                    "Value: {value} not of type Numeric, String or Boolean"
                )));
            }
            if !attribute.data_type.accepts(value, &attribute.options) {
                return Err(ApiError::invalid(format!(
                    "Custom attribute '{key}' is of type {} and cannot hold the value {value}",
                    attribute.data_type.as_str()
                )));
            }
            if let Value::String(text) = value {
                self.check_string_length(&format!("Custom attribute '{key}'"), text)?;
            }
        }
        Ok(map.clone())
    }

    pub fn check_string_length(&self, what: &str, text: &str) -> Result<(), ApiError> {
        let chars = text.chars().count();
        if self.rules.long_strings == LongStrings::Refuse && chars > MAX_STRING_CHARS {
            return Err(ApiError::invalid(format!(
                "{what} is {chars} characters long; the maximum is {MAX_STRING_CHARS}"
            )));
        }
        Ok(())
    }

    pub fn snapshot(&self) -> Snapshot {
        let company_id_of = |id: &String| {
            self.company_index(id)
                .map(|index| self.companies[index].company_id.clone())
                .unwrap_or_default()
        };
        Snapshot {
            contacts: self
                .contacts
                .iter()
                .map(|c| ContactSnapshot {
                    id: c.id.clone(),
                    role: c.role.clone(),
                    external_id: c.external_id.clone(),
                    email: c.email.clone(),
                    name: c.name.clone(),
                    phone: c.phone.clone(),
                    signed_up_at: c.signed_up_at,
                    last_seen_at: c.last_seen_at,
                    unsubscribed_from_emails: c.unsubscribed_from_emails,
                    custom_attributes: c.custom_attributes.clone(),
                    companies: c.companies.iter().map(company_id_of).collect(),
                    events: index::get(&self.indexes.events_of_contact, &c.id)
                        .iter()
                        .map(|&position| &self.events[position])
                        .map(|e| EventSnapshot {
                            event_name: e.event_name.clone(),
                            created_at: e.created_at,
                            metadata: e.metadata.clone(),
                        })
                        .collect(),
                    created_at: c.created_at,
                    updated_at: c.updated_at,
                })
                .collect(),
            companies: self
                .companies
                .iter()
                .map(|c| CompanySnapshot {
                    id: c.id.clone(),
                    company_id: c.company_id.clone(),
                    name: c.name.clone(),
                    plan: c.plan.clone(),
                    size: c.size,
                    website: c.website.clone(),
                    industry: c.industry.clone(),
                    monthly_spend: c.monthly_spend,
                    remote_created_at: c.remote_created_at,
                    custom_attributes: c.custom_attributes.clone(),
                    user_count: self.user_count(&c.id),
                    created_at: c.created_at,
                    updated_at: c.updated_at,
                })
                .collect(),
            data_attributes: self
                .attributes
                .iter()
                .map(|a| DataAttributeSnapshot {
                    id: a.id,
                    name: a.name.clone(),
                    model: a.model.as_str().to_owned(),
                    data_type: a.data_type.as_str().to_owned(),
                    options: a.options.clone(),
                    archived: a.archived,
                })
                .collect(),
            event_names: self.event_names.iter().cloned().collect(),
            counters: self.counters.clone(),
        }
    }
}

/// The body as a JSON object, or Intercom's 400.
pub(crate) fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(ApiError::invalid_json)
}

/// An optional string field: absent → `None`, `null` → `Some(None)`.
pub(crate) fn opt_string(
    body: &Map<String, Value>,
    field: &str,
) -> Result<Option<Option<String>>, ApiError> {
    match body.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
        Some(other) => Err(ApiError::invalid(format!(
            "'{field}' must be a string, not {other}"
        ))),
    }
}

/// An optional integer field: absent → `None`, `null` → `Some(None)`.
pub(crate) fn opt_integer(
    body: &Map<String, Value>,
    field: &str,
) -> Result<Option<Option<i64>>, ApiError> {
    match body.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Number(n)) if n.is_i64() => Ok(Some(n.as_i64())),
        Some(other) => Err(ApiError::invalid(format!(
            "'{field}' must be an integer, not {other}"
        ))),
    }
}

/// An optional boolean field: absent or `null` → `None`.
pub(crate) fn opt_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::invalid(format!(
            "'{field}' must be a boolean, not {other}"
        ))),
    }
}

/// Refuse any top-level field outside `known` with 400 `bad_request` "bad 'x' parameter".
pub(crate) fn only_fields(body: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::bad_parameter(unknown)),
        None => Ok(()),
    }
}

/// An addressable-list stub as Intercom nests it in objects.
pub(crate) fn addressable_list(url: String, data: Vec<Value>) -> Value {
    let total = data.len();
    serde_json::json!({
        "type": "list",
        "data": data,
        "url": url,
        "total_count": total,
        "has_more": false,
    })
}
