//! The pending messages in outbox order, and what a failed attempt records for the next one.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::OutboxMessage;
use super::stored::{STORED, STORED_FROM, Stored, unreadable};
use crate::domain::Lane;
use crate::segment::{Message, MessageKind};

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
        let kind: String = r.get(1)?;
        let kind = MessageKind::parse(&kind)
            .ok_or_else(|| unreadable(1, seq, "type", format!("unknown message type {kind:?}")))?;
        messages.push(OutboxMessage {
            seq,
            lane: Lane::from_stored(stored.lane),
            message_id: stored.message_id,
            kind,
            message: Message::from_value(&body),
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
