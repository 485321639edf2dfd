//! Runs one message against Intercom: map it to a plan with what the caches know, make sure its
//! custom attributes exist, then send the plan's requests in order, filling in the ids earlier
//! steps learned. The answer is one [`Disposition`].
//!
//! - Contact and company ids come from the SQLite caches and go back into them from every
//!   search, create, upsert and 409, so a steady-state identify is one `PUT /contacts/{id}`.
//! - A 404 on a cached id means the cache is stale: the entry is dropped and the message is
//!   mapped and run once more, resolving afresh.
//! - A search miss is never trusted for a contact we created (Intercom's search lags): the id
//!   then comes from the cache, or from the 409 a create answers with.
//! - Data attributes are listed once per process and created before the first write that needs
//!   them; a create answered "You already have …" (a retry after a lost answer) refreshes the
//!   list. A value of another type than its attribute is converted when nothing is lost
//!   (`values::convert_for_attribute`), otherwise the message is dead-lettered.
//!
//! Every step is idempotent (contact and company writes are upserts, events carry a fixed
//! `created_at` Intercom de-duplicates on), so a retried message is simply run again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::client::{Answer, Client, Transport};
use super::disposition::{self, ApiError, Disposition};
use super::mapping::{Admission, EventNames, KnownIds, map_message};
use super::plan::{
    AttributeNeed, COMPANY_ID, CONTACT_ID, ContactLookup, Method, OnMissing, Op, Plan, Request,
};
use super::values::{DataType, Model, convert_for_attribute};
use crate::segment::{Message, non_empty_str};
use crate::settings::IntercomSettings;
use crate::store::cache;

/// How one run of a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Finished(Disposition),
    /// Stopped before sending a request because delivery is shutting down: the message stays
    /// queued as it was (no attempt is counted).
    Interrupted,
}

/// The custom data attributes Intercom holds, by model and name (listed once per process).
#[derive(Debug, Default)]
struct Attributes {
    known: HashMap<(Model, String), Option<DataType>>,
}

impl Attributes {
    fn get(&self, model: Model, name: &str) -> Option<Option<DataType>> {
        self.known.get(&(model, name.to_string())).copied()
    }
}

/// Shared by every message a process delivers.
pub struct Executor {
    client: Client,
    db: Arc<Mutex<Connection>>,
    settings: IntercomSettings,
    attributes: tokio::sync::Mutex<Option<Attributes>>,
    event_names: Mutex<EventNames>,
    rng: Mutex<u64>,
    /// Users a bulk lookup did not find (`resolve.rs`): their next resolve step goes straight
    /// to its create (or to nothing) without a search of its own. Taken when used.
    absent: Mutex<HashSet<String>>,
}

/// The contact a resolve step found or created.
struct Resolved {
    id: String,
    /// Created by this step's `POST /contacts`, which carried every value of the updates marked
    /// `done_by_create` (not found by the search, nor named by a 409).
    created: bool,
}

/// Why a pass over the plan has to be run again with fresher ids.
enum Stale {
    Contact,
    Company(String),
}

enum Step {
    Done(Disposition),
    Interrupted,
    Stale(Stale),
}

impl Executor {
    pub fn new(
        client: Client,
        db: Arc<Mutex<Connection>>,
        settings: &IntercomSettings,
    ) -> anyhow::Result<Executor> {
        let (names, listed) = {
            let conn = db.lock().unwrap_or_else(|p| p.into_inner());
            (cache::event_names(&conn)?, cache::data_attributes(&conn)?)
        };
        // The attribute list a previous process read (and what it created since): a restart
        // lists nothing until Intercom says an attribute is unknown or already exists.
        let attributes = listed.map(|rows| Attributes {
            known: rows
                .into_iter()
                .filter_map(|(model, name, data_type)| {
                    let model = match model.as_str() {
                        "contact" => Model::Contact,
                        "company" => Model::Company,
                        _ => return None,
                    };
                    Some((
                        (model, name),
                        data_type.as_deref().and_then(DataType::parse),
                    ))
                })
                .collect(),
        });
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Ok(Executor {
            client,
            db,
            settings: settings.clone(),
            attributes: tokio::sync::Mutex::new(attributes),
            event_names: Mutex::new(EventNames::new(names.iter().map(String::as_str))),
            rng: Mutex::new(seed),
            absent: Mutex::new(HashSet::new()),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A bulk lookup found no contact for these users.
    pub fn mark_absent(&self, keys: impl IntoIterator<Item = String>) {
        self.absent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(keys);
    }

    /// Forget what bulk lookups found absent (a new drain looks again).
    pub fn clear_absent(&self) {
        self.absent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether a bulk lookup found no contact for `key`; the answer is used once.
    fn take_absent(&self, key: Option<&str>) -> bool {
        key.is_some_and(|key| {
            self.absent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key)
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Uniform in [0, 1), for back-off jitter (xorshift; no need for a real generator here).
    pub fn jitter(&self) -> f64 {
        let mut state = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Deliver one Segment message (its JSON body). `attempt` counts from 1.
    pub async fn execute(&self, body: &Value, attempt: u32, cancel: &CancellationToken) -> Outcome {
        let message = match Message::from_value(body) {
            Ok(message) => message,
            Err(error) => {
                return Outcome::Finished(Disposition::DeadLetter {
                    reason: format!("not a message Intercom can take: {error}"),
                });
            }
        };
        let key = contact_key(&message);
        let mut fresh = false;
        // At most one extra pass: after a stale cached id was dropped.
        for _ in 0..2 {
            match self.pass(&message, key.as_deref(), attempt, cancel).await {
                Step::Done(disposition) => return Outcome::Finished(disposition),
                Step::Interrupted => return Outcome::Interrupted,
                Step::Stale(stale) => {
                    if fresh {
                        break;
                    }
                    fresh = true;
                    let db = self.db();
                    let forgotten = match &stale {
                        Stale::Contact => key
                            .as_deref()
                            .map(|k| cache::forget_contact_id(&db, k))
                            .transpose(),
                        Stale::Company(company_id) => {
                            cache::forget_company_id(&db, company_id).map(Some)
                        }
                    };
                    if let Err(error) = forgotten {
                        return Outcome::Finished(retry_db(&error, attempt, self.jitter()));
                    }
                    debug!(
                        user = key.as_deref().unwrap_or(""),
                        "Cached Intercom id was stale; resolving again."
                    );
                }
            }
        }
        Outcome::Finished(Disposition::DeadLetter {
            reason: "Intercom answered 404 for an id it had just given us".to_string(),
        })
    }

    async fn pass(
        &self,
        message: &Message,
        key: Option<&str>,
        attempt: u32,
        cancel: &CancellationToken,
    ) -> Step {
        let options = super::map_options(&self.settings, unix_seconds());
        let mut known = KnownIds::nothing();
        let looked_up = (|| -> rusqlite::Result<()> {
            let db = self.db();
            if let Some(key) = key {
                known.contact_id = cache::contact_id(&db, key)?;
            }
            Ok(())
        })();
        if let Err(error) = looked_up {
            return Step::Done(retry_db(&error, attempt, self.jitter()));
        }
        let mut plan = match map_message(message, &options, &known) {
            Ok(plan) => plan,
            Err(error) => {
                return Step::Done(Disposition::DeadLetter {
                    reason: error.to_string(),
                });
            }
        };
        // Companies the plan names: with their cached ids the plan can skip resolving them.
        let companies: Vec<String> = plan
            .steps
            .iter()
            .filter_map(|s| op_company(&s.op))
            .map(str::to_string)
            .collect();
        if !companies.is_empty() {
            let found = (|| -> rusqlite::Result<BTreeMap<String, String>> {
                let db = self.db();
                let mut found = BTreeMap::new();
                for company_id in companies {
                    if let Some(id) = cache::company_id(&db, &company_id)? {
                        found.insert(company_id, id);
                    }
                }
                Ok(found)
            })();
            match found {
                Ok(found) if !found.is_empty() => {
                    known.company_ids = found;
                    plan = match map_message(message, &options, &known) {
                        Ok(plan) => plan,
                        Err(error) => {
                            return Step::Done(Disposition::DeadLetter {
                                reason: error.to_string(),
                            });
                        }
                    };
                }
                Ok(_) => {}
                Err(error) => return Step::Done(retry_db(&error, attempt, self.jitter())),
            }
        }
        for warning in &plan.warnings {
            warn!(user = key.unwrap_or(""), message_id = message.common().message_id.as_deref().unwrap_or(""), %warning, "Message changed to fit Intercom.");
        }
        let mut new_event_name = None;
        if let Message::Track(track) = message {
            let admission = self
                .event_names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .check(&track.event);
            match admission {
                Ok(Admission::Known) => {}
                Ok(Admission::New) => new_event_name = Some(track.event.clone()),
                Err(error) => {
                    return Step::Done(Disposition::DeadLetter {
                        reason: error.to_string(),
                    });
                }
            }
        }
        if writes_attributes(&plan) {
            match self.fit_attributes(&mut plan, cancel).await {
                Ok(()) => {}
                Err(step) => return step,
            }
        }
        let step = self.run_steps(&plan, key, &known, attempt, cancel).await;
        if let (Step::Done(Disposition::Delivered), Some(name)) = (&step, new_event_name) {
            self.event_names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(&name);
            if let Err(error) = cache::record_event_name(&self.db(), &name) {
                warn!(%error, event = %name, "Could not record the event name.");
            }
        }
        step
    }

    /// Make sure every attribute the plan writes exists, then fit values to their types and drop
    /// clears of attributes Intercom does not have.
    async fn fit_attributes(
        &self,
        plan: &mut Plan,
        cancel: &CancellationToken,
    ) -> Result<(), Step> {
        let mut guard = self.attributes.lock().await;
        if guard.is_none() {
            *guard = Some(self.list_attributes(cancel).await?);
        }
        for need in plan.attributes.clone() {
            let attributes = guard.as_ref().expect("listed above");
            if attributes.get(need.model, &need.name).is_some() {
                continue;
            }
            let other = match need.model {
                Model::Contact => Model::Company,
                Model::Company => Model::Contact,
            };
            if attributes.get(other, &need.name).is_some() {
                return Err(Step::Done(Disposition::DeadLetter {
                    reason: format!(
                        "custom attribute `{}` exists on Intercom's {} data, so it cannot be \
                         written on {} data (Intercom keeps one name on one model)",
                        need.name,
                        other.as_str(),
                        need.model.as_str()
                    ),
                }));
            }
            self.create_attribute(&need, &mut guard, cancel).await?;
        }
        let attributes = guard.as_ref().expect("listed above");
        for step in &mut plan.steps {
            let (model, body) = match &mut step.op {
                Op::UpdateContact { .. } => (Model::Contact, step.request.body.as_mut()),
                Op::UpsertCompany { .. } => (Model::Company, step.request.body.as_mut()),
                // The create carries the update's values: fitted the same way.
                Op::ResolveContact {
                    on_missing: OnMissing::Create(create),
                    ..
                } => (Model::Contact, create.body.as_mut()),
                _ => continue,
            };
            if let Some(body) = body {
                fit_body(body, model, attributes).map_err(Step::Done)?;
            }
        }
        Ok(())
    }

    async fn list_attributes(&self, cancel: &CancellationToken) -> Result<Attributes, Step> {
        let mut attributes = Attributes::default();
        for model in [Model::Contact, Model::Company] {
            let request = Request::new(
                Method::Get,
                format!("/data_attributes?model={}", model.as_str()),
                None,
            );
            let answer = self.send(&request, cancel).await?;
            if !answer.is_success() {
                return Err(Step::Done(self.error_disposition(&request, &answer)));
            }
            for item in answer
                .body
                .get("data")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if item.get("custom").and_then(Value::as_bool) != Some(true) {
                    continue;
                }
                let Some(name) = item.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let data_type = item
                    .get("data_type")
                    .and_then(Value::as_str)
                    .and_then(DataType::parse);
                attributes
                    .known
                    .insert((model, name.to_string()), data_type);
            }
        }
        debug!(
            attributes = attributes.known.len(),
            "Listed Intercom's custom data attributes."
        );
        let rows: Vec<(&str, &str, Option<&str>)> = attributes
            .known
            .iter()
            .map(|((model, name), data_type)| {
                (
                    model.as_str(),
                    name.as_str(),
                    data_type.map(DataType::as_str),
                )
            })
            .collect();
        if let Err(error) = cache::replace_data_attributes(&mut self.db(), &rows) {
            warn!(%error, "Could not keep Intercom's attribute list in the database.");
        }
        Ok(attributes)
    }

    async fn create_attribute(
        &self,
        need: &AttributeNeed,
        guard: &mut tokio::sync::MutexGuard<'_, Option<Attributes>>,
        cancel: &CancellationToken,
    ) -> Result<(), Step> {
        let request = need.create_request();
        let answer = self.send(&request, cancel).await?;
        if answer.is_success() {
            let data_type = answer
                .body
                .get("data_type")
                .and_then(Value::as_str)
                .and_then(DataType::parse)
                .or(Some(need.data_type));
            if let Some(attributes) = guard.as_mut() {
                attributes
                    .known
                    .insert((need.model, need.name.clone()), data_type);
            }
            if let Err(error) = cache::add_data_attribute(
                &self.db(),
                need.model.as_str(),
                &need.name,
                data_type.map(DataType::as_str),
            ) {
                warn!(%error, "Could not keep a created attribute in the database.");
            }
            tracing::info!(attribute = %need.name, model = need.model.as_str(), data_type = need.data_type.as_str(), "Created a custom data attribute in Intercom.");
            return Ok(());
        }
        let error = ApiError::from_body(answer.status, &answer.body, &answer.text);
        if !error.is_attribute_taken() {
            return Err(Step::Done(self.error_disposition(&request, &answer)));
        }
        // It exists (an earlier create whose answer was lost, or someone else): list again.
        let fresh = self.list_attributes(cancel).await?;
        let found = fresh.get(need.model, &need.name).is_some();
        **guard = Some(fresh);
        if found {
            Ok(())
        } else {
            Err(Step::Done(Disposition::DeadLetter {
                reason: format!("POST /data_attributes `{}`: {error}", need.name),
            }))
        }
    }

    async fn run_steps(
        &self,
        plan: &Plan,
        key: Option<&str>,
        known: &KnownIds,
        attempt: u32,
        cancel: &CancellationToken,
    ) -> Step {
        let mut contact_id = known.contact_id.clone();
        let mut company_ids: HashMap<String, String> = known
            .company_ids
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Companies whose Intercom id an upsert or lookup of this pass answered with (not the
        // cache's).
        let mut learned: HashSet<String> = HashSet::new();
        // Whether the resolve step created the contact, with every value the update writes.
        let mut created = false;
        let mut skipped = vec![false; plan.steps.len()];
        for (index, step) in plan.steps.iter().enumerate() {
            if step.depends_on.iter().any(|d| skipped[d.0]) {
                skipped[index] = true;
                continue;
            }
            if let Op::ResolveContact { lookup, on_missing } = &step.op {
                match self
                    .resolve_contact(&step.request, lookup, on_missing, key, attempt, cancel)
                    .await
                {
                    Ok(Some(resolved)) => {
                        contact_id = Some(resolved.id);
                        created = resolved.created;
                    }
                    Ok(None) => skipped[index] = true,
                    Err(step) => return step,
                }
                continue;
            }
            if created
                && matches!(
                    step.op,
                    Op::UpdateContact {
                        done_by_create: true
                    }
                )
            {
                // The create carried these values: done, with no request of its own.
                continue;
            }
            let company = op_company(&step.op);
            let request = match substitute(
                &step.request,
                contact_id.as_deref(),
                company.and_then(|c| company_ids.get(c)).map(String::as_str),
            ) {
                Some(request) => request,
                None => {
                    return Step::Done(Disposition::DeadLetter {
                        reason: format!(
                            "{} {}: an id it needs was not learned by an earlier step",
                            step.request.method.as_str(),
                            step.request.path
                        ),
                    });
                }
            };
            if matches!(step.op, Op::UpdateContact { .. })
                && request
                    .body
                    .as_ref()
                    .is_some_and(|b| b.as_object().is_some_and(Map::is_empty))
            {
                // Only clears of attributes Intercom never had: nothing to write.
                continue;
            }
            let answer = match self.send(&request, cancel).await {
                Ok(answer) => answer,
                Err(step) => return step,
            };
            if answer.is_success() {
                match &step.op {
                    Op::UpsertCompany { company_id } | Op::ResolveCompany { company_id } => {
                        let Some(id) = company_intercom_id(&answer.body) else {
                            return Step::Done(Disposition::DeadLetter {
                                reason: format!(
                                    "{} {}: the answer carries no company id",
                                    request.method.as_str(),
                                    step.request.path
                                ),
                            });
                        };
                        if let Err(error) = cache::set_company_id(&self.db(), company_id, &id) {
                            return Step::Done(retry_db(&error, attempt, self.jitter()));
                        }
                        company_ids.insert(company_id.clone(), id);
                        learned.insert(company_id.clone());
                    }
                    _ => {}
                }
                continue;
            }
            let error = ApiError::from_body(answer.status, &answer.body, &answer.text);
            let cached_contact = known.contact_id.is_some();
            // The step used the cache's id for its company (no answer of this pass gave one).
            let cached_company =
                company.is_some_and(|c| known.company_ids.contains_key(c) && !learned.contains(c));
            match &step.op {
                Op::ResolveCompany { .. } if error.is_company_not_found() => {
                    // No such company: nothing to detach from.
                    skipped[index] = true;
                    continue;
                }
                Op::DetachCompany { .. } if error.is_company_not_found() => {
                    // Not attached (any more), or no such company: the detach is done.
                    continue;
                }
                Op::AttachCompany { company_id }
                    if error.is_company_not_found() && cached_company =>
                {
                    // An attach-only plan used a cached company id Intercom no longer has:
                    // forget it and map again, which upserts the company.
                    return Step::Stale(Stale::Company(company_id.clone()));
                }
                Op::UpdateContact { .. }
                | Op::AttachCompany { .. }
                | Op::DetachCompany { .. }
                | Op::CreateEvent { .. }
                    if cached_contact && error.is_contact_not_found() =>
                {
                    return Step::Stale(Stale::Contact);
                }
                _ => {}
            }
            if error.is_unknown_attribute() {
                // Someone archived or deleted it since we listed: list again on the next try.
                *self.attributes.lock().await = None;
            }
            return Step::Done(disposition::for_error(
                &format!("{} {}", request.method.as_str(), step.request.path),
                &error,
            ));
        }
        Step::Done(Disposition::Delivered)
    }

    /// Search for the contact; create it when the plan allows. `Ok(None)`: not found and not
    /// to be created (the steps that need it are skipped).
    async fn resolve_contact(
        &self,
        search: &Request,
        lookup: &ContactLookup,
        on_missing: &OnMissing,
        key: Option<&str>,
        attempt: u32,
        cancel: &CancellationToken,
    ) -> Result<Option<Resolved>, Step> {
        // A bulk lookup of this drain found no contact (`resolve.rs`): no search of its own.
        let found = if self.take_absent(key) {
            None
        } else {
            let answer = self.send(search, cancel).await?;
            if !answer.is_success() {
                return Err(Step::Done(self.error_disposition(search, &answer)));
            }
            search_hit(&answer.body)
        };
        let mut created = false;
        let id = match (found, on_missing) {
            (Some(id), _) => id,
            (None, OnMissing::Skip) => {
                debug!(
                    user = key.unwrap_or(""),
                    "No Intercom contact, and the message creates none."
                );
                return Ok(None);
            }
            (None, OnMissing::Create(create)) => {
                let answer = self.send(create, cancel).await?;
                if answer.is_success() {
                    created = true;
                    match answer.body.get("id").and_then(Value::as_str) {
                        Some(id) => id.to_string(),
                        None => {
                            return Err(Step::Done(Disposition::DeadLetter {
                                reason: "POST /contacts: the answer carries no contact id"
                                    .to_string(),
                            }));
                        }
                    }
                } else {
                    let error = ApiError::from_body(answer.status, &answer.body, &answer.text);
                    match error.conflicting_contact_id() {
                        // It exists (search lags, our earlier create lost its answer, or
                        // another client created it): the update steps still run.
                        Some(id) => id.to_string(),
                        None => {
                            return Err(Step::Done(self.error_disposition(create, &answer)));
                        }
                    }
                }
            }
        };
        let cache_key = key.map(str::to_string).unwrap_or_else(|| match lookup {
            ContactLookup::ExternalId(v) => v.clone(),
            ContactLookup::Email(v) => v.to_lowercase(),
        });
        if let Err(error) = cache::set_contact_id(&self.db(), &cache_key, &id) {
            return Err(Step::Done(retry_db(&error, attempt, self.jitter())));
        }
        Ok(Some(Resolved { id, created }))
    }

    /// Send through the client; no answer at all becomes a retry (or an interruption).
    async fn send(&self, request: &Request, cancel: &CancellationToken) -> Result<Answer, Step> {
        match self.client.send(request, cancel).await {
            Ok(answer) => Ok(answer),
            Err(Transport::Interrupted) => Err(Step::Interrupted),
            Err(error) => Err(Step::Done(disposition::for_transport(
                &format!("{} {}", request.method.as_str(), path_shape(&request.path)),
                &error.to_string(),
            ))),
        }
    }

    fn error_disposition(&self, request: &Request, answer: &Answer) -> Disposition {
        let error = ApiError::from_body(answer.status, &answer.body, &answer.text);
        disposition::for_error(
            &format!("{} {}", request.method.as_str(), path_shape(&request.path)),
            &error,
        )
    }
}

/// The cache key of the message's contact: its `userId`, else its email lower-cased (the
/// user's entity id, SPEC section 2).
pub fn contact_key(message: &Message) -> Option<String> {
    let common = message.common();
    if let Some(user_id) = &common.user_id {
        return Some(user_id.clone());
    }
    let email = match message {
        Message::Identify(m) => m
            .traits
            .get("email")
            .and_then(non_empty_str)
            .or_else(|| common.context_email()),
        Message::Track(m) => common
            .context_email()
            .or_else(|| m.properties.get("email").and_then(non_empty_str)),
        Message::Group(_) => common.context_email(),
    };
    email.map(|e| e.to_lowercase())
}

fn op_company(op: &Op) -> Option<&str> {
    match op {
        Op::UpsertCompany { company_id }
        | Op::ResolveCompany { company_id }
        | Op::AttachCompany { company_id }
        | Op::DetachCompany { company_id } => Some(company_id),
        _ => None,
    }
}

/// Whether any body of the plan writes custom attributes (values or clears).
fn writes_attributes(plan: &Plan) -> bool {
    !plan.attributes.is_empty()
        || plan.steps.iter().any(|s| {
            s.request
                .body
                .as_ref()
                .is_some_and(|b| b.get("custom_attributes").is_some())
        })
}

/// Fit a body's `custom_attributes` to the attributes Intercom holds: convert values to the
/// existing type when nothing is lost, drop clears of attributes that do not exist.
fn fit_body(body: &mut Value, model: Model, attributes: &Attributes) -> Result<(), Disposition> {
    let Some(object) = body.as_object_mut() else {
        return Ok(());
    };
    let Some(Value::Object(custom)) = object.get_mut("custom_attributes") else {
        return Ok(());
    };
    let mut fitted = Map::new();
    for (name, value) in std::mem::take(custom) {
        match attributes.get(model, &name) {
            None if value.is_null() => {}
            None => {
                fitted.insert(name, value);
            }
            Some(None) => {
                fitted.insert(name, value);
            }
            Some(Some(data_type)) => {
                let value = convert_for_attribute(&name, &value, data_type).map_err(|e| {
                    Disposition::DeadLetter {
                        reason: e.to_string(),
                    }
                })?;
                fitted.insert(name, value);
            }
        }
    }
    if fitted.is_empty() {
        object.remove("custom_attributes");
    } else {
        *custom = fitted;
    }
    Ok(())
}

/// The request with `{contact_id}` and `{company_id}` filled in; `None` when one is needed and
/// unknown.
fn substitute(
    request: &Request,
    contact_id: Option<&str>,
    company_id: Option<&str>,
) -> Option<Request> {
    fn fill(text: &str, contact_id: Option<&str>, company_id: Option<&str>) -> Option<String> {
        let mut text = text.to_string();
        if text.contains(CONTACT_ID) {
            text = text.replace(CONTACT_ID, contact_id?);
        }
        if text.contains(COMPANY_ID) {
            text = text.replace(COMPANY_ID, company_id?);
        }
        Some(text)
    }
    fn fill_value(
        value: &Value,
        contact_id: Option<&str>,
        company_id: Option<&str>,
    ) -> Option<Value> {
        Some(match value {
            Value::String(s) => Value::String(fill(s, contact_id, company_id)?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| fill_value(v, contact_id, company_id))
                    .collect::<Option<_>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Some((k.clone(), fill_value(v, contact_id, company_id)?)))
                    .collect::<Option<_>>()?,
            ),
            other => other.clone(),
        })
    }
    Some(Request {
        method: request.method,
        path: fill(&request.path, contact_id, company_id)?,
        body: match &request.body {
            Some(body) => Some(fill_value(body, contact_id, company_id)?),
            None => None,
        },
    })
}

/// The contact a search found: a `user` first, else the first hit.
fn search_hit(body: &Value) -> Option<String> {
    let data = body.get("data")?.as_array()?;
    let id = |c: &Value| c.get("id").and_then(Value::as_str).map(str::to_string);
    data.iter()
        .find(|c| c.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(id)
        .or_else(|| data.first().and_then(id))
}

/// The Intercom id in a company answer: the company itself, or the first of a list.
fn company_intercom_id(body: &Value) -> Option<String> {
    let company = if body.get("type").and_then(Value::as_str) == Some("list") {
        body.get("data")?.as_array()?.first()?
    } else {
        body
    };
    company
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A path for messages and logs: ids replaced by their placeholder shape, query strings cut.
fn path_shape(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    path.split('/')
        .map(|segment| {
            if segment.len() >= 16 && segment.chars().all(|c| c.is_ascii_hexdigit()) {
                "{id}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn retry_db(error: &rusqlite::Error, attempt: u32, jitter: f64) -> Disposition {
    Disposition::Retry {
        after: disposition::backoff(attempt, jitter),
        reason: format!("the local database: {error}"),
    }
}

fn unix_seconds() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_are_filled_or_refused() {
        let request = Request::new(
            Method::Post,
            "/contacts/{contact_id}/companies",
            Some(json!({"id": "{company_id}"})),
        );
        let filled = substitute(&request, Some("c1"), Some("i9")).unwrap();
        assert_eq!(filled.path, "/contacts/c1/companies");
        assert_eq!(filled.body, Some(json!({"id": "i9"})));
        assert!(substitute(&request, Some("c1"), None).is_none());
        let plain = Request::new(Method::Post, "/events", Some(json!({"user_id": "u1"})));
        assert_eq!(substitute(&plain, None, None).unwrap(), plain);
    }

    #[test]
    fn bodies_are_fitted_to_existing_attributes() {
        let mut attributes = Attributes::default();
        attributes
            .known
            .insert((Model::Contact, "plan".into()), Some(DataType::String));
        attributes
            .known
            .insert((Model::Contact, "score".into()), Some(DataType::Boolean));
        let mut body = json!({"custom_attributes": {"plan": 5, "gone": null}});
        fit_body(&mut body, Model::Contact, &attributes).unwrap();
        assert_eq!(body, json!({"custom_attributes": {"plan": "5"}}));

        let mut only_clear = json!({"email": "a@b.c", "custom_attributes": {"gone": null}});
        fit_body(&mut only_clear, Model::Contact, &attributes).unwrap();
        assert_eq!(only_clear, json!({"email": "a@b.c"}));

        let mut bad = json!({"custom_attributes": {"score": "high"}});
        let Err(Disposition::DeadLetter { reason }) =
            fit_body(&mut bad, Model::Contact, &attributes)
        else {
            panic!("a lossy conversion must dead-letter");
        };
        assert!(
            reason.contains("score") && reason.contains("boolean") && reason.contains("string")
        );
    }

    #[test]
    fn search_answers_and_company_answers_give_ids() {
        let hits = json!({"type": "list", "data": [
            {"type": "contact", "id": "lead1", "role": "lead"},
            {"type": "contact", "id": "user1", "role": "user"}
        ]});
        assert_eq!(search_hit(&hits).as_deref(), Some("user1"));
        assert_eq!(search_hit(&json!({"type": "list", "data": []})), None);
        assert_eq!(
            company_intercom_id(&json!({"type": "company", "id": "x1"})).as_deref(),
            Some("x1")
        );
        assert_eq!(
            company_intercom_id(&json!({"type": "list", "data": [{"id": "x2"}]})).as_deref(),
            Some("x2")
        );
    }

    #[test]
    fn contact_keys_are_entity_ids() {
        let m = Message::from_value(
            &json!({"type": "identify", "userId": "u1", "traits": {"email": "A@B.C"}}),
        )
        .unwrap();
        assert_eq!(contact_key(&m).as_deref(), Some("u1"));
        let m = Message::from_value(&json!({"type": "identify", "traits": {"email": "A@B.C"}}))
            .unwrap();
        assert_eq!(contact_key(&m).as_deref(), Some("a@b.c"));
        let m = Message::from_value(&json!({"type": "group", "groupId": "g"})).unwrap();
        assert_eq!(contact_key(&m), None);
        assert_eq!(
            path_shape("/contacts/5f1e2d3c4b5a697887766554/companies"),
            "/contacts/{id}/companies"
        );
        assert_eq!(path_shape("/companies?company_id=acme"), "/companies");
    }
}

/// The request floor, end to end against the sandbox: what one message costs.
#[cfg(test)]
mod request_floor {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use intercom_sandbox::{Sandbox, SandboxConfig, SandboxHandle, Snapshot};
    use serde_json::{Value, json};
    use tokio_util::sync::CancellationToken;

    use super::{Executor, Outcome};
    use crate::intercom::client::Client;
    use crate::intercom::disposition::Disposition;
    use crate::intercom::ratelimit::RateLimiter;
    use crate::settings::{Secret, Settings};
    use crate::store::cache;

    const TOKEN: &str = "floor-token";

    struct World {
        sandbox: SandboxHandle,
        executor: Executor,
        db: Arc<Mutex<rusqlite::Connection>>,
    }

    async fn world(search_lag: Duration) -> World {
        let mut config = SandboxConfig::new(TOKEN);
        config.search_lag = search_lag;
        let sandbox = Sandbox::start(config).await.unwrap();
        let mut settings = Settings::defaults().unwrap().intercom;
        settings.base_url = sandbox.base_url().parse().unwrap();
        settings.access_token = Secret::new(TOKEN);
        settings.rate_limit = 1000;
        let limiter = Arc::new(RateLimiter::new(
            settings.rate_limit,
            settings.rate_limit_window,
            None,
        ));
        let client = Client::new(&settings, limiter).unwrap();
        let db = Arc::new(Mutex::new(crate::store::open_in_memory().unwrap()));
        let executor = Executor::new(client, db.clone(), &settings).unwrap();
        World {
            sandbox,
            executor,
            db,
        }
    }

    impl World {
        async fn deliver(&self, message: Value) {
            let outcome = self
                .executor
                .execute(&message, 1, &CancellationToken::new())
                .await;
            assert_eq!(
                outcome,
                Outcome::Finished(Disposition::Delivered),
                "{message}"
            );
        }

        /// The requests (`"POST /contacts 200"` → count) `message` costs.
        async fn cost(&self, message: Value) -> BTreeMap<String, u64> {
            let before = calls(&self.sandbox.snapshot());
            self.deliver(message).await;
            let mut after = calls(&self.sandbox.snapshot());
            for (call, n) in before {
                *after.get_mut(&call).unwrap() -= n;
            }
            after.retain(|_, n| *n > 0);
            after
        }
    }

    fn calls(snapshot: &Snapshot) -> BTreeMap<String, u64> {
        snapshot
            .counters
            .requests
            .iter()
            .flat_map(|(endpoint, answers)| {
                answers
                    .iter()
                    .map(move |(status, n)| (format!("{endpoint} {status}"), *n))
            })
            .collect()
    }

    fn expect(calls: &[(&str, u64)]) -> BTreeMap<String, u64> {
        calls.iter().map(|(c, n)| (c.to_string(), *n)).collect()
    }

    #[tokio::test]
    async fn a_new_contact_costs_the_search_and_one_create_carrying_every_value() {
        let world = world(Duration::ZERO).await;
        // Without custom attributes: nothing to list or create first.
        let cost = world
            .cost(json!({"type": "identify", "userId": "u1",
                "traits": {"email": "u1@example.com", "name": "Ann Lee", "phone": "+353871234567"}}))
            .await;
        assert_eq!(
            cost,
            expect(&[("POST /contacts/search 200", 1), ("POST /contacts 200", 1)])
        );
        let state = world.sandbox.snapshot();
        let contact = state.contact_by_external_id("u1").unwrap();
        assert_eq!(contact.email.as_deref(), Some("u1@example.com"));
        assert_eq!(contact.name.as_deref(), Some("Ann Lee"));
        assert_eq!(contact.phone.as_deref(), Some("+353871234567"));

        // With one: the attribute is made first (the list, once per process, and its create),
        // then the create writes it; still no PUT.
        let cost = world
            .cost(json!({"type": "identify", "userId": "u2",
                "traits": {"vip": true, "createdAt": "2020-01-01T00:00:00Z"}}))
            .await;
        assert_eq!(
            cost,
            expect(&[
                ("GET /data_attributes 200", 2),
                ("POST /data_attributes 200", 1),
                ("POST /contacts/search 200", 1),
                ("POST /contacts 200", 1),
            ])
        );
        let state = world.sandbox.snapshot();
        let contact = state.contact_by_external_id("u2").unwrap();
        assert_eq!(contact.custom_attributes["vip"], json!(true));
        assert_eq!(contact.signed_up_at, Some(1_577_836_800));

        // The id is cached: the next identify is its one PUT.
        let cost = world
            .cost(json!({"type": "identify", "userId": "u2", "traits": {"vip": false}}))
            .await;
        assert_eq!(cost, expect(&[("PUT /contacts/{id} 200", 1)]));
        let state = world.sandbox.snapshot();
        assert_eq!(
            state
                .contact_by_external_id("u2")
                .unwrap()
                .custom_attributes["vip"],
            json!(false)
        );
    }

    #[tokio::test]
    async fn a_contact_another_client_created_costs_search_create_409_and_the_update() {
        // Intercom's search lags a new contact: ours misses the one another client just made.
        let world = world(Duration::from_secs(600)).await;
        let other = reqwest::Client::new()
            .post(format!("{}/contacts", world.sandbox.base_url()))
            .bearer_auth(TOKEN)
            .header("Accept", "application/json")
            .json(&json!({"role": "user", "external_id": "u1"}))
            .send()
            .await
            .unwrap();
        assert!(other.status().is_success());
        let id = world
            .sandbox
            .snapshot()
            .contact_by_external_id("u1")
            .unwrap()
            .id
            .clone();
        let cost = world
            .cost(json!({"type": "identify", "userId": "u1",
                "traits": {"email": "u1@example.com", "name": "Ann"}}))
            .await;
        assert_eq!(
            cost,
            expect(&[
                ("POST /contacts/search 200", 1),
                ("POST /contacts 409", 1),
                ("PUT /contacts/{id} 200", 1),
            ])
        );
        let state = world.sandbox.snapshot();
        assert_eq!(state.contacts.len(), 1);
        let contact = state.contact_by_external_id("u1").unwrap();
        assert_eq!(contact.name.as_deref(), Some("Ann"));
        assert_eq!(contact.email.as_deref(), Some("u1@example.com"));
        let cached = cache::contact_id(&world.db.lock().unwrap(), "u1").unwrap();
        assert_eq!(cached, Some(id));
    }

    #[tokio::test]
    async fn a_membership_attach_with_a_cached_company_id_is_one_request() {
        let world = world(Duration::ZERO).await;
        // The account's own values upsert the company (its id is cached), and the member is
        // known (its id is cached).
        world
            .deliver(json!({"type": "group", "groupId": "acme", "traits": {"name": "Acme"}}))
            .await;
        world
            .deliver(
                json!({"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com"}}),
            )
            .await;
        let membership = json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {},
            "context": {"traits": {"email": "u1@example.com"},
                        "personas": {"computation_class": "audience", "computation_key": "high_value"}}});
        let cost = world.cost(membership.clone()).await;
        assert_eq!(cost, expect(&[("POST /contacts/{id}/companies 200", 1)]));
        let state = world.sandbox.snapshot();
        assert_eq!(
            state.contact_by_external_id("u1").unwrap().companies,
            vec!["acme".to_string()]
        );

        // A group with traits still upserts (and attaches by the upsert's answer).
        let cost = world
            .cost(json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {"plan": "Pro"}}))
            .await;
        assert_eq!(
            cost,
            expect(&[
                ("POST /companies 200", 1),
                ("POST /contacts/{id}/companies 200", 1),
            ])
        );

        // A cached company id Intercom no longer has: the attach's 404 makes the cache stale,
        // and the message is mapped again, upserting the company.
        let real = state.company_by_company_id("acme").unwrap().id.clone();
        cache::set_company_id(
            &world.db.lock().unwrap(),
            "acme",
            "0123456789abcdef01234567",
        )
        .unwrap();
        let cost = world.cost(membership).await;
        assert_eq!(
            cost,
            expect(&[
                ("POST /contacts/{id}/companies 404", 1),
                ("POST /companies 200", 1),
                ("POST /contacts/{id}/companies 200", 1),
            ])
        );
        let cached = cache::company_id(&world.db.lock().unwrap(), "acme").unwrap();
        assert_eq!(cached, Some(real));
    }
}
