//! The outbox: enqueueing a run's messages, listing pending ones in order, and the two state
//! transitions delivery ends every message with (`mark_delivered`, `mark_dead`).

use std::collections::HashMap;

use audience_sync_core::shape::{self, Shape};
use rusqlite::types::{FromSqlResult, Type, Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::now_unix;

/// One state change a message implies. Delivery confirms it (`mark_delivered`: delivered state
/// takes the value) or undoes it (`mark_dead`: planned state goes back to delivered state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Effect {
    /// A value of planned / delivered state (`planned_overrides`, `delivered_state`).
    Value {
        computation_id: String,
        subject: String,
        entity_id: String,
        value: Value,
        /// The time of the track event the change fired (in a later message of the lane), if
        /// it fired one. A dead letter keeps it (`replans`), so the re-plan sends the event
        /// with this time or, when it is `None`, sends none. Older messages have no such key:
        /// they re-plan as before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        track_at: Option<i64>,
    },
    /// A row of `membership_state`.
    Membership { membership: MembershipEffect },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembershipEffect {
    pub group_id: String,
    pub user_id: String,
    pub attached: bool,
}

/// A message waiting for delivery, as `pending` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// Global outbox order. Within one lane, deliver strictly in `seq` order.
    pub seq: i64,
    /// Messages of one lane (a user, or `account:<group id>`) must be delivered in order, one at
    /// a time; different lanes are independent.
    pub lane: String,
    pub message_id: String,
    /// `identify`, `track` or `group`.
    pub kind: String,
    /// The Segment-spec message.
    pub body: Value,
    pub attempts: i64,
    /// Unix seconds before which the message must not be tried again; `None` = now.
    pub next_attempt_at: Option<i64>,
    /// Unix seconds: since when the message has been failing with transient errors, if it is.
    pub failing_since: Option<i64>,
}

/// A message to enqueue.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub lane: &'a str,
    pub message_id: &'a str,
    pub kind: &'a str,
    pub body: &'a str,
    pub effects: &'a str,
}

/// Insert one message; `false` when a pending message with the same id is already queued (the
/// same change planned twice: nothing new to send). The row keeps its body and effects whole
/// (`send` queues messages of any shape; a run's messages go through [`stage`]).
pub fn enqueue(
    tx: &Connection,
    run_id: Option<i64>,
    message: &NewMessage<'_>,
    now: i64,
) -> rusqlite::Result<bool> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO outbox (run_id, lane, message_id, type, body, effects, enqueued_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let n = stmt.execute(params![
        run_id,
        message.lane,
        stored_message_id(message.message_id),
        message.kind,
        message.body,
        message.effects,
        now
    ])?;
    Ok(n == 1)
}

/// A message id as the outbox stores it: a planner's `personas_` + 32 lower-case hex digits as
/// their 16 bytes (a BLOB), any other id as its text.
pub fn stored_message_id(id: &str) -> SqlValue {
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
            return SqlValue::Blob(bytes);
        }
    }
    SqlValue::Text(id.to_string())
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

thread_local! {
    /// The shapes staged on this thread since the staging tables were created: shape text →
    /// its id in `temp.run_outbox_shapes` (a run stages on one thread, with one connection).
    static STAGED_SHAPES: std::cell::RefCell<std::collections::HashMap<String, i64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Create (or empty) the connection's temp tables of a run's staged messages and their shapes
/// (called by `state::create_staging`, inside the run's read transaction).
pub fn create_staging(conn: &Connection) -> rusqlite::Result<()> {
    STAGED_SHAPES.with(|shapes| shapes.borrow_mut().clear());
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.run_outbox;
         DROP TABLE IF EXISTS temp.run_outbox_shapes;
         CREATE TEMP TABLE run_outbox (
             lane TEXT NOT NULL,
             message_id TEXT NOT NULL,
             type TEXT NOT NULL,
             body TEXT NOT NULL,
             effects TEXT NOT NULL,
             shape INTEGER,
             parts TEXT,
             with_user INTEGER NOT NULL
         );
         CREATE TEMP TABLE run_outbox_shapes (
             id INTEGER PRIMARY KEY,
             shape TEXT NOT NULL UNIQUE
         );",
    )
}

pub fn drop_staging(conn: &Connection) -> rusqlite::Result<()> {
    STAGED_SHAPES.with(|shapes| shapes.borrow_mut().clear());
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.run_outbox; DROP TABLE IF EXISTS temp.run_outbox_shapes;",
    )
}

/// Stage one message of a run (see `state::create_staging`); `enqueue_staged` enqueues them.
/// `with_user`: a `group` call carrying a userId (an attach). The body and effects are staged
/// split into their shape and parts (`audience_sync_core::shape`), or whole when they do not
/// split.
pub fn stage(conn: &Connection, message: &NewMessage<'_>, with_user: bool) -> rusqlite::Result<()> {
    let split = shape::split(
        message.body,
        message.effects,
        message.message_id,
        message.lane,
    );
    stage_split(conn, message, split.as_ref(), with_user)
}

/// [`stage`] of a message the planner holds as values (no text to parse back).
pub fn stage_values(
    conn: &Connection,
    lane: &str,
    message_id: &str,
    kind: &str,
    body: &Value,
    effects: &Value,
    with_user: bool,
) -> rusqlite::Result<()> {
    let split = shape::split_values(body, effects, message_id, lane);
    let message = NewMessage {
        lane,
        message_id,
        kind,
        body: "",
        effects: "",
    };
    stage_split(conn, &message, Some(&split), with_user)
}

/// Stage a message split into shape and parts, or (without a split) whole.
fn stage_split(
    conn: &Connection,
    message: &NewMessage<'_>,
    split: Option<&shape::Split>,
    with_user: bool,
) -> rusqlite::Result<()> {
    let (body, effects, shape, parts) = match split {
        Some(split) => {
            // A run has a handful of shapes and stages them thousands of times each: the
            // staged id is looked up here, not by an upsert on the shape text's index.
            let known = STAGED_SHAPES.with(|shapes| shapes.borrow().get(&split.shape).copied());
            let id = match known {
                Some(id) => id,
                None => {
                    let mut stmt = conn.prepare_cached(
                        "INSERT INTO temp.run_outbox_shapes (shape) VALUES (?1) \
                         ON CONFLICT (shape) DO UPDATE SET shape = excluded.shape RETURNING id",
                    )?;
                    let id: i64 = stmt.query_row([&split.shape], |r| r.get(0))?;
                    STAGED_SHAPES
                        .with(|shapes| shapes.borrow_mut().insert(split.shape.clone(), id));
                    id
                }
            };
            ("", "", Some(id), Some(split.parts.as_str()))
        }
        None => (message.body, message.effects, None, None),
    };
    let mut stmt = conn.prepare_cached(
        "INSERT INTO temp.run_outbox (lane, message_id, type, body, effects, shape, parts, with_user) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    stmt.execute(params![
        message.lane,
        stored_message_id(message.message_id),
        message.kind,
        body,
        effects,
        shape,
        parts,
        with_user
    ])?;
    Ok(())
}

/// Messages enqueued by type: (identify, track, group with a userId, group without).
pub type EnqueuedCounts = (u64, u64, u64, u64);

/// Enqueue the staged messages in staging order, for `run_id` (inside the run's write
/// transaction), with their shapes; shapes no message uses any more go. A message whose id is
/// already pending is skipped, as [`enqueue`] does. `staged` is what was staged, by type; the
/// result is what was enqueued.
pub fn enqueue_staged(
    tx: &Connection,
    run_id: i64,
    now: i64,
    staged: EnqueuedCounts,
) -> rusqlite::Result<EnqueuedCounts> {
    let before: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM outbox", [], |r| r.get(0))?;
    // The staged shapes' ids in outbox_shapes (a map, so that each row's is a rowid lookup).
    tx.execute_batch(
        "INSERT INTO outbox_shapes (shape) SELECT shape FROM temp.run_outbox_shapes WHERE true \
           ON CONFLICT (shape) DO NOTHING;
         DROP TABLE IF EXISTS temp.run_outbox_shape_ids;
         CREATE TEMP TABLE run_outbox_shape_ids (staged INTEGER PRIMARY KEY, id INTEGER NOT NULL);
         INSERT INTO temp.run_outbox_shape_ids (staged, id) \
           SELECT t.id, s.id FROM temp.run_outbox_shapes t JOIN outbox_shapes s ON s.shape = t.shape;",
    )?;
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO outbox \
           (run_id, lane, message_id, type, body, effects, shape_id, parts, enqueued_at) \
         SELECT ?1, r.lane, r.message_id, r.type, r.body, r.effects, m.id, r.parts, ?2 \
         FROM temp.run_outbox r LEFT JOIN temp.run_outbox_shape_ids m ON m.staged = r.shape \
         ORDER BY r.rowid",
        params![run_id, now],
    )? as u64;
    // Every row of a shape has a seq at most its last_seq, so a shape whose last_seq is below
    // the oldest row's seq has no row left (rows are never renumbered).
    tx.execute_batch(
        "UPDATE outbox_shapes SET last_seq = (SELECT coalesce(max(seq), 0) FROM outbox) \
           WHERE id IN (SELECT id FROM temp.run_outbox_shape_ids);
         DROP TABLE temp.run_outbox_shape_ids;
         DELETE FROM outbox_shapes WHERE last_seq < (SELECT coalesce(min(seq), 0) FROM outbox) \
           OR NOT EXISTS (SELECT 1 FROM outbox);",
    )?;
    if inserted == staged.0 + staged.1 + staged.2 + staged.3 {
        return Ok(staged);
    }
    // Some were already pending (re-planned with the same id): count what went in.
    let mut counts = (0, 0, 0, 0);
    let mut stmt = tx.prepare(
        "SELECT s.type, s.with_user, count(*) FROM temp.run_outbox s \
         WHERE EXISTS (SELECT 1 FROM outbox o WHERE o.message_id = s.message_id \
           AND o.status = 'pending' AND o.seq > ?1) \
         GROUP BY s.type, s.with_user",
    )?;
    let mut rows = stmt.query([before])?;
    while let Some(r) = rows.next()? {
        let kind: String = r.get(0)?;
        let with_user: bool = r.get(1)?;
        let n = r.get::<_, i64>(2)? as u64;
        match (kind.as_str(), with_user) {
            ("identify", _) => counts.0 += n,
            ("track", _) => counts.1 += n,
            (_, true) => counts.2 += n,
            (_, false) => counts.3 += n,
        }
    }
    Ok(counts)
}

/// The columns [`Stored::read`] reads, from `outbox o LEFT JOIN outbox_shapes s`, at the end of
/// a select list.
const STORED: &str = "o.lane, o.message_id, o.body, o.effects, o.parts, s.shape";
/// The join [`STORED`] needs: `FROM` + this.
const STORED_FROM: &str = "outbox o LEFT JOIN outbox_shapes s ON s.id = o.shape_id";

/// An outbox row's body and effects as stored: whole, or a shape and its parts.
struct Stored {
    lane: String,
    message_id: String,
    body: String,
    effects: String,
    parts: Option<String>,
    shape: Option<String>,
}

impl Stored {
    /// The [`STORED`] columns of `row`, starting at column `at`.
    fn read(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Stored> {
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
    fn message(&self, shapes: &mut HashMap<String, Shape>) -> Result<(Value, Value), String> {
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

    fn effects(&self, shapes: &mut HashMap<String, Shape>) -> Result<Vec<Effect>, String> {
        let effects = match &self.shape {
            Some(_) => self.message(shapes)?.1,
            None => serde_json::from_str(&self.effects).map_err(|e| e.to_string())?,
        };
        serde_json::from_value(effects).map_err(|e| e.to_string())
    }
}

fn unreadable(column: usize, seq: i64, what: &str, e: String) -> rusqlite::Error {
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

/// Up to `limit` pending messages in outbox order (`seq`), due or not: delivery keeps lane order
/// by never starting a lane's message while an earlier one of the same lane is unfinished.
pub fn pending(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<OutboxMessage>> {
    pending_after(conn, 0, limit)
}

/// Like [`pending`], starting after `after_seq` (for paging through a large outbox).
pub fn pending_after(
    conn: &Connection,
    after_seq: i64,
    limit: usize,
) -> rusqlite::Result<Vec<OutboxMessage>> {
    let sql = format!(
        "SELECT o.seq, o.type, o.attempts, o.next_attempt_at, o.failing_since, {STORED} \
         FROM {STORED_FROM} WHERE o.status = 'pending' AND o.seq > ?1 ORDER BY o.seq LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut shapes = HashMap::new();
    let mut rows = stmt.query(params![after_seq, limit as i64])?;
    let mut messages = Vec::new();
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let stored = Stored::read(r, 5)?;
        let (body, _) = stored
            .message(&mut shapes)
            .map_err(|e| unreadable(7, seq, "body", e))?;
        messages.push(OutboxMessage {
            seq,
            lane: stored.lane,
            message_id: stored.message_id,
            kind: r.get(1)?,
            body,
            attempts: r.get(2)?,
            next_attempt_at: r.get(3)?,
            failing_since: r.get(4)?,
        });
    }
    Ok(messages)
}

/// Record a failed attempt that will be retried: attempts + 1, the error, and when to retry.
pub fn schedule_retry(
    conn: &Connection,
    seq: i64,
    error: &str,
    next_attempt_at: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3 \
         WHERE seq = ?1 AND status = 'pending'",
        params![seq, error, next_attempt_at],
    )?;
    Ok(())
}

/// Record a transient failure (408, 5xx, a timeout, no connection) that will be retried: not an
/// attempt; the error, when to retry, and since when the message has been failing (kept from its
/// first transient failure on).
pub fn schedule_transient(
    conn: &Connection,
    seq: i64,
    error: &str,
    next_attempt_at: i64,
    failing_since: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE outbox SET last_error = ?2, next_attempt_at = ?3, \
         failing_since = coalesce(failing_since, ?4) WHERE seq = ?1 AND status = 'pending'",
        params![seq, error, next_attempt_at, failing_since],
    )?;
    Ok(())
}

/// Intercom answers again after an outage: every pending message is due now and no longer
/// failing (the failures were Intercom's, not the messages'). Returns how many it touched.
pub fn clear_transient_failures(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE outbox SET failing_since = NULL, next_attempt_at = NULL \
         WHERE status = 'pending' AND failing_since IS NOT NULL",
        [],
    )
}

/// What `mark_delivered` / `mark_dead` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// The row was pending and is now finished, with its effects applied.
    Done,
    /// No pending row with that seq (already finished, or unknown): nothing changed.
    NotPending,
}

/// Intercom confirmed the message: in ONE transaction the row becomes `delivered` and every
/// effect moves delivered state to the effect's value.
pub fn mark_delivered(conn: &mut Connection, seq: i64) -> anyhow::Result<Marked> {
    finish(conn, seq, None)
}

/// The message failed for good: in ONE transaction the row becomes `dead` with `reason`, and
/// every effect puts planned state back to delivered state (and forgets the plan cursors of what
/// it touched), so the next run re-emits those entities with fresh values.
pub fn mark_dead(conn: &mut Connection, seq: i64, reason: &str) -> anyhow::Result<Marked> {
    finish(conn, seq, Some(reason))
}

fn finish(conn: &mut Connection, seq: i64, dead: Option<&str>) -> anyhow::Result<Marked> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let sql =
        format!("SELECT {STORED} FROM {STORED_FROM} WHERE o.seq = ?1 AND o.status = 'pending'");
    let stored = tx
        .query_row(&sql, [seq], |r| Stored::read(r, 0))
        .optional()?;
    let Some(stored) = stored else {
        return Ok(Marked::NotPending);
    };
    let effects = stored
        .effects(&mut HashMap::new())
        .map_err(|e| anyhow::anyhow!("outbox message {seq} has unreadable effects: {e}"))?;
    let now = now_unix();
    match dead {
        None => {
            tx.execute(
                "UPDATE outbox SET status = 'delivered', finished_at = ?2 WHERE seq = ?1",
                params![seq, now],
            )?;
        }
        Some(reason) => {
            tx.execute(
                "UPDATE outbox SET status = 'dead', finished_at = ?2, last_error = ?3 WHERE seq = ?1",
                params![seq, now, reason],
            )?;
        }
    }
    for effect in &effects {
        apply(&tx, effect, dead.is_some())?;
    }
    tx.commit()?;
    Ok(Marked::Done)
}

fn apply(tx: &Transaction<'_>, effect: &Effect, dead: bool) -> rusqlite::Result<()> {
    match effect {
        Effect::Value {
            computation_id,
            subject,
            entity_id,
            value,
            track_at,
        } => {
            if dead {
                // What the change emitted, so the re-plan emits exactly that (SPEC section 6).
                super::state::remember_replan(
                    tx,
                    computation_id,
                    subject,
                    entity_id,
                    value,
                    *track_at,
                )?;
                let delivered =
                    super::state::delivered_value(tx, computation_id, subject, entity_id)?;
                super::state::override_planned(
                    tx,
                    computation_id,
                    subject,
                    entity_id,
                    None,
                    delivered.as_deref(),
                )?;
                tx.execute(
                    "DELETE FROM plan_cursors WHERE subject = ?1",
                    [computation_id],
                )?;
                super::state::bump_dead_letter_generation(tx)?;
            } else {
                match super::state::json_text(value) {
                    Some(value) => tx.execute(
                        "INSERT INTO delivered_state (computation_id, subject, entity_id, delivered) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (computation_id, subject, entity_id) \
                         DO UPDATE SET delivered = excluded.delivered",
                        params![computation_id, subject, entity_id, value],
                    )?,
                    None => tx.execute(
                        "DELETE FROM delivered_state WHERE computation_id = ?1 AND subject = ?2 \
                         AND entity_id = ?3",
                        params![computation_id, subject, entity_id],
                    )?,
                };
            }
        }
        Effect::Membership { membership } => {
            if dead {
                tx.execute(
                    "UPDATE membership_state SET planned = delivered WHERE user_id = ?1 AND group_id = ?2",
                    params![membership.user_id, membership.group_id],
                )?;
                tx.execute("DELETE FROM plan_cursors WHERE subject = 'membership'", [])?;
                super::state::bump_dead_letter_generation(tx)?;
            } else {
                tx.execute(
                    "UPDATE membership_state SET delivered = ?3 WHERE user_id = ?1 AND group_id = ?2",
                    params![
                        membership.user_id,
                        membership.group_id,
                        membership.attached as i64
                    ],
                )?;
            }
            tx.execute(
                "DELETE FROM membership_state WHERE user_id = ?1 AND group_id = ?2 \
                 AND planned = 0 AND delivered = 0",
                params![membership.user_id, membership.group_id],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Kind;
    use crate::plan::message::{self, ComputationRef, User};
    use serde_json::json;

    const COMPUTATIONS: [ComputationRef<'static>; 5] = [
        ComputationRef {
            id: "tra_2TqVbMcFZ1x9lqbrUYsEbQnUDWj",
            key: "lifetime_value",
            kind: Kind::Trait,
        },
        ComputationRef {
            id: "tra_2TqVbNfGk3Lw0pQzRmXsYtUvAbC",
            key: "plan_tier",
            kind: Kind::Trait,
        },
        ComputationRef {
            id: "tra_2TqVbPhJm5Ny2rSaTnZuAwBxCdE",
            key: "orders_last_30_days",
            kind: Kind::Trait,
        },
        ComputationRef {
            id: "tra_2TqVbQkLo7Pa4tUcVpBwCyDzEfG",
            key: "country",
            kind: Kind::Trait,
        },
        ComputationRef {
            id: "tra_2TqVbRmNq9Rc6vWeXrDyEaFbGhI",
            key: "is_vip",
            kind: Kind::Trait,
        },
    ];

    /// A typical initial-sync identify of user `i` with its five traits and effects, as the
    /// planner builds them.
    fn typical_identify(i: usize) -> (String, String, String, String) {
        let entity_id = format!("user{i:08}");
        let email = format!("user{i:08}@example.com");
        let user = User {
            entity_id: &entity_id,
            email: Some(&email),
        };
        let values = [
            json!(i as f64 * 1.5),
            json!(["free", "pro", "enterprise"][i % 3]),
            json!(i % 40),
            json!(["DE", "US", "FR", "BR"][i % 4]),
            json!(i.is_multiple_of(7)),
        ];
        let traits: Vec<_> = COMPUTATIONS
            .iter()
            .copied()
            .zip(values.iter().cloned())
            .collect();
        let id = message::message_id(&["identify", &entity_id, &i.to_string()]);
        let body = message::identify("spa_prod", user, &traits, &[], 1_700_000_000, &id).to_value();
        let effects: Vec<Effect> = traits
            .iter()
            .map(|(c, v)| Effect::Value {
                computation_id: c.id.to_string(),
                subject: "user".into(),
                entity_id: entity_id.clone(),
                value: v.clone(),
                track_at: None,
            })
            .collect();
        (
            entity_id,
            id,
            body.to_string(),
            serde_json::to_string(&effects).unwrap(),
        )
    }

    /// Bytes on disk of the outbox and everything that stores it (its indexes and tables),
    /// by b-tree, from `dbstat`.
    fn outbox_bytes(conn: &Connection) -> Vec<(String, i64)> {
        conn.prepare(
            "SELECT name, sum(pgsize) FROM dbstat WHERE name LIKE 'outbox%' GROUP BY name ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn a_typical_identify_takes_at_most_400_bytes_on_disk() {
        const N: usize = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open(&dir.path().join("t.db")).unwrap();
        let messages: Vec<_> = (0..N).map(typical_identify).collect();
        create_staging(&conn).unwrap();
        // As the planner stages them: values, inside the run's transaction; every tenth as
        // text (`stage`), which must give the same rows.
        let values: Vec<(Value, Value)> = messages
            .iter()
            .map(|(_, _, body, effects)| {
                (
                    serde_json::from_str(body).unwrap(),
                    serde_json::from_str(effects).unwrap(),
                )
            })
            .collect();
        let started = std::time::Instant::now();
        conn.execute_batch("BEGIN").unwrap();
        for (i, ((lane, id, body, effects), (body_value, effects_value))) in
            messages.iter().zip(&values).enumerate()
        {
            if i % 10 == 0 {
                let message = NewMessage {
                    lane,
                    message_id: id,
                    kind: "identify",
                    body,
                    effects,
                };
                stage(&conn, &message, false).unwrap();
            } else {
                stage_values(
                    &conn,
                    lane,
                    id,
                    "identify",
                    body_value,
                    effects_value,
                    false,
                )
                .unwrap();
            }
        }
        conn.execute_batch("COMMIT").unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO runs (id, mode, started_at) VALUES (1, 'full', 0)",
            [],
        )
        .unwrap();
        let counts = enqueue_staged(&tx, 1, 0, (N as u64, 0, 0, 0)).unwrap();
        tx.commit().unwrap();
        assert_eq!(counts, (N as u64, 0, 0, 0));
        drop_staging(&conn).unwrap();
        eprintln!("staged and enqueued {N} in {:?}", started.elapsed());

        let bytes = outbox_bytes(&conn);
        let total: i64 = bytes.iter().map(|(_, b)| b).sum();
        let per_message = total as f64 / N as f64;
        eprintln!(
            "body {} B, effects {} B; on disk {per_message:.1} B a message: {bytes:?}",
            messages[0].2.len(),
            messages[0].3.len()
        );
        let pending = pending(&conn, N + 1).unwrap();
        assert_eq!(pending.len(), N);
        for (message, (lane, id, body, effects)) in pending.iter().zip(&messages) {
            assert_eq!(&message.lane, lane);
            assert_eq!(&message.message_id, id);
            assert_eq!(message.kind, "identify");
            assert_eq!(
                message.body.to_string(),
                *body,
                "the body is the planner's, byte for byte"
            );
            let read = super::effects(&conn, message.seq).unwrap().unwrap();
            assert_eq!(serde_json::to_string(&read).unwrap(), *effects);
        }
        let shapes: i64 = conn
            .query_row("SELECT count(*) FROM outbox_shapes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(shapes, 1, "one shape for every identify of the same traits");
        assert!(per_message <= 400.0, "{per_message:.1} bytes a message");
    }

    #[test]
    fn rows_queued_before_the_migration_read_as_before_and_still_deduplicate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(include_str!("../../tests/fixtures/schema_v1.sql"))
            .unwrap();
        let (lane, id, body, effects) = typical_identify(7);
        old.execute(
            "INSERT INTO outbox (lane, message_id, type, body, effects, enqueued_at) \
             VALUES (?1, ?2, 'identify', ?3, ?4, 0)",
            params![lane, id, body, effects],
        )
        .unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        drop(old);

        let mut conn = crate::store::open(&path).unwrap();
        let stored: String = conn
            .query_row("SELECT typeof(message_id) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, "blob");
        let pending = pending(&conn, 10).unwrap();
        assert_eq!(pending[0].message_id, id);
        assert_eq!(pending[0].body.to_string(), body);
        let read = super::effects(&conn, pending[0].seq).unwrap().unwrap();
        assert_eq!(serde_json::to_string(&read).unwrap(), effects);

        // The same message planned again while the old one is pending is not queued twice.
        create_staging(&conn).unwrap();
        let message = NewMessage {
            lane: &lane,
            message_id: &id,
            kind: "identify",
            body: &body,
            effects: &effects,
        };
        stage(&conn, &message, false).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO runs (id, mode, started_at) VALUES (1, 'full', 0)",
            [],
        )
        .unwrap();
        assert_eq!(
            enqueue_staged(&tx, 1, 0, (1, 0, 0, 0)).unwrap(),
            (0, 0, 0, 0)
        );
        tx.commit().unwrap();
        assert!(!enqueue(&conn, None, &message, 0).unwrap());
    }
}
