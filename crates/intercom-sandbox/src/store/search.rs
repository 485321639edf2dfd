//! `POST /contacts/search`: filters and AND/OR groups, sort, cursor pagination, search lag.
//!
//! A query that pins `id`, `external_id` or `email` with `=` or `IN` (alone, or as one filter
//! of an AND group) takes its candidates from the store's indexes; every other query looks at
//! every contact. Either way the whole query and the search lag are checked on each contact,
//! in creation order, so both paths give the same hits in the same order.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::{Contact, Store, index, object};
use crate::error::ApiError;

const DEFAULT_PER_PAGE: u64 = 50;
const MAX_PER_PAGE: u64 = 150;
const MAX_FILTERS_PER_GROUP: usize = 15;
/// A group inside a group is as deep as Intercom goes.
const MAX_DEPTH: usize = 2;
const CURSOR_PREFIX: &str = "c2FuZGJveA";

/// Searchable string fields. Only string fields are modelled (see the README).
const STRING_FIELDS: &[&str] = &[
    "id",
    "external_id",
    "email",
    "email_domain",
    "role",
    "name",
    "phone",
];
const STRING_OPERATORS: &[&str] = &["=", "!=", "IN", "NIN", "~", "!~", "^", "$"];

enum Query {
    Filter(Filter),
    Group { and: bool, parts: Vec<Query> },
}

/// One filter, its value folded the way the field is compared (emails lower-cased).
struct Filter {
    field: String,
    operator: String,
    /// The value of `=`, `!=`, `~`, `!~`, `^`, `$` (`None` for `null`).
    wanted: Option<String>,
    /// The values of `IN` and `NIN`.
    listed: HashSet<String>,
}

/// Which contacts a search looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Candidates from an index when the query allows it, otherwise every contact.
    Indexed,
    /// Every contact, always: what the indexed path must agree with.
    #[cfg(test)]
    Linear,
}

impl Store {
    pub fn search_contacts(&self, body: &Value, now: Duration) -> Result<Value, ApiError> {
        self.search(body, now, Path::Indexed)
    }

    /// The same search over every contact, never taking candidates from an index.
    #[cfg(test)]
    pub fn search_contacts_linear(&self, body: &Value, now: Duration) -> Result<Value, ApiError> {
        self.search(body, now, Path::Linear)
    }

    /// Whether this (valid) search body takes its candidates from an index.
    #[cfg(test)]
    pub fn search_uses_index(&self, body: &Value) -> bool {
        parse_query(&body["query"], 1, self.rules.in_values_limit)
            .is_ok_and(|query| self.candidates(&query).is_some())
    }

    fn search(&self, body: &Value, now: Duration, path: Path) -> Result<Value, ApiError> {
        let body = object(body)?;
        if let Some(unknown) = body
            .keys()
            .find(|k| !["query", "pagination", "sort"].contains(&k.as_str()))
        {
            return Err(ApiError::bad_parameter(unknown));
        }
        let query = parse_query(
            body.get("query")
                .ok_or_else(|| ApiError::missing("query is required"))?,
            1,
            self.rules.in_values_limit,
        )?;
        let (per_page, offset) = pagination(body.get("pagination"))?;
        let sort = parse_sort(body.get("sort"))?;

        let lag = self.rules.search_lag;
        let visible = |c: &&Contact| c.created + lag <= now && matches(&query, c);
        let candidates = match path {
            Path::Indexed => self.candidates(&query),
            #[cfg(test)]
            Path::Linear => None,
        };
        // Either way the hits are in creation order before any sort.
        let mut hits: Vec<&Contact> = match candidates {
            Some(positions) => positions
                .into_iter()
                .map(|position| &self.contacts[position])
                .filter(visible)
                .collect(),
            None => self.contacts.iter().filter(visible).collect(),
        };
        if let Some((field, ascending)) = &sort {
            hits.sort_by(|a, b| {
                let order = compare(&field_value(a, field), &field_value(b, field));
                if *ascending { order } else { order.reverse() }
            });
        }
        let total = hits.len() as u64;
        let page: Vec<Value> = hits
            .iter()
            .skip(offset as usize)
            .take(per_page as usize)
            .map(|c| self.contact_json(c))
            .collect();
        let total_pages = total.div_ceil(per_page);
        let page_number = offset / per_page + 1;
        let next_offset = offset + per_page;
        let mut pages = json!({
            "type": "pages",
            "page": page_number,
            "per_page": per_page,
            "total_pages": total_pages,
        });
        if next_offset < total {
            pages["next"] = json!({
                "page": page_number + 1,
                "starting_after": format!("{CURSOR_PREFIX}{next_offset:x}"),
            });
        }
        Ok(json!({"type": "list", "data": page, "total_count": total, "pages": pages}))
    }

    /// Positions (ascending, so in creation order) of every contact that can match `query`,
    /// from an index; `None` when the query pins no indexed field and every contact is a
    /// candidate. Each position is still checked against the whole query.
    fn candidates(&self, query: &Query) -> Option<Vec<usize>> {
        match query {
            Query::Filter(filter) => self.filter_candidates(filter),
            Query::Group { and: true, parts } => parts
                .iter()
                .filter_map(|part| match part {
                    Query::Filter(filter) => self.filter_candidates(filter),
                    Query::Group { .. } => None,
                })
                .min_by_key(Vec::len),
            Query::Group { and: false, .. } => None,
        }
    }

    /// The contacts matching an `=` or `IN` filter on `id`, `external_id` or `email`.
    fn filter_candidates(&self, filter: &Filter) -> Option<Vec<usize>> {
        // Both are folded as the index keys are: emails lower-cased, the others as they are.
        let keys: Vec<&str> = match filter.operator.as_str() {
            "=" => vec![filter.wanted.as_deref()?],
            "IN" => filter.listed.iter().map(String::as_str).collect(),
            _ => return None,
        };
        let indexes = &self.indexes;
        let mut positions: Vec<usize> = match filter.field.as_str() {
            "id" => keys
                .iter()
                .filter_map(|key| indexes.contact_by_id.get(*key).copied())
                .collect(),
            "external_id" => keys
                .iter()
                .flat_map(|key| index::get(&indexes.contact_by_external_id, key))
                .copied()
                .collect(),
            "email" => keys
                .iter()
                .flat_map(|key| index::get(&indexes.contact_by_email, key))
                .copied()
                .collect(),
            _ => return None,
        };
        positions.sort_unstable();
        positions.dedup();
        Some(positions)
    }
}

fn parse_query(
    value: &Value,
    depth: usize,
    in_values_limit: Option<usize>,
) -> Result<Query, ApiError> {
    let map = value
        .as_object()
        .ok_or_else(|| ApiError::invalid("query must be an object"))?;
    let operator = map
        .get("operator")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::missing("operator is required in every query"))?;
    if let Some(field) = map.get("field") {
        let field = field
            .as_str()
            .ok_or_else(|| ApiError::invalid("field must be a string"))?;
        return parse_filter(field, operator, map, in_values_limit);
    }
    let and = match operator {
        "AND" => true,
        "OR" => false,
        other => {
            return Err(ApiError::invalid(format!(
                "A query without a field must be an AND or OR group, not '{other}'"
            )));
        }
    };
    if depth > MAX_DEPTH {
        return Err(ApiError::invalid(format!(
            "Queries can only be nested {MAX_DEPTH} levels deep"
        )));
    }
    let parts = map
        .get("value")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("The value of an AND/OR group must be an array"))?;
    if parts.is_empty() || parts.len() > MAX_FILTERS_PER_GROUP {
        return Err(ApiError::invalid(format!(
            "An AND/OR group holds 1 to {MAX_FILTERS_PER_GROUP} filters, not {}",
            parts.len()
        )));
    }
    let parts = parts
        .iter()
        .map(|part| parse_query(part, depth + 1, in_values_limit))
        .collect::<Result<_, _>>()?;
    Ok(Query::Group { and, parts })
}

fn parse_filter(
    field: &str,
    operator: &str,
    map: &Map<String, Value>,
    in_values_limit: Option<usize>,
) -> Result<Query, ApiError> {
    if !STRING_FIELDS.contains(&field) {
        return Err(ApiError::invalid(format!(
            "The sandbox cannot search on '{field}' (supported: {})",
            STRING_FIELDS.join(", ")
        )));
    }
    if !STRING_OPERATORS.contains(&operator) {
        return Err(ApiError::invalid(format!(
            "Operator '{operator}' is not supported for string field '{field}'"
        )));
    }
    let value = map
        .get("value")
        .ok_or_else(|| ApiError::missing("value is required in a filter"))?;
    let well_typed = match operator {
        "IN" | "NIN" => value
            .as_array()
            .is_some_and(|items| items.iter().all(Value::is_string)),
        _ => value.is_string() || value.is_null(),
    };
    if !well_typed {
        return Err(ApiError::invalid(format!(
            "Value {value} does not fit operator '{operator}' on string field '{field}' \
             (IN and NIN take an array of strings)"
        )));
    }
    let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
    if let Some(limit) = in_values_limit
        && items.len() > limit
    {
        return Err(ApiError::invalid(format!(
            "There's a limit of max {limit} values for an {operator} filter; the filter on \
             '{field}' has {}",
            items.len()
        )));
    }
    Ok(Query::Filter(Filter {
        field: field.to_owned(),
        operator: operator.to_owned(),
        wanted: value.as_str().map(|w| fold(field, w).into_owned()),
        listed: items
            .iter()
            .filter_map(Value::as_str)
            .map(|v| fold(field, v).into_owned())
            .collect(),
    }))
}

fn pagination(value: Option<&Value>) -> Result<(u64, u64), ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok((DEFAULT_PER_PAGE, 0));
    };
    let map = value
        .as_object()
        .ok_or_else(|| ApiError::invalid("pagination must be an object"))?;
    let per_page = match map.get("per_page") {
        None | Some(Value::Null) => DEFAULT_PER_PAGE,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_PER_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!("per_page must be between 1 and {MAX_PER_PAGE}"))
            })?,
    };
    let offset = match map.get("starting_after") {
        None | Some(Value::Null) => 0,
        Some(Value::String(cursor)) => cursor
            .strip_prefix(CURSOR_PREFIX)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .ok_or_else(|| ApiError::invalid("starting_after is not a valid cursor"))?,
        Some(_) => return Err(ApiError::invalid("starting_after is not a valid cursor")),
    };
    Ok((per_page, offset))
}

/// `Some((field, ascending))`; Intercom's default order is descending.
fn parse_sort(value: Option<&Value>) -> Result<Option<(String, bool)>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let field = value
        .get("field")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::missing("sort needs a field"))?;
    let ascending = match value.get("order").and_then(Value::as_str) {
        None | Some("descending") => false,
        Some("ascending") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_sort_order",
                format!("Invalid sort order '{other}'. Must be one of: ascending, descending"),
            ));
        }
    };
    Ok(Some((field.to_owned(), ascending)))
}

fn field_value(contact: &Contact, field: &str) -> Value {
    match field {
        "id" => json!(contact.id),
        "external_id" => json!(contact.external_id),
        "email" => json!(contact.email),
        "email_domain" => json!(
            contact
                .email
                .as_deref()
                .and_then(|e| e.split_once('@'))
                .map(|(_, d)| d)
        ),
        "role" => json!(contact.role),
        "name" => json!(contact.name),
        "phone" => json!(contact.phone),
        "created_at" => json!(contact.created_at),
        "updated_at" => json!(contact.updated_at),
        "signed_up_at" => json!(contact.signed_up_at),
        "last_seen_at" => json!(contact.last_seen_at),
        other => other
            .strip_prefix("custom_attributes.")
            .and_then(|name| contact.custom_attributes.get(name))
            .cloned()
            .unwrap_or(Value::Null),
    }
}

fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Emails compare case-insensitively, as Intercom stores them; the search index folds the same.
fn fold<'a>(field: &str, text: &'a str) -> Cow<'a, str> {
    if field == "email" || field == "email_domain" {
        Cow::Owned(text.to_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

/// The string a filter on `field` compares (the searchable fields are all strings).
fn held<'a>(contact: &'a Contact, field: &str) -> Option<&'a str> {
    match field {
        "id" => Some(&contact.id),
        "external_id" => contact.external_id.as_deref(),
        "email" => contact.email.as_deref(),
        "email_domain" => contact
            .email
            .as_deref()
            .and_then(|e| e.split_once('@'))
            .map(|(_, d)| d),
        "role" => Some(&contact.role),
        "name" => contact.name.as_deref(),
        "phone" => contact.phone.as_deref(),
        _ => None,
    }
}

fn matches(query: &Query, contact: &Contact) -> bool {
    match query {
        Query::Group { and: true, parts } => parts.iter().all(|p| matches(p, contact)),
        Query::Group { and: false, parts } => parts.iter().any(|p| matches(p, contact)),
        Query::Filter(filter) => {
            let field = filter.field.as_str();
            let held = held(contact, field).map(|h| fold(field, h));
            let held = held.as_deref();
            let wanted = filter.wanted.as_deref();
            let listed = || held.is_some_and(|h| filter.listed.contains(h));
            let text = |test: fn(&str, &str) -> bool| match (held, wanted) {
                (Some(h), Some(w)) => test(h, w),
                _ => false,
            };
            match filter.operator.as_str() {
                "=" => held == wanted,
                "!=" => held != wanted,
                "IN" => listed(),
                "NIN" => !listed(),
                "~" => text(|h, w| h.contains(w)),
                "!~" => !text(|h, w| h.contains(w)),
                "^" => text(|h, w| h.starts_with(w)),
                "$" => text(|h, w| h.ends_with(w)),
                _ => false,
            }
        }
    }
}
