//! The request estimate: the Intercom requests a run's messages will take, counted entity by
//! entity as the emitter (`emit.rs`) sees each one, reading the id caches; the run reports the
//! totals (`Report::requests`).

use std::collections::HashSet;

use crate::store::Connection;
use serde::Serialize;

use super::Comp;
use super::diff::Change;
use crate::domain::Scope;
use crate::store::state::ChangeRow;

/// The Intercom requests a run's messages will take (SPEC section 6, "Request floor"), as
/// delivery makes them: contacts without a cached id are looked up in bulk ([`LOOKUP_BATCH`] a
/// search) and created with every value in one request; a known contact is one write; a company
/// is upserted once a run (an account's own values, or the first attach of a company whose id is
/// not cached); one request per attach, detach, event and data attribute created. A user the
/// cache does not know is counted as new: if Intercom has it after all, its create is an update,
/// the same one request (only an exit for such a user costs one more than predicted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestEstimate {
    /// Bulk searches for the users below.
    pub lookups: u64,
    /// Users with a message that needs their contact and no cached contact id.
    pub unknown_users: u64,
    /// `POST /contacts` for new users (carrying every value).
    pub creates: u64,
    /// `PUT /contacts/{id}` for known users.
    pub updates: u64,
    /// `POST /events`.
    pub events: u64,
    /// `POST /companies`.
    pub companies: u64,
    /// `POST /contacts/{id}/companies`.
    pub attaches: u64,
    /// `DELETE /contacts/{id}/companies/{id}`, and `GET /companies` for a company whose id is
    /// not cached.
    pub detaches: u64,
    pub company_lookups: u64,
    /// `GET /data_attributes` (twice, once per model, when this database never listed them)
    /// and `POST /data_attributes` for attributes Intercom does not have yet.
    pub attribute_lists: u64,
    pub attributes: u64,
}

/// Users one bulk lookup asks about (`intercom::resolve::BATCH`).
pub const LOOKUP_BATCH: u64 = crate::intercom::resolve::BATCH as u64;

impl RequestEstimate {
    pub fn total(&self) -> u64 {
        self.lookups
            + self.creates
            + self.updates
            + self.events
            + self.companies
            + self.attaches
            + self.detaches
            + self.company_lookups
            + self.attribute_lists
            + self.attributes
    }
}

/// Counts the requests a run's messages will take, entity by entity (see [`RequestEstimate`]).
#[derive(Default)]
pub(super) struct Estimator {
    requests: RequestEstimate,
    /// Companies this run upserts (their first upsert caches the id for the rest).
    companies: HashSet<String>,
    /// Per computation index: it writes a user value / an account value (its data attributes).
    user_values: HashSet<usize>,
    account_values: HashSet<usize>,
}

/// A value that is written as such (not an exit's `false` or a clear).
fn writes_value(value: Option<&str>) -> bool {
    !matches!(value, None | Some("false") | Some("null"))
}

impl Estimator {
    pub(super) fn entity(&mut self, conn: &Connection, rows: &[ChangeRow]) -> anyhow::Result<()> {
        let entity_id = rows[0].entity_id.as_str();
        if rows[0].lane == Scope::Account {
            // An account's own group call: one upsert of its company.
            self.requests.companies += 1;
            self.companies.insert(entity_id.to_string());
            for row in rows {
                if let Some(index) = row.computation {
                    self.account_values.insert(index as usize);
                }
            }
            return Ok(());
        }
        let attach = Change::Attach;
        let detach = Change::Detach;
        let values: Vec<&ChangeRow> = rows
            .iter()
            .filter(|r| r.change != attach && r.change != detach)
            .collect();
        let detaches = rows.iter().filter(|r| r.change == detach);
        let attaches: Vec<&ChangeRow> = rows.iter().filter(|r| r.change == attach).collect();
        let identify = !values.is_empty() || rows.iter().any(|r| r.change == detach);
        let creates = values.iter().any(|r| writes_value(r.value.as_deref()));
        for row in &values {
            if let Some(index) = row.computation
                && row.value.is_some()
            {
                self.user_values.insert(index as usize);
            }
        }
        let known = crate::store::cache::contact_id(conn, entity_id)?.is_some();
        if !known && (identify || !attaches.is_empty()) {
            self.requests.unknown_users += 1;
        }
        // The identify: one write, unless it only exits a user Intercom has no contact for.
        let mut contact = known;
        if identify {
            if known {
                self.requests.updates += 1;
            } else if creates {
                self.requests.creates += 1;
                contact = true;
            }
        }
        for row in detaches {
            let group_id = row.group_id.as_deref().unwrap_or_default();
            self.requests.detaches += 1;
            if !self.companies.contains(group_id)
                && crate::store::cache::company_id(conn, group_id)?.is_none()
            {
                self.requests.company_lookups += 1;
            }
        }
        for row in attaches {
            let group_id = row.group_id.as_deref().unwrap_or_default();
            if !contact {
                // Joining an account creates the contact.
                self.requests.creates += 1;
                contact = true;
            }
            if !self.companies.contains(group_id) {
                if crate::store::cache::company_id(conn, group_id)?.is_none() {
                    self.requests.companies += 1;
                }
                self.companies.insert(group_id.to_string());
            }
            self.requests.attaches += 1;
        }
        self.requests.events += rows.iter().filter(|r| r.track).count() as u64;
        Ok(())
    }

    /// The run's totals: lookups for the unknown users, the data attributes its values need.
    pub(super) fn finish(
        mut self,
        conn: &Connection,
        comps: &[Comp],
        company_prefix: &str,
    ) -> anyhow::Result<RequestEstimate> {
        self.requests.lookups = self.requests.unknown_users.div_ceil(LOOKUP_BATCH);
        let listed = crate::store::cache::data_attributes(conn)?;
        if listed.is_none() && !(self.user_values.is_empty() && self.account_values.is_empty()) {
            self.requests.attribute_lists = 2;
        }
        let has = |model: &str, name: &str| {
            listed
                .as_ref()
                .is_some_and(|rows| rows.iter().any(|(m, n, _)| m == model && n == name))
        };
        let mut needed: Vec<(&str, String)> = Vec::new();
        for index in &self.user_values {
            needed.push(("contact", comps[*index].key.clone()));
        }
        for index in &self.account_values {
            needed.push(("company", format!("{company_prefix}{}", comps[*index].key)));
        }
        self.requests.attributes = needed.iter().filter(|(m, n)| !has(m, n)).count() as u64;
        Ok(self.requests)
    }
}
