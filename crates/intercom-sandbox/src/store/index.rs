//! Indexes over the store, kept in step with every mutation so that no request scans all data.
//!
//! Each index answers exactly what a linear scan in creation order answered: a multi-valued
//! index keeps its positions sorted, so "the first match" is still the oldest one. Contacts and
//! companies are never removed, so a position (an index into `Store::contacts` or
//! `Store::companies`) stays valid for the life of the store.

use std::collections::{HashMap, HashSet};

use super::{Company, Contact, DataAttribute, Event};

/// Key → positions in creation order.
pub(crate) type Positions = HashMap<String, Vec<usize>>;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Indexes {
    /// Contact Intercom id → position (ids are unique by construction).
    pub contact_by_id: HashMap<String, usize>,
    /// Exact `external_id` → contacts holding it.
    pub contact_by_external_id: Positions,
    /// `email.to_lowercase()` → contacts holding it. Search compares emails this way; the
    /// uniqueness check and events compare ASCII-case-insensitively, which is finer (two emails
    /// equal ignoring ASCII case are equal lower-cased), so they filter this index's candidates.
    pub contact_by_email: Positions,
    /// Company Intercom id → position.
    pub company_by_id: HashMap<String, usize>,
    /// The caller's `company_id` → companies holding it.
    pub company_by_company_id: Positions,
    /// Company Intercom id → number of contacts attached to it (absent: none).
    pub users_of_company: HashMap<String, usize>,
    /// Contact Intercom id → positions of its events in `Store::events`.
    pub events_of_contact: Positions,
    /// (contact id, `created_at`, lower-cased event name) of every stored event.
    pub event_keys: HashSet<(String, i64, String)>,
    /// ASCII-lower-cased attribute name → positions in `Store::attributes` (both models).
    pub attribute_by_name: Positions,
}

/// The key of an email in [`Indexes::contact_by_email`]; search folds emails the same way.
pub(crate) fn email_key(email: &str) -> String {
    email.to_lowercase()
}

pub(crate) fn add(map: &mut Positions, key: String, position: usize) {
    let positions = map.entry(key).or_default();
    if let Err(at) = positions.binary_search(&position) {
        positions.insert(at, position);
    }
}

pub(crate) fn remove(map: &mut Positions, key: &str, position: usize) {
    if let Some(positions) = map.get_mut(key) {
        if let Ok(at) = positions.binary_search(&position) {
            positions.remove(at);
        }
        if positions.is_empty() {
            map.remove(key);
        }
    }
}

/// The positions under `key`, oldest first.
pub(crate) fn get<'a>(map: &'a Positions, key: &str) -> &'a [usize] {
    map.get(key).map(Vec::as_slice).unwrap_or_default()
}

impl Indexes {
    /// Index the identities (`external_id`, email) of the contact at `position`.
    pub fn add_contact_identities(&mut self, contact: &Contact, position: usize) {
        if let Some(external_id) = &contact.external_id {
            add(
                &mut self.contact_by_external_id,
                external_id.clone(),
                position,
            );
        }
        if let Some(email) = &contact.email {
            add(&mut self.contact_by_email, email_key(email), position);
        }
    }

    /// Forget the identities of the contact at `position`, before they change.
    pub fn remove_contact_identities(&mut self, contact: &Contact, position: usize) {
        if let Some(external_id) = &contact.external_id {
            remove(&mut self.contact_by_external_id, external_id, position);
        }
        if let Some(email) = &contact.email {
            remove(&mut self.contact_by_email, &email_key(email), position);
        }
    }

    pub fn add_company(&mut self, company: &Company, position: usize) {
        self.company_by_id.insert(company.id.clone(), position);
        add(
            &mut self.company_by_company_id,
            company.company_id.clone(),
            position,
        );
    }

    pub fn attached(&mut self, company_id: &str) {
        *self
            .users_of_company
            .entry(company_id.to_owned())
            .or_default() += 1;
    }

    pub fn detached(&mut self, company_id: &str) {
        if let Some(count) = self.users_of_company.get_mut(company_id) {
            *count -= 1;
            if *count == 0 {
                self.users_of_company.remove(company_id);
            }
        }
    }

    pub fn add_event(&mut self, event: &Event, position: usize) {
        add(
            &mut self.events_of_contact,
            event.contact_id.clone(),
            position,
        );
        self.event_keys.insert(event_key(event));
    }

    pub fn add_attribute(&mut self, attribute: &DataAttribute, position: usize) {
        add(
            &mut self.attribute_by_name,
            attribute.name.to_ascii_lowercase(),
            position,
        );
    }

    /// The indexes of this data, built from scratch: what the maintained ones must equal.
    #[cfg(test)]
    pub fn rebuilt(
        contacts: &[Contact],
        companies: &[Company],
        attributes: &[DataAttribute],
        events: &[Event],
    ) -> Indexes {
        let mut indexes = Indexes::default();
        for (position, contact) in contacts.iter().enumerate() {
            indexes.contact_by_id.insert(contact.id.clone(), position);
            indexes.add_contact_identities(contact, position);
            for company in &contact.companies {
                indexes.attached(company);
            }
        }
        for (position, company) in companies.iter().enumerate() {
            indexes.add_company(company, position);
        }
        for (position, attribute) in attributes.iter().enumerate() {
            indexes.add_attribute(attribute, position);
        }
        for (position, event) in events.iter().enumerate() {
            indexes.add_event(event, position);
        }
        indexes
    }
}

/// What makes two events duplicates: same contact, same `created_at`, same name ignoring case.
pub(crate) fn event_key(event: &Event) -> (String, i64, String) {
    (
        event.contact_id.clone(),
        event.created_at,
        event.event_name.to_lowercase(),
    )
}
