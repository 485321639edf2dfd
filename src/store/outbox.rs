//! The outbox: enqueueing a run's messages, listing pending ones in order, and the two state
//! transitions delivery ends every message with (`mark_delivered`, `mark_dead`).

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
/// same change planned twice: nothing new to send).
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
        message.message_id,
        message.kind,
        message.body,
        message.effects,
        now
    ])?;
    Ok(n == 1)
}

/// Create (or empty) the connection's temp table of a run's staged messages (called by
/// `state::create_staging`, inside the run's read transaction).
pub fn create_staging(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.run_outbox;
         CREATE TEMP TABLE run_outbox (
             lane TEXT NOT NULL,
             message_id TEXT NOT NULL,
             type TEXT NOT NULL,
             body TEXT NOT NULL,
             effects TEXT NOT NULL,
             with_user INTEGER NOT NULL
         );",
    )
}

pub fn drop_staging(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("DROP TABLE IF EXISTS temp.run_outbox;")
}

/// Stage one message of a run (see `state::create_staging`); `enqueue_staged` enqueues them.
/// `with_user`: a `group` call carrying a userId (an attach).
pub fn stage(conn: &Connection, message: &NewMessage<'_>, with_user: bool) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO temp.run_outbox (lane, message_id, type, body, effects, with_user) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    stmt.execute(params![
        message.lane,
        message.message_id,
        message.kind,
        message.body,
        message.effects,
        with_user
    ])?;
    Ok(())
}

/// Messages enqueued by type: (identify, track, group with a userId, group without).
pub type EnqueuedCounts = (u64, u64, u64, u64);

/// Enqueue the staged messages in staging order, for `run_id` (inside the run's write
/// transaction). A message whose id is already pending is skipped, as [`enqueue`] does.
/// `staged` is what was staged, by type; the result is what was enqueued.
pub fn enqueue_staged(
    tx: &Connection,
    run_id: i64,
    now: i64,
    staged: EnqueuedCounts,
) -> rusqlite::Result<EnqueuedCounts> {
    let before: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM outbox", [], |r| r.get(0))?;
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO outbox (run_id, lane, message_id, type, body, effects, enqueued_at) \
         SELECT ?1, lane, message_id, type, body, effects, ?2 FROM temp.run_outbox ORDER BY rowid",
        params![run_id, now],
    )? as u64;
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
    let mut stmt = conn.prepare_cached(
        "SELECT seq, lane, message_id, type, body, attempts, next_attempt_at, failing_since \
         FROM outbox \
         WHERE status = 'pending' AND seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    stmt.query_map(params![after_seq, limit as i64], |r| {
        let body: String = r.get(4)?;
        Ok(OutboxMessage {
            seq: r.get(0)?,
            lane: r.get(1)?,
            message_id: r.get(2)?,
            kind: r.get(3)?,
            body: serde_json::from_str(&body).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into())
            })?,
            attempts: r.get(5)?,
            next_attempt_at: r.get(6)?,
            failing_since: r.get(7)?,
        })
    })?
    .collect()
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
    let effects: Option<String> = tx
        .query_row(
            "SELECT effects FROM outbox WHERE seq = ?1 AND status = 'pending'",
            [seq],
            |r| r.get(0),
        )
        .optional()?;
    let Some(effects) = effects else {
        return Ok(Marked::NotPending);
    };
    let effects: Vec<Effect> = serde_json::from_str(&effects)
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
