//! The Segment-spec message model: identify, track and group, as Personas emits them and `send` reads them.
//!
//! A message is parsed once from `serde_json` into these types ("parse, don't validate"): the
//! mapping to Intercom then works on typed fields. Maps (`traits`, `properties`, `context`,
//! `integrations`) keep the key order of the input (`serde_json` is built with
//! `preserve_order`), which matters for Intercom's first-10-metadata-keys rule.

use std::io::{self, BufRead};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

pub use crate::domain::MessageKind;

/// A JSON object, in input order.
pub type Object = Map<String, Value>;

/// Why a line of input is not a Segment message this product can map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("a Segment message must be a JSON object")]
    NotAnObject,
    #[error("the message has no `type`")]
    MissingType,
    #[error(
        "message type `{0}` is not delivered to Intercom server-side (only identify, track and group are)"
    )]
    UnsupportedType(String),
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("a track message needs a non-empty `event`")]
    MissingEvent,
    #[error("a group message needs a non-empty `groupId`")]
    MissingGroupId,
    #[error("`timestamp` is not an RFC 3339 date-time: {0}")]
    BadTimestamp(String),
    #[error("`originalTimestamp` is not an RFC 3339 date-time: {0}")]
    BadOriginalTimestamp(String),
    #[error("invalid UTF-8")]
    InvalidUtf8,
}

/// Parse one line of NDJSON strictly: malformed JSON and an object holding the same key twice
/// (`{"userId": "a", "userId": "b"}`, which would otherwise keep the last) are refused.
pub fn parse_json_line(line: &str) -> Result<Value, ParseError> {
    crate::json::strict_json::from_str(line).map_err(|e| {
        let error = match &e {
            crate::json::strict_json::Error::Syntax(error) => error,
            crate::json::strict_json::Error::DuplicateKey { error, .. } => error,
        };
        ParseError::Json(crate::json::json_reason(error))
    })
}

/// The lines of an NDJSON input of Segment messages, numbered from 1, as text: a line that is
/// not valid UTF-8 is [`ParseError::InvalidUtf8`] (the others are still read). A leading UTF-8
/// byte order mark and the CR of CRLF line endings are dropped. An I/O error ends the input.
pub struct NdjsonLines<R> {
    reader: R,
    number: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> NdjsonLines<R> {
    pub fn new(reader: R) -> NdjsonLines<R> {
        NdjsonLines {
            reader,
            number: 0,
            buf: Vec::new(),
        }
    }
}

impl<R: BufRead> Iterator for NdjsonLines<R> {
    type Item = io::Result<(usize, Result<String, ParseError>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.buf.clear();
        match self.reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(e)),
        }
        self.number += 1;
        let mut bytes = self.buf.as_slice();
        if self.number == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| ParseError::InvalidUtf8);
        Some(Ok((self.number, text)))
    }
}

/// The fields every message type shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    /// `userId`, trimmed; `None` when absent, null or empty. A number is taken as its decimal text.
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<DateTime<Utc>>,
    /// `originalTimestamp`: when the client says the message happened (Segment's libraries set
    /// it; `send` sets it to the time it queued a message that has neither).
    pub original_timestamp: Option<DateTime<Utc>>,
    pub context: Object,
    pub integrations: Object,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Identify {
    pub common: Common,
    pub traits: Object,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub common: Common,
    pub event: String,
    pub properties: Object,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub common: Common,
    pub group_id: String,
    pub traits: Object,
}

/// A Segment-spec message of one of the three types the Intercom destination maps.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Identify(Identify),
    Track(Track),
    Group(Group),
}

impl Message {
    /// Parse one NDJSON line.
    pub fn from_json_str(line: &str) -> Result<Message, ParseError> {
        Message::from_value(&parse_json_line(line)?)
    }

    /// Parse a message from a JSON value.
    pub fn from_value(value: &Value) -> Result<Message, ParseError> {
        let object = value.as_object().ok_or(ParseError::NotAnObject)?;
        let kind = match object.get("type") {
            None | Some(Value::Null) => return Err(ParseError::MissingType),
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(ParseError::WrongType {
                    field: "type",
                    expected: "a string",
                });
            }
        };
        let common = Common {
            user_id: identifier(object, "userId")?,
            anonymous_id: identifier(object, "anonymousId")?,
            message_id: identifier(object, "messageId")?,
            timestamp: date_time(object, "timestamp", ParseError::BadTimestamp)?,
            original_timestamp: date_time(
                object,
                "originalTimestamp",
                ParseError::BadOriginalTimestamp,
            )?,
            context: sub_object(object, "context")?,
            integrations: sub_object(object, "integrations")?,
        };
        match kind {
            "identify" => Ok(Message::Identify(Identify {
                common,
                traits: sub_object(object, "traits")?,
            })),
            "track" => {
                let event = identifier(object, "event")?.ok_or(ParseError::MissingEvent)?;
                Ok(Message::Track(Track {
                    common,
                    event,
                    properties: sub_object(object, "properties")?,
                }))
            }
            "group" => {
                let group_id = identifier(object, "groupId")?.ok_or(ParseError::MissingGroupId)?;
                Ok(Message::Group(Group {
                    common,
                    group_id,
                    traits: sub_object(object, "traits")?,
                }))
            }
            other => Err(ParseError::UnsupportedType(other.to_string())),
        }
    }

    pub fn common(&self) -> &Common {
        match self {
            Message::Identify(m) => &m.common,
            Message::Track(m) => &m.common,
            Message::Group(m) => &m.common,
        }
    }

    /// `identify`, `track` or `group`.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Identify(_) => MessageKind::Identify,
            Message::Track(_) => MessageKind::Track,
            Message::Group(_) => MessageKind::Group,
        }
    }
}

impl Message {
    /// The message as Segment-spec JSON: the one serialisation of a message the daemon plans
    /// (the outbox stores it, `sync --dry-run` prints it), and `Message::from_value` of it gives
    /// the message back. Keys come in the order Personas' messages have them: `type`,
    /// `messageId`, `timestamp`, `originalTimestamp`, `anonymousId`, `userId`, then `event` /
    /// `groupId`, `traits` / `properties`, `integrations`, `context`; absent ids and times, and
    /// an empty `integrations` or `context`, are left out. Times are RFC 3339 in UTC, with
    /// fractional seconds only when there are some.
    pub fn into_value(self) -> Value {
        let kind = self.kind();
        // The type's own fields, after the ids and times: `event` / `groupId` (if any), then
        // `traits` / `properties`.
        let (common, named, object) = match self {
            Message::Identify(identify) => (identify.common, None, ("traits", identify.traits)),
            Message::Track(track) => (
                track.common,
                Some(("event", track.event)),
                ("properties", track.properties),
            ),
            Message::Group(group) => (
                group.common,
                Some(("groupId", group.group_id)),
                ("traits", group.traits),
            ),
        };
        let mut m = Object::new();
        m.insert("type".into(), kind.as_str().into());
        let time = |t: Option<DateTime<Utc>>| {
            t.map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
        };
        let fields = [
            ("messageId", common.message_id.map(Value::String)),
            ("timestamp", time(common.timestamp)),
            ("originalTimestamp", time(common.original_timestamp)),
            ("anonymousId", common.anonymous_id.map(Value::String)),
            ("userId", common.user_id.map(Value::String)),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                m.insert(key.into(), value);
            }
        }
        if let Some((key, text)) = named {
            m.insert(key.into(), Value::String(text));
        }
        m.insert(object.0.into(), Value::Object(object.1));
        for (key, object) in [
            ("integrations", common.integrations),
            ("context", common.context),
        ] {
            if !object.is_empty() {
                m.insert(key.into(), Value::Object(object));
            }
        }
        Value::Object(m)
    }
}

impl Common {
    /// When the message happened: `timestamp`, else `originalTimestamp`.
    pub fn event_time(&self) -> Option<DateTime<Utc>> {
        self.timestamp.or(self.original_timestamp)
    }

    /// `context.traits.email`, trimmed, when it is a non-empty string.
    pub fn context_email(&self) -> Option<String> {
        self.context
            .get("traits")
            .and_then(Value::as_object)
            .and_then(|traits| traits.get("email"))
            .and_then(non_empty_str)
    }

    /// `context.personas`, present on every message Personas (or this daemon's emitter) sends.
    pub fn personas(&self) -> Option<&Object> {
        self.context.get("personas").and_then(Value::as_object)
    }

    /// The Intercom-specific options: `context.Intercom`, else `integrations.Intercom` when it is
    /// an object (`integrations.Intercom: true` only selects the destination). The key is
    /// matched case-insensitively, as Segment's libraries do.
    pub fn intercom_options(&self) -> Vec<&Object> {
        [&self.context, &self.integrations]
            .into_iter()
            .filter_map(|map| {
                map.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("intercom"))
                    .and_then(|(_, v)| v.as_object())
            })
            .collect()
    }
}

/// A trimmed non-empty string, when the value is one.
pub fn non_empty_str(value: &Value) -> Option<String> {
    value
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn identifier(object: &Object, field: &'static str) -> Result<Option<String>, ParseError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            Ok((!s.is_empty()).then(|| s.to_string()))
        }
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(ParseError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn sub_object(object: &Object, field: &'static str) -> Result<Object, ParseError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(Object::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(ParseError::WrongType {
            field,
            expected: "an object",
        }),
    }
}

fn date_time(
    object: &Object,
    field: &'static str,
    bad: fn(String) -> ParseError,
) -> Result<Option<DateTime<Utc>>, ParseError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| bad(s.clone())),
        Some(_) => Err(ParseError::WrongType {
            field,
            expected: "an RFC 3339 string",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_three_types_and_keeps_trait_order() {
        let m = Message::from_value(&json!({
            "type": "identify", "userId": " u1 ", "timestamp": "2024-05-01T00:00:00Z",
            "traits": {"z": 1, "a": 2, "m": 3}
        }))
        .unwrap();
        let Message::Identify(identify) = m else {
            panic!("not an identify")
        };
        assert_eq!(identify.common.user_id.as_deref(), Some("u1"));
        assert_eq!(
            identify.common.timestamp.unwrap().timestamp(),
            1_714_521_600
        );
        let keys: Vec<_> = identify.traits.keys().cloned().collect();
        assert_eq!(keys, ["z", "a", "m"]);

        let t = Message::from_json_str(r#"{"type":"track","userId":42,"event":"Signed Up"}"#);
        assert!(
            matches!(t, Ok(Message::Track(ref t)) if t.common.user_id.as_deref() == Some("42"))
        );
        let g = Message::from_json_str(r#"{"type":"group","groupId":"acme"}"#).unwrap();
        assert_eq!(g.kind(), MessageKind::Group);
    }

    #[test]
    fn the_event_time_is_timestamp_else_original_timestamp() {
        let m = Message::from_json_str(
            r#"{"type":"track","userId":"u","event":"E","originalTimestamp":"2024-05-01T02:00:00+02:00"}"#,
        )
        .unwrap();
        assert_eq!(m.common().timestamp, None);
        assert_eq!(
            m.common().event_time().map(|t| t.timestamp()),
            Some(1_714_521_600)
        );
        let m = Message::from_json_str(
            r#"{"type":"track","userId":"u","event":"E","timestamp":"2024-05-02T00:00:00Z","originalTimestamp":"2024-05-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            m.common().event_time().map(|t| t.timestamp()),
            Some(1_714_608_000)
        );
        let m = Message::from_json_str(r#"{"type":"track","userId":"u","event":"E"}"#).unwrap();
        assert_eq!(m.common().event_time(), None);
        assert_eq!(
            Message::from_json_str(
                r#"{"type":"track","userId":"u","event":"E","originalTimestamp":"soon"}"#
            ),
            Err(ParseError::BadOriginalTimestamp("soon".into()))
        );
    }

    #[test]
    fn refuses_what_cannot_be_mapped() {
        let cases = [
            ("[]", ParseError::NotAnObject),
            ("{}", ParseError::MissingType),
            (
                r#"{"type":"page"}"#,
                ParseError::UnsupportedType("page".into()),
            ),
            (r#"{"type":"track","event":" "}"#, ParseError::MissingEvent),
            (r#"{"type":"group"}"#, ParseError::MissingGroupId),
            (
                r#"{"type":"identify","traits":[1]}"#,
                ParseError::WrongType {
                    field: "traits",
                    expected: "an object",
                },
            ),
            (
                r#"{"type":"identify","timestamp":"yesterday"}"#,
                ParseError::BadTimestamp("yesterday".into()),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(Message::from_json_str(line), Err(expected), "{line}");
        }
        assert!(matches!(
            Message::from_json_str("{"),
            Err(ParseError::Json(_))
        ));
        let Err(ParseError::Json(reason)) =
            Message::from_json_str(r#"{"type":"identify","userId":"a","userId":"b"}"#)
        else {
            panic!("a duplicate key was accepted")
        };
        assert!(reason.contains("`userId` appears twice"), "{reason}");
    }

    #[test]
    fn ndjson_lines_drop_a_bom_and_crs_and_name_invalid_utf8() {
        let input = b"\xEF\xBB\xBF{}\r\n\xFF\n\xEF\xBB\xBF{}\n".as_slice();
        let lines: Vec<_> = NdjsonLines::new(input).map(Result::unwrap).collect();
        assert_eq!(
            lines,
            vec![
                (1, Ok("{}".to_string())),
                (2, Err(ParseError::InvalidUtf8)),
                (3, Ok("\u{feff}{}".to_string())),
            ]
        );
    }

    #[test]
    fn a_message_serialised_and_parsed_again_is_the_same_message() {
        for input in [
            json!({"type": "identify", "userId": " u1 ", "traits": {"vip": true}}),
            json!({"type": "identify", "userId": 42, "anonymousId": "a",
                   "timestamp": "2026-01-01T00:00:00.250+01:00",
                   "originalTimestamp": "2026-01-01T00:00:00Z",
                   "context": {"traits": {"email": "A@B.C"}},
                   "integrations": {"Intercom": {"hmac": "x"}}}),
            json!({"type": "track", "userId": "u1", "event": "Audience Entered",
                   "properties": {"audience_key": "vip", "vip": true}, "messageId": "m"}),
            json!({"type": "group", "groupId": "acme", "traits": {}}),
            json!({"type": "group", "userId": "u1", "groupId": "acme", "sentAt": "ignored"}),
        ] {
            let message = Message::from_value(&input).unwrap();
            let value = message.clone().into_value();
            assert_eq!(Message::from_value(&value).unwrap(), message, "{value}");
            assert_eq!(
                value.get("sentAt"),
                None,
                "what the model has no field for is not kept"
            );
        }
        let m = Message::from_value(&json!({"type": "track", "event": "E", "userId": "u",
            "timestamp": "2026-01-01T00:00:00Z"}))
        .unwrap();
        assert_eq!(
            serde_json::to_string(&m.into_value()).unwrap(),
            r#"{"type":"track","timestamp":"2026-01-01T00:00:00Z","userId":"u","event":"E","properties":{}}"#
        );
    }
}
