//! A run's writes, staged in temp tables while it reads, then copied into the main tables in
//! one short write transaction (`commit_staged_state`).

use rusqlite::{Connection, params};

// ─── A run's writes, staged in temp tables, then copied in one short write transaction ───────
//
// The diff reads inside a read transaction, which never takes SQLite's write lock, so an
// upstream writer can load snapshots (and delivery can confirm messages) for as long as a big
// run takes. What the run will write goes to these temp tables meanwhile: temp tables live in
// the connection's own temp database, and writing them does not lock the main database.

/// Create (or empty) the connection's staging tables of planned state (a run stages its
/// messages beside them, `outbox::create_staging`). Call inside the run's read transaction.
pub fn create_staging(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.run_state;
         DROP TABLE IF EXISTS temp.run_membership;
         DROP TABLE IF EXISTS temp.run_event_times;
         -- No key: a run changes each (computation, subject, entity) once, so rows are only
         -- appended, which is the cheapest insert.
         CREATE TEMP TABLE run_state (
             computation_id TEXT NOT NULL,
             subject TEXT NOT NULL,
             entity_id TEXT NOT NULL,
             email TEXT,
             planned TEXT,
             override INTEGER NOT NULL
         );
         CREATE TEMP TABLE run_membership (
             user_id TEXT NOT NULL,
             group_id TEXT NOT NULL,
             email TEXT,
             planned INTEGER NOT NULL,
             PRIMARY KEY (user_id, group_id)
         ) WITHOUT ROWID;
         CREATE TEMP TABLE run_event_times (
             entity_id TEXT NOT NULL,
             event_name TEXT NOT NULL,
             last_at INTEGER NOT NULL,
             PRIMARY KEY (entity_id, event_name)
         ) WITHOUT ROWID;",
    )
}

/// Drop the staging tables of planned state.
pub fn drop_staging(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.run_state;
         DROP TABLE IF EXISTS temp.run_membership;
         DROP TABLE IF EXISTS temp.run_event_times;",
    )
}

/// Stage the planned value of (computation, subject, entity) that a run changed. `overrides`:
/// the value differs from the entity's row in the snapshot the run diffed (an audience exit's
/// `false`), so it is kept as an override; otherwise the new base holds it and any override of
/// the entity goes.
pub fn stage_value(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
    email: Option<&str>,
    planned: Option<&str>,
    overrides: bool,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO temp.run_state \
         (computation_id, subject, entity_id, email, planned, override) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    stmt.execute(params![
        computation_id,
        subject,
        entity_id,
        email,
        planned,
        overrides
    ])?;
    Ok(())
}

/// Stage whether (user, account) is planned attached.
pub fn stage_membership(
    conn: &Connection,
    user_id: &str,
    group_id: &str,
    email: Option<&str>,
    attached: bool,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO temp.run_membership (user_id, group_id, email, planned) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    stmt.execute(params![user_id, group_id, email, attached as i64])?;
    Ok(())
}

/// Stage the last event time used for (user, event name).
pub fn stage_event_time(
    conn: &Connection,
    entity_id: &str,
    event_name: &str,
    at: i64,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO temp.run_event_times (entity_id, event_name, last_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (entity_id, event_name) DO UPDATE SET last_at = max(last_at, excluded.last_at)",
    )?;
    stmt.execute(params![entity_id, event_name, at])?;
    Ok(())
}

/// Copy the staged planned state, attachments and event times into the main tables (inside the
/// run's write transaction, before the planned bases move to the diffed snapshots). Only the
/// overrides of changed entities are written; the attachments and event times are staged keyed
/// like their targets, so their copies walk the target B-trees in order.
pub fn commit_staged_state(conn: &Connection) -> rusqlite::Result<()> {
    // `WHERE true`: SQLite's parser needs it between INSERT … SELECT and ON CONFLICT.
    // A re-planned entity's dead-lettered change is spent (checked first: the table is empty
    // but after dead letters, and the IN list would otherwise walk every staged row).
    let replans: bool =
        conn.query_row("SELECT EXISTS (SELECT 1 FROM replans)", [], |r| r.get(0))?;
    if replans {
        conn.execute(
            "DELETE FROM replans WHERE (computation_id, subject, entity_id) IN
               (SELECT computation_id, subject, entity_id FROM temp.run_state)",
            [],
        )?;
    }
    conn.execute_batch(
        "DELETE FROM planned_overrides WHERE (computation_id, subject, entity_id) IN
           (SELECT computation_id, subject, entity_id FROM temp.run_state WHERE override = 0);
         INSERT INTO planned_overrides (computation_id, subject, entity_id, email, planned)
           SELECT computation_id, subject, entity_id, email, planned FROM temp.run_state
           WHERE override = 1
           ON CONFLICT (computation_id, subject, entity_id) DO UPDATE SET
             planned = excluded.planned, email = coalesce(excluded.email, planned_overrides.email);
         INSERT INTO membership_state (user_id, group_id, email, planned)
           SELECT user_id, group_id, email, planned FROM temp.run_membership WHERE true
           ON CONFLICT (user_id, group_id) DO UPDATE SET planned = excluded.planned,
             email = coalesce(excluded.email, membership_state.email);
         INSERT INTO event_times (entity_id, event_name, last_at)
           SELECT entity_id, event_name, last_at FROM temp.run_event_times WHERE true
           ON CONFLICT (entity_id, event_name) DO UPDATE SET
             last_at = max(event_times.last_at, excluded.last_at);",
    )
}
