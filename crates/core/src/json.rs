//! JSON as the edges read it: strict parsing (no key twice in one object) and `serde_json`'s
//! errors as text for a line-oriented input.

/// JSON parsing that refuses what `serde_json` would otherwise let through silently: the same
/// key twice in one object (`{"user_id": "a", "user_id": "b"}` would keep the last one).
/// Everything else (nesting depth limit, lone surrogate escapes, numbers out of range) is
/// `serde_json`'s own checking.
pub mod strict_json {
    use std::cell::RefCell;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Number, Value};

    /// Why a text is not acceptable JSON.
    #[derive(Debug)]
    pub enum Error {
        /// Malformed JSON (with `serde_json`'s line and column).
        Syntax(serde_json::Error),
        /// An object holds the key twice.
        DuplicateKey {
            key: String,
            error: serde_json::Error,
        },
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::Syntax(e) => write!(f, "{e}"),
                Error::DuplicateKey { error, .. } => write!(f, "{error}"),
            }
        }
    }

    impl std::error::Error for Error {}

    /// Parse one JSON text, refusing duplicate keys at any depth.
    pub fn from_str(text: &str) -> Result<Value, Error> {
        let duplicate = RefCell::new(None);
        let mut de = serde_json::Deserializer::from_str(text);
        let result = Seed(&duplicate)
            .deserialize(&mut de)
            .and_then(|value| de.end().map(|()| value));
        result.map_err(|error| match duplicate.into_inner() {
            Some(key) => Error::DuplicateKey { key, error },
            None => Error::Syntax(error),
        })
    }

    #[derive(Clone, Copy)]
    struct Seed<'a>(&'a RefCell<Option<String>>);

    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = Value;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element_seed(self)? {
                items.push(item);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut object = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if object.contains_key(&key) {
                    let message = format!("the key `{key}` appears twice in one object");
                    *self.0.borrow_mut() = Some(key);
                    return Err(de::Error::custom(message));
                }
                let value = map.next_value_seed(self)?;
                object.insert(key, value);
            }
            Ok(Value::Object(object))
        }
    }
}

/// A `serde_json` error as text, its position given as the column (the line is the input's).
pub fn json_reason(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&position) {
        Some(message) if error.column() > 0 => format!("{message} (column {})", error.column()),
        Some(message) => message.to_string(),
        None => text,
    }
}
