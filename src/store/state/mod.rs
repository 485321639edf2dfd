//! Planned / delivered state, plan cursors, event times and runs: the SQL the diff engine reads
//! and writes. The diff walks sorted cursors side by side (`Merge`: the new snapshot against
//! planned state, itself a base snapshot overlaid with overrides; see schema.sql), so memory
//! never grows with snapshot size, and a run writes only the overrides of what changed, never a
//! copy of the snapshot. A run stages what it will write in temp tables while it reads
//! (`create_staging`, `stage_*`) and copies them into the main tables in one short write
//! transaction at the end (`commit_staged_state`).

mod cursors;
mod merge;
mod planned;
mod runs;
mod staging;

use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

pub use cursors::{
    DEAD_LETTERS, base_source, bump_dead_letter_generation, cursor, dead_letter_generation,
    ever_planned, planned_base, planned_source, set_cursor, set_planned_base,
};
pub use merge::{MemberPair, Merge, MergeStatements, Pair, Position, Source};
pub use planned::{
    ChangeRow, Replan, delivered_value, forget_replan, has_replans, last_event_time,
    override_planned, planned_row, planned_values, remember_replan, replan, undelivered_count,
};
pub use runs::{
    Counts, Pass, RunComputation, RunProgress, RunSummary, add_run_computation_counts,
    add_run_counts, clear_run_progress, finish_run_plan, insert_run, insert_run_computation,
    recent_runs, run_computations, run_progress, run_row, set_run_progress,
};
pub use staging::{
    commit_staged_state, create_staging, drop_staging, stage_event_time, stage_membership,
    stage_value,
};

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

/// The newest complete snapshot of a computation (`NEWEST_FIRST`).
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

/// The newest complete membership snapshot (`NEWEST_FIRST`).
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
