//! Companies: upsert by `company_id`, retrieve, list.

use serde_json::{Map, Value, json};

use super::{Company, Model, Store, index, object, only_fields, opt_bool, opt_integer, opt_string};
use crate::error::ApiError;

const COMPANY_FIELDS: &[&str] = &[
    "id",
    "company_id",
    "name",
    "plan",
    "size",
    "website",
    "industry",
    "custom_attributes",
    "remote_created_at",
    "update_last_request_at",
    "monthly_spend",
];

/// `monthly_spend` is a 32-bit integer at Intercom.
const MAX_MONTHLY_SPEND: f64 = i32::MAX as f64;

impl Store {
    /// `POST /companies`: create or update, found by `company_id` (or by Intercom `id`).
    pub fn upsert_company(&mut self, body: &Value, now: u64) -> Result<Value, ApiError> {
        let body = object(body)?;
        only_fields(body, COMPANY_FIELDS)?;
        let company_id = opt_string(body, "company_id")?.flatten();
        let intercom_id = opt_string(body, "id")?.flatten();
        let monthly_spend = match body.get("monthly_spend") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => {
                let spend = n.as_f64().unwrap_or(f64::MAX);
                if spend.abs() > MAX_MONTHLY_SPEND {
                    return Err(ApiError::invalid(format!(
                        "monthly_spend must be at most {}",
                        i32::MAX
                    )));
                }
                // Intercom truncates, it does not round.
                Some(spend.trunc() as i64)
            }
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "'monthly_spend' must be a number, not {other}"
                )));
            }
        };
        let name = opt_string(body, "name")?;
        let plan = opt_string(body, "plan")?;
        let website = opt_string(body, "website")?;
        let industry = opt_string(body, "industry")?;
        for (field, value) in [("name", &name), ("plan", &plan), ("industry", &industry)] {
            if let Some(Some(text)) = value {
                self.check_string_length(&format!("'{field}'"), text)?;
            }
        }
        let size = opt_integer(body, "size")?;
        let remote_created_at = opt_integer(body, "remote_created_at")?;
        let touch = opt_bool(body, "update_last_request_at")?.unwrap_or(false);
        let custom_attributes =
            self.check_custom_attributes(Model::Company, body.get("custom_attributes"))?;

        let index = match (&intercom_id, &company_id) {
            (Some(id), _) => {
                let index = self
                    .company_index(id)
                    .ok_or_else(ApiError::company_not_found)?;
                if company_id
                    .as_ref()
                    .is_some_and(|c| *c != self.companies[index].company_id)
                {
                    return Err(ApiError::invalid("company_id cannot be changed"));
                }
                Some(index)
            }
            (None, Some(company_id)) => index::get(&self.indexes.company_by_company_id, company_id)
                .first()
                .copied(),
            (None, None) => return Err(ApiError::missing("company_id or id is required")),
        };
        let index = match index {
            Some(index) => index,
            None => {
                let company = Company {
                    id: self.next_object_id(),
                    company_id: company_id.unwrap_or_default(),
                    name: None,
                    plan: None,
                    size: None,
                    website: None,
                    industry: None,
                    monthly_spend: 0,
                    remote_created_at: None,
                    custom_attributes: Map::new(),
                    created_at: now,
                    updated_at: now,
                    last_request_at: None,
                };
                let position = self.companies.len();
                self.indexes.add_company(&company, position);
                self.companies.push(company);
                position
            }
        };
        let company = &mut self.companies[index];
        if let Some(v) = name {
            company.name = v;
        }
        if let Some(v) = plan {
            company.plan = v;
        }
        if let Some(v) = website {
            company.website = v;
        }
        if let Some(v) = industry {
            company.industry = v;
        }
        if let Some(v) = size {
            company.size = v;
        }
        if let Some(v) = remote_created_at {
            company.remote_created_at = v;
        }
        if let Some(v) = monthly_spend {
            company.monthly_spend = v;
        }
        if touch {
            company.last_request_at = Some(now);
        }
        for (key, value) in custom_attributes {
            if value.is_null() {
                company.custom_attributes.remove(&key);
            } else {
                company.custom_attributes.insert(key, value);
            }
        }
        company.updated_at = now;
        Ok(self.company_json(&self.companies[index]))
    }

    /// `GET /companies?company_id=…` (or `?name=…`): the single company, or 404.
    /// Without either, the companies that have at least one contact (Intercom hides the rest).
    pub fn find_companies(
        &self,
        company_id: Option<&str>,
        name: Option<&str>,
    ) -> Result<Value, ApiError> {
        if company_id.is_some() || name.is_some() {
            let named = |c: &&Company| name.is_none_or(|n| c.name.as_deref() == Some(n));
            let company = match company_id {
                Some(id) => index::get(&self.indexes.company_by_company_id, id)
                    .iter()
                    .map(|&position| &self.companies[position])
                    .find(named),
                None => self.companies.iter().find(named),
            }
            .ok_or_else(ApiError::company_not_found)?;
            return Ok(self.company_json(company));
        }
        let data: Vec<Value> = self
            .companies
            .iter()
            .filter(|c| self.user_count(&c.id) > 0)
            .map(|c| self.company_json(c))
            .collect();
        let total = data.len();
        Ok(json!({
            "type": "list",
            "data": data,
            "pages": {"type": "pages", "next": null, "page": 1, "per_page": total.max(15), "total_pages": 1},
            "total_count": total,
        }))
    }

    /// `GET /companies/{id}`
    pub fn get_company(&self, id: &str) -> Result<Value, ApiError> {
        let index = self
            .company_index(id)
            .ok_or_else(ApiError::company_not_found)?;
        Ok(self.company_json(&self.companies[index]))
    }

    pub fn company_json(&self, company: &Company) -> Value {
        let plan = match &company.plan {
            Some(plan) => json!({"type": "plan", "id": plan_id(plan), "name": plan}),
            None => json!({}),
        };
        json!({
            "type": "company",
            "company_id": company.company_id,
            "id": company.id,
            "app_id": "sandbox",
            "name": company.name,
            "remote_created_at": company.remote_created_at,
            "created_at": company.created_at,
            "updated_at": company.updated_at,
            "last_request_at": company.last_request_at,
            "monthly_spend": company.monthly_spend,
            "session_count": 0,
            "user_count": self.user_count(&company.id),
            "size": company.size,
            "website": company.website,
            "industry": company.industry,
            "tags": {"type": "tag.list", "tags": []},
            "segments": {"type": "segment.list", "segments": []},
            "plan": plan,
            "custom_attributes": company.custom_attributes,
        })
    }
}

/// A stable numeric-looking id for a plan name.
fn plan_id(plan: &str) -> String {
    let hash = plan.bytes().fold(5381u32, |h, b| {
        h.wrapping_mul(33).wrapping_add(u32::from(b))
    });
    (hash % 1_000_000).to_string()
}
