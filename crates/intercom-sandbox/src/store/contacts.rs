//! Contacts: create, update, get, and their companies (attach, detach, list).

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::{
    Contact, Model, Store, addressable_list, index, object, only_fields, opt_bool, opt_integer,
    opt_string,
};
use crate::error::ApiError;

/// Intercom's cap on companies per contact.
pub(crate) const MAX_COMPANIES_PER_CONTACT: usize = 1000;

const CONTACT_FIELDS: &[&str] = &[
    "role",
    "external_id",
    "email",
    "email_verified",
    "phone",
    "name",
    "avatar",
    "signed_up_at",
    "last_seen_at",
    "owner_id",
    "unsubscribed_from_emails",
    "custom_attributes",
];

/// The fields of a create or update body, checked; `Some(None)` clears a field.
struct ContactChanges {
    role: Option<String>,
    external_id: Option<Option<String>>,
    email: Option<Option<String>>,
    phone: Option<Option<String>>,
    name: Option<Option<String>>,
    avatar: Option<Option<String>>,
    signed_up_at: Option<Option<i64>>,
    last_seen_at: Option<Option<i64>>,
    unsubscribed_from_emails: Option<bool>,
    custom_attributes: Map<String, Value>,
}

impl Store {
    fn contact_changes(&self, body: &Map<String, Value>) -> Result<ContactChanges, ApiError> {
        only_fields(body, CONTACT_FIELDS)?;
        let role = match body.get("role") {
            None | Some(Value::Null) => None,
            Some(Value::String(role)) if role == "user" || role == "lead" => Some(role.clone()),
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "role must be one of user, lead (got {other})"
                )));
            }
        };
        let email = opt_string(body, "email")?;
        if opt_bool(body, "email_verified")?.is_some() && !matches!(email, Some(Some(_))) {
            return Err(ApiError::invalid("email_verified requires email"));
        }
        if body.get("owner_id").is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(
                "The owner specified is not a member of the workspace",
            ));
        }
        for field in ["name", "phone"] {
            if let Some(Some(text)) = opt_string(body, field)? {
                self.check_string_length(&format!("'{field}'"), &text)?;
            }
        }
        Ok(ContactChanges {
            role,
            external_id: opt_string(body, "external_id")?,
            email,
            phone: opt_string(body, "phone")?,
            name: opt_string(body, "name")?,
            avatar: opt_string(body, "avatar")?,
            signed_up_at: opt_integer(body, "signed_up_at")?,
            last_seen_at: opt_integer(body, "last_seen_at")?,
            unsubscribed_from_emails: opt_bool(body, "unsubscribed_from_emails")?,
            custom_attributes: self
                .check_custom_attributes(Model::Contact, body.get("custom_attributes"))?,
        })
    }

    /// Another contact (not `except`) holding this external id or email (case-insensitive);
    /// the oldest one when several match.
    fn holder_of(
        &self,
        external_id: Option<&str>,
        email: Option<&str>,
        except: Option<&str>,
    ) -> Option<&Contact> {
        let other = |position: &&usize| Some(self.contacts[**position].id.as_str()) != except;
        external_id
            .and_then(|x| {
                index::get(&self.indexes.contact_by_external_id, x)
                    .iter()
                    .find(other)
            })
            .or_else(|| email.and_then(|e| self.email_holders(e).find(other)))
            .map(|&position| &self.contacts[position])
    }

    /// Positions of the contacts whose email equals `email` ignoring ASCII case, oldest first.
    pub(super) fn email_holders<'a>(&'a self, email: &'a str) -> impl Iterator<Item = &'a usize> {
        index::get(&self.indexes.contact_by_email, &index::email_key(email))
            .iter()
            .filter(move |&&position| {
                self.contacts[position]
                    .email
                    .as_deref()
                    .is_some_and(|held| held.eq_ignore_ascii_case(email))
            })
    }

    fn conflict(&mut self, holder: &str) -> ApiError {
        self.counters.conflicts += 1;
        ApiError::conflict(holder)
    }

    /// `POST /contacts`
    pub fn create_contact(&mut self, body: &Value, now: Duration) -> Result<Value, ApiError> {
        let body = object(body)?;
        let changes = self.contact_changes(body)?;
        let external_id = changes.external_id.clone().flatten();
        let email = changes.email.clone().flatten();
        if changes.role.is_none() && external_id.is_none() && email.is_none() {
            return Err(ApiError::missing(
                "A contact needs at least one of email, external_id or role",
            ));
        }
        let role = changes.role.clone().unwrap_or_else(|| "user".to_owned());
        if role == "user" && external_id.is_none() && email.is_none() {
            return Err(ApiError::invalid(
                "A contact with role user needs an email or an external_id",
            ));
        }
        if let Some(holder) = self.holder_of(external_id.as_deref(), email.as_deref(), None) {
            let holder = holder.id.clone();
            return Err(self.conflict(&holder));
        }
        let secs = now.as_secs();
        let mut contact = Contact {
            id: self.next_object_id(),
            role,
            external_id: None,
            email: None,
            name: None,
            phone: None,
            avatar: None,
            signed_up_at: None,
            last_seen_at: None,
            unsubscribed_from_emails: false,
            custom_attributes: Map::new(),
            companies: Vec::new(),
            created_at: secs,
            updated_at: secs,
            created: now,
        };
        apply(&mut contact, changes);
        let response = self.contact_json(&contact);
        let position = self.contacts.len();
        self.indexes
            .contact_by_id
            .insert(contact.id.clone(), position);
        self.indexes.add_contact_identities(&contact, position);
        self.contacts.push(contact);
        Ok(response)
    }

    /// `PUT /contacts/{id}`: a partial update.
    pub fn update_contact(&mut self, id: &str, body: &Value, now: u64) -> Result<Value, ApiError> {
        let index = self
            .contact_index(id)
            .ok_or_else(|| ApiError::not_found("Contact Not Found"))?;
        let body = object(body)?;
        let changes = self.contact_changes(body)?;
        if self.contacts[index].role == "user" && changes.role.as_deref() == Some("lead") {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "client_error",
                "Contact with user role can't be converted to a lead",
            ));
        }
        let external_id = changes.external_id.clone().flatten();
        let email = changes.email.clone().flatten();
        if let Some(holder) = self.holder_of(external_id.as_deref(), email.as_deref(), Some(id)) {
            let holder = holder.id.clone();
            return Err(self.conflict(&holder));
        }
        let contact = &mut self.contacts[index];
        self.indexes.remove_contact_identities(contact, index);
        apply(contact, changes);
        contact.updated_at = now;
        self.indexes.add_contact_identities(contact, index);
        let contact = contact.clone();
        Ok(self.contact_json(&contact))
    }

    /// `GET /contacts/{id}`
    pub fn get_contact(&self, id: &str) -> Result<Value, ApiError> {
        let index = self
            .contact_index(id)
            .ok_or_else(|| ApiError::not_found("Contact Not Found"))?;
        Ok(self.contact_json(&self.contacts[index]))
    }

    pub fn contact_json(&self, contact: &Contact) -> Value {
        let id = &contact.id;
        let companies = contact
            .companies
            .iter()
            .map(|company| json!({"type": "company", "id": company, "url": format!("/companies/{company}")}))
            .collect();
        let empty = |what: &str| addressable_list(format!("/contacts/{id}/{what}"), Vec::new());
        json!({
            "type": "contact",
            "id": id,
            "workspace_id": "sandbox",
            "external_id": contact.external_id,
            "role": contact.role,
            "email": contact.email,
            "email_domain": contact.email.as_deref().and_then(|e| e.split_once('@')).map(|(_, d)| d),
            "phone": contact.phone,
            "name": contact.name,
            "avatar": contact.avatar,
            "owner_id": null,
            "social_profiles": {"type": "list", "data": []},
            "has_hard_bounced": false,
            "marked_email_as_spam": false,
            "unsubscribed_from_emails": contact.unsubscribed_from_emails,
            "created_at": contact.created_at,
            "updated_at": contact.updated_at,
            "signed_up_at": contact.signed_up_at,
            "last_seen_at": contact.last_seen_at,
            "location": {"type": "location", "country": null, "region": null, "city": null},
            "custom_attributes": contact.custom_attributes,
            "tags": empty("tags"),
            "notes": empty("notes"),
            "companies": addressable_list(format!("/contacts/{id}/companies"), companies),
            "opted_out_subscription_types": empty("subscriptions"),
            "opted_in_subscription_types": empty("subscriptions"),
        })
    }

    /// `POST /contacts/{id}/companies` with `{"id": <Intercom company id>}`.
    pub fn attach_company(&mut self, contact_id: &str, body: &Value) -> Result<Value, ApiError> {
        let contact = self
            .contact_index(contact_id)
            .ok_or_else(|| ApiError::not_found("User Not Found"))?;
        let body = object(body)?;
        let company_id = match body.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return Err(ApiError::missing("company not specified")),
        };
        let company = self
            .company_index(&company_id)
            .ok_or_else(ApiError::company_not_found)?;
        let attached = &mut self.contacts[contact].companies;
        if !attached.contains(&company_id) {
            if attached.len() >= MAX_COMPANIES_PER_CONTACT {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "contact_company_limit_exceeded",
                    format!(
                        "Contact has reached the maximum of {MAX_COMPANIES_PER_CONTACT} company associations"
                    ),
                ));
            }
            self.indexes.attached(&company_id);
            attached.push(company_id);
        }
        Ok(self.company_json(&self.companies[company]))
    }

    /// `DELETE /contacts/{id}/companies/{company id}`
    pub fn detach_company(
        &mut self,
        contact_id: &str,
        company_id: &str,
    ) -> Result<Value, ApiError> {
        let contact = self
            .contact_index(contact_id)
            .ok_or_else(|| ApiError::not_found("User Not Found"))?;
        let company = self
            .company_index(company_id)
            .ok_or_else(ApiError::company_not_found)?;
        let attached = &mut self.contacts[contact].companies;
        let position = attached
            .iter()
            .position(|id| id == company_id)
            .ok_or_else(ApiError::company_not_found)?;
        attached.remove(position);
        self.indexes.detached(company_id);
        Ok(self.company_json(&self.companies[company]))
    }

    /// `GET /contacts/{id}/companies`
    pub fn contact_companies(&self, contact_id: &str) -> Result<Value, ApiError> {
        let contact = self
            .contact_index(contact_id)
            .ok_or_else(|| ApiError::not_found("User Not Found"))?;
        let data: Vec<Value> = self.contacts[contact]
            .companies
            .iter()
            .filter_map(|id| self.company_index(id))
            .map(|index| self.company_json(&self.companies[index]))
            .collect();
        let total = data.len();
        Ok(json!({
            "type": "list",
            "data": data,
            "total_count": total,
            "pages": {"type": "pages", "next": null, "page": 1, "per_page": 50, "total_pages": 1},
        }))
    }
}

fn apply(contact: &mut Contact, changes: ContactChanges) {
    if let Some(role) = changes.role {
        contact.role = role;
    }
    if let Some(v) = changes.external_id {
        contact.external_id = v;
    }
    if let Some(v) = changes.email {
        contact.email = v;
    }
    if let Some(v) = changes.phone {
        contact.phone = v;
    }
    if let Some(v) = changes.name {
        contact.name = v;
    }
    if let Some(v) = changes.avatar {
        contact.avatar = v;
    }
    if let Some(v) = changes.signed_up_at {
        contact.signed_up_at = v;
    }
    if let Some(v) = changes.last_seen_at {
        contact.last_seen_at = v;
    }
    if let Some(v) = changes.unsubscribed_from_emails {
        contact.unsubscribed_from_emails = v;
    }
    for (key, value) in changes.custom_attributes {
        if value.is_null() {
            contact.custom_attributes.remove(&key);
        } else {
            contact.custom_attributes.insert(key, value);
        }
    }
}
