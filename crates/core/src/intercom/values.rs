//! Intercom's value rules: what a custom attribute or event-metadata value may be, data types, dates, the company-name hash.
//!
//! Everything here is a plain function of its inputs (no IO, no clock). Lossy changes are
//! reported as [`Warning`]s for the caller to log; refusals are [`MapError`]s.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Number, Value};

/// Intercom's limit for string attribute values and event-metadata strings, in Unicode characters.
pub const MAX_STRING_CHARS: usize = 255;

/// What to do with a string longer than Intercom's 255 characters (`intercom.long_strings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongStrings {
    Truncate,
    Reject,
}

/// Why a message cannot be mapped (the delivery engine dead-letters it; `send` names its line).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    #[error("Intercom needs a user id or an email: the message has neither `userId` nor an email")]
    NoIdentifier,
    #[error(
        "`{field}` has {chars} characters, more than Intercom's 255 (intercom.long_strings = \"reject\")"
    )]
    LongString { field: String, chars: usize },
    #[error(
        "attribute `{name}` is of type {attribute_type} in Intercom and cannot take a {value_type} value without losing it"
    )]
    AttributeType {
        name: String,
        attribute_type: DataType,
        value_type: &'static str,
    },
    #[error(
        "event name `{name}` is new, and this workspace already has {limit} active event names, Intercom's limit: archive some in Intercom, or keep this event away from Intercom"
    )]
    TooManyEventNames { name: String, limit: usize },
}

/// Where a custom data attribute lives. Intercom refuses one name on both models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Model {
    Contact,
    Company,
}

impl Model {
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Contact => "contact",
            Model::Company => "company",
        }
    }
}

/// The `data_type` of an Intercom data attribute (`POST /data_attributes`, minus `options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    String,
    Integer,
    Float,
    Boolean,
    Datetime,
    Date,
}

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::String => "string",
            DataType::Integer => "integer",
            DataType::Float => "float",
            DataType::Boolean => "boolean",
            DataType::Datetime => "datetime",
            DataType::Date => "date",
        }
    }

    /// Parse Intercom's `data_type` text (as `GET /data_attributes` returns it).
    pub fn parse(text: &str) -> Option<DataType> {
        Some(match text {
            "string" => DataType::String,
            "integer" => DataType::Integer,
            "float" => DataType::Float,
            "boolean" => DataType::Boolean,
            "datetime" => DataType::Datetime,
            "date" => DataType::Date,
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something the mapping changed or left out on the way, worth a WARN line; the message still goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// An object value: Intercom holds no nested data in custom attributes or metadata.
    DroppedObject { field: String },
    /// An array holding objects or arrays cannot be joined into one string.
    DroppedNestedArray { field: String },
    /// A string over 255 characters was cut to 255.
    Truncated { field: String, chars: usize },
    /// Intercom keeps only the first 10 metadata keys; these came later.
    DroppedMetadataKeys { keys: Vec<String> },
    /// A date field that is not a date Segment sends (RFC 3339, unix seconds or milliseconds, JS date text).
    UnparsableDate { field: String },
    /// A `company` object with neither `id`, `company_id` nor `name`.
    CompanyWithoutId { field: String },
    /// A value for one of Intercom's own fields (a company's `size`, `plan`…) of a type that
    /// field cannot take.
    WrongFieldType {
        field: String,
        expected: &'static str,
    },
    /// An event-metadata object that is neither of Intercom's two typed objects.
    DroppedMetadataObject { field: String },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::DroppedObject { field } => {
                write!(
                    f,
                    "`{field}` is an object, which Intercom cannot hold: dropped"
                )
            }
            Warning::DroppedNestedArray { field } => write!(
                f,
                "`{field}` is an array holding objects or arrays, which Intercom cannot hold: dropped"
            ),
            Warning::Truncated { field, chars } => write!(
                f,
                "`{field}` has {chars} characters: cut to Intercom's {MAX_STRING_CHARS}"
            ),
            Warning::DroppedMetadataKeys { keys } => write!(
                f,
                "Intercom keeps 10 metadata keys per event: dropped {}",
                keys.join(", ")
            ),
            Warning::UnparsableDate { field } => {
                write!(f, "`{field}` is not a date: left out")
            }
            Warning::CompanyWithoutId { field } => write!(
                f,
                "`{field}` has neither `id`, `company_id` nor `name`: no company written"
            ),
            Warning::WrongFieldType { field, expected } => write!(
                f,
                "`{field}` is not {expected}, as Intercom's field needs: left out"
            ),
            Warning::DroppedMetadataObject { field } => write!(
                f,
                "`{field}` is an object but neither a Monetary Amount {{\"amount\": integer cents, \"currency\": string}} nor a Rich Link {{\"url\": string, \"value\": string}}, the only objects Intercom's event metadata holds: dropped"
            ),
        }
    }
}

/// The data type a new attribute gets for a value (SPEC section 6): `boolean` for booleans,
/// `float` for any number (a trait that is 5 today may be 7.5 tomorrow), `string` for strings
/// and arrays (arrays are written joined). `None` for null and objects: nothing to create.
pub fn infer_data_type(value: &Value) -> Option<DataType> {
    match value {
        Value::Bool(_) => Some(DataType::Boolean),
        Value::Number(_) => Some(DataType::Float),
        Value::String(_) | Value::Array(_) => Some(DataType::String),
        Value::Null | Value::Object(_) => None,
    }
}

/// The JSON type name used in error messages.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Fit a (sanitised) value to an attribute that already exists with `existing` type (SPEC
/// section 6): the same type passes; a number or boolean into a `string` attribute becomes its
/// text; a whole number into an `integer` attribute and an integer into a `float` one pass;
/// unix seconds pass into `datetime`/`date`; null always passes (it clears). Anything else
/// would lose information and is refused, naming the attribute and both types.
pub fn convert_for_attribute(
    name: &str,
    value: &Value,
    existing: DataType,
) -> Result<Value, MapError> {
    let mismatch = || MapError::AttributeType {
        name: name.to_string(),
        attribute_type: existing,
        value_type: json_type(value),
    };
    match (existing, value) {
        (_, Value::Null) => Ok(Value::Null),
        (DataType::String, Value::String(_)) => Ok(value.clone()),
        (DataType::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (DataType::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (DataType::Boolean, Value::Bool(_)) => Ok(value.clone()),
        (DataType::Float, Value::Number(_)) => Ok(value.clone()),
        (DataType::Integer | DataType::Datetime | DataType::Date, Value::Number(n)) => {
            whole_number(n).map(Value::from).ok_or_else(mismatch)
        }
        _ => Err(mismatch()),
    }
}

fn whole_number(n: &Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

/// A custom attribute value as Intercom can hold it, or `None` when it is left out (with a
/// warning). Strings over 255 characters are cut (with a warning) or refused, per
/// `intercom.long_strings`; arrays of scalars become one string joined by `, `; objects and
/// nested arrays are dropped; an RFC 3339 date-time string becomes unix seconds (dates are
/// unix seconds in Intercom).
pub fn attribute_value(
    field: &str,
    value: &Value,
    long_strings: LongStrings,
    warnings: &mut Vec<Warning>,
) -> Result<Option<Value>, MapError> {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(Some(value.clone())),
        Value::String(s) => {
            if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
                return Ok(Some(Value::from(t.timestamp())));
            }
            fit_string(field, s, long_strings, warnings).map(|s| Some(Value::String(s)))
        }
        Value::Array(items) => match join_scalars(items) {
            Some(joined) => {
                fit_string(field, &joined, long_strings, warnings).map(|s| Some(Value::String(s)))
            }
            None => {
                warnings.push(Warning::DroppedNestedArray {
                    field: field.to_string(),
                });
                Ok(None)
            }
        },
        Value::Object(_) => {
            warnings.push(Warning::DroppedObject {
                field: field.to_string(),
            });
            Ok(None)
        }
    }
}

/// An event-metadata value (SPEC section 6): strings cut to 255 characters, numbers kept,
/// booleans as `"true"` / `"false"`, arrays of scalars joined by `, `, null left out,
/// Intercom's two typed objects (see [`is_typed_metadata`]) kept as they are, other objects and
/// arrays holding objects or arrays dropped with a warning.
pub fn metadata_value(field: &str, value: &Value, warnings: &mut Vec<Warning>) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Bool(b) => Some(Value::String(b.to_string())),
        Value::Number(_) => Some(value.clone()),
        Value::String(s) => Some(Value::String(cut(field, s, warnings))),
        Value::Array(items) => match join_scalars(items) {
            Some(joined) => Some(Value::String(cut(field, &joined, warnings))),
            None => {
                warnings.push(Warning::DroppedNestedArray {
                    field: field.to_string(),
                });
                None
            }
        },
        Value::Object(object) if is_typed_metadata(object) => Some(value.clone()),
        Value::Object(_) => {
            warnings.push(Warning::DroppedMetadataObject {
                field: field.to_string(),
            });
            None
        }
    }
}

/// Whether an object is one of the two typed objects Intercom's event metadata holds, exactly:
/// a Monetary Amount `{"amount": <integer cents>, "currency": <string>}` or a Rich Link
/// `{"url": <string>, "value": <string>}` (no other keys).
pub fn is_typed_metadata(object: &serde_json::Map<String, Value>) -> bool {
    let has = |key: &str, ok: fn(&Value) -> bool| object.get(key).is_some_and(ok);
    let integer = |v: &Value| v.is_i64() || v.is_u64();
    object.len() == 2
        && ((has("amount", integer) && has("currency", Value::is_string))
            || (has("url", Value::is_string) && has("value", Value::is_string)))
}

/// A plain string for Intercom's string fields (name, plan, phone…): numbers as their text.
pub fn fit_string(
    field: &str,
    s: &str,
    long_strings: LongStrings,
    warnings: &mut Vec<Warning>,
) -> Result<String, MapError> {
    let chars = s.chars().count();
    if chars <= MAX_STRING_CHARS {
        return Ok(s.to_string());
    }
    match long_strings {
        LongStrings::Truncate => Ok(cut(field, s, warnings)),
        LongStrings::Reject => Err(MapError::LongString {
            field: field.to_string(),
            chars,
        }),
    }
}

/// Cut to 255 characters on a character boundary, with a warning when anything was cut.
fn cut(field: &str, s: &str, warnings: &mut Vec<Warning>) -> String {
    match s.char_indices().nth(MAX_STRING_CHARS) {
        None => s.to_string(),
        Some((byte, _)) => {
            warnings.push(Warning::Truncated {
                field: field.to_string(),
                chars: s.chars().count(),
            });
            s[..byte].to_string()
        }
    }
}

/// `a, b, c` for an array of scalars (nulls skipped); `None` when it holds objects or arrays.
fn join_scalars(items: &[Value]) -> Option<String> {
    let mut parts = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Null => {}
            Value::String(s) => parts.push(s.clone()),
            Value::Bool(b) => parts.push(b.to_string()),
            Value::Number(n) => parts.push(n.to_string()),
            Value::Array(_) | Value::Object(_) => return None,
        }
    }
    Some(parts.join(", "))
}

/// Unix seconds from the date forms Segment messages carry: a number of seconds, or of
/// milliseconds when it is larger than 10^11 (JavaScript's `Date.now()`; 10^11 seconds is the
/// year 5138), the same as an all-digit string, an RFC 3339 date-time, a `YYYY-MM-DD` date
/// (midnight UTC), or JavaScript's `Date.toString()` text (`Mon Mar 26 2018 17:44:51 GMT+0000
/// (UTC)`, as in Segment's Intercom examples).
pub fn unix_seconds(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => {
            let f = n.as_f64()?;
            Some(if f.abs() > 1e11 {
                (f / 1000.0).floor() as i64
            } else {
                f.floor() as i64
            })
        }
        Value::String(s) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return unix_seconds(&Value::from(s.parse::<f64>().ok()?));
            }
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.timestamp());
            }
            if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                return Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp());
            }
            let without_zone_name = s.split(" (").next().unwrap_or(s);
            DateTime::parse_from_str(without_zone_name, "%a %b %d %Y %H:%M:%S GMT%z")
                .ok()
                .map(|t| t.with_timezone(&Utc).timestamp())
        }
        _ => None,
    }
}

/// The `company_id` for a company given only by name: the npm `string-hash` function (djb2 with
/// XOR, over UTF-16 code units from the last to the first, as an unsigned 32-bit number), the
/// hash Segment's classic server-side Intercom integration used, so a company Segment created
/// from the same name gets the same id (its fixture: `"Segment"` → `2017828326`).
pub fn company_name_hash(name: &str) -> u32 {
    let units: Vec<u16> = name.encode_utf16().collect();
    units.iter().rev().fold(5381u32, |hash, &unit| {
        hash.wrapping_mul(33) ^ u32::from(unit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn company_name_hash_matches_segments_classic_fixture() {
        assert_eq!(company_name_hash("Segment"), 2_017_828_326);
        assert_eq!(company_name_hash(""), 5381);
    }

    #[test]
    fn dates_become_unix_seconds() {
        let cases = [
            (
                json!("Mon Mar 26 2018 17:44:51 GMT+0000 (UTC)"),
                Some(1_522_086_291),
            ),
            (
                json!("Thu Mar 24 2016 17:46:45 GMT+0000 (UTC)"),
                Some(1_458_841_605),
            ),
            (json!(1_363_902_294_011_i64), Some(1_363_902_294)),
            (json!(1_363_902_294), Some(1_363_902_294)),
            (json!("1363902294"), Some(1_363_902_294)),
            (json!("2024-05-01T02:00:00+02:00"), Some(1_714_521_600)),
            (json!("2024-05-01"), Some(1_714_521_600)),
            (json!("soon"), None),
            (json!(true), None),
        ];
        for (value, expected) in cases {
            assert_eq!(unix_seconds(&value), expected, "{value}");
        }
    }

    #[test]
    fn attribute_values_follow_intercoms_rules() {
        let long = "é".repeat(300);
        let cases = [
            (json!(true), Some(json!(true)), 0),
            (json!(7.5), Some(json!(7.5)), 0),
            (json!(null), Some(json!(null)), 0),
            (json!(["a", 1, true, null]), Some(json!("a, 1, true")), 0),
            (json!([{"a": 1}]), None, 1),
            (json!({"a": 1}), None, 1),
            (json!("2024-05-01T00:00:00Z"), Some(json!(1_714_521_600)), 0),
            (json!(long), Some(json!("é".repeat(255))), 1),
        ];
        for (value, expected, warned) in cases {
            let mut warnings = Vec::new();
            let got = attribute_value("k", &value, LongStrings::Truncate, &mut warnings).unwrap();
            assert_eq!(got, expected, "{value}");
            assert_eq!(warnings.len(), warned, "{value}");
        }
        let err = attribute_value("bio", &json!(long), LongStrings::Reject, &mut Vec::new());
        assert_eq!(
            err,
            Err(MapError::LongString {
                field: "bio".into(),
                chars: 300
            })
        );
    }

    #[test]
    fn metadata_values_are_scalars() {
        let mut warnings = Vec::new();
        let cases = [
            (json!(true), Some(json!("true"))),
            (json!(false), Some(json!("false"))),
            (json!(3), Some(json!(3))),
            (json!(null), None),
            (json!(["x", "y"]), Some(json!("x, y"))),
            (json!({"a": 1}), None),
            (json!("a".repeat(256)), Some(json!("a".repeat(255)))),
        ];
        for (value, expected) in cases {
            assert_eq!(
                metadata_value("k", &value, &mut warnings),
                expected,
                "{value}"
            );
        }
        assert_eq!(warnings.len(), 2);
    }

    #[test]
    fn metadata_keeps_intercoms_two_typed_objects_of_the_right_shape() {
        let kept = [
            json!({"amount": 34_999, "currency": "eur"}),
            json!({"currency": "usd", "amount": 0}),
            json!({"url": "https://example.com/i/1", "value": "Invoice 1"}),
        ];
        for value in kept {
            let mut warnings = Vec::new();
            assert_eq!(
                metadata_value("k", &value, &mut warnings),
                Some(value.clone())
            );
            assert!(warnings.is_empty(), "{value}");
        }
        let dropped = [
            json!({"amount": 99.95, "currency": "usd"}),
            json!({"amount": "9995", "currency": "usd"}),
            json!({"amount": 9995, "currency": 840}),
            json!({"amount": 9995}),
            json!({"amount": 9995, "currency": "usd", "tax": 5}),
            json!({"url": "https://example.com", "value": 1}),
            json!({"url": null, "value": "x"}),
            json!({"url": "https://example.com", "value": "x", "amount": 1}),
            json!({}),
        ];
        for value in dropped {
            let mut warnings = Vec::new();
            assert_eq!(metadata_value("k", &value, &mut warnings), None, "{value}");
            assert_eq!(
                warnings,
                vec![Warning::DroppedMetadataObject { field: "k".into() }]
            );
        }
        // An array holding typed objects is still an array holding objects.
        let mut warnings = Vec::new();
        let links = json!([{"url": "https://example.com", "value": "x"}]);
        assert_eq!(metadata_value("k", &links, &mut warnings), None);
        assert_eq!(
            warnings,
            vec![Warning::DroppedNestedArray { field: "k".into() }]
        );
    }

    #[test]
    fn data_types_are_inferred() {
        assert_eq!(infer_data_type(&json!(false)), Some(DataType::Boolean));
        assert_eq!(infer_data_type(&json!(5)), Some(DataType::Float));
        assert_eq!(infer_data_type(&json!("x")), Some(DataType::String));
        assert_eq!(infer_data_type(&json!(["x"])), Some(DataType::String));
        assert_eq!(infer_data_type(&json!(null)), None);
    }

    #[test]
    fn conversion_to_an_existing_type_loses_nothing_or_fails() {
        use DataType::*;
        let ok = [
            (String, json!(5), json!("5")),
            (String, json!(7.5), json!("7.5")),
            (String, json!(true), json!("true")),
            (Float, json!(5), json!(5)),
            (Integer, json!(5.0), json!(5)),
            (Boolean, json!(null), json!(null)),
            (Datetime, json!(1_714_521_600), json!(1_714_521_600)),
        ];
        for (ty, value, expected) in ok {
            assert_eq!(convert_for_attribute("k", &value, ty), Ok(expected));
        }
        let bad = [
            (Boolean, json!("true"), "string"),
            (Float, json!("5"), "string"),
            (Integer, json!(7.5), "float"),
            (Boolean, json!(1), "integer"),
        ];
        for (ty, value, value_type) in bad {
            let err = convert_for_attribute("score", &value, ty).unwrap_err();
            assert_eq!(
                err,
                MapError::AttributeType {
                    name: "score".into(),
                    attribute_type: ty,
                    value_type
                }
            );
            let text = err.to_string();
            assert!(
                text.contains("score") && text.contains(ty.as_str()) && text.contains(value_type)
            );
        }
    }
}
