//! Computations defined in SQL (SPEC section 11): run each `[[computations]]` query (and the
//! `[membership]` one) and store its result as the newest complete snapshot, with exactly the
//! rules and atomicity of `load`.
//!
//! Each target is its own transaction: a bad row, a failing query or a timeout stores nothing
//! for that target, leaves its previous snapshot in place, and the others still go. `compute`
//! and the daemon (before each scheduled run) share this; only the reporting differs.
//!
//! A query runs to its end, its checked rows kept aside in a private temporary database, before
//! the write transaction that stores them begins: the product's own writers (and delivery) are
//! never held up by a long query, only by the store, as they would be by a `load`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::store::Connection;
use serde_json::Value;

use crate::domain::{Kind, Scope};
use crate::load::{self, LoadError, Record};
use crate::settings::{ComputeSettings, SqlComputation};
use crate::store::compute::{
    ComputeRecord, Origin, Query, QueryError, StageError, Staging, Unique,
};
use crate::store::{self, snapshots};

/// Rows a dry run shows of each target.
pub const SAMPLE_ROWS: usize = 5;

/// What to compute, and how.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The value bound to `:now`, and the stored snapshots' `taken_at` (unix seconds).
    pub now: i64,
    pub origin: Origin,
    /// Run and check every query, store nothing.
    pub dry_run: bool,
}

/// One query: a computation's, or the account membership's.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Computation(&'a SqlComputation),
    Membership(&'a str),
}

impl Target<'_> {
    /// The key `computes` records (`None`: the membership).
    pub fn key(&self) -> Option<&str> {
        match self {
            Target::Computation(c) => Some(&c.key),
            Target::Membership(_) => None,
        }
    }

    /// How messages name it: `computation "key"` or `the account membership`.
    pub fn describe(&self) -> String {
        match self {
            Target::Computation(c) => format!("computation {:?}", c.key),
            Target::Membership(_) => "the account membership ([membership] sql)".to_string(),
        }
    }

    fn sql(&self) -> &str {
        match self {
            Target::Computation(c) => &c.sql,
            Target::Membership(sql) => sql,
        }
    }

    fn columns(&self) -> &'static [&'static str] {
        match self {
            Target::Computation(c) => load::snapshot_columns(c.scope),
            Target::Membership(_) => load::MEMBERSHIP_COLUMNS,
        }
    }
}

/// What one target's query did.
#[derive(Debug)]
pub struct Outcome<'a> {
    pub target: Target<'a>,
    pub result: Result<Computed, ComputeError>,
    pub took: Duration,
}

/// A query whose every row passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    pub rows: u64,
    /// The snapshot stored (`None` for a dry run).
    pub snapshot_id: Option<i64>,
    /// The computation's id (`None` for the membership, and for a dry run of a new computation).
    pub computation_id: Option<String>,
    /// The computation was created by this compute.
    pub created: bool,
    /// Rows of the newest snapshot before this one (`None`: there was none).
    pub previous_rows: Option<u64>,
    /// The first rows as stored, as JSON (dry runs only).
    pub sample: Vec<String>,
}

impl Computed {
    /// An audience (or trait, or membership) that had rows and now has none: stored, since an
    /// audience can empty, but worth a warning (a broken query looks the same).
    pub fn emptied(&self) -> bool {
        self.rows == 0 && self.previous_rows.unwrap_or(0) > 0
    }
}

/// Why a target stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// One row breaks a rule of `load`: its number (from 1, in the query's order), the field to
    /// blame when there is one, and why.
    #[error("row {row}: {}{reason}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Row {
        row: u64,
        field: Option<String>,
        reason: String,
    },
    /// The query was refused, failed or timed out.
    #[error("{0}")]
    Query(QueryError),
    /// The result cannot be stored as this computation (kind or scope changed, a key `load`
    /// owns, an older `:now` than the newest snapshot).
    #[error("{0}")]
    Refused(String),
    /// The database failed (exit 1, not 2).
    #[error("database error: {0:#}")]
    Database(anyhow::Error),
}

impl ComputeError {
    /// The query or its result is wrong (exit 2), rather than the database failing (exit 1).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ComputeError::Database(_))
    }

    fn from_load(error: LoadError, label: &str) -> ComputeError {
        match error {
            LoadError::Row {
                line,
                field,
                reason,
                ..
            } => ComputeError::Row {
                row: line,
                field,
                reason,
            },
            LoadError::Input { reason, .. } => ComputeError::Refused(reason),
            LoadError::Usage(message) => ComputeError::Refused(
                message
                    .strip_prefix(&format!("{label}: "))
                    .map(str::to_string)
                    .unwrap_or(message),
            ),
            LoadError::Database(e) => ComputeError::Database(anyhow::Error::from_boxed(e)),
        }
    }

    fn from_stage(error: StageError<ComputeError>) -> ComputeError {
        match error {
            StageError::Row(e) => e,
            StageError::Duplicate {
                line,
                field,
                reason,
            } => ComputeError::Row {
                row: line,
                field: Some(field.to_string()),
                reason,
            },
            StageError::Database(e) => ComputeError::Database(e.into()),
        }
    }

    fn from_query(error: QueryError) -> ComputeError {
        match error {
            QueryError::Cell {
                row,
                column,
                reason,
            } => ComputeError::Row {
                row,
                field: Some(column),
                reason,
            },
            other => ComputeError::Query(other),
        }
    }
}

/// The targets `options` asks for, in settings order (the membership last). A `--computation`
/// that settings do not define is bad usage.
pub fn targets<'a>(
    settings: &'a ComputeSettings,
    only: Option<&str>,
) -> Result<Vec<Target<'a>>, String> {
    match only {
        Some(key) => match settings.find(key) {
            Some(c) => Ok(vec![Target::Computation(c)]),
            None if settings.computations.is_empty() => Err(format!(
                "no computation is defined in settings ([[computations]]), so there is no {key:?} \
                 to compute"
            )),
            None => Err(format!(
                "computation {key:?} is not defined in settings ([[computations]]); defined: {}",
                settings
                    .computations
                    .iter()
                    .map(|c| c.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
        None => {
            let mut all: Vec<Target<'a>> = settings
                .computations
                .iter()
                .map(Target::Computation)
                .collect();
            if let Some(sql) = &settings.membership {
                all.push(Target::Membership(sql));
            }
            Ok(all)
        }
    }
}

/// Run every target's query and store (or, for a dry run, check) its result. Each target's
/// outcome is returned; a failure of one never stops the others. Every compute that was not a
/// dry run is recorded in `computes`.
pub fn compute<'a>(
    database: &Path,
    settings: &'a ComputeSettings,
    targets: &[Target<'a>],
    options: &Options,
) -> anyhow::Result<Vec<Outcome<'a>>> {
    let mut conn = store::open(database)?;
    let reader = store::compute::open_query_connection(database).map_err(|e| {
        anyhow::anyhow!(
            "cannot open {} read-only for the computations' queries: {e}",
            database.display()
        )
    })?;
    let mut outcomes = Vec::with_capacity(targets.len());
    for target in targets {
        let started = Instant::now();
        let started_at = store::now_unix();
        let result = compute_one(&mut conn, &reader, settings.timeout, *target, options);
        let took = started.elapsed();
        if !options.dry_run {
            let record = ComputeRecord {
                started_at,
                origin: options.origin,
                computation: target.key().map(str::to_string),
                now: options.now,
                outcome: match &result {
                    Ok(computed) => Ok((computed.snapshot_id.unwrap_or_default(), computed.rows)),
                    Err(e) => Err(e.to_string()),
                },
                took_ms: took.as_millis() as u64,
            };
            // The record is the history, not the result: a database that cannot take it (full,
            // locked) has already failed the compute itself, and says so there.
            if let Err(e) = store::compute::record(&mut conn, &record) {
                tracing::warn!(error = %e, target = %target.describe(), "Compute not recorded.");
            }
        }
        outcomes.push(Outcome {
            target: *target,
            result,
            took,
        });
    }
    Ok(outcomes)
}

fn compute_one(
    conn: &mut Connection,
    reader: &Connection,
    timeout: Duration,
    target: Target<'_>,
    options: &Options,
) -> Result<Computed, ComputeError> {
    let mut query =
        Query::prepare(reader, target.sql(), target.columns()).map_err(ComputeError::Query)?;
    let database = |e: crate::store::Error| ComputeError::Database(e.into());
    match target {
        Target::Computation(computation) => {
            let existing = snapshots::find_computation(conn, &computation.key).map_err(database)?;
            let previous = match &existing {
                Some(c) => snapshots::newest_snapshot(conn, &c.id).map_err(database)?,
                None => None,
            };
            let previous_rows = previous.map(|(_, _, rows)| rows as u64);
            // What the stored computation refuses is refused before its query runs.
            check_computation(
                conn,
                computation,
                existing.as_ref(),
                previous.map(|(_, taken_at, _)| taken_at),
                options.now,
            )?;
            let rows = query
                .run(options.now, timeout)
                .map_err(ComputeError::from_query)?;
            let kind = computation.kind;
            let label = computation.key.as_str();
            let checked = rows.map(|record| {
                let record = record.map_err(ComputeError::from_query)?;
                load::snapshot_row(label, &as_audience(record, kind), kind, computation.scope)
                    .map_err(|e| ComputeError::from_load(e, label))
            });
            // The query runs to its end before the write transaction begins: the database
            // stays writable (for the product, for delivery) however long the query takes, and
            // the write lock is held only as long as `load` holds it. A dry run stops there.
            let unique = Unique::Entity(match computation.scope {
                Scope::User => "user_id",
                Scope::Account => "group_id",
            });
            let mut staged = Staging::new(conn, unique).map_err(database)?;
            staged
                .fill(
                    conn,
                    checked.map(|row| row.map(|r| (r.line, [Some(r.entity_id), r.email, r.value]))),
                )
                .map_err(ComputeError::from_stage)?;
            drop(query);
            if options.dry_run {
                let shown = dry_run(
                    conn,
                    &staged,
                    existing.map(|c| c.id),
                    previous_rows,
                    |[entity_id, email, value]| {
                        let entity_id = entity_id.unwrap_or_default();
                        let value: Value = value
                            .as_deref()
                            .map(|v| serde_json::from_str(v).unwrap_or(Value::Null))
                            .unwrap_or(Value::Null);
                        // As a snapshot file would hold it: a user without a user_id is its email.
                        match computation.scope {
                            Scope::User if email.as_deref() == Some(entity_id.as_str()) => {
                                serde_json::json!({"email": email, "value": value})
                            }
                            Scope::User => {
                                serde_json::json!({"user_id": entity_id, "email": email, "value": value})
                            }
                            Scope::Account => {
                                serde_json::json!({"group_id": entity_id, "value": value})
                            }
                        }
                    },
                );
                staged.clear(conn).map_err(database)?;
                return shown;
            }
            let spec = snapshots::ComputationSpec {
                key: &computation.key,
                name: computation.name.as_deref(),
                kind,
                scope: computation.scope,
                source: snapshots::Source::Sql,
            };
            let stored = snapshots::store_staged_snapshot(
                conn,
                label,
                &spec,
                options.now,
                store::now_unix(),
            )
            .map_err(|e| ComputeError::from_load(e, label))?;
            staged.clear(conn).map_err(database)?;
            Ok(Computed {
                rows: stored.rows,
                snapshot_id: Some(stored.snapshot_id),
                computation_id: Some(stored.computation.id),
                created: stored.created,
                previous_rows,
                sample: Vec::new(),
            })
        }
        Target::Membership(_) => {
            let previous = snapshots::newest_membership(conn).map_err(database)?;
            let previous_rows = previous.map(|(_, _, rows)| rows as u64);
            if let Some((_, newest, _)) = previous.filter(|(_, t, _)| *t > options.now) {
                return Err(ComputeError::Refused(format!(
                    "taken_at {} is older than the newest membership snapshot ({}); an older \
                     snapshot would never be used",
                    snapshots::rfc3339(options.now),
                    snapshots::rfc3339(newest)
                )));
            }
            let rows = query
                .run(options.now, timeout)
                .map_err(ComputeError::from_query)?;
            let label = "membership";
            let checked = rows.map(|record| {
                let record = record.map_err(ComputeError::from_query)?;
                load::membership_row(label, &record).map_err(|e| ComputeError::from_load(e, label))
            });
            let mut staged = Staging::new(conn, Unique::Membership).map_err(database)?;
            staged
                .fill(
                    conn,
                    checked.map(|row| {
                        row.map(|r| (r.line, [Some(r.group_id), Some(r.user_id), r.email]))
                    }),
                )
                .map_err(ComputeError::from_stage)?;
            drop(query);
            if options.dry_run {
                let shown = dry_run(
                    conn,
                    &staged,
                    None,
                    previous_rows,
                    |[group_id, user_id, email]| serde_json::json!({"group_id": group_id, "user_id": user_id, "email": email}),
                );
                staged.clear(conn).map_err(database)?;
                return shown;
            }
            let (snapshot_id, rows) = snapshots::store_staged_membership(conn, label, options.now)
                .map_err(|e| ComputeError::from_load(e, label))?;
            staged.clear(conn).map_err(database)?;
            Ok(Computed {
                rows,
                snapshot_id: Some(snapshot_id),
                computation_id: None,
                created: false,
                previous_rows,
                sample: Vec::new(),
            })
        }
    }
}

/// SQLite has no boolean: an audience's `value` of 1 (SQLite's `TRUE`) is `true`.
fn as_audience(mut record: Record, kind: Kind) -> Record {
    if kind == Kind::Audience
        && let Some(value) = record.fields.get_mut("value")
        && value.as_i64() == Some(1)
    {
        *value = Value::Bool(true);
    }
    record
}

/// Refuse a computation the stored one does not allow: a key `load` owns, another kind or
/// scope, a `:now` older than its newest snapshot (`store_snapshot` checks the same again, in
/// its transaction).
fn check_computation(
    conn: &Connection,
    computation: &SqlComputation,
    existing: Option<&snapshots::Computation>,
    newest_taken_at: Option<i64>,
    now: i64,
) -> Result<(), ComputeError> {
    let label = computation.key.as_str();
    if let Some(existing) = existing {
        if !snapshots::is_sql_defined(conn, &existing.id)
            .map_err(|e| ComputeError::Database(e.into()))?
        {
            return Err(ComputeError::Refused(format!(
                "computation {label:?} was created by `load` (or an upstream job); a computation \
                 defined in settings may not share its key (use another key)"
            )));
        }
        if existing.kind != computation.kind || existing.scope != computation.scope {
            return Err(ComputeError::Refused(format!(
                "computation {label:?} is a {} {} computation; it cannot be computed as a {} {} \
                 one (kind and scope never change: use a new key)",
                existing.scope.as_str(),
                existing.kind.as_str(),
                computation.scope.as_str(),
                computation.kind.as_str(),
            )));
        }
    }
    if let Some(newest) = newest_taken_at.filter(|t| *t > now) {
        return Err(ComputeError::Refused(format!(
            "taken_at {} is older than the newest snapshot of {label:?} ({}); an older snapshot \
             would never be used",
            snapshots::rfc3339(now),
            snapshots::rfc3339(newest)
        )));
    }
    Ok(())
}

/// What a dry run reports of a staged result: its rows, and the first of them as `show` renders
/// them.
fn dry_run(
    conn: &Connection,
    staged: &Staging,
    computation_id: Option<String>,
    previous_rows: Option<u64>,
    show: impl Fn([Option<String>; 3]) -> Value,
) -> Result<Computed, ComputeError> {
    let database = |e: crate::store::Error| ComputeError::Database(e.into());
    Ok(Computed {
        rows: staged.count(conn).map_err(database)?,
        snapshot_id: None,
        computation_id,
        created: false,
        previous_rows,
        sample: staged
            .first(conn, SAMPLE_ROWS)
            .map_err(database)?
            .into_iter()
            .map(|(_, cells)| show(cells).to_string())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    //! A query's rows and the same rows loaded from a file are one input: the property test
    //! below stores both and compares what was stored, or the refusal (row, field, reason).

    use super::*;
    use crate::load::Input;
    use proptest::prelude::*;
    use rusqlite::types;

    /// One cell, as SQLite holds it and as the equivalent NDJSON field.
    #[derive(Debug, Clone)]
    enum Cell {
        Absent,
        Text(String),
        Integer(i64),
        Real(f64),
        /// JSON text in the `value` column (a boolean, array or object).
        Json(&'static str),
    }

    impl Cell {
        fn sql(&self) -> types::Value {
            match self {
                Cell::Absent => types::Value::Null,
                Cell::Text(t) => types::Value::Text(t.clone()),
                Cell::Integer(i) => types::Value::Integer(*i),
                Cell::Real(f) => types::Value::Real(*f),
                Cell::Json(j) => types::Value::Text(j.to_string()),
            }
        }

        /// The NDJSON field; `audience`: SQLite's `TRUE` (1) in an audience's `value` is `true`.
        fn json(&self, audience_value: bool) -> Option<Value> {
            match self {
                Cell::Integer(1) if audience_value => Some(Value::Bool(true)),
                Cell::Absent => None,
                Cell::Text(t) => Some(Value::String(t.clone())),
                Cell::Integer(i) => Some(Value::from(*i)),
                Cell::Real(f) => Some(Value::from(*f)),
                Cell::Json(j) => Some(serde_json::from_str(j).unwrap()),
            }
        }
    }

    fn identifier() -> impl Strategy<Value = Cell> {
        prop_oneof![
            1 => Just(Cell::Absent),
            4 => prop::sample::select(vec!["u1", "u2", " u1 ", "U1", "u3", "u4"])
                .prop_map(|t| Cell::Text(t.to_string())),
            1 => prop::sample::select(vec!["", "  ", "a\tb"]).prop_map(|t| Cell::Text(t.to_string())),
            2 => (1i64..4).prop_map(Cell::Integer),
            1 => Just(Cell::Real(1.5)),
        ]
    }

    fn email() -> impl Strategy<Value = Cell> {
        prop_oneof![
            4 => Just(Cell::Absent),
            3 => prop::sample::select(vec!["a@example.com", " A@Example.COM ", "b@x"])
                .prop_map(|t| Cell::Text(t.to_string())),
            1 => prop::sample::select(vec!["not-an-email", ""]).prop_map(|t| Cell::Text(t.to_string())),
            1 => Just(Cell::Integer(7)),
        ]
    }

    fn value() -> impl Strategy<Value = Cell> {
        prop_oneof![
            3 => Just(Cell::Absent),
            2 => Just(Cell::Integer(1)),
            1 => prop::sample::select(vec!["Gold", "", "02134"]).prop_map(|t| Cell::Text(t.to_string())),
            1 => (-3i64..3).prop_map(Cell::Integer),
            1 => Just(Cell::Real(2.25)),
            2 => prop::sample::select(vec![
                "true",
                "false",
                "[1,\"a\"]",
                "[]",
                "[[1]]",
                "{\"a\":1}",
                "[{\"a\":1}]"
            ])
            .prop_map(Cell::Json),
        ]
    }

    fn stored(path: &Path, key: &str) -> Vec<(String, Option<String>, Option<String>)> {
        let conn = store::open(path).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT r.entity_id, r.email, r.value FROM snapshot_rows r \
                 JOIN snapshots s ON s.id = r.snapshot_id JOIN computations c \
                 ON c.id = s.computation_id WHERE c.key = ?1 ORDER BY r.entity_id",
            )
            .unwrap();
        stmt.query_map([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Every rule of `load` applies to query results: the same rows stored by `compute` and by
        /// `load` (from the equivalent NDJSON file) store the same snapshot, or are refused at the
        /// same row, naming the same field, for the same reason.
        #[test]
        fn a_query_and_the_same_rows_in_a_file_are_stored_or_refused_alike(
            audience in any::<bool>(),
            rows in prop::collection::vec((identifier(), email(), value()), 0..6),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.db");
            let mut conn = store::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE src (n INTEGER, user_id, email, value)").unwrap();
            let mut ndjson = String::new();
            for (n, (user_id, email, value)) in rows.iter().enumerate() {
                conn.execute(
                    "INSERT INTO src VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![n as i64, user_id.sql(), email.sql(), value.sql()],
                )
                .unwrap();
                let mut line = serde_json::Map::new();
                for (name, cell) in [("user_id", user_id), ("email", email), ("value", value)] {
                    if let Some(v) = cell.json(audience && name == "value") {
                        line.insert(name.to_string(), v);
                    }
                }
                ndjson.push_str(&Value::Object(line).to_string());
                ndjson.push('\n');
            }
            let kind = if audience { Kind::Audience } else { Kind::Trait };
            let settings = ComputeSettings {
                computations: vec![SqlComputation {
                    key: "computed".to_string(),
                    name: None,
                    kind,
                    scope: Scope::User,
                    sql: "SELECT user_id, email, value FROM src ORDER BY n".to_string(),
                }],
                membership: None,
                timeout: Duration::from_secs(60),
            };
            let targets = targets(&settings, None).unwrap();
            let options = Options { now: 1_000, origin: Origin::Command, dry_run: false };
            let computed = compute(&path, &settings, &targets, &options).unwrap().remove(0).result;
            let file = dir.path().join("rows.ndjson");
            std::fs::write(&file, &ndjson).unwrap();
            let spec = snapshots::ComputationSpec {
                key: "loaded",
                name: None,
                kind,
                scope: Scope::User,
                source: snapshots::Source::Load,
            };
            let loaded = snapshots::load_snapshot_with(&mut conn, &Input::File(file), &spec, 1_000, 1_000, true);
            match (computed, loaded) {
                (Ok(c), Ok(l)) => {
                    prop_assert_eq!(c.rows, l.rows);
                    prop_assert_eq!(stored(&path, "computed"), stored(&path, "loaded"));
                }
                (Err(ComputeError::Row { row, field, reason }), Err(LoadError::Row { line, field: f, reason: r, .. })) => {
                    prop_assert_eq!((row, field, reason), (line, f, r));
                }
                (c, l) => prop_assert!(false, "compute: {:?}\nload: {:?}\n{}", c, l, ndjson),
            }
        }
    }

    #[test]
    fn a_dry_run_checks_everything_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = store::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE src (user_id, value);
             INSERT INTO src VALUES ('u1', 1), ('u2', 2), ('u1', 3);",
        )
        .unwrap();
        let settings = ComputeSettings {
            computations: vec![SqlComputation {
                key: "score".to_string(),
                name: None,
                kind: Kind::Trait,
                scope: Scope::User,
                sql: "SELECT user_id, value FROM src ORDER BY rowid".to_string(),
            }],
            membership: Some("SELECT 'acme' AS group_id, user_id FROM src".to_string()),
            timeout: Duration::from_secs(60),
        };
        let all = targets(&settings, None).unwrap();
        assert_eq!(all.len(), 2);
        let options = Options {
            now: 10,
            origin: Origin::Command,
            dry_run: true,
        };
        let outcomes = compute(&path, &settings, &all, &options).unwrap();
        match &outcomes[0].result {
            Err(ComputeError::Row { row, field, reason }) => {
                assert_eq!((*row, field.as_deref()), (3, Some("user_id")));
                assert!(reason.contains("twice"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match &outcomes[1].result {
            Err(ComputeError::Row { row, .. }) => assert_eq!(*row, 3),
            other => panic!("{other:?}"),
        }
        conn.execute("DELETE FROM src WHERE value = 3", []).unwrap();
        let outcomes = compute(&path, &settings, &all, &options).unwrap();
        let computed = outcomes[0].result.as_ref().unwrap();
        assert_eq!(computed.rows, 2);
        assert_eq!(computed.sample.len(), 2);
        assert_eq!(outcomes[1].result.as_ref().unwrap().rows, 2);
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT count(*) FROM snapshots"), 0);
        assert_eq!(count("SELECT count(*) FROM membership_snapshots"), 0);
        assert_eq!(count("SELECT count(*) FROM computations"), 0);
        assert_eq!(count("SELECT count(*) FROM computes"), 0);
        // Unknown --computation keys are named with the defined ones.
        let err = targets(&settings, Some("nope")).unwrap_err();
        assert!(err.contains("\"nope\"") && err.contains("score"), "{err}");
    }
}
