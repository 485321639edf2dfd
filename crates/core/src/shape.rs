//! Compact outbox rows: a message's body and effects split into a *shape* (their structure with
//! every per-message value taken out, shared by many messages and stored once) and its *parts*
//! (those values, a short JSON array), and joined back. Pure: no database, no clock.
//!
//! What is taken out: the scalar top-level fields of the body but `type` and `event`
//! (`messageId`, `timestamp`, `userId`, `groupId`…), every member of `traits`, `properties` and
//! `context.traits`, and every leaf of the effects but `computation_id`, `subject` and
//! `attached`. A value equal to the row's message id or lane is not stored at all, a
//! whole-second RFC 3339 time is stored as its unix seconds, and a value that occurs twice (a
//! trait's value in the body and in its effect) is stored once. Everything else (`integrations`,
//! `context.personas`, the trait keys) stays in the shape.

use serde_json::{Map, Value};

/// A body and its effects split: the shape's text (the key it is stored under) and the parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub shape: String,
    pub parts: String,
}

/// Where one taken-out value comes from when the message is joined back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `parts[i]` as it is.
    Part(usize),
    /// `parts[i]`, unix seconds, as an RFC 3339 time (`2023-11-14T22:13:20Z`).
    Time(usize),
    /// The row's message id.
    MessageId,
    /// The row's lane.
    Lane,
}

impl Source {
    fn from_json(value: &Value) -> Option<Source> {
        match value {
            Value::Number(n) => Some(Source::Part(usize::try_from(n.as_u64()?).ok()?)),
            Value::String(s) if s == "m" => Some(Source::MessageId),
            Value::String(s) if s == "l" => Some(Source::Lane),
            Value::Object(o) => Some(Source::Time(usize::try_from(o.get("t")?.as_u64()?).ok()?)),
            _ => None,
        }
    }
}

/// One step of the path to a taken-out value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A shape as read back: the two skeletons (`null` where values were taken out) and, per
/// taken-out value, where it goes and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    body: Value,
    effects: Value,
    holes: Vec<Hole>,
}

#[derive(Debug, Clone, PartialEq)]
struct Hole {
    source: Source,
    /// `true`: in the effects; `false`: in the body.
    in_effects: bool,
    path: Vec<Step>,
}

/// Split a body and its effects (both JSON as `serde_json` writes it) for a row with
/// `message_id` and `lane`. `None` when either is not such JSON: the row keeps them whole, since
/// only text that `serde_json` writes back byte for byte can be joined back byte for byte.
pub fn split(body: &str, effects: &str, message_id: &str, lane: &str) -> Option<Split> {
    let body_value: Value = serde_json::from_str(body).ok()?;
    let effects_value: Value = serde_json::from_str(effects).ok()?;
    if serde_json::to_string(&body_value).ok()? != body
        || serde_json::to_string(&effects_value).ok()? != effects
    {
        return None;
    }
    Some(split_values(&body_value, &effects_value, message_id, lane))
}

/// [`split`] of a body and effects the planner holds as values (they are serde_json's to begin
/// with). It writes the shape's text in one walk, without building it as a value: the planner
/// stages every message of a run through here.
pub fn split_values(body: &Value, effects: &Value, message_id: &str, lane: &str) -> Split {
    let mut w = Writer {
        message_id,
        lane,
        out: Vec::with_capacity(2048),
        holes: Vec::with_capacity(512),
        parts: Vec::new(),
        path: Vec::new(),
        in_effects: false,
    };
    w.out.extend_from_slice(b"{\"b\":");
    match body {
        Value::Object(top) => w.body(top),
        other => w.value(other),
    }
    w.out.extend_from_slice(b",\"e\":");
    w.in_effects = true;
    w.effects(effects);
    w.out.extend_from_slice(b",\"h\":[");
    w.out.extend_from_slice(&w.holes);
    w.out.extend_from_slice(b"]}");
    let parts = serde_json::to_string(&w.parts).expect("values serialise");
    Split {
        shape: String::from_utf8(w.out).expect("serde_json writes UTF-8"),
        parts,
    }
}

/// One step of the path to a value being written.
#[derive(Clone, Copy)]
enum PathStep<'a> {
    Key(&'a str),
    Index(usize),
}

/// Writes a shape's text: the skeletons with `null` where a value is taken out, and the holes.
struct Writer<'a> {
    message_id: &'a str,
    lane: &'a str,
    out: Vec<u8>,
    /// The holes' JSON, comma-separated.
    holes: Vec<u8>,
    parts: Vec<Value>,
    path: Vec<PathStep<'a>>,
    in_effects: bool,
}

impl<'a> Writer<'a> {
    fn value(&mut self, value: &Value) {
        serde_json::to_writer(&mut self.out, value).expect("values serialise");
    }

    fn key(&mut self, key: &str) {
        serde_json::to_writer(&mut self.out, key).expect("strings serialise");
        self.out.push(b':');
    }

    /// The top level of a body: which of its fields are taken out.
    fn body(&mut self, top: &'a Map<String, Value>) {
        self.out.push(b'{');
        for (i, (key, value)) in top.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.key(key);
            self.path.push(PathStep::Key(key));
            match key.as_str() {
                "type" | "event" => self.value(value),
                "traits" | "properties" => self.members(value),
                "context" => self.context(value),
                _ if !value.is_object() && !value.is_array() => self.take(value),
                _ => self.value(value),
            }
            self.path.pop();
        }
        self.out.push(b'}');
    }

    /// Every member of an object taken out (its keys stay).
    fn members(&mut self, value: &'a Value) {
        let Value::Object(members) = value else {
            return self.value(value);
        };
        self.out.push(b'{');
        for (i, (key, member)) in members.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.key(key);
            self.path.push(PathStep::Key(key));
            self.take(member);
            self.path.pop();
        }
        self.out.push(b'}');
    }

    /// `context`: its `traits` taken out, the rest (`personas`) kept.
    fn context(&mut self, value: &'a Value) {
        let Value::Object(context) = value else {
            return self.value(value);
        };
        self.out.push(b'{');
        for (i, (key, member)) in context.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.key(key);
            if key == "traits" {
                self.path.push(PathStep::Key(key));
                self.members(member);
                self.path.pop();
            } else {
                self.value(member);
            }
        }
        self.out.push(b'}');
    }

    /// Effects: every leaf taken out but `computation_id`, `subject` and `attached`.
    fn effects(&mut self, value: &'a Value) {
        match value {
            Value::Array(items) => {
                self.out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.path.push(PathStep::Index(i));
                    self.effects(item);
                    self.path.pop();
                }
                self.out.push(b']');
            }
            Value::Object(members) => {
                self.out.push(b'{');
                for (i, (key, member)) in members.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.key(key);
                    if matches!(key.as_str(), "computation_id" | "subject" | "attached") {
                        self.value(member);
                        continue;
                    }
                    self.path.push(PathStep::Key(key));
                    self.effects(member);
                    self.path.pop();
                }
                self.out.push(b'}');
            }
            leaf => self.take(leaf),
        }
    }

    /// Take `value` out: `null` in the skeleton, a hole saying where it comes from.
    fn take(&mut self, value: &Value) {
        self.out.extend_from_slice(b"null");
        let source = match value {
            Value::String(s) if s == self.message_id => Source::MessageId,
            Value::String(s) if s == self.lane => Source::Lane,
            Value::String(s) => match whole_second_time(s) {
                Some(seconds) => Source::Time(self.part(Value::from(seconds))),
                None => Source::Part(self.part(value.clone())),
            },
            _ => Source::Part(self.part(value.clone())),
        };
        if !self.holes.is_empty() {
            self.holes.push(b',');
        }
        let holes = &mut self.holes;
        holes.push(b'[');
        match source {
            Source::Part(i) => holes.extend_from_slice(i.to_string().as_bytes()),
            Source::Time(i) => {
                holes.extend_from_slice(b"{\"t\":");
                holes.extend_from_slice(i.to_string().as_bytes());
                holes.push(b'}');
            }
            Source::MessageId => holes.extend_from_slice(b"\"m\""),
            Source::Lane => holes.extend_from_slice(b"\"l\""),
        }
        holes.extend_from_slice(if self.in_effects {
            b",\"e\""
        } else {
            b",\"b\""
        });
        for step in &self.path {
            holes.push(b',');
            match step {
                PathStep::Key(k) => {
                    serde_json::to_writer(&mut *holes, k).expect("strings serialise")
                }
                PathStep::Index(i) => holes.extend_from_slice(i.to_string().as_bytes()),
            }
        }
        holes.push(b']');
    }

    /// The index of `value` in the parts, added if it is not there yet.
    fn part(&mut self, value: Value) -> usize {
        match self.parts.iter().position(|p| *p == value) {
            Some(i) => i,
            None => {
                self.parts.push(value);
                self.parts.len() - 1
            }
        }
    }
}

/// The unix seconds of an RFC 3339 UTC time with whole seconds, written as [`rfc3339`] writes
/// them (so that writing them again gives the same text).
fn whole_second_time(text: &str) -> Option<i64> {
    if text.len() != 20 || !text.ends_with('Z') {
        return None;
    }
    let seconds = chrono::DateTime::parse_from_rfc3339(text).ok()?.timestamp();
    (rfc3339(seconds)? == text).then_some(seconds)
}

fn rfc3339(seconds: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

impl Shape {
    /// Read a shape's text back (as [`split`] wrote it).
    pub fn parse(text: &str) -> Result<Shape, String> {
        let mut value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let bad = || "not an outbox shape".to_string();
        let object = value.as_object_mut().ok_or_else(bad)?;
        let body = object.remove("b").ok_or_else(bad)?;
        let effects = object.remove("e").ok_or_else(bad)?;
        let holes = match object.remove("h") {
            Some(Value::Array(holes)) => holes,
            _ => return Err(bad()),
        };
        let holes = holes
            .iter()
            .map(|hole| {
                let hole = hole.as_array()?;
                let source = Source::from_json(hole.first()?)?;
                let in_effects = match hole.get(1)?.as_str()? {
                    "b" => false,
                    "e" => true,
                    _ => return None,
                };
                let path = hole[2..]
                    .iter()
                    .map(|step| match step {
                        Value::String(k) => Some(Step::Key(k.clone())),
                        Value::Number(i) => Some(Step::Index(usize::try_from(i.as_u64()?).ok()?)),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(Hole {
                    source,
                    in_effects,
                    path,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        Ok(Shape {
            body,
            effects,
            holes,
        })
    }

    /// The body and effects of the row with these parts (the JSON array [`split`] wrote),
    /// message id and lane.
    pub fn join(
        &self,
        parts: &str,
        message_id: &str,
        lane: &str,
    ) -> Result<(Value, Value), String> {
        let parts: Vec<Value> = serde_json::from_str(parts).map_err(|e| e.to_string())?;
        let mut body = self.body.clone();
        let mut effects = self.effects.clone();
        let missing = || "the parts do not fit the shape".to_string();
        for hole in &self.holes {
            let value = match hole.source {
                Source::Part(i) => parts.get(i).cloned().ok_or_else(missing)?,
                Source::Time(i) => parts
                    .get(i)
                    .and_then(Value::as_i64)
                    .and_then(rfc3339)
                    .map(Value::String)
                    .ok_or_else(missing)?,
                Source::MessageId => Value::String(message_id.to_string()),
                Source::Lane => Value::String(lane.to_string()),
            };
            let mut target = if hole.in_effects {
                &mut effects
            } else {
                &mut body
            };
            for step in &hole.path {
                target = match step {
                    Step::Key(k) => target.get_mut(k.as_str()),
                    Step::Index(i) => target.get_mut(*i),
                }
                .ok_or_else(missing)?;
            }
            *target = value;
        }
        Ok((body, effects))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(body: &str, effects: &str, message_id: &str, lane: &str) -> Split {
        let split = split(body, effects, message_id, lane).expect("splits");
        let shape = Shape::parse(&split.shape).unwrap();
        let (b, e) = shape.join(&split.parts, message_id, lane).unwrap();
        assert_eq!(b.to_string(), body);
        assert_eq!(e.to_string(), effects);
        split
    }

    #[test]
    fn an_identify_splits_into_a_shared_shape_and_its_values() {
        let body = |user: &str, v: &str| {
            format!(
                r#"{{"type":"identify","messageId":"personas_ab","timestamp":"2023-11-14T22:13:20Z","userId":"{user}","traits":{{"email":"{user}@example.com","ltv":{v},"vip":true,"companies":[{{"id":"acme","remove":true}}]}},"integrations":{{"All":false,"Intercom":true}},"context":{{"personas":{{"computation_class":"trait","computation_id":"tra_1","computation_key":"ltv","namespace":"spa_s","space_id":"s"}}}}}}"#
            )
        };
        let effects = |user: &str, v: &str| {
            format!(
                r#"[{{"computation_id":"tra_1","subject":"user","entity_id":"{user}","value":{v},"track_at":1700000000}},{{"membership":{{"group_id":"acme","user_id":"{user}","attached":false}}}}]"#
            )
        };
        let a = roundtrip(
            &body("u1", "1.5"),
            &effects("u1", "1.5"),
            "personas_ab",
            "u1",
        );
        let b = roundtrip(&body("u2", "7"), &effects("u2", "7"), "personas_ab", "u2");
        assert_eq!(a.shape, b.shape, "one shape for both users");
        assert_eq!(
            a.parts,
            r#"[1700000000,"u1@example.com",1.5,true,[{"id":"acme","remove":true}],"acme"]"#,
            "the id, the lane and the repeated value and time are stored once or not at all"
        );
    }

    /// `text` as serde_json writes it.
    fn canonical(text: &str) -> String {
        serde_json::from_str::<Value>(text).unwrap().to_string()
    }

    #[test]
    fn tracks_groups_and_odd_values_come_back_exactly() {
        roundtrip(
            r#"{"type":"track","messageId":"m1","timestamp":"1970-01-01T00:00:00Z","event":"Trait Computed","properties":{"trait_key":"ltv","ltv":null},"integrations":{"All":false,"Intercom":true},"context":{"traits":{"email":"A@x.com"},"personas":{"space_id":"s"}}}"#,
            "[]",
            "m1",
            "a@x.com",
        );
        roundtrip(
            &canonical(
                r#"{"type":"group","messageId":"m2","timestamp":"2023-11-14T22:13:20+01:00","groupId":"acme","traits":{"plan":"2023-11-14T22:13:20Z","n":1e300,"f":0.1,"neg":-3,"s":"m2","deep":{"a":[1,{"b":"\u00e9\n\u0001"}]}},"integrations":{}}"#,
            ),
            r#"[{"computation_id":"tra_1","subject":"account","entity_id":"acme","value":{"x":[1,2]}}]"#,
            "m2",
            "account:acme",
        );
        // Not as serde_json writes it: kept whole.
        assert_eq!(split(r#"{"type": "identify"}"#, "[]", "m", "l"), None);
        assert_eq!(split("{}", "[ ]", "m", "l"), None);
        assert_eq!(split("not json", "[]", "m", "l"), None);
    }

    #[test]
    fn a_shape_that_does_not_fit_its_parts_is_an_error() {
        let split = roundtrip(r#"{"type":"identify","userId":"u9"}"#, "[]", "m", "l");
        let shape = Shape::parse(&split.shape).unwrap();
        assert!(shape.join("[]", "m", "l").is_err());
        assert!(Shape::parse("[]").is_err());
    }
}
