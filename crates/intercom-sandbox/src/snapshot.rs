//! The inspection view: everything the sandbox holds and counted, as typed, serialisable data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The whole state at one moment, as served by `GET /_sandbox/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Contacts in creation order.
    pub contacts: Vec<ContactSnapshot>,
    /// Companies in creation order.
    pub companies: Vec<CompanySnapshot>,
    /// Custom data attributes in creation order (standard attributes are not listed).
    pub data_attributes: Vec<DataAttributeSnapshot>,
    /// Distinct active event names, lower-cased, sorted.
    pub event_names: Vec<String>,
    pub counters: Counters,
}

impl Snapshot {
    /// The contact with this `external_id`.
    pub fn contact_by_external_id(&self, external_id: &str) -> Option<&ContactSnapshot> {
        self.contacts
            .iter()
            .find(|c| c.external_id.as_deref() == Some(external_id))
    }

    /// The contact with this email (compared case-insensitively, as Intercom does).
    pub fn contact_by_email(&self, email: &str) -> Option<&ContactSnapshot> {
        self.contacts.iter().find(|c| {
            c.email
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(email))
        })
    }

    /// The company with this `company_id` (the caller's id, not Intercom's).
    pub fn company_by_company_id(&self, company_id: &str) -> Option<&CompanySnapshot> {
        self.companies.iter().find(|c| c.company_id == company_id)
    }

    /// The custom data attribute with this name on this model (`contact` or `company`).
    pub fn data_attribute(&self, model: &str, name: &str) -> Option<&DataAttributeSnapshot> {
        self.data_attributes
            .iter()
            .find(|a| a.model == model && a.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactSnapshot {
    /// Intercom's id (24 hex digits).
    pub id: String,
    /// `user` or `lead`.
    pub role: String,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub signed_up_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub unsubscribed_from_emails: bool,
    pub custom_attributes: Map<String, Value>,
    /// The `company_id`s of the companies attached, in attach order.
    pub companies: Vec<String>,
    /// Events stored for this contact, in arrival order (dropped duplicates are not here).
    pub events: Vec<EventSnapshot>,
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompanySnapshot {
    /// Intercom's id (24 hex digits).
    pub id: String,
    /// The caller's id for the company.
    pub company_id: String,
    pub name: Option<String>,
    pub plan: Option<String>,
    pub size: Option<i64>,
    pub website: Option<String>,
    pub industry: Option<String>,
    pub monthly_spend: i64,
    pub remote_created_at: Option<i64>,
    pub custom_attributes: Map<String, Value>,
    /// Contacts attached.
    pub user_count: usize,
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataAttributeSnapshot {
    pub id: u64,
    pub name: String,
    /// `contact` or `company`.
    pub model: String,
    /// `string`, `integer`, `float`, `boolean`, `date`, `datetime` or `options`.
    pub data_type: String,
    pub options: Vec<String>,
    pub archived: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventSnapshot {
    /// The name as first sent.
    pub event_name: String,
    pub created_at: i64,
    /// The metadata kept (at most the first 10 keys).
    pub metadata: Map<String, Value>,
}

/// What the sandbox counted since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Requests by endpoint (`"POST /contacts/{id}/companies"`) and answer (`"200"`, `"429"`,
    /// or `"dropped"` for a connection closed without a response). Inspection is not counted.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// All API requests, authenticated or not.
    pub total_requests: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
    /// Requests answered 409 `conflict`.
    pub conflicts: u64,
    /// Events answered 202 but not stored because an identical one exists.
    pub duplicate_events_dropped: u64,
    /// Injected error responses (500/502/503/504/408).
    pub faults_injected: u64,
    /// Connections closed without a response on purpose.
    pub connections_dropped: u64,
    /// Faults (of either kind) that struck after the request's effect was applied.
    pub lost_responses: u64,
    /// The most authenticated requests that arrived in any one rate-limit window, 429s
    /// included: a client that respects the budget keeps this at or below the limit.
    pub max_requests_in_window: u64,
    /// `Intercom-Version` header values seen (`"none"` when absent).
    pub intercom_versions: BTreeMap<String, u64>,
    /// Outages and the requests they refused. Refused requests are also in `requests` (as their
    /// status or `"dropped"`) and `total_requests`, but not in `faults_injected`,
    /// `connections_dropped` or `max_requests_in_window`.
    #[serde(default)]
    pub outage: OutageCounters,
}

/// What outages did since the sandbox started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutageCounters {
    /// Whether an outage is under way at the moment of the snapshot.
    pub active: bool,
    /// Outages begun (by hand, through `POST /_sandbox/outage`, or scheduled).
    pub outages: u64,
    /// API requests refused by an outage, over all outages.
    pub refused: u64,
    /// Of those, the ones whose connection was closed without a response.
    pub dropped: u64,
    /// For each refused request, in arrival order: milliseconds of real time between the start
    /// of the outage it fell in and its arrival. Shows how far apart a client's probes were.
    pub refused_at_ms: Vec<u64>,
    /// How long the last outage that ended lasted, in milliseconds (its `length` when it ended
    /// by itself); `None` until one ends.
    pub last_ended_after_ms: Option<u64>,
}
