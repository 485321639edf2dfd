//! The request plan one Segment message maps to: typed Intercom requests, their dependencies and the ids they produce.
//!
//! A plan is data, not HTTP: the delivery engine executes its steps in order, substituting the
//! ids earlier steps (or its caches) produced for the placeholders in later paths and bodies.
//!
//! Placeholders: `{contact_id}` stands for the Intercom id of the message's contact (produced
//! by the [`Op::ResolveContact`] step); `{company_id}` stands for the Intercom id of the
//! company named by the step's own [`Op`] (`company_id` there is *our* id, Intercom's
//! `company_id` field), produced by that company's [`Op::UpsertCompany`] or
//! [`Op::ResolveCompany`] step. Ids already known when the plan is made appear literally.

use serde_json::{Value, json};

use super::values::{DataType, Model, Warning};

/// The placeholder for the message's contact id in paths.
pub const CONTACT_ID: &str = "{contact_id}";
/// The placeholder for a company's Intercom id in paths and bodies.
pub const COMPANY_ID: &str = "{company_id}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// One HTTP request, with placeholders where an id is not known yet. `path` may carry a query
/// string (`/companies?company_id=acme`), already percent-encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>, body: Option<Value>) -> Request {
        Request {
            method,
            path: path.into(),
            body,
        }
    }

    /// The `send --dry-run` line: `{"method": "POST", "path": "/events", "body": {…}}`
    /// (`body` is null for a request without one).
    pub fn to_json(&self) -> Value {
        json!({
            "method": self.method.as_str(),
            "path": self.path,
            "body": self.body.clone().unwrap_or(Value::Null),
        })
    }
}

/// The index of a step in [`Plan::steps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepId(pub usize);

/// How the contact is looked up: `external_id` = `userId` when the message has one, else email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactLookup {
    ExternalId(String),
    Email(String),
}

/// What the resolve step does when the search finds no contact. This is where the plan says
/// whether a contact may be created: an identify that writes something other than exit values
/// (`false` / `null`) or company detachments, and a group attach (joining an account is not an
/// exit), carry `Create`; exit-only and detach-only identifies carry `Skip`, so a user Intercom
/// does not know never gets a contact from them (SPEC section 6, "An exit for a user that has no
/// Intercom contact creates none"). Leads are never created: the create body always has
/// `role: "user"`.
#[derive(Debug, Clone, PartialEq)]
pub enum OnMissing {
    /// `POST /contacts` with this request: `role: "user"` and every value the plan's
    /// [`Op::UpdateContact`] writes (Intercom's create takes the standard fields and
    /// `custom_attributes`; a clear, `null`, has nothing to clear on a new contact and is left
    /// out), so a new contact costs the search and this one request. When it creates the
    /// contact, the update step marked `done_by_create` is done without a request. A 409
    /// "already exists with id=X" means the contact exists: X is the id, and the update runs.
    /// A group attach creates with the identity only (it writes no contact values).
    Create(Request),
    /// Not found means there is nothing to do: every step that needs `{contact_id}` is skipped
    /// and counts as done.
    Skip,
}

/// What a step is for. Company ids here are ours (Intercom's `company_id` field); the Intercom
/// id of that company fills `{company_id}`.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `POST /contacts/search` (one filter, `=`); produces `{contact_id}` when exactly one contact
    /// matches, else follows `on_missing`. A cached id replaces the whole step.
    ResolveContact {
        lookup: ContactLookup,
        on_missing: OnMissing,
    },
    /// `PUT /contacts/{contact_id}` with the contact's fields and custom attributes.
    /// `done_by_create`: the resolve step's [`OnMissing::Create`] carries these same values, so
    /// when that step creates the contact this one is done without a request; when the contact
    /// is found (search, cache or a 409 on the create) it runs.
    UpdateContact { done_by_create: bool },
    /// `POST /companies` (an upsert by `company_id`); produces `{company_id}` for it.
    UpsertCompany { company_id: String },
    /// `GET /companies?company_id=…`, only to learn the Intercom id for a detach; a 404 means
    /// the company does not exist, so the detach is done.
    ResolveCompany { company_id: String },
    /// `POST /contacts/{contact_id}/companies` `{"id": "{company_id}"}`.
    AttachCompany { company_id: String },
    /// `DELETE /contacts/{contact_id}/companies/{company_id}`; a 404 means already detached.
    DetachCompany { company_id: String },
    /// `POST /events`. The contact must exist first (per-user ordering is the engine's).
    CreateEvent { event_name: String },
}

/// The id a step produces for later steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Produces {
    ContactId,
    CompanyId { company_id: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub op: Op,
    pub request: Request,
    /// Steps that must have succeeded first (earlier indices only).
    pub depends_on: Vec<StepId>,
    pub produces: Option<Produces>,
}

/// A custom data attribute the message writes, with the type it gets if Intercom lacks it
/// (SPEC section 6: create it with `POST /data_attributes` first). Null values need none:
/// clearing an attribute Intercom does not have is a no-op the engine drops.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttributeNeed {
    pub model: Model,
    pub name: String,
    pub data_type: DataType,
}

impl AttributeNeed {
    /// `POST /data_attributes` creating it.
    pub fn create_request(&self) -> Request {
        Request::new(
            Method::Post,
            "/data_attributes",
            Some(json!({
                "name": self.name,
                "model": self.model.as_str(),
                "data_type": self.data_type.as_str(),
            })),
        )
    }
}

/// Everything one message needs from Intercom.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In execution order; a step only depends on earlier ones.
    pub steps: Vec<Step>,
    /// The custom attributes the steps write, each once, in first-use order.
    pub attributes: Vec<AttributeNeed>,
    /// What the mapping changed or dropped (log at WARN).
    pub warnings: Vec<Warning>,
}

impl Plan {
    pub(crate) fn push(
        &mut self,
        op: Op,
        request: Request,
        depends_on: Vec<StepId>,
        produces: Option<Produces>,
    ) -> StepId {
        self.steps.push(Step {
            op,
            request,
            depends_on,
            produces,
        });
        StepId(self.steps.len() - 1)
    }

    pub(crate) fn need(&mut self, need: AttributeNeed) {
        if !self.attributes.contains(&need) {
            self.attributes.push(need);
        }
    }

    /// The requests in order (the resolve steps' searches; a create is in [`OnMissing`]).
    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.steps.iter().map(|step| &step.request)
    }

    /// The requests `send --dry-run` shows, for a contact Intercom does not hold: the resolve
    /// step's search, then, where the message may create the contact, the `POST /contacts`
    /// carrying every value in place of the update it makes unnecessary; where it may not (an
    /// exit), the update an existing contact gets. The other steps in order.
    pub fn dry_run_requests(&self) -> Vec<&Request> {
        let mut requests = Vec::with_capacity(self.steps.len() + 1);
        for step in &self.steps {
            match &step.op {
                Op::ResolveContact {
                    on_missing: OnMissing::Create(create),
                    ..
                } => requests.extend([&step.request, create]),
                Op::UpdateContact {
                    done_by_create: true,
                } => {}
                _ => requests.push(&step.request),
            }
        }
        requests
    }

    /// The `POST /contacts` this plan may send, when its resolve step allows a create.
    pub fn contact_create(&self) -> Option<&Request> {
        self.steps.iter().find_map(|step| match &step.op {
            Op::ResolveContact {
                on_missing: OnMissing::Create(request),
                ..
            } => Some(request),
            _ => None,
        })
    }
}
