//! What a caller does with a connection as a whole rather than with a table: explicit
//! transactions that span many store calls (a run's read transactions and its chunks' write
//! transactions, `plan/run.rs`), a connection's page cache, checkpointing the write-ahead log,
//! and SQLite's integrity check (the daemon's first health check).

use rusqlite::Connection;

/// Begin a deferred transaction: it reads a consistent view of the database from its first
/// read, and takes the write lock only if it writes.
pub fn begin_deferred(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN DEFERRED")
}

/// Begin a write transaction, taking the write lock now (waiting up to the busy timeout).
pub fn begin_immediate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
}

/// Commit the transaction [`begin_deferred`] or [`begin_immediate`] began.
pub fn commit(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("COMMIT")
}

/// Roll back the transaction open on `conn`, if there is one.
pub fn rollback_open_transaction(conn: &Connection) -> rusqlite::Result<()> {
    if conn.is_autocommit() {
        return Ok(());
    }
    conn.execute_batch("ROLLBACK")
}

/// Set the connection's page cache: `size` negative is KiB (SQLite's convention), positive a
/// number of pages.
pub fn set_cache_size(conn: &Connection, size: i64) -> rusqlite::Result<()> {
    conn.pragma_update(None, "cache_size", size)
}

/// What a `TRUNCATE` checkpoint of the write-ahead log did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Another connection kept it from finishing (it is simply tried again later).
    pub busy: bool,
    /// Frames in the log (-1 when the database is not in WAL mode).
    pub log_frames: i64,
    /// Frames copied into the database (-1 likewise).
    pub checkpointed_frames: i64,
}

/// Copy the write-ahead log into the database and truncate it, if no reader still needs it.
pub fn checkpoint_truncate(conn: &Connection) -> rusqlite::Result<Checkpoint> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok(Checkpoint {
            busy: r.get::<_, i64>(0)? != 0,
            log_frames: r.get(1)?,
            checkpointed_frames: r.get(2)?,
        })
    })
}

/// SQLite's quick check of the database's structure: `None` when it finds nothing wrong,
/// otherwise the first problem it reports.
pub fn quick_check(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let verdict: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    Ok((verdict != "ok").then_some(verdict))
}

/// How long a `/metrics` scrape's reads wait for another connection's lock: a scrape answers
/// within a scraper's timeout, even beside a long write.
pub const SCRAPE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A read-only connection for one `/metrics` scrape (or `/healthz`): [`super::open_reader`]
/// with [`SCRAPE_BUSY_TIMEOUT`].
pub fn open_for_scrape(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = super::open_reader(path)?;
    conn.busy_timeout(SCRAPE_BUSY_TIMEOUT)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_begin_commit_and_roll_back() {
        let conn = super::super::open_in_memory().unwrap();
        rollback_open_transaction(&conn).unwrap();
        begin_deferred(&conn).unwrap();
        assert!(!conn.is_autocommit());
        commit(&conn).unwrap();
        assert!(conn.is_autocommit());
        begin_immediate(&conn).unwrap();
        rollback_open_transaction(&conn).unwrap();
        assert!(conn.is_autocommit());
        set_cache_size(&conn, -4096).unwrap();
        assert_eq!(quick_check(&conn).unwrap(), None);
    }

    #[test]
    fn a_checkpoint_of_a_file_database_truncates_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = super::super::open(&path).unwrap();
        let done = checkpoint_truncate(&conn).unwrap();
        assert!(!done.busy, "{done:?}");
        assert_eq!(
            std::fs::metadata(format!("{}-wal", path.display()))
                .unwrap()
                .len(),
            0
        );
    }
}
