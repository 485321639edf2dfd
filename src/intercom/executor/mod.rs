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
//!
//! The stages have a file each: `attributes.rs` (the custom data attributes a plan writes),
//! `ids.rs` (contact and company ids: the caches, searches, creates and what a stale id means)
//! and `steps.rs` (sending the plan's requests in order).

mod attributes;
mod ids;
mod steps;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::Connection;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::client::Client;
use super::disposition::{self, Disposition};
use super::mapping::{Admission, EventNames, KnownIds, map_message};
use super::values::{DataType, Model};
use crate::segment::{Message, ParseError};
use crate::settings::IntercomSettings;
use crate::store::cache;
use attributes::{Attributes, writes_attributes};
pub use ids::contact_key;
use ids::op_company;

/// How one run of a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Finished(Disposition),
    /// Stopped before sending a request because delivery is shutting down: the message stays
    /// queued as it was (no attempt is counted).
    Interrupted,
}

impl Outcome {
    /// A stored message that is not one Intercom can take (it did not parse when read): a dead
    /// letter, with no request sent.
    pub fn not_a_message(error: &ParseError) -> Outcome {
        Outcome::Finished(Disposition::DeadLetter {
            reason: format!("not a message Intercom can take: {error}"),
        })
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

    /// Deliver one Segment message (parsed once, when its outbox row was read). `attempt` counts
    /// from 1.
    pub async fn execute(
        &self,
        message: &Message,
        attempt: u32,
        cancel: &CancellationToken,
    ) -> Outcome {
        let key = contact_key(message);
        let mut fresh = false;
        // At most one extra pass: after a stale cached id was dropped.
        for _ in 0..2 {
            match self.pass(message, key.as_deref(), attempt, cancel).await {
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
        let looked_up = (|| -> crate::store::Result<()> {
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
            let found = (|| -> crate::store::Result<BTreeMap<String, String>> {
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
}

fn unix_seconds() -> i64 {
    chrono::Utc::now().timestamp()
}

/// How one pass over a message's plan ended.
enum Step {
    Done(Disposition),
    Interrupted,
    Stale(Stale),
}

/// Why a pass over the plan has to be run again with fresher ids.
enum Stale {
    Contact,
    Company(String),
}

/// A failure of the local database while running a message: retried, counted.
fn retry_db(error: &crate::store::Error, attempt: u32, jitter: f64) -> Disposition {
    Disposition::Retry {
        after: disposition::backoff(attempt, jitter),
        reason: format!("the local database: {error}"),
    }
}

#[cfg(test)]
mod request_floor;
