//! The custom data attributes a plan writes: listed once per process (and kept in the
//! database), created before the first write that needs them, and the bodies fitted to the
//! types Intercom holds.

use std::collections::HashMap;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Executor;
use super::Step;
use crate::intercom::disposition::{ApiError, Disposition};
use crate::intercom::requests::{AttributeNeed, Method, OnMissing, Op, Plan, Request};
use crate::intercom::values::{DataType, Model, convert_for_attribute};
use crate::store::cache;

/// The custom data attributes Intercom holds, by model and name (listed once per process).
#[derive(Debug, Default)]
pub(super) struct Attributes {
    pub(super) known: HashMap<(Model, String), Option<DataType>>,
}

impl Attributes {
    fn get(&self, model: Model, name: &str) -> Option<Option<DataType>> {
        self.known.get(&(model, name.to_string())).copied()
    }
}

impl Executor {
    /// Make sure every attribute the plan writes exists, then fit values to their types and drop
    /// clears of attributes Intercom does not have.
    pub(super) async fn fit_attributes(
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
}

/// Whether any body of the plan writes custom attributes (values or clears).
pub(super) fn writes_attributes(plan: &Plan) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
