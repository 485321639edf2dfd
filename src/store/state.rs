//! Planned / delivered state, plan cursors, event times and runs: the SQL the diff engine reads
//! and writes. The diff walks two sorted cursors side by side (`merge_with_state`), so memory
//! never grows with snapshot size.

use std::cmp::Ordering;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Rows, Statement, params};
use serde_json::Value;

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

/// The newest complete snapshot of a computation, by (taken_at, id).
pub fn newest_snapshot(
    conn: &Connection,
    computation_id: &str,
) -> rusqlite::Result<Option<SnapshotRef>> {
    conn.query_row(
        "SELECT id, taken_at FROM snapshots WHERE computation_id = ?1 AND complete = 1 \
         ORDER BY taken_at DESC, id DESC LIMIT 1",
        [computation_id],
        |r| {
            Ok(SnapshotRef {
                id: r.get(0)?,
                taken_at: r.get(1)?,
            })
        },
    )
    .optional()
}

/// The newest complete membership snapshot, by (taken_at, id).
pub fn newest_membership(conn: &Connection) -> rusqlite::Result<Option<SnapshotRef>> {
    conn.query_row(
        "SELECT id, taken_at FROM membership_snapshots WHERE complete = 1 \
         ORDER BY taken_at DESC, id DESC LIMIT 1",
        [],
        |r| {
            Ok(SnapshotRef {
                id: r.get(0)?,
                taken_at: r.get(1)?,
            })
        },
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

// Audience rows: a row whose value is SQL NULL, JSON null or false is "no row" (SPEC section 3).
const AUDIENCE_VALUE: &str =
    "CASE WHEN value IS NULL OR value IN ('null', 'false') THEN NULL ELSE 'true' END";
const TRAIT_VALUE: &str = "CASE WHEN value = 'null' THEN NULL ELSE value END";

fn source_sql(source: Source) -> String {
    match source {
        Source::Snapshot { audience, .. } => format!(
            "SELECT entity_id, email, {} FROM snapshot_rows WHERE snapshot_id = ?1 ORDER BY entity_id",
            if audience {
                AUDIENCE_VALUE
            } else {
                TRAIT_VALUE
            }
        ),
        // SQLite's bare-column rule: with exactly one min() aggregate, the other columns come
        // from the row holding the minimum, i.e. the smallest group_id that has a value.
        Source::Derived { audience, .. } => format!(
            "SELECT m.user_id, m.email, {}, min(m.group_id) \
             FROM membership_rows m JOIN snapshot_rows r \
               ON r.snapshot_id = ?1 AND r.entity_id = m.group_id \
             WHERE m.snapshot_id = ?2 AND r.value IS NOT NULL AND r.value <> 'null' {} \
             GROUP BY m.user_id ORDER BY m.user_id",
            if audience { "'true'" } else { "r.value" },
            if audience {
                "AND r.value <> 'false'"
            } else {
                ""
            }
        ),
        Source::Empty => "SELECT NULL, NULL, NULL WHERE 0".to_string(),
    }
}

/// A forward cursor over sorted rows of (key, key2, email, value) that copies the current row
/// into reused buffers, so two cursors can be compared without allocating per row.
struct Cursor<'s> {
    rows: Rows<'s>,
    key: String,
    key2: String,
    email: Option<String>,
    value: Option<String>,
    done: bool,
    // Column positions: (key, key2 or none, email, value).
    cols: (usize, Option<usize>, usize, usize),
}

fn text(value: ValueRef<'_>) -> rusqlite::Result<Option<&str>> {
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(Some)
            .map_err(|e| rusqlite::Error::Utf8Error(0, e)),
        ValueRef::Integer(_) | ValueRef::Real(_) | ValueRef::Blob(_) => Err(
            rusqlite::Error::InvalidColumnType(0, "value".into(), value.data_type()),
        ),
    }
}

fn set(slot: &mut Option<String>, value: Option<&str>) {
    match value {
        None => *slot = None,
        Some(v) => match slot {
            Some(s) => {
                s.clear();
                s.push_str(v);
            }
            None => *slot = Some(v.to_string()),
        },
    }
}

impl<'s> Cursor<'s> {
    fn new(rows: Rows<'s>, cols: (usize, Option<usize>, usize, usize)) -> rusqlite::Result<Self> {
        let mut cursor = Cursor {
            rows,
            key: String::new(),
            key2: String::new(),
            email: None,
            value: None,
            done: false,
            cols,
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
                    .push_str(text(row.get_ref(self.cols.0)?)?.unwrap_or_default());
                if let Some(c) = self.cols.1 {
                    self.key2.clear();
                    self.key2
                        .push_str(text(row.get_ref(c)?)?.unwrap_or_default());
                }
                set(&mut self.email, text(row.get_ref(self.cols.2)?)?);
                set(&mut self.value, text(row.get_ref(self.cols.3)?)?);
            }
        }
        Ok(())
    }

    fn cmp_key(&self, other: &Cursor<'_>) -> Ordering {
        // SQLite's BINARY collation is memcmp, the same order as Rust's byte-wise str order.
        (self.key.as_str(), self.key2.as_str()).cmp(&(other.key.as_str(), other.key2.as_str()))
    }
}

/// Walk two cursors sorted by key, calling `f(new, old)` once per key present in either.
fn merge(
    a: &mut Cursor<'_>,
    b: &mut Cursor<'_>,
    mut f: impl FnMut(Option<&Cursor<'_>>, Option<&Cursor<'_>>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    loop {
        match (a.done, b.done) {
            (true, true) => return Ok(()),
            (false, true) => {
                f(Some(a), None)?;
                a.advance()?;
            }
            (true, false) => {
                f(None, Some(b))?;
                b.advance()?;
            }
            (false, false) => match a.cmp_key(b) {
                Ordering::Less => {
                    f(Some(a), None)?;
                    a.advance()?;
                }
                Ordering::Greater => {
                    f(None, Some(b))?;
                    b.advance()?;
                }
                Ordering::Equal => {
                    f(Some(a), Some(b))?;
                    a.advance()?;
                    b.advance()?;
                }
            },
        }
    }
}

fn query<'s>(stmt: &'s mut Statement<'_>, source: Source) -> rusqlite::Result<Rows<'s>> {
    match source {
        Source::Snapshot { snapshot_id, .. } => stmt.query([snapshot_id]),
        Source::Derived {
            snapshot_id,
            membership_snapshot_id,
            ..
        } => stmt.query([snapshot_id, membership_snapshot_id]),
        Source::Empty => stmt.query([]),
    }
}

/// The sorted full outer join of `source` with the planned state of (computation, subject),
/// streamed: `f` sees every entity that has a new value or a planned row, in entity order.
pub fn merge_with_state(
    conn: &Connection,
    source: Source,
    computation_id: &str,
    subject: &str,
    mut f: impl FnMut(Pair<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut new_stmt = conn.prepare(&source_sql(source))?;
    let mut old_stmt = conn.prepare(
        "SELECT entity_id, email, planned FROM entity_state \
         WHERE computation_id = ?1 AND subject = ?2 ORDER BY entity_id",
    )?;
    let mut a = Cursor::new(query(&mut new_stmt, source)?, (0, None, 1, 2))?;
    let mut b = Cursor::new(
        old_stmt.query(params![computation_id, subject])?,
        (0, None, 1, 2),
    )?;
    merge(&mut a, &mut b, |new, old| {
        let any = new.or(old).expect("merge yields at least one side");
        f(Pair {
            entity_id: &any.key,
            email: new
                .and_then(|n| n.email.as_deref())
                .or_else(|| old.and_then(|o| o.email.as_deref())),
            new: new.and_then(|n| n.value.as_deref()),
            old: old.and_then(|o| o.value.as_deref()),
        })
    })
}

/// One (user, account) membership of a merge: in the new membership snapshot, attached in
/// planned state, or both.
#[derive(Debug, Clone, Copy)]
pub struct MemberPair<'a> {
    pub user_id: &'a str,
    pub group_id: &'a str,
    pub email: Option<&'a str>,
    pub in_snapshot: bool,
    pub attached: bool,
}

/// The sorted full outer join of a membership snapshot (or none) with the planned attachments.
pub fn merge_membership(
    conn: &Connection,
    membership_snapshot_id: Option<i64>,
    mut f: impl FnMut(MemberPair<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut new_stmt = conn.prepare(
        "SELECT user_id, group_id, email, '1' FROM membership_rows WHERE snapshot_id = ?1 \
         ORDER BY user_id, group_id",
    )?;
    let mut old_stmt = conn.prepare(
        "SELECT user_id, group_id, email, '1' FROM membership_state WHERE planned = 1 \
         ORDER BY user_id, group_id",
    )?;
    // -1 is never a snapshot id: no membership snapshot means no memberships.
    let mut a = Cursor::new(
        new_stmt.query([membership_snapshot_id.unwrap_or(-1)])?,
        (0, Some(1), 2, 3),
    )?;
    let mut b = Cursor::new(old_stmt.query([])?, (0, Some(1), 2, 3))?;
    merge(&mut a, &mut b, |new, old| {
        let any = new.or(old).expect("merge yields at least one side");
        f(MemberPair {
            user_id: &any.key,
            group_id: &any.key2,
            email: new
                .and_then(|n| n.email.as_deref())
                .or_else(|| old.and_then(|o| o.email.as_deref())),
            in_snapshot: new.is_some(),
            attached: old.is_some(),
        })
    })
}

/// Set the planned value of (computation, subject, entity), creating the row if needed.
pub fn plan_value(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
    email: Option<&str>,
    planned: Option<&str>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO entity_state (computation_id, subject, entity_id, email, planned) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (computation_id, subject, entity_id) DO UPDATE SET \
           planned = excluded.planned, email = coalesce(excluded.email, entity_state.email)",
    )?;
    stmt.execute(params![computation_id, subject, entity_id, email, planned])?;
    Ok(())
}

/// Set whether (user, account) is planned attached, creating the row if needed.
pub fn plan_membership(
    conn: &Connection,
    user_id: &str,
    group_id: &str,
    email: Option<&str>,
    attached: bool,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO membership_state (user_id, group_id, email, planned) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (user_id, group_id) DO UPDATE SET planned = excluded.planned, \
           email = coalesce(excluded.email, membership_state.email)",
    )?;
    stmt.execute(params![user_id, group_id, email, attached as i64])?;
    Ok(())
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

pub fn set_event_time(
    conn: &Connection,
    entity_id: &str,
    event_name: &str,
    at: i64,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO event_times (entity_id, event_name, last_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (entity_id, event_name) DO UPDATE SET last_at = max(last_at, excluded.last_at)",
    )?;
    stmt.execute(params![entity_id, event_name, at])?;
    Ok(())
}

// ─── The run's change list: a temp table, read back ordered by entity ─────────────────────────

/// One planned change, as phase one of a run records it and phase two reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    /// 0: an account's own group call; 1: a user.
    pub lane_kind: i64,
    pub entity_id: String,
    /// Index into the run's computation list; `None` for a membership change.
    pub computation: Option<i64>,
    pub group_id: Option<String>,
    pub email: Option<String>,
    pub change: i64,
    pub value: Option<String>,
    pub track: bool,
}

/// Create (or empty) the connection's temp change table.
pub fn create_changes(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.plan_changes;
         CREATE TEMP TABLE plan_changes (
             lane_kind INTEGER NOT NULL,
             entity_id TEXT NOT NULL,
             computation INTEGER,
             group_id TEXT,
             email TEXT,
             change INTEGER NOT NULL,
             value TEXT,
             track INTEGER NOT NULL
         );",
    )
}

pub fn insert_change(conn: &Connection, row: &ChangeRow) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO temp.plan_changes (lane_kind, entity_id, computation, group_id, email, change, value, track) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    stmt.execute(params![
        row.lane_kind,
        row.entity_id,
        row.computation,
        row.group_id,
        row.email,
        row.change,
        row.value,
        row.track
    ])?;
    Ok(())
}

/// Read the change list back ordered by (lane kind, entity, insertion), calling `f` once per
/// entity with all of its changes: one entity's changes in memory at a time, never all users.
pub fn for_each_entity(
    conn: &Connection,
    mut f: impl FnMut(&[ChangeRow]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    conn.execute_batch(
        "CREATE INDEX temp.plan_changes_order ON plan_changes (lane_kind, entity_id)",
    )?;
    let mut stmt = conn.prepare(
        "SELECT lane_kind, entity_id, computation, group_id, email, change, value, track \
         FROM temp.plan_changes ORDER BY lane_kind, entity_id, rowid",
    )?;
    let mut rows = stmt.query([])?;
    let mut batch: Vec<ChangeRow> = Vec::new();
    while let Some(r) = rows.next()? {
        let row = ChangeRow {
            lane_kind: r.get(0)?,
            entity_id: r.get(1)?,
            computation: r.get(2)?,
            group_id: r.get(3)?,
            email: r.get(4)?,
            change: r.get(5)?,
            value: r.get(6)?,
            track: r.get(7)?,
        };
        if let Some(first) = batch.first()
            && (first.lane_kind != row.lane_kind || first.entity_id != row.entity_id)
        {
            f(&batch)?;
            batch.clear();
        }
        batch.push(row);
    }
    if !batch.is_empty() {
        f(&batch)?;
    }
    Ok(())
}

pub fn drop_changes(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("DROP TABLE IF EXISTS temp.plan_changes")
}

// ─── Runs ───────────────────────────────────────────────────────────────────────────────────

pub fn insert_run(conn: &Connection, mode: &str, started_at: i64) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO runs (mode, started_at, status) VALUES (?1, ?2, 'planned')",
        params![mode, started_at],
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

pub fn insert_run_computation(
    conn: &Connection,
    run_id: i64,
    computation_id: &str,
    snapshot_id: Option<i64>,
    mode: &str,
    counts: &Counts,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO run_computations (run_id, computation_id, snapshot_id, mode, entered, exited, changed, resent, users) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            run_id,
            computation_id,
            snapshot_id,
            mode,
            counts.entered as i64,
            counts.exited as i64,
            counts.changed as i64,
            counts.resent as i64,
            counts.users as i64
        ],
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn finish_run_plan(
    conn: &Connection,
    run_id: i64,
    planned_at: i64,
    membership_snapshot_id: Option<i64>,
    attached: u64,
    detached: u64,
    identify: u64,
    track: u64,
    group: u64,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE runs SET planned_at = ?2, membership_snapshot_id = ?3, attached = ?4, detached = ?5, \
         messages_identify = ?6, messages_track = ?7, messages_group = ?8 WHERE id = ?1",
        params![
            run_id,
            planned_at,
            membership_snapshot_id,
            attached as i64,
            detached as i64,
            identify as i64,
            track as i64,
            group as i64
        ],
    )?;
    Ok(())
}
