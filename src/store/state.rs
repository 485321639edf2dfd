//! Planned / delivered state, plan cursors, event times and runs: the SQL the diff engine reads
//! and writes. The diff walks sorted cursors side by side (`Merge`: the new snapshot against
//! planned state, itself a base snapshot overlaid with overrides; see schema.sql), so memory
//! never grows with snapshot size, and a run writes only the overrides of what changed, never a
//! copy of the snapshot. A run stages what it will write in temp tables while it reads
//! (`create_staging`, `stage_*`) and copies them into the main tables in one short write
//! transaction at the end (`commit_staged_state`).

use std::cmp::Ordering;

use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Rows, Statement, params};
use serde_json::Value;

use audience_sync_core::plan::diff::Change;

use crate::domain::Scope;

/// A complete snapshot chosen for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRef {
    pub id: i64,
    pub taken_at: i64,
}

/// JSON text for a value, `None` for JSON null (the "no value" of SPEC section 3).
pub fn json_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// A `SELECT id, taken_at` row as a [`SnapshotRef`].
fn snapshot_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRef> {
    Ok(SnapshotRef {
        id: r.get(0)?,
        taken_at: r.get(1)?,
    })
}

// ─── The newest snapshot ────────────────────────────────────────────────────────────────────
//
// Which complete snapshot is "the newest" is decided here and nowhere else. The one a run diffs
// (`newest_snapshot`, `newest_membership`), the one `status` reports (`snapshots::newest_*`),
// the one `/metrics` reports (`snapshots::newest_snapshot_rows`, through `newest_snapshot_id`),
// the one a new load may not be older than (`snapshots::store_snapshot`, `store_membership`)
// and retention's ranking of the newest N (`NEWEST_FIRST`) all come from here.

/// The order that puts the newest snapshot first, over `snapshots` or `membership_snapshots`
/// (of complete ones only: an incomplete snapshot is invisible): the highest `taken_at`, two
/// snapshots taken at the same time by the one stored last (the higher id).
pub(super) const NEWEST_FIRST: &str = "taken_at DESC, id DESC";

/// SQL: the id of the newest complete snapshot of the computation whose id is the SQL
/// expression `computation` (a parameter such as `?1`, or a column of the outer query), NULL
/// when it has none.
pub(super) fn newest_snapshot_id(computation: &str) -> String {
    format!(
        "(SELECT id FROM snapshots WHERE computation_id = {computation} AND complete = 1 \
         ORDER BY {NEWEST_FIRST} LIMIT 1)"
    )
}

/// SQL: the id of the newest complete membership snapshot, NULL when there is none.
fn newest_membership_id() -> String {
    format!(
        "(SELECT id FROM membership_snapshots WHERE complete = 1 ORDER BY {NEWEST_FIRST} LIMIT 1)"
    )
}

/// The newest complete snapshot of a computation ([`NEWEST_FIRST`]).
pub fn newest_snapshot(
    conn: &Connection,
    computation_id: &str,
) -> rusqlite::Result<Option<SnapshotRef>> {
    conn.query_row(
        &format!(
            "SELECT id, taken_at FROM snapshots WHERE id = {}",
            newest_snapshot_id("?1")
        ),
        [computation_id],
        snapshot_row,
    )
    .optional()
}

/// The newest complete membership snapshot ([`NEWEST_FIRST`]).
pub fn newest_membership(conn: &Connection) -> rusqlite::Result<Option<SnapshotRef>> {
    conn.query_row(
        &format!(
            "SELECT id, taken_at FROM membership_snapshots WHERE id = {}",
            newest_membership_id()
        ),
        [],
        snapshot_row,
    )
    .optional()
}

/// A snapshot by id (a resumed run's), if it still exists.
pub fn snapshot_ref(conn: &Connection, id: i64) -> rusqlite::Result<Option<SnapshotRef>> {
    conn.query_row(
        "SELECT id, taken_at FROM snapshots WHERE id = ?1",
        [id],
        snapshot_row,
    )
    .optional()
}

/// A membership snapshot by id, if it still exists.
pub fn membership_ref(conn: &Connection, id: i64) -> rusqlite::Result<Option<SnapshotRef>> {
    conn.query_row(
        "SELECT id, taken_at FROM membership_snapshots WHERE id = ?1",
        [id],
        snapshot_row,
    )
    .optional()
}

/// The inputs the last committed run planned `subject` (a computation id or `membership`) from.
pub fn cursor(
    conn: &Connection,
    subject: &str,
) -> rusqlite::Result<Option<(Option<i64>, Option<i64>)>> {
    conn.query_row(
        "SELECT snapshot_id, membership_snapshot_id FROM plan_cursors WHERE subject = ?1",
        [subject],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

pub fn set_cursor(
    conn: &Connection,
    subject: &str,
    snapshot_id: Option<i64>,
    membership_snapshot_id: Option<i64>,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO plan_cursors (subject, snapshot_id, membership_snapshot_id) VALUES (?1, ?2, ?3) \
         ON CONFLICT (subject) DO UPDATE SET snapshot_id = excluded.snapshot_id, \
         membership_snapshot_id = excluded.membership_snapshot_id",
        params![subject, snapshot_id, membership_snapshot_id],
    )?;
    Ok(())
}

/// Whether a committed run has ever planned this computation (otherwise its next run is its
/// initial sync).
pub fn ever_planned(conn: &Connection, computation_id: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM run_computations WHERE computation_id = ?1)",
        [computation_id],
        |r| r.get(0),
    )
}

/// The base of a computation's planned state: (snapshot, membership snapshot), if it has one.
pub fn planned_base(
    conn: &Connection,
    computation_id: &str,
) -> rusqlite::Result<Option<(i64, Option<i64>)>> {
    conn.query_row(
        "SELECT snapshot_id, membership_snapshot_id FROM planned_bases WHERE computation_id = ?1",
        [computation_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Move the base of a computation's planned state (a run's write transaction, once it has
/// staged the overrides that keep every entity's planned value what the run planned).
pub fn set_planned_base(
    conn: &Connection,
    computation_id: &str,
    snapshot_id: i64,
    membership_snapshot_id: Option<i64>,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO planned_bases (computation_id, snapshot_id, membership_snapshot_id) \
         VALUES (?1, ?2, ?3) ON CONFLICT (computation_id) DO UPDATE SET \
         snapshot_id = excluded.snapshot_id, membership_snapshot_id = excluded.membership_snapshot_id",
        params![computation_id, snapshot_id, membership_snapshot_id],
    )?;
    Ok(())
}

/// The rows a computation's planned state for `subject` is based on, read as the diff reads a
/// new snapshot (`Source::Empty` without a base).
pub fn base_source(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
) -> rusqlite::Result<Source> {
    let Some((audience, account)) = conn
        .query_row(
            "SELECT kind = 'audience', scope = 'account' FROM computations WHERE id = ?1",
            [computation_id],
            |r| Ok((r.get::<_, bool>(0)?, r.get::<_, bool>(1)?)),
        )
        .optional()?
    else {
        return Ok(Source::Empty);
    };
    // A user computation has no account values.
    if subject == "account" && !account {
        return Ok(Source::Empty);
    }
    Ok(match planned_base(conn, computation_id)? {
        None => Source::Empty,
        Some((snapshot_id, _)) if subject == "account" || !account => Source::Snapshot {
            snapshot_id,
            audience,
        },
        Some((snapshot_id, Some(membership_snapshot_id))) => Source::Derived {
            snapshot_id,
            membership_snapshot_id,
            audience,
        },
        Some((_, None)) => Source::Empty,
    })
}

/// The base one entity's planned state is read from: the run being planned's snapshots if the
/// run has committed the entity (see `run_progress` in schema.sql), else [`base_source`].
pub fn planned_source(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
) -> rusqlite::Result<Source> {
    if let Some(progress) = run_progress(conn)?
        && progress.committed(subject, entity_id)
        && let Some(source) = run_source(conn, progress.run_id, computation_id, subject)?
    {
        return Ok(source);
    }
    base_source(conn, computation_id, subject)
}

/// What `subject` of a computation is planned from in run `run_id` (`None`: the run does not
/// plan the computation).
fn run_source(
    conn: &Connection,
    run_id: i64,
    computation_id: &str,
    subject: &str,
) -> rusqlite::Result<Option<Source>> {
    conn.prepare_cached(
        "SELECT rc.snapshot_id, r.membership_snapshot_id, c.kind = 'audience', c.scope = 'account' \
         FROM run_computations rc JOIN runs r ON r.id = rc.run_id \
         JOIN computations c ON c.id = rc.computation_id \
         WHERE rc.run_id = ?1 AND rc.computation_id = ?2",
    )?
    .query_row(params![run_id, computation_id], |r| {
        let snapshot_id: i64 = r.get(0)?;
        let membership: Option<i64> = r.get(1)?;
        let audience: bool = r.get(2)?;
        let account: bool = r.get(3)?;
        Ok(match (subject, account, membership) {
            ("account", false, _) => Source::Empty,
            ("account", true, _) | (_, false, _) => Source::Snapshot {
                snapshot_id,
                audience,
            },
            (_, true, Some(membership_snapshot_id)) => Source::Derived {
                snapshot_id,
                membership_snapshot_id,
                audience,
            },
            (_, true, None) => Source::Empty,
        })
    })
    .optional()
}

// ─── The run being planned ──────────────────────────────────────────────────────────────────

/// Which pass of a run: accounts' own values (group calls), then users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Accounts,
    Users,
}

impl Pass {
    pub fn as_str(self) -> &'static str {
        match self {
            Pass::Accounts => "account",
            Pass::Users => "user",
        }
    }
}

/// The run being planned (table `run_progress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunProgress {
    pub run_id: i64,
    pub pass: Pass,
    /// The last entity of `pass` committed.
    pub through: Option<String>,
    /// The run diffs the account membership.
    pub membership: bool,
    /// The dead-letter generation when the run began.
    pub dead_letters: i64,
    pub chunks: i64,
}

impl RunProgress {
    /// Whether the run has committed `subject` of `entity_id` (its planned state is then based
    /// on the run's snapshots).
    pub fn committed(&self, subject: &str, entity_id: &str) -> bool {
        let through = self.through.as_deref().is_some_and(|t| entity_id <= t);
        match (subject, self.pass) {
            ("account", Pass::Users) => true,
            ("account", Pass::Accounts) | (_, Pass::Users) => through,
            _ => false,
        }
    }
}

pub fn run_progress(conn: &Connection) -> rusqlite::Result<Option<RunProgress>> {
    conn.prepare_cached(
        "SELECT run_id, pass, through, membership, dead_letters, chunks FROM run_progress \
         ORDER BY run_id LIMIT 1",
    )?
    .query_row([], |r| {
        Ok(RunProgress {
            run_id: r.get(0)?,
            pass: if r.get::<_, String>(1)? == "account" {
                Pass::Accounts
            } else {
                Pass::Users
            },
            through: r.get(2)?,
            membership: r.get(3)?,
            dead_letters: r.get(4)?,
            chunks: r.get(5)?,
        })
    })
    .optional()
}

/// Record where the run being planned stands (in each chunk's write transaction).
pub fn set_run_progress(conn: &Connection, progress: &RunProgress) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO run_progress (run_id, pass, through, membership, dead_letters, chunks) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (run_id) DO UPDATE SET \
         pass = excluded.pass, through = excluded.through, chunks = excluded.chunks",
    )?
    .execute(params![
        progress.run_id,
        progress.pass.as_str(),
        progress.through,
        progress.membership,
        progress.dead_letters,
        progress.chunks
    ])?;
    Ok(())
}

pub fn clear_run_progress(conn: &Connection, run_id: i64) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM run_progress WHERE run_id = ?1", [run_id])?;
    Ok(())
}

/// One computation of a recorded run, as a resumed run needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunComputation {
    pub computation_id: String,
    pub snapshot_id: i64,
    pub mode: String,
    pub track: bool,
    pub resync: bool,
}

pub fn run_computations(conn: &Connection, run_id: i64) -> rusqlite::Result<Vec<RunComputation>> {
    conn.prepare(
        "SELECT computation_id, snapshot_id, mode, track, resync FROM run_computations \
         WHERE run_id = ?1 ORDER BY computation_id",
    )?
    .query_map([run_id], |r| {
        Ok(RunComputation {
            computation_id: r.get(0)?,
            snapshot_id: r.get(1)?,
            mode: r.get(2)?,
            track: r.get(3)?,
            resync: r.get(4)?,
        })
    })?
    .collect()
}

/// A recorded run's mode and membership snapshot.
pub fn run_row(conn: &Connection, run_id: i64) -> rusqlite::Result<(String, Option<i64>)> {
    conn.query_row(
        "SELECT mode, membership_snapshot_id FROM runs WHERE id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// The planned (email, value) of one entity: its override, else its base row, else nothing.
pub fn planned_row(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
) -> rusqlite::Result<(Option<String>, Option<String>)> {
    let overridden = conn
        .prepare_cached(
            "SELECT email, planned FROM planned_overrides \
             WHERE computation_id = ?1 AND subject = ?2 AND entity_id = ?3",
        )?
        .query_row(params![computation_id, subject, entity_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some(row) = overridden {
        return Ok(row);
    }
    let source = planned_source(conn, computation_id, subject, entity_id)?;
    let sql = source_sql(source, true);
    let mut stmt = conn.prepare_cached(&sql)?;
    let reading = Reading::of(source);
    let row = match source {
        Source::Snapshot { snapshot_id, .. } => stmt
            .query_row(params![snapshot_id, entity_id], |r| {
                let value = text(reading.read(bytes(r.get_ref(2)?)?))?;
                Ok((r.get(1)?, value.map(str::to_string)))
            })
            .optional()?,
        Source::Derived {
            snapshot_id,
            membership_snapshot_id,
            ..
        } => stmt
            .query_row(
                params![snapshot_id, membership_snapshot_id, entity_id],
                |r| Ok((r.get(1)?, r.get(2)?)),
            )
            .optional()?,
        Source::Empty => None,
    };
    Ok(row.unwrap_or((None, None)))
}

/// The delivered value of one entity (`None`: no value, or never delivered).
pub fn delivered_value(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(
        "SELECT delivered FROM delivered_state \
         WHERE computation_id = ?1 AND subject = ?2 AND entity_id = ?3",
    )?
    .query_row(params![computation_id, subject, entity_id], |r| r.get(0))
    .optional()
}

/// Set the planned value of one entity as an override (a dead letter putting it back, a retry
/// sending it forward, or a test), keeping the email planned state knows for it.
pub fn override_planned(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
    email: Option<&str>,
    planned: Option<&str>,
) -> rusqlite::Result<()> {
    let email = match email {
        Some(e) => Some(e.to_string()),
        None => planned_row(conn, computation_id, subject, entity_id)?.0,
    };
    conn.prepare_cached(
        "INSERT INTO planned_overrides (computation_id, subject, entity_id, email, planned) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (computation_id, subject, entity_id) DO UPDATE SET \
           planned = excluded.planned, email = excluded.email",
    )?
    .execute(params![computation_id, subject, entity_id, email, planned])?;
    Ok(())
}

/// What a dead-lettered change emitted (table `replans`): the value it drove toward and the
/// time of the track event it fired, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Replan {
    pub value: Option<String>,
    pub track_at: Option<i64>,
}

/// Keep what a dead-lettered change emitted (in `mark_dead`'s transaction).
pub fn remember_replan(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
    value: &Value,
    track_at: Option<i64>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO replans (computation_id, subject, entity_id, value, track_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (computation_id, subject, entity_id) \
         DO UPDATE SET value = excluded.value, track_at = excluded.track_at",
    )?
    .execute(params![
        computation_id,
        subject,
        entity_id,
        json_text(value),
        track_at
    ])?;
    Ok(())
}

/// Forget what a dead-lettered change of one entity emitted (`dead-letters retry` sends the
/// message itself again).
pub fn forget_replan(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM replans WHERE computation_id = ?1 AND subject = ?2 AND entity_id = ?3",
    )?
    .execute(params![computation_id, subject, entity_id])?;
    Ok(())
}

/// Whether any dead-lettered change of the computation waits to be re-planned (a run looks its
/// changes up in `replans` only then).
pub fn has_replans(conn: &Connection, computation_id: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM replans WHERE computation_id = ?1)")?
        .query_row([computation_id], |r| r.get(0))
}

/// What the dead-lettered change of one entity emitted, if one waits to be re-planned.
pub fn replan(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
) -> rusqlite::Result<Option<Replan>> {
    conn.prepare_cached(
        "SELECT value, track_at FROM replans \
         WHERE computation_id = ?1 AND subject = ?2 AND entity_id = ?3",
    )?
    .query_row(params![computation_id, subject, entity_id], |r| {
        Ok(Replan {
            value: r.get(0)?,
            track_at: r.get(1)?,
        })
    })
    .optional()
}

/// Where the new side of a diff comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// A computation snapshot's rows: audience (members are `true`) or trait values.
    Snapshot { snapshot_id: i64, audience: bool },
    /// The per-user derived values of an account computation: audience true if any member
    /// account is a member; trait the value of the member account with the smallest group_id
    /// that has one.
    Derived {
        snapshot_id: i64,
        membership_snapshot_id: i64,
        audience: bool,
    },
    /// No rows (a computation with no complete snapshot, or no membership snapshot).
    Empty,
}

/// One entity of a merge: present in the new source, in planned state, or both. `new` and `old`
/// are JSON text; `None` is no value.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub entity_id: &'a str,
    pub email: Option<&'a str>,
    pub new: Option<&'a str>,
    pub old: Option<&'a str>,
}

/// How a cursor reads its value column.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// As stored.
    AsIs,
    /// An audience snapshot row: SQL NULL, JSON null or false is "no row" (SPEC section 3);
    /// any other row is a member, `true`.
    Audience,
    /// A trait snapshot row: JSON null is no value.
    Trait,
}

impl Reading {
    fn of(source: Source) -> Reading {
        match source {
            Source::Snapshot { audience: true, .. } => Reading::Audience,
            Source::Snapshot {
                audience: false, ..
            } => Reading::Trait,
            Source::Derived { .. } | Source::Empty => Reading::AsIs,
        }
    }

    /// In Rust rather than a SQL CASE: it runs for every row of both sides of a diff.
    fn read(self, raw: Option<&[u8]>) -> Option<&[u8]> {
        match (self, raw) {
            (Reading::AsIs, raw) => raw,
            (Reading::Audience, None | Some(b"null" | b"false")) => None,
            (Reading::Audience, Some(_)) => Some(b"true"),
            (Reading::Trait, Some(b"null")) => None,
            (Reading::Trait, raw) => raw,
        }
    }
}

/// The rows of `source` in entity order (?1 the snapshot, ?2 the membership snapshot), from the
/// entity given as the next parameter on (inclusive: a merge restarted where it stopped), or,
/// with `one`, the row of that one entity. Snapshot values come as stored: read them with
/// [`Reading::of`] the source.
fn source_sql(source: Source, one: bool) -> String {
    let op = if one { "=" } else { ">=" };
    match source {
        Source::Snapshot { .. } => format!(
            "SELECT entity_id, email, value FROM snapshot_rows WHERE snapshot_id = ?1 \
             AND entity_id {op} ?2 ORDER BY entity_id"
        ),
        // SQLite's bare-column rule: with exactly one min() aggregate, the other columns come
        // from the row holding the minimum, i.e. the smallest group_id that has a value.
        Source::Derived { audience, .. } => format!(
            "SELECT m.user_id, m.email, {}, min(m.group_id) \
             FROM membership_rows m JOIN snapshot_rows r \
               ON r.snapshot_id = ?1 AND r.entity_id = m.group_id \
             WHERE m.snapshot_id = ?2 AND m.user_id {op} ?3 \
               AND r.value IS NOT NULL AND r.value <> 'null' {} \
             GROUP BY m.user_id ORDER BY m.user_id",
            if audience { "'true'" } else { "r.value" },
            if audience {
                "AND r.value <> 'false'"
            } else {
                ""
            },
        ),
        Source::Empty => "SELECT NULL, NULL, NULL WHERE 0 AND ?1 IS NULL".to_string(),
    }
}

/// A forward cursor over sorted rows of (key, key2, email, value). It copies the current key
/// into a reused buffer (keys are compared across cursors); the email and value are read from
/// the current row only when asked, so a diff step that finds nothing changed reads its two
/// values and never its emails (most steps of an incremental run).
struct Cursor<'s> {
    rows: Rows<'s>,
    key: Vec<u8>,
    key2: Vec<u8>,
    done: bool,
    // Column positions: (key, key2 or none, email, value).
    cols: (usize, Option<usize>, usize, usize),
    reading: Reading,
}

/// A TEXT or NULL column as bytes (SQLite TEXT is UTF-8 by contract; it is checked where the
/// text leaves the diff, see [`text`]).
fn bytes(value: ValueRef<'_>) -> rusqlite::Result<Option<&[u8]>> {
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) => Ok(Some(t)),
        ValueRef::Integer(_) | ValueRef::Real(_) | ValueRef::Blob(_) => Err(
            rusqlite::Error::InvalidColumnType(0, "value".into(), value.data_type()),
        ),
    }
}

fn text(value: Option<&[u8]>) -> rusqlite::Result<Option<&str>> {
    value
        .map(|t| std::str::from_utf8(t).map_err(|e| rusqlite::Error::Utf8Error(0, e)))
        .transpose()
}

impl<'s> Cursor<'s> {
    fn new(
        rows: Rows<'s>,
        cols: (usize, Option<usize>, usize, usize),
        reading: Reading,
    ) -> rusqlite::Result<Self> {
        let mut cursor = Cursor {
            rows,
            key: Vec::new(),
            key2: Vec::new(),
            done: false,
            cols,
            reading,
        };
        cursor.advance()?;
        Ok(cursor)
    }

    fn advance(&mut self) -> rusqlite::Result<()> {
        match self.rows.next()? {
            None => self.done = true,
            Some(row) => {
                self.key.clear();
                self.key
                    .extend_from_slice(bytes(row.get_ref(self.cols.0)?)?.unwrap_or_default());
                if let Some(c) = self.cols.1 {
                    self.key2.clear();
                    self.key2
                        .extend_from_slice(bytes(row.get_ref(c)?)?.unwrap_or_default());
                }
            }
        }
        Ok(())
    }

    /// A column of the current row (the cursor is not done).
    fn column(&self, col: usize) -> rusqlite::Result<Option<&[u8]>> {
        let row = self
            .rows
            .get()
            .expect("a cursor that is not done has a row");
        bytes(row.get_ref(col)?)
    }

    fn email(&self) -> rusqlite::Result<Option<&[u8]>> {
        self.column(self.cols.2)
    }

    fn value(&self) -> rusqlite::Result<Option<&[u8]>> {
        Ok(self.reading.read(self.column(self.cols.3)?))
    }

    fn cmp_key(&self, other: &Cursor<'_>) -> Ordering {
        cmp_bytes(&self.key, &other.key).then_with(|| cmp_bytes(&self.key2, &other.key2))
    }
}

/// Byte-wise order: SQLite's BINARY collation (memcmp), the order of its `ORDER BY`. Eight
/// bytes at a time, inline: a diff compares keys twice per row, and entity ids are short, so a
/// call to memcmp per comparison cost more than the comparison.
fn cmp_bytes(a: &[u8], b: &[u8]) -> Ordering {
    let (mut a_rest, mut b_rest) = (a, b);
    while let (Some((x, a_next)), Some((y, b_next))) = (
        a_rest.split_first_chunk::<8>(),
        b_rest.split_first_chunk::<8>(),
    ) {
        if x != y {
            return u64::from_be_bytes(*x).cmp(&u64::from_be_bytes(*y));
        }
        (a_rest, b_rest) = (a_next, b_next);
    }
    for (x, y) in a_rest.iter().zip(b_rest) {
        if x != y {
            return x.cmp(y);
        }
    }
    a_rest.len().cmp(&b_rest.len())
}

/// A full outer join of sorted cursors, pulled one key at a time: the new side (snapshot or
/// membership rows) and the old side (planned state: base rows, replaced key by key by the
/// override rows when the merge has them).
pub struct Merge<'s> {
    new: Cursor<'s>,
    old: Cursor<'s>,
    over: Option<Cursor<'s>>,
}

impl Merge<'_> {
    /// Where the merge stands: the least key any side is at (`None` at the end). A merge opened
    /// from it ([`MergeStatements::open_from`]) goes on exactly from here.
    pub fn position(&self) -> Option<Position> {
        [Some(&self.new), Some(&self.old), self.over.as_ref()]
            .into_iter()
            .flatten()
            .filter(|c| !c.done)
            .map(|c| (c.key.as_slice(), c.key2.as_slice()))
            .min_by(|a, b| cmp_bytes(a.0, b.0).then_with(|| cmp_bytes(a.1, b.1)))
            .map(|(key, key2)| Position {
                key: String::from_utf8_lossy(key).into_owned(),
                key2: String::from_utf8_lossy(key2).into_owned(),
            })
    }

    /// The next key present on any side: `f(new, over, old)` sees the row of each side that
    /// has it; `None` at the end.
    fn next_with<R>(
        &mut self,
        f: impl FnOnce(Option<&Cursor<'_>>, Option<&Cursor<'_>>, Option<&Cursor<'_>>) -> R,
    ) -> rusqlite::Result<Option<R>> {
        // The common step compares the two big sides once; the overrides (few) only while
        // they last.
        let (mut new, mut old) = match (self.new.done, self.old.done) {
            (true, true) => (false, false),
            (false, true) => (true, false),
            (true, false) => (false, true),
            (false, false) => match self.new.cmp_key(&self.old) {
                Ordering::Less => (true, false),
                Ordering::Greater => (false, true),
                Ordering::Equal => (true, true),
            },
        };
        let mut over = false;
        if let Some(c) = self.over.as_ref().filter(|c| !c.done) {
            let least = if new { &self.new } else { &self.old };
            let order = if new || old {
                c.cmp_key(least)
            } else {
                Ordering::Less
            };
            match order {
                Ordering::Less => (new, old, over) = (false, false, true),
                Ordering::Equal => over = true,
                Ordering::Greater => {}
            }
        }
        if !(new || old || over) {
            return Ok(None);
        }
        let r = f(
            new.then_some(&self.new),
            self.over.as_ref().filter(|_| over),
            old.then_some(&self.old),
        );
        if new {
            self.new.advance()?;
        }
        if old {
            self.old.advance()?;
        }
        if over && let Some(c) = self.over.as_mut() {
            c.advance()?;
        }
        Ok(Some(r))
    }

    /// The next entity of a value merge (`MergeStatements::values`).
    pub fn next_pair<R>(&mut self, f: impl FnOnce(Pair<'_>) -> R) -> rusqlite::Result<Option<R>> {
        Ok(self
            .next_pair_unless_same(false, f)?
            .map(|r| r.expect("never skipped")))
    }

    /// Like [`next_pair`](Self::next_pair), but with `skip_same` an entity whose planned value
    /// is byte for byte its new value yields `Some(None)` without `f`: nothing to classify,
    /// and nothing of its row is read but the two values.
    pub fn next_pair_unless_same<R>(
        &mut self,
        skip_same: bool,
        f: impl FnOnce(Pair<'_>) -> R,
    ) -> rusqlite::Result<Option<Option<R>>> {
        self.next_with(|new, over, base| {
            let planned = over.or(base);
            let new_value = new.map(Cursor::value).transpose()?.flatten();
            let old_value = planned.map(Cursor::value).transpose()?.flatten();
            if skip_same && new.is_some() && planned.is_some() && new_value == old_value {
                return Ok(None);
            }
            let any = new.or(planned).expect("a merge step has at least one side");
            let mut email = None;
            for c in [new, over, base].into_iter().flatten() {
                email = c.email()?;
                if email.is_some() {
                    break;
                }
            }
            Ok(Some(f(Pair {
                entity_id: text(Some(&any.key))?.unwrap_or_default(),
                email: text(email)?,
                new: text(new_value)?,
                old: text(old_value)?,
            })))
        })?
        .transpose()
    }

    /// The next (user, account) of a membership merge (`MergeStatements::membership`).
    pub fn next_member<R>(
        &mut self,
        f: impl FnOnce(MemberPair<'_>) -> R,
    ) -> rusqlite::Result<Option<R>> {
        self.next_with(|new, _, old| {
            let any = new.or(old).expect("a merge step has at least one side");
            let email = match new.map(Cursor::email).transpose()?.flatten() {
                Some(email) => Some(email),
                None => old.map(Cursor::email).transpose()?.flatten(),
            };
            Ok(f(MemberPair {
                user_id: text(Some(&any.key))?.unwrap_or_default(),
                group_id: text(Some(&any.key2))?.unwrap_or_default(),
                email: text(email)?,
                in_snapshot: new.is_some(),
                attached: old.is_some(),
                delivered: old.map(Cursor::value).transpose()?.flatten() == Some(b"1".as_slice()),
            }))
        })?
        .transpose()
    }
}

/// The prepared statements of one merge; `open` runs them. Kept apart from `Merge` because
/// the row cursors borrow their statements: a run prepares every merge it walks side by side
/// first, then opens them all.
pub struct MergeStatements<'c> {
    new: Statement<'c>,
    old: Statement<'c>,
    over: Option<Statement<'c>>,
    kind: MergeKind,
}

enum MergeKind {
    Values {
        source: Source,
        base: Source,
        computation_id: String,
        subject: String,
    },
    Membership {
        membership_snapshot_id: Option<i64>,
    },
}

impl<'c> MergeStatements<'c> {
    /// `source` against the planned state of (computation, subject), in entity order: `base`
    /// (`base_source`) overlaid with the computation's overrides.
    pub fn values(
        conn: &'c Connection,
        source: Source,
        base: Source,
        computation_id: &str,
        subject: &str,
    ) -> rusqlite::Result<Self> {
        Ok(MergeStatements {
            new: conn.prepare(&source_sql(source, false))?,
            old: conn.prepare(&source_sql(base, false))?,
            over: Some(conn.prepare(
                "SELECT entity_id, email, planned FROM planned_overrides \
                 WHERE computation_id = ?1 AND subject = ?2 AND entity_id >= ?3 \
                 ORDER BY entity_id",
            )?),
            kind: MergeKind::Values {
                source,
                base,
                computation_id: computation_id.to_string(),
                subject: subject.to_string(),
            },
        })
    }

    /// A membership snapshot (or none) against the planned attachments, in (user, account)
    /// order.
    pub fn membership(
        conn: &'c Connection,
        membership_snapshot_id: Option<i64>,
    ) -> rusqlite::Result<Self> {
        Ok(MergeStatements {
            new: conn.prepare(
                "SELECT user_id, group_id, email, '1' FROM membership_rows WHERE snapshot_id = ?1 \
                 AND (user_id, group_id) >= (?2, ?3) ORDER BY user_id, group_id",
            )?,
            old: conn.prepare(
                "SELECT user_id, group_id, email, CASE delivered WHEN 1 THEN '1' ELSE '0' END \
                 FROM membership_state WHERE planned = 1 AND (user_id, group_id) >= (?1, ?2) \
                 ORDER BY user_id, group_id",
            )?,
            over: None,
            kind: MergeKind::Membership {
                membership_snapshot_id,
            },
        })
    }

    pub fn open(&mut self) -> rusqlite::Result<Merge<'_>> {
        self.open_from(&Position::default())
    }

    /// The merge from `from` on (inclusive): a merge restarted where an earlier one stopped
    /// ([`Merge::position`]) yields exactly what the earlier one had left.
    pub fn open_from(&mut self, from: &Position) -> rusqlite::Result<Merge<'_>> {
        let key = from.key();
        match &self.kind {
            MergeKind::Values {
                source,
                base,
                computation_id,
                subject,
            } => Ok(Merge {
                new: Cursor::new(
                    query(&mut self.new, *source, key)?,
                    (0, None, 1, 2),
                    Reading::of(*source),
                )?,
                old: Cursor::new(
                    query(&mut self.old, *base, key)?,
                    (0, None, 1, 2),
                    Reading::of(*base),
                )?,
                over: match self.over.as_mut() {
                    Some(over) => Some(Cursor::new(
                        over.query(params![computation_id, subject, key])?,
                        (0, None, 1, 2),
                        Reading::AsIs,
                    )?),
                    None => None,
                },
            }),
            // -1 is never a snapshot id: no membership snapshot means no memberships.
            MergeKind::Membership {
                membership_snapshot_id,
            } => {
                let key2 = from.key2();
                Ok(Merge {
                    new: Cursor::new(
                        self.new
                            .query(params![membership_snapshot_id.unwrap_or(-1), key, key2])?,
                        (0, Some(1), 2, 3),
                        Reading::AsIs,
                    )?,
                    old: Cursor::new(
                        self.old.query(params![key, key2])?,
                        (0, Some(1), 2, 3),
                        Reading::AsIs,
                    )?,
                    over: None,
                })
            }
        }
    }
}

/// Where a merge stands: the key (and, for a membership merge, the account) of the next entity
/// it would yield. The default is the start.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    key: String,
    key2: String,
}

impl Position {
    /// The position of an entity (every account of it, for a membership merge).
    pub fn at(key: &str) -> Position {
        Position {
            key: key.to_string(),
            key2: String::new(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    fn key2(&self) -> &str {
        &self.key2
    }
}

fn query<'s>(
    stmt: &'s mut Statement<'_>,
    source: Source,
    from: &str,
) -> rusqlite::Result<Rows<'s>> {
    match source {
        Source::Snapshot { snapshot_id, .. } => stmt.query(params![snapshot_id, from]),
        Source::Derived {
            snapshot_id,
            membership_snapshot_id,
            ..
        } => stmt.query(params![snapshot_id, membership_snapshot_id, from]),
        Source::Empty => stmt.query([from]),
    }
}

/// One (user, account) membership of a merge: in the new membership snapshot, attached in
/// planned state, or both.
#[derive(Debug, Clone, Copy)]
pub struct MemberPair<'a> {
    pub user_id: &'a str,
    pub group_id: &'a str,
    pub email: Option<&'a str>,
    pub in_snapshot: bool,
    /// Planned attached.
    pub attached: bool,
    /// Intercom confirmed the attach (delivered state).
    pub delivered: bool,
}

/// Every entity planned state holds a value for in (computation, subject), in entity order, as
/// the diff reads it: the base snapshot overlaid with the overrides. For tests and inspection:
/// it walks the whole base snapshot into memory.
pub fn planned_values(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
) -> rusqlite::Result<Vec<(String, String)>> {
    let base = base_source(conn, computation_id, subject)?;
    let split = match run_progress(conn)? {
        Some(p) => run_source(conn, p.run_id, computation_id, subject)?.map(|s| (p, s)),
        None => None,
    };
    let Some((progress, run_base)) = split else {
        let mut out = Vec::new();
        walk_planned(conn, base, computation_id, subject, |entity, planned| {
            out.push((entity.to_string(), planned.to_string()))
        })?;
        return Ok(out);
    };
    // A run is being planned: each entity from the base the run's progress says.
    let mut values = std::collections::BTreeMap::new();
    walk_planned(conn, base, computation_id, subject, |entity, planned| {
        if !progress.committed(subject, entity) {
            values.insert(entity.to_string(), planned.to_string());
        }
    })?;
    walk_planned(
        conn,
        run_base,
        computation_id,
        subject,
        |entity, planned| {
            if progress.committed(subject, entity) {
                values.insert(entity.to_string(), planned.to_string());
            }
        },
    )?;
    Ok(values.into_iter().collect())
}

/// Every entity with a planned value over `base` and the overrides.
fn walk_planned(
    conn: &Connection,
    base: Source,
    computation_id: &str,
    subject: &str,
    mut f: impl FnMut(&str, &str),
) -> rusqlite::Result<()> {
    let mut statements =
        MergeStatements::values(conn, Source::Empty, base, computation_id, subject)?;
    let mut merge = statements.open()?;
    while merge
        .next_pair(|pair| {
            if let Some(planned) = pair.old {
                f(pair.entity_id, planned);
            }
        })?
        .is_some()
    {}
    Ok(())
}

/// How many (computation, subject, entity) have a planned value other than the delivered one:
/// zero once the outbox is drained without dead letters. For tests and inspection, like
/// [`planned_values`].
pub fn undelivered_count(conn: &Connection) -> rusqlite::Result<u64> {
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM computations ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut differ = 0;
    for id in &ids {
        for subject in ["user", "account"] {
            let planned: std::collections::BTreeMap<String, String> =
                planned_values(conn, id, subject)?.into_iter().collect();
            let delivered: std::collections::BTreeMap<String, String> = conn
                .prepare(
                    "SELECT entity_id, delivered FROM delivered_state \
                     WHERE computation_id = ?1 AND subject = ?2",
                )?
                .query_map(params![id, subject], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            differ += planned
                .iter()
                .filter(|(entity, value)| delivered.get(*entity) != Some(value))
                .count();
            differ += delivered
                .keys()
                .filter(|entity| !planned.contains_key(*entity))
                .count();
        }
    }
    Ok(differ as u64)
}

/// The last event time used for (user, event name), if any.
pub fn last_event_time(
    conn: &Connection,
    entity_id: &str,
    event_name: &str,
) -> rusqlite::Result<Option<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT last_at FROM event_times WHERE entity_id = ?1 AND event_name = ?2",
    )?;
    stmt.query_row(params![entity_id, event_name], |r| r.get(0))
        .optional()
}

// ─── One planned change, as the merges yield it ───────────────────────────────────────────────

/// One planned change of one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    /// Whose lane the change goes in: an account's own (its group call) or a user's.
    pub lane: Scope,
    pub entity_id: String,
    /// Index into the run's computation list; `None` for a membership change.
    pub computation: Option<i64>,
    pub group_id: Option<String>,
    pub email: Option<String>,
    pub change: Change,
    pub value: Option<String>,
    pub track: bool,
    /// The planned value differs from the entity's row in the snapshot diffed (an audience
    /// exit's `false`): it is stored as an override of the planned base.
    pub overrides: bool,
    /// The event time of a re-planned change's track (the one the dead-lettered change used),
    /// instead of a new one.
    pub event_at: Option<i64>,
}

// ─── A run's writes, staged in temp tables, then copied in one short write transaction ───────
//
// The diff reads inside a read transaction, which never takes SQLite's write lock, so an
// upstream writer can load snapshots (and delivery can confirm messages) for as long as a big
// run takes. What the run will write goes to these temp tables meanwhile: temp tables live in
// the connection's own temp database, and writing them does not lock the main database.

/// Create (or empty) the connection's staging tables. Call inside the run's read transaction.
pub fn create_staging(conn: &Connection) -> rusqlite::Result<()> {
    super::outbox::create_staging(conn)?;
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

pub fn drop_staging(conn: &Connection) -> rusqlite::Result<()> {
    super::outbox::drop_staging(conn)?;
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

// ─── Dead letters while a run reads ──────────────────────────────────────────────────────────

/// The plan_cursors row that counts dead letters (`mark_dead` adds one in its transaction). A
/// run compares it between its read and its write transaction: if a message died in between,
/// planned state may have moved back under the diff, so the run leaves the cursors of what it
/// diffed alone and the next run diffs those computations again.
pub const DEAD_LETTERS: &str = "dead_letters";

pub fn dead_letter_generation(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce((SELECT snapshot_id FROM plan_cursors WHERE subject = ?1), 0)",
        [DEAD_LETTERS],
        |r| r.get(0),
    )
}

pub fn bump_dead_letter_generation(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO plan_cursors (subject, snapshot_id) VALUES (?1, 1) \
         ON CONFLICT (subject) DO UPDATE SET snapshot_id = coalesce(snapshot_id, 0) + 1",
        [DEAD_LETTERS],
    )?;
    Ok(())
}

// ─── Runs ───────────────────────────────────────────────────────────────────────────────────

/// Record a run as it begins (`planned_at` stays NULL until its last chunk is written).
pub fn insert_run(
    conn: &Connection,
    mode: &str,
    started_at: i64,
    membership_snapshot_id: Option<i64>,
) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO runs (mode, started_at, status, membership_snapshot_id) \
         VALUES (?1, ?2, 'planned', ?3)",
        params![mode, started_at, membership_snapshot_id],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Counts of one computation in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub entered: u64,
    pub exited: u64,
    pub changed: u64,
    pub resent: u64,
    pub users: u64,
}

/// Record a computation of a run as it begins (counts zero; each chunk adds its own).
pub fn insert_run_computation(
    conn: &Connection,
    run_id: i64,
    computation: &RunComputation,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO run_computations (run_id, computation_id, snapshot_id, mode, track, resync) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            run_id,
            computation.computation_id,
            computation.snapshot_id,
            computation.mode,
            computation.track,
            computation.resync
        ],
    )?;
    Ok(())
}

/// Add one chunk's counts to a computation of a run.
pub fn add_run_computation_counts(
    conn: &Connection,
    run_id: i64,
    computation_id: &str,
    counts: &Counts,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE run_computations SET entered = entered + ?3, exited = exited + ?4, \
         changed = changed + ?5, resent = resent + ?6, users = users + ?7 \
         WHERE run_id = ?1 AND computation_id = ?2",
    )?
    .execute(params![
        run_id,
        computation_id,
        counts.entered as i64,
        counts.exited as i64,
        counts.changed as i64,
        counts.resent as i64,
        counts.users as i64
    ])?;
    Ok(())
}

/// Add one chunk's messages and memberships to a run.
pub fn add_run_counts(
    conn: &Connection,
    run_id: i64,
    (attached, detached): (u64, u64),
    (identify, track, group): (u64, u64, u64),
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE runs SET attached = attached + ?2, detached = detached + ?3, \
         messages_identify = messages_identify + ?4, messages_track = messages_track + ?5, \
         messages_group = messages_group + ?6 WHERE id = ?1",
    )?
    .execute(params![
        run_id,
        attached as i64,
        detached as i64,
        identify as i64,
        track as i64,
        group as i64
    ])?;
    Ok(())
}

/// A recorded run, as `status` lists it and `/metrics` times the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub id: i64,
    pub mode: String,
    /// `runs.status`: planned, delivering, finished or failed.
    pub status: String,
    /// Chunks committed while the run is still being planned (or was interrupted: the next run
    /// resumes it); `None` once its last chunk is written.
    pub chunks_committed: Option<i64>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// Identify, track and group messages it enqueued.
    pub messages: i64,
}

/// The newest `limit` runs, newest first.
pub fn recent_runs(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<RunSummary>> {
    let mut stmt = conn.prepare(
        "SELECT id, mode, status, (SELECT p.chunks FROM run_progress p WHERE p.run_id = runs.id), \
                started_at, finished_at, messages_identify + messages_track + messages_group \
         FROM runs ORDER BY id DESC LIMIT ?1",
    )?;
    stmt.query_map([limit as i64], |r| {
        Ok(RunSummary {
            id: r.get(0)?,
            mode: r.get(1)?,
            status: r.get(2)?,
            chunks_committed: r.get(3)?,
            started_at: r.get(4)?,
            finished_at: r.get(5)?,
            messages: r.get(6)?,
        })
    })?
    .collect()
}

/// The run's last chunk is written: it is planned (delivery may mark it finished from now on).
pub fn finish_run_plan(conn: &Connection, run_id: i64, planned_at: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE runs SET planned_at = ?2 WHERE id = ?1",
        params![run_id, planned_at],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_order_like_memcmp(a in proptest::collection::vec(0u8..4, 0..20), b in proptest::collection::vec(0u8..4, 0..20)) {
            prop_assert_eq!(cmp_bytes(&a, &b), a.as_slice().cmp(b.as_slice()));
            prop_assert_eq!(cmp_bytes(&a, &a), Ordering::Equal);
        }
    }

    #[test]
    fn keys_order_like_memcmp_across_the_eight_byte_step() {
        assert_eq!(cmp_bytes(b"user0000", b"user00000"), Ordering::Less);
        assert_eq!(cmp_bytes(b"user00001", b"user00000"), Ordering::Greater);
        assert_eq!(cmp_bytes(b"user0001a", b"user0000z"), Ordering::Greater);
        assert_eq!(cmp_bytes("é".as_bytes(), b"z"), Ordering::Greater);
    }
}
