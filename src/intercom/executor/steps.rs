//! Sending a plan's requests in order: each step's placeholders filled with the ids earlier
//! steps learned, skipped when what it depends on was, and every answer read into what comes
//! next (an id to keep, a stale cache, or the message's disposition).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::Executor;
use super::ids::{company_intercom_id, op_company};
use super::{Stale, Step, retry_db};
use crate::intercom::client::{Answer, Transport};
use crate::intercom::disposition::{self, ApiError, Disposition};
use crate::intercom::mapping::KnownIds;
use crate::intercom::requests::{COMPANY_ID, CONTACT_ID, Op, Plan, Request};
use crate::store::cache;

impl Executor {
    pub(super) async fn run_steps(
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

    /// Send through the client; no answer at all becomes a retry (or an interruption).
    pub(super) async fn send(
        &self,
        request: &Request,
        cancel: &CancellationToken,
    ) -> Result<Answer, Step> {
        match self.client.send(request, cancel).await {
            Ok(answer) => Ok(answer),
            Err(Transport::Interrupted) => Err(Step::Interrupted),
            Err(error) => Err(Step::Done(disposition::for_transport(
                &format!("{} {}", request.method.as_str(), path_shape(&request.path)),
                &error.to_string(),
            ))),
        }
    }

    pub(super) fn error_disposition(&self, request: &Request, answer: &Answer) -> Disposition {
        let error = ApiError::from_body(answer.status, &answer.body, &answer.text);
        disposition::for_error(
            &format!("{} {}", request.method.as_str(), path_shape(&request.path)),
            &error,
        )
    }
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

/// A path for messages and logs: ids replaced by their placeholder shape, query strings cut.
pub(super) fn path_shape(path: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercom::requests::Method;
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
}
