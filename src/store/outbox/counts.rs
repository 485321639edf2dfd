//! What the outbox holds, counted: what delivery has left, what `status` reports and `/metrics`
//! exports.

use rusqlite::Connection;

/// Messages still to deliver.
pub fn pending_count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM outbox WHERE status = 'pending'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

/// The highest pending sequence number, if any.
pub fn max_pending_seq(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT max(seq) FROM outbox WHERE status = 'pending'",
        [],
        |r| r.get(0),
    )
}

/// The outbox's messages by state, as `status` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Pending, waiting for their first delivery attempt.
    pub pending: i64,
    /// Pending after at least one failed attempt (or transient failure).
    pub retrying: i64,
    pub delivered: i64,
    pub dead: i64,
}

/// Count the outbox's messages by state.
pub fn outbox_counts(conn: &Connection) -> rusqlite::Result<OutboxCounts> {
    let mut counts = OutboxCounts::default();
    let mut stmt = conn.prepare(
        "SELECT status, attempts > 0 OR failing_since IS NOT NULL, count(*) FROM outbox \
         GROUP BY 1, 2",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let state: String = row.get(0)?;
        let tried: bool = row.get(1)?;
        let n: i64 = row.get(2)?;
        match (state.as_str(), tried) {
            ("pending", false) => counts.pending += n,
            ("pending", true) => counts.retrying += n,
            ("delivered", _) => counts.delivered += n,
            ("dead", _) => counts.dead += n,
            _ => {}
        }
    }
    Ok(counts)
}

/// How many outbox messages have one value of `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCount {
    pub status: String,
    pub messages: i64,
}

/// The outbox's messages per `status` (only the values that occur, in order), as `/metrics`
/// exports them.
pub fn messages_by_status(conn: &Connection) -> rusqlite::Result<Vec<StatusCount>> {
    let mut stmt =
        conn.prepare("SELECT status, count(*) FROM outbox GROUP BY status ORDER BY status")?;
    stmt.query_map([], |r| {
        Ok(StatusCount {
            status: r.get(0)?,
            messages: r.get(1)?,
        })
    })?
    .collect()
}

/// When the oldest pending message was enqueued (unix seconds); `None` when none is pending.
pub fn oldest_pending_enqueued_at(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT min(enqueued_at) FROM outbox WHERE status = 'pending'",
        [],
        |r| r.get(0),
    )
}
