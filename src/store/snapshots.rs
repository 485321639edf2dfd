//! Snapshot storage: computations, snapshots and membership snapshots, each load one transaction.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use sha2::{Digest, Sha256};

use crate::domain::{Kind, Scope};
use crate::load::{self, LoadError, MembershipRow, SnapshotRow};

/// A computation as stored in `computations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computation {
    pub id: String,
    pub key: String,
    pub name: String,
    pub kind: Kind,
    pub scope: Scope,
    pub enabled: bool,
    pub created_at: i64,
}

/// What a computation load asks for.
#[derive(Debug, Clone)]
pub struct ComputationSpec<'a> {
    pub key: &'a str,
    pub name: Option<&'a str>,
    pub kind: Kind,
    pub scope: Scope,
    pub source: Source,
}

/// Where a computation's snapshots come from. A computation defined in settings and one loaded
/// with `load` may not share a key (SPEC section 11): each refuses the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `load` (or an upstream job writing snapshots with plain SQL).
    Load,
    /// A `[[computations]]` query that `compute` runs (recorded in `sql_computations`).
    Sql,
}

/// Whether `compute` created this computation from a `[[computations]]` query.
pub fn is_sql_defined(conn: &Connection, computation_id: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sql_computations WHERE computation_id = ?1)",
        [computation_id],
        |r| r.get(0),
    )
}

/// What a stored snapshot looks like afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub snapshot_id: i64,
    pub rows: u64,
    /// The computation was created by this load.
    pub created: bool,
    pub computation: Computation,
}

pub fn find_computation(conn: &Connection, key: &str) -> rusqlite::Result<Option<Computation>> {
    conn.query_row(
        "SELECT id, key, name, kind, scope, enabled, created_at FROM computations WHERE key = ?1",
        [key],
        computation_from_row,
    )
    .optional()
}

pub fn computations(conn: &Connection) -> rusqlite::Result<Vec<Computation>> {
    let mut stmt = conn.prepare(
        "SELECT id, key, name, kind, scope, enabled, created_at FROM computations ORDER BY key",
    )?;
    stmt.query_map([], computation_from_row)?.collect()
}

fn computation_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Computation> {
    let kind: String = row.get(3)?;
    let scope: String = row.get(4)?;
    Ok(Computation {
        id: row.get(0)?,
        key: row.get(1)?,
        name: row.get(2)?,
        kind: Kind::parse(&kind).ok_or_else(|| bad_text(3, &kind))?,
        scope: Scope::parse(&scope).ok_or_else(|| bad_text(4, &scope))?,
        enabled: row.get::<_, i64>(5)? != 0,
        created_at: row.get(6)?,
    })
}

fn bad_text(column: usize, text: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("unexpected value {text:?}").into(),
    )
}

/// A Segment-style computation id: `aud_` or `tra_` and 27 base62 characters (the length of a
/// KSUID, which is what Segment uses), derived from the key and the creation instant.
pub fn new_computation_id(kind: Kind, key: &str, now_nanos: i128) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let digest = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update(now_nanos.to_le_bytes())
        .chain_update(std::process::id().to_le_bytes())
        .finalize();
    let prefix = match kind {
        Kind::Audience => "aud_",
        Kind::Trait => "tra_",
    };
    let mut id = String::from(prefix);
    let mut n = u128::from_le_bytes(digest[..16].try_into().expect("16 bytes"));
    let mut m = u128::from_le_bytes(digest[16..].try_into().expect("16 bytes"));
    for i in 0..27 {
        let source = if i % 2 == 0 { &mut n } else { &mut m };
        id.push(ALPHABET[(*source % 62) as usize] as char);
        *source /= 62;
    }
    id
}

/// Find the computation, or create it; refuse a kind or scope that differs from the stored one.
fn ensure_computation(
    tx: &Transaction<'_>,
    spec: &ComputationSpec<'_>,
    now: i64,
) -> Result<(Computation, bool), LoadError> {
    if let Some(existing) = find_computation(tx, spec.key)? {
        match (spec.source, is_sql_defined(tx, &existing.id)?) {
            (Source::Load, true) => {
                return Err(LoadError::Usage(format!(
                    "computation {:?} is defined in settings ([[computations]]) and stored by \
                     `audience-sync compute`; it cannot also be loaded (use another key)",
                    spec.key
                )));
            }
            (Source::Sql, false) => {
                return Err(LoadError::Usage(format!(
                    "computation {:?} was created by `load` (or an upstream job); a computation \
                     defined in settings may not share its key (use another key)",
                    spec.key
                )));
            }
            _ => {}
        }
        if existing.kind != spec.kind || existing.scope != spec.scope {
            return Err(LoadError::Usage(format!(
                "computation {:?} is a {} {} computation; it cannot be loaded as a {} {} one \
                 (kind and scope never change: use a new key)",
                spec.key,
                existing.scope.as_str(),
                existing.kind.as_str(),
                spec.scope.as_str(),
                spec.kind.as_str(),
            )));
        }
        if let Some(name) = spec.name.filter(|n| *n != existing.name) {
            tx.execute(
                "UPDATE computations SET name = ?1 WHERE id = ?2",
                params![name, existing.id],
            )?;
            return Ok((
                Computation {
                    name: name.to_string(),
                    ..existing
                },
                false,
            ));
        }
        return Ok((existing, false));
    }
    let nanos = chrono::Utc::now()
        .timestamp_nanos_opt()
        .unwrap_or(now * 1_000_000_000) as i128;
    let computation = Computation {
        id: new_computation_id(spec.kind, spec.key, nanos),
        key: spec.key.to_string(),
        name: spec.name.unwrap_or(spec.key).to_string(),
        kind: spec.kind,
        scope: spec.scope,
        enabled: true,
        created_at: now,
    };
    tx.execute(
        "INSERT INTO computations (id, key, name, kind, scope, enabled, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
        params![
            computation.id,
            computation.key,
            computation.name,
            computation.kind.as_str(),
            computation.scope.as_str(),
            computation.created_at
        ],
    )?;
    if spec.source == Source::Sql {
        tx.execute(
            "INSERT INTO sql_computations (computation_id, defined_at) VALUES (?1, ?2)",
            params![computation.id, now],
        )?;
    }
    Ok((computation, true))
}

fn is_duplicate(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// Store a computation snapshot in one transaction: the computation (created on first load),
/// the snapshot header, every row, and `complete = 1` last. Any error stores nothing.
pub fn store_snapshot(
    conn: &mut Connection,
    file: &str,
    spec: &ComputationSpec<'_>,
    taken_at: i64,
    now: i64,
    allow_empty: bool,
    rows: impl Iterator<Item = Result<SnapshotRow, LoadError>>,
) -> Result<Stored, LoadError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (computation, created, snapshot_id) = begin_snapshot(&tx, file, spec, taken_at, now)?;
    let mut count = 0u64;
    {
        let mut insert = tx.prepare(
            "INSERT INTO snapshot_rows (snapshot_id, entity_id, email, value) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for row in rows {
            let row = row?;
            match insert.execute(params![snapshot_id, row.entity_id, row.email, row.value]) {
                Ok(_) => count += 1,
                Err(e) if is_duplicate(&e) => {
                    let field = match spec.scope {
                        Scope::User => "user_id",
                        Scope::Account => "group_id",
                    };
                    return Err(LoadError::Row {
                        file: file.to_string(),
                        line: row.line,
                        field: Some(field.to_string()),
                        reason: format!(
                            "entity {:?} appears twice in this snapshot",
                            row.entity_id
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if count == 0 && !allow_empty {
        return Err(empty(
            file,
            "an empty snapshot would make every member exit (or every value go)",
        ));
    }
    complete_snapshot(tx, snapshot_id, count)?;
    Ok(Stored {
        snapshot_id,
        rows: count,
        created,
        computation,
    })
}

/// Store a computation snapshot whose rows `compute` has checked and staged
/// ([`super::compute::Staging`]): the same transaction as [`store_snapshot`], the rows copied in
/// one statement, in entity order.
pub fn store_staged_snapshot(
    conn: &mut Connection,
    file: &str,
    spec: &ComputationSpec<'_>,
    taken_at: i64,
    now: i64,
) -> Result<Stored, LoadError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (computation, created, snapshot_id) = begin_snapshot(&tx, file, spec, taken_at, now)?;
    let count = tx.execute(
        &format!(
            "INSERT INTO snapshot_rows (snapshot_id, entity_id, email, value) \
             SELECT ?1, a, b, c FROM {} ORDER BY a",
            super::compute::STAGED
        ),
        [snapshot_id],
    )? as u64;
    complete_snapshot(tx, snapshot_id, count)?;
    Ok(Stored {
        snapshot_id,
        rows: count,
        created,
        computation,
    })
}

/// The first statements of a snapshot's transaction: the computation (created if new), the
/// refusal of a snapshot older than the newest, the header with `complete = 0`.
fn begin_snapshot(
    tx: &Transaction<'_>,
    file: &str,
    spec: &ComputationSpec<'_>,
    taken_at: i64,
    now: i64,
) -> Result<(Computation, bool, i64), LoadError> {
    let (computation, created) = ensure_computation(tx, spec, now)?;
    let newest = super::state::newest_snapshot(tx, &computation.id)?.map(|s| s.taken_at);
    if let Some(newest) = newest.filter(|n| *n > taken_at) {
        return Err(LoadError::Usage(format!(
            "{file}: taken_at {} is older than the newest snapshot of {:?} ({}); an older \
             snapshot would never be used",
            rfc3339(taken_at),
            computation.key,
            rfc3339(newest)
        )));
    }
    tx.execute(
        "INSERT INTO snapshots (computation_id, taken_at, complete) VALUES (?1, ?2, 0)",
        params![computation.id, taken_at],
    )?;
    Ok((computation, created, tx.last_insert_rowid()))
}

/// The last statement of a snapshot's transaction: `complete = 1` with its row count.
fn complete_snapshot(tx: Transaction<'_>, snapshot_id: i64, count: u64) -> Result<(), LoadError> {
    tx.execute(
        "UPDATE snapshots SET complete = 1, row_count = ?1 WHERE id = ?2",
        params![count as i64, snapshot_id],
    )?;
    tx.commit()?;
    Ok(())
}

/// Store an account membership snapshot in one transaction. Any error stores nothing.
pub fn store_membership(
    conn: &mut Connection,
    file: &str,
    taken_at: i64,
    allow_empty: bool,
    rows: impl Iterator<Item = Result<MembershipRow, LoadError>>,
) -> Result<(i64, u64), LoadError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let snapshot_id = begin_membership(&tx, file, taken_at)?;
    let mut count = 0u64;
    {
        let mut insert = tx.prepare(
            "INSERT INTO membership_rows (snapshot_id, group_id, user_id, email) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for row in rows {
            let row = row?;
            match insert.execute(params![snapshot_id, row.group_id, row.user_id, row.email]) {
                Ok(_) => count += 1,
                Err(e) if is_duplicate(&e) => {
                    return Err(LoadError::Row {
                        file: file.to_string(),
                        line: row.line,
                        field: Some("user_id".to_string()),
                        reason: format!(
                            "user {:?} appears twice in account {:?}",
                            row.user_id, row.group_id
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if count == 0 && !allow_empty {
        return Err(empty(
            file,
            "an empty membership snapshot would detach every user from every account",
        ));
    }
    tx.execute(
        "UPDATE membership_snapshots SET complete = 1 WHERE id = ?1",
        [snapshot_id],
    )?;
    tx.commit()?;
    Ok((snapshot_id, count))
}

/// The first statements of a membership snapshot's transaction: the refusal of a snapshot older
/// than the newest, the header with `complete = 0`.
fn begin_membership(tx: &Transaction<'_>, file: &str, taken_at: i64) -> Result<i64, LoadError> {
    let newest = super::state::newest_membership(tx)?.map(|m| m.taken_at);
    if let Some(newest) = newest.filter(|n| *n > taken_at) {
        return Err(LoadError::Usage(format!(
            "{file}: taken_at {} is older than the newest membership snapshot ({}); an older \
             snapshot would never be used",
            rfc3339(taken_at),
            rfc3339(newest)
        )));
    }
    tx.execute(
        "INSERT INTO membership_snapshots (taken_at, complete) VALUES (?1, 0)",
        [taken_at],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Store an account membership snapshot whose rows `compute` has checked and staged: the same
/// transaction as [`store_membership`], the rows copied in one statement.
pub fn store_staged_membership(
    conn: &mut Connection,
    file: &str,
    taken_at: i64,
) -> Result<(i64, u64), LoadError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let snapshot_id = begin_membership(&tx, file, taken_at)?;
    let count = tx.execute(
        &format!(
            "INSERT INTO membership_rows (snapshot_id, group_id, user_id, email) \
             SELECT ?1, a, b, c FROM {} ORDER BY a, b",
            super::compute::STAGED
        ),
        [snapshot_id],
    )? as u64;
    tx.execute(
        "UPDATE membership_snapshots SET complete = 1 WHERE id = ?1",
        [snapshot_id],
    )?;
    tx.commit()?;
    Ok((snapshot_id, count))
}

// Loading a file: `load` reads and checks its rows, these store them. They live here, beside
// what they call, so that `load` (the edge that parses input) needs nothing from the store.

/// Read `input` and store it as the newest snapshot of the computation `spec` describes: one
/// transaction, nothing stored on any error. An input without rows is refused (see
/// [`load_snapshot_with`]).
pub fn load_snapshot(
    conn: &mut Connection,
    input: &load::Input,
    spec: &ComputationSpec<'_>,
    taken_at: i64,
    now: i64,
) -> Result<Stored, LoadError> {
    load_snapshot_with(conn, input, spec, taken_at, now, false)
}

/// [`load_snapshot`], storing an input without rows as an empty snapshot when `allow_empty`
/// (every member exits, every value goes): without it, an empty input is refused, since an
/// export that failed half-way often leaves an empty file.
pub fn load_snapshot_with(
    conn: &mut Connection,
    input: &load::Input,
    spec: &ComputationSpec<'_>,
    taken_at: i64,
    now: i64,
    allow_empty: bool,
) -> Result<Stored, LoadError> {
    let columns = load::snapshot_columns(spec.scope);
    let mut records = load::Records::open(input, columns)?;
    let file = records.file().to_string();
    let (kind, scope) = (spec.kind, spec.scope);
    let rows = std::iter::from_fn(|| records.next_record(columns))
        .map(|record| record.and_then(|r| load::snapshot_row(&file, &r, kind, scope)));
    store_snapshot(conn, &file, spec, taken_at, now, allow_empty, rows)
}

/// Read `input` and store it as the newest account membership snapshot: (snapshot id, rows).
pub fn load_membership(
    conn: &mut Connection,
    input: &load::Input,
    taken_at: i64,
) -> Result<(i64, u64), LoadError> {
    load_membership_with(conn, input, taken_at, false)
}

/// [`load_membership`], storing an input without rows when `allow_empty` (every user leaves
/// every account).
pub fn load_membership_with(
    conn: &mut Connection,
    input: &load::Input,
    taken_at: i64,
    allow_empty: bool,
) -> Result<(i64, u64), LoadError> {
    let mut records = load::Records::open(input, load::MEMBERSHIP_COLUMNS)?;
    let file = records.file().to_string();
    let rows = std::iter::from_fn(|| records.next_record(load::MEMBERSHIP_COLUMNS))
        .map(|record| record.and_then(|r| load::membership_row(&file, &r)));
    store_membership(conn, &file, taken_at, allow_empty, rows)
}

/// An input without rows, refused when the caller does not allow empty snapshots (the CLI does:
/// SPEC section 4 stores any file without a bad row; it warns instead).
fn empty(file: &str, consequence: &str) -> LoadError {
    LoadError::Input {
        file: file.to_string(),
        reason: format!("the file holds no rows; {consequence}"),
    }
}

/// The newest complete snapshot of a computation: (id, taken_at, row_count). Which snapshot is
/// newest is decided in one place, `state::newest_snapshot` (the one a run diffs).
pub fn newest_snapshot(
    conn: &Connection,
    computation_id: &str,
) -> rusqlite::Result<Option<(i64, i64, i64)>> {
    let Some(s) = super::state::newest_snapshot(conn, computation_id)? else {
        return Ok(None);
    };
    let rows = conn.query_row(
        "SELECT coalesce(row_count, (SELECT count(*) FROM snapshot_rows WHERE snapshot_id = s.id)) \
         FROM snapshots s WHERE id = ?1",
        [s.id],
        |r| r.get(0),
    )?;
    Ok(Some((s.id, s.taken_at, rows)))
}

/// The newest complete membership snapshot: (id, taken_at, rows). Which one is newest is
/// decided by `state::newest_membership` (the one a run diffs).
pub fn newest_membership(conn: &Connection) -> rusqlite::Result<Option<(i64, i64, i64)>> {
    let Some(m) = super::state::newest_membership(conn)? else {
        return Ok(None);
    };
    let rows = conn.query_row(
        "SELECT count(*) FROM membership_rows WHERE snapshot_id = ?1",
        [m.id],
        |r| r.get(0),
    )?;
    Ok(Some((m.id, m.taken_at, rows)))
}

/// A computation and the rows of its newest complete snapshot, as `/metrics` exports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewestRows {
    pub key: String,
    /// The snapshot's `row_count`, 0 when none is recorded (an upstream job writing with plain
    /// SQL may leave it NULL; [`newest_snapshot`] counts the rows then, this does not).
    pub rows: i64,
}

/// Every computation with a complete snapshot and the rows of its newest one, by key.
pub fn newest_snapshot_rows(conn: &Connection) -> rusqlite::Result<Vec<NewestRows>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT c.key, coalesce(s.row_count, 0) FROM computations c \
         JOIN snapshots s ON s.id = {} ORDER BY c.key",
        super::state::newest_snapshot_id("c.id")
    ))?;
    stmt.query_map([], |r| {
        Ok(NewestRows {
            key: r.get(0)?,
            rows: r.get(1)?,
        })
    })?
    .collect()
}

/// The entities (user or group ids) of a snapshot.
pub fn snapshot_entities(conn: &Connection, snapshot_id: i64) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT entity_id FROM snapshot_rows WHERE snapshot_id = ?1")?;
    stmt.query_map([snapshot_id], |r| r.get(0))?.collect()
}

pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| unix.to_string())
}

/// A database failure while storing loaded rows, as `load`'s error (which names no database).
impl From<rusqlite::Error> for LoadError {
    fn from(error: rusqlite::Error) -> LoadError {
        LoadError::Database(Box::new(error))
    }
}
