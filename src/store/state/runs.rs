//! Runs: the progress of the run being planned (`run_progress`), the record of each run and its
//! computations (what a resumed run needs, what `status` lists), and the counts each chunk adds.

use rusqlite::{Connection, OptionalExtension, params};

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
