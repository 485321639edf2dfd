//! The queries of computations defined in SQL (SPEC section 11), and the record of each compute.
//!
//! A query runs on its own read-only connection (`query_only` on top of a read-only open), as
//! one statement that SQLite itself reports as read-only, with `:now` bound and a watchdog that
//! interrupts it after `compute.timeout_secs`. Its rows come out as `load::Record`s, so every
//! rule and rejection of `load` applies to them unchanged (`compute` checks them with
//! `load::snapshot_row` and stores them with `snapshots::store_snapshot`).
//!
//! SQLite has no boolean or array type, so a cell becomes a field like this:
//! - `NULL` is an absent field (as an empty CSV cell is);
//! - `INTEGER` and `REAL` are JSON numbers (an integer identifier is its decimal text, as in
//!   `load`);
//! - `TEXT` is a string, except in the `value` column, where text that is a JSON boolean, array or
//!   object is taken as that JSON (`'true'`, `json_array(…)`, `json_group_array(…)`; an object is
//!   then refused as `load` refuses it); other text stays a string (`'02134'` is not a number);
//! - `BLOB` is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use audience_sync_core::json::strict_json;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Statement, params};
use serde_json::{Map, Value};

use crate::load::Record;

/// How many compute records (`computes`) are kept.
pub const KEPT_COMPUTES: i64 = 1_000;

/// Why a query stored nothing before its rows were checked.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement is refused before it runs: it writes, it is several statements, it
    /// returns columns a snapshot does not have, it has parameters other than `:now`.
    #[error("{0}")]
    Refused(String),
    /// SQLite could not prepare or run it.
    #[error("the query failed: {0}")]
    Failed(String),
    /// It ran longer than the timeout and was interrupted.
    #[error("the query ran longer than compute.timeout_secs ({} s) and was stopped", .0.as_secs())]
    TimedOut(Duration),
    /// One cell cannot be a snapshot field (a BLOB, text that is not UTF-8, a number that is not
    /// finite).
    #[error("row {row}: field `{column}`: {reason}")]
    Cell {
        row: u64,
        column: String,
        reason: String,
    },
}

/// A read-only connection for computation queries: opened read-only, and `query_only` so that
/// not even a temporary table can be written.
pub fn open_query_connection(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = super::open_reader(path)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// A prepared computation query: checked, not yet run.
pub struct Query<'c> {
    stmt: Statement<'c>,
    columns: Vec<String>,
    binds_now: bool,
    conn: &'c Connection,
}

impl<'c> Query<'c> {
    /// Prepare `sql` on `conn` and check it: one statement, read-only by SQLite's own account,
    /// every result column one of `allowed` (and none twice), no parameter but `:now`.
    pub fn prepare(
        conn: &'c Connection,
        sql: &str,
        allowed: &[&str],
    ) -> Result<Query<'c>, QueryError> {
        let stmt = conn.prepare(sql).map_err(|e| match e {
            rusqlite::Error::MultipleStatement => QueryError::Refused(
                "the sql holds more than one statement; a computation is one SELECT".to_string(),
            ),
            rusqlite::Error::SqliteFailure(_, Some(message)) => QueryError::Failed(message),
            other => QueryError::Failed(other.to_string()),
        })?;
        if !stmt.readonly() {
            return Err(QueryError::Refused(
                "the sql would write to the database; a computation's query may only read \
                 (queries run on a read-only connection)"
                    .to_string(),
            ));
        }
        let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
        if columns.is_empty() {
            return Err(QueryError::Refused(format!(
                "the sql returns no columns; it must return {}",
                allowed.join(", ")
            )));
        }
        for (index, column) in columns.iter().enumerate() {
            if !allowed.contains(&column.as_str()) {
                return Err(QueryError::Refused(format!(
                    "the query returns the column `{column}`; expected {} (name them with AS)",
                    allowed.join(", ")
                )));
            }
            if columns[..index].contains(column) {
                return Err(QueryError::Refused(format!(
                    "the query returns the column `{column}` twice"
                )));
            }
        }
        let mut binds_now = false;
        for index in 1..=stmt.parameter_count() {
            match stmt.parameter_name(index) {
                Some(":now") => binds_now = true,
                Some(other) => {
                    return Err(QueryError::Refused(format!(
                        "the sql has the parameter {other}; only :now (the run's time in unix \
                         seconds) is bound"
                    )));
                }
                None => {
                    return Err(QueryError::Refused(
                        "the sql has an unnamed parameter (?); only :now (the run's time in unix \
                         seconds) is bound"
                            .to_string(),
                    ));
                }
            }
        }
        Ok(Query {
            conn,
            stmt,
            columns,
            binds_now,
        })
    }

    /// The result columns, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Run the query with `:now` bound: its rows as records numbered from 1. A watchdog
    /// interrupts the query once `timeout` has passed (the next row is then
    /// [`QueryError::TimedOut`]).
    pub fn run(&mut self, now: i64, timeout: Duration) -> Result<QueryRows<'_>, QueryError> {
        let watchdog = Watchdog::start(self.conn.get_interrupt_handle(), timeout);
        let rows = if self.binds_now {
            self.stmt.query(rusqlite::named_params! {":now": now})
        } else {
            self.stmt.query(params![])
        };
        match rows {
            Ok(rows) => Ok(QueryRows {
                rows,
                columns: &self.columns,
                watchdog,
                timeout,
                number: 0,
                done: false,
            }),
            Err(e) => Err(failure(e, &watchdog, timeout)),
        }
    }
}

/// The rows of a running query, as records; the first error ends them.
pub struct QueryRows<'q> {
    rows: rusqlite::Rows<'q>,
    columns: &'q [String],
    watchdog: Watchdog,
    timeout: Duration,
    number: u64,
    done: bool,
}

impl Iterator for QueryRows<'_> {
    type Item = Result<Record, QueryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let record = self.step();
        if !matches!(record, Some(Ok(_))) {
            self.done = true;
        }
        record
    }
}

impl QueryRows<'_> {
    fn step(&mut self) -> Option<Result<Record, QueryError>> {
        let row = match self.rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => return None,
            Err(e) => return Some(Err(failure(e, &self.watchdog, self.timeout))),
        };
        self.number += 1;
        let mut fields = Map::new();
        for (index, column) in self.columns.iter().enumerate() {
            let cell = match row.get_ref(index) {
                Ok(cell) => cell,
                Err(e) => return Some(Err(failure(e, &self.watchdog, self.timeout))),
            };
            match field(cell, column == "value") {
                Ok(Some(value)) => {
                    fields.insert(column.clone(), value);
                }
                Ok(None) => {}
                Err(reason) => {
                    return Some(Err(QueryError::Cell {
                        row: self.number,
                        column: column.clone(),
                        reason,
                    }));
                }
            }
        }
        Some(Ok(Record {
            line: self.number,
            fields,
        }))
    }
}

/// A cell as a snapshot field (see the module documentation); `None` for `NULL`.
fn field(cell: ValueRef<'_>, is_value: bool) -> Result<Option<Value>, String> {
    Ok(Some(match cell {
        ValueRef::Null => return Ok(None),
        ValueRef::Integer(i) => Value::Number(i.into()),
        ValueRef::Real(f) => match serde_json::Number::from_f64(f) {
            Some(n) => Value::Number(n),
            None => return Err(format!("{f} is not a finite number")),
        },
        ValueRef::Text(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(|_| "invalid UTF-8".to_string())?;
            if is_value && let Some(json) = json_text(text) {
                json
            } else {
                Value::String(text.to_string())
            }
        }
        ValueRef::Blob(_) => {
            return Err("a BLOB cannot be a snapshot field (return text or a number)".to_string());
        }
    }))
}

/// Text of the `value` column that is a JSON boolean, array or object (what SQLite's JSON
/// functions return), as that JSON.
fn json_text(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if !(trimmed.starts_with(['[', '{']) || trimmed == "true" || trimmed == "false") {
        return None;
    }
    strict_json::from_str(trimmed)
        .ok()
        .filter(|v| matches!(v, Value::Bool(_) | Value::Array(_) | Value::Object(_)))
}

fn failure(error: rusqlite::Error, watchdog: &Watchdog, timeout: Duration) -> QueryError {
    let interrupted = matches!(
        &error,
        rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::OperationInterrupted
    );
    if interrupted && watchdog.fired() {
        return QueryError::TimedOut(timeout);
    }
    match error {
        rusqlite::Error::SqliteFailure(_, Some(message)) => QueryError::Failed(message),
        other => QueryError::Failed(other.to_string()),
    }
}

/// Interrupts a query once its time is up; stops watching when dropped.
struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(handle: rusqlite::InterruptHandle, timeout: Duration) -> Watchdog {
        let (done, wait) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let thread = thread::Builder::new()
            .name("compute-watchdog".to_string())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                    flag.store(true, Ordering::SeqCst);
                    handle.interrupt();
                }
            })
            .ok();
        Watchdog {
            done: Some(done),
            fired,
            thread,
        }
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A query's checked rows, kept aside until the query has finished, in a temporary table of the
/// writing connection (`temp.compute_staged`: in memory while small, in a temporary file beyond
/// SQLite's cache), so that a result of millions of rows is never held in memory and the main
/// database's write lock is not taken while the query runs. Writing a temporary table locks
/// nothing in the database file. Each row is its number and three text cells; the stored
/// snapshot is then copied from it in one statement (`snapshots::store_staged_snapshot`).
pub struct Staging {
    unique: Unique,
}

/// The temporary table a staged result is kept in.
pub const STAGED: &str = "temp.compute_staged";

/// What a staged result may hold once.
#[derive(Debug, Clone, Copy)]
pub enum Unique {
    /// A computation's entity (the first cell); the field a duplicate is blamed on.
    Entity(&'static str),
    /// A membership's (group, user) pair (the first two cells).
    Membership,
}

pub type StagedRow = (u64, [Option<String>; 3]);

impl Staging {
    /// An empty staging table on `conn` (a previous one is dropped). `unique`: what a snapshot
    /// may hold once, checked as each row is kept, so that the first bad row in the query's
    /// order is the one named, duplicates included, exactly as `load` names it.
    pub fn new(conn: &Connection, unique: Unique) -> rusqlite::Result<Staging> {
        let key = match unique {
            Unique::Entity(_) => "a",
            Unique::Membership => "a, b",
        };
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS {STAGED};
             CREATE TEMP TABLE compute_staged (line INTEGER PRIMARY KEY, a TEXT NOT NULL, b TEXT, \
             c TEXT, UNIQUE ({key}));"
        ))?;
        Ok(Staging { unique })
    }

    /// Keep every row; the first error ends it (and is returned: the row's own, or a
    /// [`StageError::Duplicate`] at the first row that repeats one before it).
    pub fn fill<E>(
        &mut self,
        conn: &Connection,
        rows: impl Iterator<Item = Result<StagedRow, E>>,
    ) -> Result<(), StageError<E>> {
        let database = StageError::Database;
        // A transaction of the temporary schema only: the database file stays unlocked.
        conn.execute_batch("BEGIN").map_err(database)?;
        let filled = self.insert_all(conn, rows);
        let end = if filled.is_ok() { "COMMIT" } else { "ROLLBACK" };
        conn.execute_batch(end).map_err(database)?;
        filled
    }

    fn insert_all<E>(
        &self,
        conn: &Connection,
        rows: impl Iterator<Item = Result<StagedRow, E>>,
    ) -> Result<(), StageError<E>> {
        let database = StageError::Database;
        let mut insert = conn
            .prepare(&format!(
                "INSERT INTO {STAGED} (line, a, b, c) VALUES (?1, ?2, ?3, ?4)"
            ))
            .map_err(database)?;
        for row in rows {
            let (line, [a, b, c]) = row.map_err(StageError::Row)?;
            match insert.execute(rusqlite::params![line as i64, a, b, c]) {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
                {
                    let a = a.unwrap_or_default();
                    let (field, reason) = match self.unique {
                        Unique::Entity(field) => (
                            field,
                            format!("entity {a:?} appears twice in this snapshot"),
                        ),
                        Unique::Membership => (
                            "user_id",
                            format!(
                                "user {:?} appears twice in account {a:?}",
                                b.unwrap_or_default()
                            ),
                        ),
                    };
                    return Err(StageError::Duplicate {
                        line,
                        field,
                        reason,
                    });
                }
                Err(e) => return Err(database(e)),
            }
        }
        Ok(())
    }

    /// How many rows are kept.
    pub fn count(&self, conn: &Connection) -> rusqlite::Result<u64> {
        conn.query_row(&format!("SELECT count(*) FROM {STAGED}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n as u64)
    }

    /// The first `n` rows kept, in order.
    pub fn first(&self, conn: &Connection, n: usize) -> rusqlite::Result<Vec<StagedRow>> {
        let mut stmt = conn.prepare(&format!(
            "SELECT line, a, b, c FROM {STAGED} ORDER BY line LIMIT ?1"
        ))?;
        stmt.query_map([n as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                [r.get(1)?, r.get(2)?, r.get(3)?],
            ))
        })?
        .collect()
    }

    /// Drop the staging table (the connection's temporary space goes back).
    pub fn clear(self, conn: &Connection) -> rusqlite::Result<()> {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {STAGED}"))
    }
}

/// Why staging stopped.
#[derive(Debug)]
pub enum StageError<E> {
    /// The rows' own error.
    Row(E),
    /// This row repeats what an earlier one holds (`field` to blame, `load`'s reason).
    Duplicate {
        line: u64,
        field: &'static str,
        reason: String,
    },
    Database(rusqlite::Error),
}

/// Who ran a compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Command,
    Daemon,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Command => "command",
            Origin::Daemon => "daemon",
        }
    }
}

/// One compute, as `computes` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeRecord {
    pub started_at: i64,
    pub origin: Origin,
    /// The computation's key; `None` for the account membership.
    pub computation: Option<String>,
    pub now: i64,
    /// What it stored (snapshot id, rows), or why it stored nothing.
    pub outcome: Result<(i64, u64), String>,
    pub took_ms: u64,
}

/// Record one compute; the oldest records beyond [`KEPT_COMPUTES`] go in the same transaction.
pub fn record(conn: &mut Connection, record: &ComputeRecord) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (snapshot_id, rows, error) = match &record.outcome {
        Ok((snapshot, rows)) => (Some(*snapshot), Some(*rows as i64), None),
        Err(reason) => (None, None, Some(reason.as_str())),
    };
    tx.execute(
        "INSERT INTO computes (started_at, origin, computation, now, snapshot_id, rows, took_ms, \
         error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            record.started_at,
            record.origin.as_str(),
            record.computation,
            record.now,
            snapshot_id,
            rows,
            record.took_ms as i64,
            error
        ],
    )?;
    tx.execute(
        "DELETE FROM computes WHERE id <= (SELECT max(id) FROM computes) - ?1",
        [KEPT_COMPUTES],
    )?;
    tx.commit()
}

/// The newest compute of each computation (and of the membership, keyed `None`).
pub fn last_computes(conn: &Connection) -> rusqlite::Result<Vec<ComputeRecord>> {
    let mut stmt = conn.prepare(
        "SELECT started_at, origin, computation, now, snapshot_id, rows, took_ms, error \
         FROM computes c WHERE id = (SELECT max(id) FROM computes d \
                                     WHERE d.computation IS c.computation) \
         ORDER BY computation",
    )?;
    stmt.query_map([], |row| {
        let origin: String = row.get(1)?;
        let snapshot: Option<i64> = row.get(4)?;
        let rows: Option<i64> = row.get(5)?;
        let error: Option<String> = row.get(7)?;
        Ok(ComputeRecord {
            started_at: row.get(0)?,
            origin: if origin == "daemon" {
                Origin::Daemon
            } else {
                Origin::Command
            },
            computation: row.get(2)?,
            now: row.get(3)?,
            outcome: match (snapshot, error) {
                (Some(snapshot), None) => Ok((snapshot, rows.unwrap_or(0) as u64)),
                (_, error) => Err(error.unwrap_or_default()),
            },
            took_ms: row.get::<_, i64>(6)? as u64,
        })
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compute.db");
        let conn = crate::store::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE orders (user_id TEXT, email TEXT, total REAL, completed_at INTEGER, \
             blob BLOB);
             INSERT INTO orders VALUES ('u1', 'a@example.com', 10.5, 100, x'00');
             INSERT INTO orders VALUES ('u2', NULL, 3, 200, NULL);",
        )
        .unwrap();
        (dir, path)
    }

    fn collect(conn: &Connection, sql: &str, now: i64) -> Result<Vec<Record>, QueryError> {
        let mut query = Query::prepare(conn, sql, &["user_id", "email", "value"])?;
        query.run(now, Duration::from_secs(60))?.collect()
    }

    #[test]
    fn rows_come_out_as_records_with_now_bound() {
        let (_dir, path) = database();
        let conn = open_query_connection(&path).unwrap();
        let rows = collect(
            &conn,
            "SELECT user_id, email, total AS value FROM orders WHERE completed_at > :now - 150 \
             ORDER BY user_id",
            300,
        )
        .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].line, 1);
        assert_eq!(
            Value::Object(rows[0].fields.clone()),
            serde_json::json!({"user_id": "u2", "value": 3.0})
        );
        let all = collect(
            &conn,
            "SELECT user_id, email FROM orders ORDER BY user_id",
            0,
        )
        .unwrap();
        assert_eq!(
            all.iter()
                .map(|r| Value::Object(r.fields.clone()))
                .collect::<Vec<_>>(),
            vec![
                serde_json::json!({"user_id": "u1", "email": "a@example.com"}),
                serde_json::json!({"user_id": "u2"}),
            ]
        );
    }

    #[test]
    fn value_text_is_json_only_when_it_is_a_boolean_array_or_object() {
        let (_dir, path) = database();
        let conn = open_query_connection(&path).unwrap();
        for (sql, expected) in [
            ("'true'", serde_json::json!(true)),
            ("'false'", serde_json::json!(false)),
            ("json_array(1, 'a')", serde_json::json!([1, "a"])),
            ("json_object('a', 1)", serde_json::json!({"a": 1})),
            ("'02134'", serde_json::json!("02134")),
            ("'42'", serde_json::json!("42")),
            ("'[not json'", serde_json::json!("[not json")),
            ("1.5", serde_json::json!(1.5)),
        ] {
            let rows = collect(&conn, &format!("SELECT 'u1' AS user_id, {sql} AS value"), 0)
                .unwrap_or_else(|_| panic!("{sql}"));
            assert_eq!(rows[0].fields["value"], expected, "{sql}");
        }
        // Only the value column reads JSON: an identifier is always text.
        let rows = collect(&conn, "SELECT 'true' AS user_id", 0).unwrap();
        assert_eq!(rows[0].fields["user_id"], serde_json::json!("true"));
    }

    #[test]
    fn writing_several_statements_unknown_columns_and_parameters_are_refused() {
        let (_dir, path) = database();
        let conn = open_query_connection(&path).unwrap();
        let refused = |sql: &str| match Query::prepare(&conn, sql, &["user_id", "email", "value"]) {
            Err(QueryError::Refused(reason)) => reason,
            Err(other) => panic!("{sql}: {other}"),
            Ok(_) => panic!("{sql} was accepted"),
        };
        assert!(refused("DELETE FROM orders").contains("would write"));
        assert!(
            refused("UPDATE orders SET total = 0 RETURNING user_id").contains("would write"),
            "a writing statement that returns rows is still refused"
        );
        assert!(refused("INSERT INTO orders (user_id) VALUES ('x')").contains("would write"));
        assert!(
            refused("SELECT user_id FROM orders; DELETE FROM orders").contains("more than one")
        );
        assert!(refused("SELECT user_id, total FROM orders").contains("`total`"));
        assert!(refused("SELECT user_id, user_id FROM orders").contains("twice"));
        assert!(refused("SELECT user_id FROM orders WHERE total > :min").contains(":min"));
        assert!(refused("SELECT user_id FROM orders WHERE total > ?").contains("unnamed"));
        // A trailing semicolon is one statement.
        assert!(Query::prepare(&conn, "SELECT user_id FROM orders;", &["user_id"]).is_ok());
        // Even a statement SQLite would let through on a writable connection cannot write here.
        let writer = crate::store::open(&path).unwrap();
        assert_eq!(
            writer
                .query_row("SELECT count(*) FROM orders", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            2
        );
        assert!(
            conn.execute("CREATE TEMP TABLE t (x)", []).is_err(),
            "query_only refuses temporary tables too"
        );
    }

    #[test]
    fn failures_blobs_and_timeouts_are_named() {
        let (_dir, path) = database();
        let conn = open_query_connection(&path).unwrap();
        match collect(&conn, "SELECT user_id FROM no_such_table", 0) {
            Err(QueryError::Failed(reason)) => assert!(reason.contains("no_such_table")),
            other => panic!("{:?}", other.map(|r| r.len())),
        }
        match collect(
            &conn,
            "SELECT user_id, blob AS value FROM orders ORDER BY user_id",
            0,
        ) {
            Err(QueryError::Cell { row, column, .. }) => {
                assert_eq!((row, column.as_str()), (1, "value"))
            }
            other => panic!("{:?}", other.map(|r| r.len())),
        }
        let mut query = Query::prepare(
            &conn,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) \
             SELECT 'u' || max(i) AS user_id FROM n",
            &["user_id"],
        )
        .unwrap();
        let rows: Result<Vec<Record>, QueryError> =
            query.run(0, Duration::from_millis(200)).unwrap().collect();
        match rows {
            Err(QueryError::TimedOut(_)) => {}
            other => panic!("{:?}", other.map(|r| r.len())),
        }
        // The connection is usable again after the interrupt.
        assert_eq!(
            collect(&conn, "SELECT user_id FROM orders", 0)
                .unwrap()
                .len(),
            2
        );
    }
}
