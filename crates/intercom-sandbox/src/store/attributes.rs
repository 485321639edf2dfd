//! Data attributes: the per-model registry of custom attributes, and Intercom's creation rules.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Store, index, object, only_fields, opt_bool, opt_string};
use crate::error::ApiError;

/// Intercom's cap on active custom data attributes per workspace (both models together here).
pub(crate) const MAX_CUSTOM_ATTRIBUTES: usize = 250;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Model {
    Contact,
    Company,
}

impl Model {
    pub fn parse(text: &str) -> Option<Model> {
        match text {
            "contact" => Some(Model::Contact),
            "company" => Some(Model::Company),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Model::Contact => "contact",
            Model::Company => "company",
        }
    }

    /// The word Intercom's messages use: "people data", "company data".
    fn data_word(self) -> &'static str {
        match self {
            Model::Contact => "people",
            Model::Company => "company",
        }
    }

    /// Standard attributes: (name, label, data type).
    fn standard(self) -> &'static [(&'static str, &'static str, &'static str)] {
        match self {
            Model::Contact => &[
                ("id", "ID", "string"),
                ("name", "Name", "string"),
                ("email", "Email", "string"),
                ("phone", "Phone", "string"),
                ("external_id", "User ID", "string"),
                ("user_id", "User ID", "string"),
                ("role", "Role", "string"),
                ("avatar", "Avatar", "string"),
                ("owner_id", "Owner", "integer"),
                ("signed_up_at", "Signed up", "date"),
                ("last_seen_at", "Last seen", "date"),
                ("created_at", "Created at", "date"),
                ("updated_at", "Updated at", "date"),
                (
                    "unsubscribed_from_emails",
                    "Unsubscribed from Emails",
                    "boolean",
                ),
            ],
            Model::Company => &[
                ("id", "ID", "string"),
                ("name", "Company name", "string"),
                ("company_id", "Company ID", "string"),
                ("plan", "Plan", "string"),
                ("size", "Company size", "integer"),
                ("website", "Company website", "string"),
                ("industry", "Company industry", "string"),
                ("monthly_spend", "Monthly Spend", "float"),
                ("remote_created_at", "Company created at", "date"),
                ("created_at", "Created at", "date"),
                ("updated_at", "Updated at", "date"),
                ("user_count", "People", "integer"),
                ("session_count", "Company web sessions", "integer"),
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataType {
    String,
    Integer,
    Float,
    Boolean,
    Date,
    Datetime,
    Options,
}

impl DataType {
    fn parse(text: &str) -> Option<DataType> {
        Some(match text {
            "string" => DataType::String,
            "integer" => DataType::Integer,
            "float" => DataType::Float,
            "boolean" => DataType::Boolean,
            "date" => DataType::Date,
            "datetime" => DataType::Datetime,
            "options" => DataType::Options,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::String => "string",
            DataType::Integer => "integer",
            DataType::Float => "float",
            DataType::Boolean => "boolean",
            DataType::Date => "date",
            DataType::Datetime => "datetime",
            DataType::Options => "options",
        }
    }

    /// Whether a scalar JSON value fits this type. Dates are unix seconds (integers).
    pub fn accepts(self, value: &Value, options: &[String]) -> bool {
        match self {
            DataType::String => value.is_string(),
            DataType::Integer | DataType::Date | DataType::Datetime => {
                value.as_i64().is_some() || value.as_u64().is_some()
            }
            DataType::Float => value.is_number(),
            DataType::Boolean => value.is_boolean(),
            DataType::Options => value
                .as_str()
                .is_some_and(|v| options.iter().any(|o| o == v)),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DataAttribute {
    pub id: u64,
    pub name: String,
    pub model: Model,
    pub data_type: DataType,
    pub options: Vec<String>,
    pub description: Option<String>,
    pub messenger_writable: bool,
    pub archived: bool,
    pub created_at: u64,
    pub updated_at: u64,
}

impl DataAttribute {
    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "id": self.id,
            "type": "data_attribute",
            "name": self.name,
            "full_name": format!("custom_attributes.{}", self.name),
            "label": self.name,
            "description": self.description,
            "data_type": self.data_type.as_str(),
            "api_writable": true,
            "ui_writable": true,
            "messenger_writable": self.messenger_writable,
            "custom": true,
            "archived": self.archived,
            "admin_id": "1",
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "model": self.model.as_str(),
        });
        if self.data_type == DataType::Options {
            value["options"] = self.options.iter().map(|o| json!(o)).collect();
        }
        value
    }
}

/// Letters, digits, spaces, `_`, `-` and currency symbols, inferred from Intercom's error
/// text ("alphanumeric characters, currency symbols, and hyphens") and its own examples.
fn valid_name(name: &str) -> bool {
    const CURRENCY: &str = "$¢£¤¥֏؋৲৳৻૱௹฿៛₠₡₢₣₤₥₦₧₨₩₪₫€₭₮₯₰₱₲₳₴₵₶₷₸₹₺₻₼₽₾₿";
    !name.trim().is_empty()
        && name.chars().all(|c| {
            c.is_alphanumeric() || c == ' ' || c == '_' || c == '-' || CURRENCY.contains(c)
        })
}

impl Store {
    /// `GET /data_attributes?model=…&include_archived=…`
    pub fn list_data_attributes(
        &self,
        model: Option<&str>,
        include_archived: bool,
    ) -> Result<Value, ApiError> {
        let models = match model {
            None => vec![Model::Contact, Model::Company],
            Some("conversation") => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "parameter_invalid",
                    "model=conversation is no longer supported",
                ));
            }
            Some(text) => vec![Model::parse(text).ok_or_else(|| {
                ApiError::invalid(
                    "The Data Attribute model field must be either contact or company",
                )
            })?],
        };
        let mut data = Vec::new();
        for model in models {
            for (name, label, data_type) in model.standard() {
                data.push(json!({
                    "type": "data_attribute",
                    "name": name,
                    "full_name": name,
                    "label": label,
                    "data_type": data_type,
                    "api_writable": !matches!(*name, "id" | "created_at" | "updated_at" | "user_count" | "session_count"),
                    "ui_writable": false,
                    "messenger_writable": false,
                    "custom": false,
                    "archived": false,
                    "model": model.as_str(),
                }));
            }
            data.extend(
                self.attributes
                    .iter()
                    .filter(|a| a.model == model && (include_archived || !a.archived))
                    .map(DataAttribute::to_json),
            );
        }
        Ok(json!({"type": "list", "data": data}))
    }

    /// `POST /data_attributes`
    pub fn create_data_attribute(&mut self, body: &Value, now: u64) -> Result<Value, ApiError> {
        let body = object(body)?;
        only_fields(
            body,
            &[
                "name",
                "model",
                "data_type",
                "description",
                "options",
                "messenger_writable",
            ],
        )?;
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .and_then(Model::parse)
            .ok_or_else(|| {
                ApiError::invalid(
                    "The Data Attribute model field must be either contact or company",
                )
            })?;
        let data_type = body
            .get("data_type")
            .and_then(Value::as_str)
            .and_then(DataType::parse)
            .ok_or_else(|| ApiError::invalid("Data Type isn't an option"))?;
        let name = match body.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => return Err(ApiError::missing("Name can't be blank")),
        };
        if !valid_name(&name) {
            return Err(ApiError::invalid(
                "Your name for this attribute must only contain alphanumeric characters, \
                 currency symbols, and hyphens",
            ));
        }
        for holder in [Model::Contact, Model::Company] {
            if let Some((_, label, _)) = holder
                .standard()
                .iter()
                .find(|(standard, _, _)| standard.eq_ignore_ascii_case(&name))
            {
                return Err(ApiError::invalid(format!(
                    "'{label}' is one of our standard attributes for your {} data. To save \
                     this as new {} data, use a different name.",
                    holder.data_word(),
                    model.data_word()
                )));
            }
        }
        if let Some(existing) =
            index::get(&self.indexes.attribute_by_name, &name.to_ascii_lowercase())
                .first()
                .map(|&position| &self.attributes[position])
        {
            return Err(ApiError::invalid(format!(
                "You already have '{}' in your {} data. To save this as new {} data, use a \
                 different name.",
                existing.name,
                existing.model.data_word(),
                model.data_word()
            )));
        }
        let options = match (data_type, body.get("options")) {
            (DataType::Options, Some(Value::Array(options))) => {
                let values: Vec<String> = options
                    .iter()
                    .filter_map(|o| o.get("value").and_then(Value::as_str).map(str::to_owned))
                    .collect();
                if values.len() != options.len() {
                    return Err(ApiError::invalid(
                        "Each option must be an object with a string value",
                    ));
                }
                if values.len() < 2 {
                    return Err(ApiError::invalid(
                        "Options must contain at least two values",
                    ));
                }
                values
            }
            (DataType::Options, Some(_)) => {
                return Err(ApiError::invalid("Options isn't an array"));
            }
            (DataType::Options, None) => {
                return Err(ApiError::missing(
                    "Options must contain at least two values",
                ));
            }
            (_, _) => Vec::new(),
        };
        if self.attributes.iter().filter(|a| !a.archived).count() >= MAX_CUSTOM_ATTRIBUTES {
            return Err(ApiError::invalid(format!(
                "You have reached the limit of {MAX_CUSTOM_ATTRIBUTES} custom data attributes"
            ))
            .with_code("custom_data_limit_reached"));
        }
        let description = opt_string(body, "description")?.flatten();
        let messenger_writable = opt_bool(body, "messenger_writable")?.unwrap_or(false);
        let attribute = DataAttribute {
            id: self.next_attribute_id(),
            name,
            model,
            data_type,
            options,
            description,
            messenger_writable,
            archived: false,
            created_at: now,
            updated_at: now,
        };
        let response = attribute.to_json();
        self.indexes
            .add_attribute(&attribute, self.attributes.len());
        self.attributes.push(attribute);
        Ok(response)
    }

    /// `PUT /data_attributes/{id}`: archive, describe, re-option. The type cannot change.
    pub fn update_data_attribute(
        &mut self,
        id: &str,
        body: &Value,
        now: u64,
    ) -> Result<Value, ApiError> {
        let body = object(body)?;
        only_fields(
            body,
            &["archived", "description", "messenger_writable", "options"],
        )?;
        let index = id
            .parse::<u64>()
            .ok()
            .and_then(|id| self.attributes.iter().position(|a| a.id == id))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "field_not_found",
                    "We couldn't find that data attribute to update",
                )
            })?;
        let options = match body.get("options") {
            None => None,
            Some(Value::Array(options)) => Some(
                options
                    .iter()
                    .map(|o| {
                        o.get("value")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .ok_or_else(|| ApiError::invalid("Options isn't an array"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err(ApiError::invalid("Options isn't an array")),
        };
        let archived = opt_bool(body, "archived")?;
        let description = opt_string(body, "description")?;
        let messenger_writable = opt_bool(body, "messenger_writable")?;
        let attribute = &mut self.attributes[index];
        if let Some(archived) = archived {
            attribute.archived = archived;
        }
        if let Some(description) = description {
            attribute.description = description;
        }
        if let Some(messenger_writable) = messenger_writable {
            attribute.messenger_writable = messenger_writable;
        }
        if let Some(options) = options {
            attribute.options = options;
        }
        attribute.updated_at = now;
        Ok(attribute.to_json())
    }
}

impl ApiError {
    pub(crate) fn with_code(mut self, code: &str) -> ApiError {
        code.clone_into(&mut self.code);
        self
    }
}
