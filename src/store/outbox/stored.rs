//! An outbox row as stored: its message id (16 bytes for a planner's id), its body and effects
//! whole or as a shape and its parts, and reading them back byte for byte.

use std::collections::HashMap;

use audience_sync_core::shape::Shape;
use rusqlite::types::{self, FromSqlResult, Type, ValueRef};
use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

use super::Effect;

/// A message id as the outbox stores it: a planner's `personas_` + 32 lower-case hex digits as
/// their 16 bytes (a BLOB), any other id as its text.
pub fn stored_message_id(id: &str) -> types::Value {
    let hex = id.strip_prefix("personas_").map(str::as_bytes);
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if let Some(hex) = hex.filter(|h| h.len() == 32) {
        let bytes: Option<Vec<u8>> = hex
            .chunks(2)
            .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
            .collect();
        if let Some(bytes) = bytes {
            return types::Value::Blob(bytes);
        }
    }
    types::Value::Text(id.to_string())
}

/// The message id of an outbox row's `message_id` (see [`stored_message_id`]).
pub fn message_id_from(stored: ValueRef<'_>) -> FromSqlResult<String> {
    match stored {
        ValueRef::Blob(bytes) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut id = String::with_capacity(9 + 2 * bytes.len());
            id.push_str("personas_");
            for byte in bytes {
                id.push(HEX[usize::from(byte >> 4)] as char);
                id.push(HEX[usize::from(byte & 0xf)] as char);
            }
            Ok(id)
        }
        other => other.as_str().map(str::to_string),
    }
}

/// The columns [`Stored::read`] reads, from `outbox o LEFT JOIN outbox_shapes s`, at the end of
/// a select list.
pub(super) const STORED: &str = "o.lane, o.message_id, o.body, o.effects, o.parts, s.shape";
/// The join [`STORED`] needs: `FROM` + this.
pub(super) const STORED_FROM: &str = "outbox o LEFT JOIN outbox_shapes s ON s.id = o.shape_id";

/// An outbox row's body and effects as stored: whole, or a shape and its parts.
pub(super) struct Stored {
    pub(super) lane: String,
    pub(super) message_id: String,
    body: String,
    effects: String,
    parts: Option<String>,
    shape: Option<String>,
}

impl Stored {
    /// The [`STORED`] columns of `row`, starting at column `at`.
    pub(super) fn read(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Stored> {
        Ok(Stored {
            lane: row.get(at)?,
            message_id: message_id_from(row.get_ref(at + 1)?).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(at + 1, Type::Text, e.into())
            })?,
            body: row.get(at + 2)?,
            effects: row.get(at + 3)?,
            parts: row.get(at + 4)?,
            shape: row.get(at + 5)?,
        })
    }

    /// The Segment message and its effects. `shapes`: shapes already read (by their text).
    pub(super) fn message(
        &self,
        shapes: &mut HashMap<String, Shape>,
    ) -> Result<(Value, Value), String> {
        match (&self.shape, &self.parts) {
            (Some(text), Some(parts)) => {
                if !shapes.contains_key(text) {
                    shapes.insert(text.clone(), Shape::parse(text)?);
                }
                shapes[text].join(parts, &self.message_id, &self.lane)
            }
            (None, Some(_)) => Err("its shape is missing".into()),
            _ => Ok((
                serde_json::from_str(&self.body).map_err(|e| e.to_string())?,
                serde_json::from_str(&self.effects).map_err(|e| e.to_string())?,
            )),
        }
    }

    pub(super) fn effects(
        &self,
        shapes: &mut HashMap<String, Shape>,
    ) -> Result<Vec<Effect>, String> {
        let effects = match &self.shape {
            Some(_) => self.message(shapes)?.1,
            None => serde_json::from_str(&self.effects).map_err(|e| e.to_string())?,
        };
        serde_json::from_value(effects).map_err(|e| e.to_string())
    }
}

pub(super) fn unreadable(column: usize, seq: i64, what: &str, e: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        Type::Text,
        format!("outbox message {seq} has an unreadable {what}: {e}").into(),
    )
}

/// The Segment message of outbox row `seq` (any status), as it was enqueued; `None` when there
/// is no such row.
pub fn body(conn: &Connection, seq: i64) -> rusqlite::Result<Option<Value>> {
    let sql = format!("SELECT {STORED} FROM {STORED_FROM} WHERE o.seq = ?1");
    let stored = conn
        .prepare_cached(&sql)?
        .query_row([seq], |r| Stored::read(r, 0))
        .optional()?;
    stored
        .map(|s| s.message(&mut HashMap::new()).map(|(body, _)| body))
        .transpose()
        .map_err(|e| unreadable(2, seq, "body", e))
}

/// The effects of outbox row `seq` (any status); `None` when there is no such row.
pub fn effects(conn: &Connection, seq: i64) -> rusqlite::Result<Option<Vec<Effect>>> {
    let sql = format!("SELECT {STORED} FROM {STORED_FROM} WHERE o.seq = ?1");
    let stored = conn
        .prepare_cached(&sql)?
        .query_row([seq], |r| Stored::read(r, 0))
        .optional()?;
    stored
        .map(|s| s.effects(&mut HashMap::new()))
        .transpose()
        .map_err(|e| unreadable(3, seq, "effects", e))
}

/// The `seq` of the first message of each type (identify, track, group) a run enqueued, in
/// outbox order: the run's example messages `demo` shows.
pub fn first_of_each_type(conn: &Connection, run_id: i64) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare(
        "SELECT seq FROM outbox WHERE run_id = ?1 AND seq = (SELECT min(seq) FROM outbox o \
         WHERE o.run_id = ?1 AND o.type = outbox.type) ORDER BY seq",
    )?;
    stmt.query_map([run_id], |r| r.get(0))?.collect()
}
