//! Retention (SPEC section 9, `[retention]`): what `audience-sync prune` and the daemon (after
//! each scheduled run) remove, and how the space goes back to the file system.
//!
//! Removed:
//! - delivered outbox rows delivered (`outbox.finished_at`) at least `retention.delivered_days`
//!   ago;
//! - run records beyond the newest `retention.runs` (with their `run_computations`), except a run
//!   a remaining outbox row refers to (`outbox.run_id REFERENCES runs`: old delivered rows go
//!   first, so their runs can follow) and the last run that planned each computation
//!   (`state::ever_planned` reads `run_computations`: without that row the computation's next run
//!   would be an initial sync again, sending no track events);
//! - complete snapshots beyond the newest `retention.snapshots_per_computation` of each
//!   computation (newest by `taken_at`, then id: the order a run picks its snapshot in), and
//!   complete membership snapshots beyond as many, except those planned state still needs: a
//!   planned base (`planned_bases.snapshot_id`, `planned_bases.membership_snapshot_id`; triggers
//!   refuse deleting their rows anyway) or a plan cursor (`plan_cursors`);
//! - incomplete snapshots (`complete = 0`) an upstream writer abandoned: taken at least
//!   [`ABANDONED_AFTER`] (a day) ago *and* superseded: a snapshot inserted after it (a higher id)
//!   of the same computation exists (for membership: any later membership snapshot). A snapshot
//!   still being written is younger than a day or the newest attempt (a writer inserts the header
//!   first), so it is kept; nothing tells a slow writer from a dead one, so an abandoned attempt
//!   that is still the newest stays until the next snapshot arrives (at most one per
//!   computation). `load` writes a snapshot in one transaction, so only plain-SQL writers leave
//!   these.
//!
//! Never removed: pending messages, dead letters (kept until `dead-letters retry` or `discard`),
//! computations, planned and delivered state, replans, event times, the Intercom caches. The row
//! with the highest id of `outbox`, `runs`, `snapshots` and `membership_snapshots` always stays,
//! so SQLite never hands the same id out twice (an `INTEGER PRIMARY KEY` without AUTOINCREMENT
//! takes max + 1).
//!
//! Deletions go in batches of at most [`BATCH_ROWS`] rows a transaction, so SQLite's write lock
//! is held for milliseconds and an upstream writer or delivery barely waits. A snapshot is made
//! invisible (`complete = 0`) in the transaction that deletes its first rows, so no reader ever
//! sees a complete snapshot with rows missing; a crash leaves an incomplete snapshot that a later
//! prune finishes (as an abandoned one).
//!
//! Space: a database this version creates gets `auto_vacuum = INCREMENTAL` with its schema
//! ([`choose_incremental_vacuum`]); after the deletions, prune returns the free pages with
//! `PRAGMA incremental_vacuum` in steps of [`VACUUM_STEP_PAGES`] pages (one short transaction
//! each) and checkpoints the WAL, so the file shrinks. An older database has `auto_vacuum =
//! NONE`: its free pages are reused by new rows (the file stops growing) but not returned, and
//! switching takes one `VACUUM`, which rewrites the whole file while writers wait. Prune does that
//! by itself while the database is at most [`SWITCH_BELOW_BYTES`] (well under a second);
//! otherwise it says so, and `prune --vacuum` does it when the operator chooses.
//!
//! The caller holds the plan lock (`Lock::Plan`), so no run moves a planned base meanwhile.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::state::NEWEST_FIRST;
use crate::settings::RetentionSettings;

/// Rows deleted per transaction at most.
pub const BATCH_ROWS: usize = 10_000;
/// An incomplete snapshot younger than this may still be being written: it is kept.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Pages one `PRAGMA incremental_vacuum` transaction returns at most (8 MiB of 4 KiB pages).
pub const VACUUM_STEP_PAGES: u64 = 2_048;
/// A database with `auto_vacuum = NONE` up to this size is switched to incremental vacuum by a
/// one-time `VACUUM` without being asked.
pub const SWITCH_BELOW_BYTES: u64 = 64 * 1024 * 1024;
/// How long the final WAL checkpoint waits for readers and writers before it gives up.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(500);
/// Prune records (table `prunes`) kept: the newest this many.
pub const PRUNE_RECORDS: i64 = 100;

/// What to keep, and how to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub delivered_for: Duration,
    pub runs: u64,
    pub snapshots_per_computation: u64,
    pub abandoned_after: Duration,
    pub batch_rows: usize,
    pub vacuum_step_pages: u64,
    pub switch_below_bytes: u64,
}

impl From<&RetentionSettings> for Policy {
    fn from(settings: &RetentionSettings) -> Policy {
        Policy {
            delivered_for: settings.delivered_for,
            runs: settings.runs,
            snapshots_per_computation: settings.snapshots_per_computation,
            abandoned_after: ABANDONED_AFTER,
            batch_rows: BATCH_ROWS,
            vacuum_step_pages: VACUUM_STEP_PAGES,
            switch_below_bytes: SWITCH_BELOW_BYTES,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Count what would go and change nothing.
    pub dry_run: bool,
    /// Rewrite the file with `VACUUM` at the end (switching an old database to incremental
    /// vacuum), whatever its size.
    pub vacuum: bool,
    /// Who asked, as the prune's record says.
    pub origin: Origin,
}

/// Who ran a prune: `audience-sync prune`, or the daemon after a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    #[default]
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

/// What a prune removed (or, in a dry run, would remove) and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub delivered_messages: u64,
    pub runs: u64,
    pub run_computations: u64,
    pub snapshots: Vec<RemovedSnapshot>,
    pub membership_snapshots: Vec<RemovedSnapshot>,
    pub kept: Kept,
    pub space: Space,
    /// Write transactions taken (deletion batches, vacuum steps).
    pub transactions: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedSnapshot {
    pub id: i64,
    /// The computation's key; none for a membership snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub computation: Option<String>,
    pub taken_at: i64,
    /// `false`: an incomplete snapshot its writer abandoned.
    pub complete: bool,
    pub rows: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Kept {
    pub pending_messages: u64,
    pub dead_letters: u64,
    pub delivered_messages: u64,
    pub runs: u64,
    /// Snapshots beyond the newest N kept because planned state needs them.
    pub planned_snapshots: u64,
    pub planned_membership_snapshots: u64,
    /// Incomplete snapshots kept: they may still be being written.
    pub incomplete_snapshots: u64,
    pub incomplete_membership_snapshots: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Space {
    /// `none`, `full` or `incremental`, as the database is afterwards.
    pub auto_vacuum: String,
    pub page_size: u64,
    pub pages_before: u64,
    pub pages_after: u64,
    pub free_pages_before: u64,
    pub free_pages_after: u64,
    /// Pages the deletions freed.
    pub pages_freed: u64,
    /// `(pages_before - pages_after) × page_size`.
    pub bytes_returned: u64,
    /// A full `VACUUM` rewrote the file (in a dry run: would).
    pub vacuumed: bool,
    /// `auto_vacuum = NONE` was kept: free pages stay in the file (reused by new rows) until
    /// `prune --vacuum` switches it.
    pub needs_vacuum: bool,
}

impl Report {
    pub fn snapshot_rows(&self) -> u64 {
        self.snapshots.iter().map(|s| s.rows).sum()
    }

    pub fn membership_rows(&self) -> u64 {
        self.membership_snapshots.iter().map(|s| s.rows).sum()
    }

    /// Whether any row went (or would go).
    pub fn removed_anything(&self) -> bool {
        self.delivered_messages + self.runs + self.run_computations > 0
            || !self.snapshots.is_empty()
            || !self.membership_snapshots.is_empty()
    }
}

/// Give a new, empty database `auto_vacuum = INCREMENTAL` before its first table (called by
/// `store::migrate` for schema version 0). In WAL mode the header is already written, so the
/// setting takes a `VACUUM`, which costs nothing while the file is empty. A database that already
/// holds tables is left alone (prune switches it later).
pub fn choose_incremental_vacuum(conn: &Connection) -> rusqlite::Result<()> {
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    if objects > 0 {
        return Ok(());
    }
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    if auto_vacuum(conn)? != AUTO_VACUUM_INCREMENTAL {
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

const AUTO_VACUUM_NONE: i64 = 0;
const AUTO_VACUUM_INCREMENTAL: i64 = 2;

fn auto_vacuum(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))
}

fn auto_vacuum_name(mode: i64) -> &'static str {
    match mode {
        AUTO_VACUUM_NONE => "none",
        AUTO_VACUUM_INCREMENTAL => "incremental",
        _ => "full",
    }
}

/// (page size, page count, free pages).
fn pages(conn: &Connection) -> rusqlite::Result<(u64, u64, u64)> {
    let get = |name: &str| conn.pragma_query_value(None, name, |r| r.get::<_, i64>(0));
    Ok((
        get("page_size")? as u64,
        get("page_count")? as u64,
        get("freelist_count")? as u64,
    ))
}

/// Apply `policy` now (`now`: unix seconds). The caller holds the plan lock unless it is a dry
/// run, which reads everything in one read transaction and changes nothing.
///
/// A prune that is not a dry run is recorded in `prunes` (see [`last_prune`]), a failed one too,
/// with what it removed before it failed; a record that cannot be written (the disk that made
/// the prune fail is full) is logged and left out.
pub fn prune(
    conn: &mut Connection,
    policy: &Policy,
    options: Options,
    now: i64,
) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let mut report = Report {
        dry_run: options.dry_run,
        ..Report::default()
    };
    let mut recorded = None;
    let result = prune_into(conn, policy, options, now, &mut report, &mut recorded);
    if options.dry_run {
        return result.map(|()| report);
    }
    let error = result.as_ref().err().map(|e| format!("{e:#}"));
    let record = PruneRecord::of(&report, options.origin, now, started.elapsed(), error);
    // The update rewrites the row in place; the checkpoint empties the WAL again.
    let written = match recorded {
        Some(id) => update_record(conn, id, &record).and_then(|()| checkpoint(conn)),
        None => insert_record(conn, &record).map(drop),
    };
    if let Err(e) = written {
        tracing::warn!(error = %e, "The prune's record was not written.");
    }
    result.map(|()| report)
}

/// The prune itself; `recorded` gets the id of its record, written before the space step.
fn prune_into(
    conn: &mut Connection,
    policy: &Policy,
    options: Options,
    now: i64,
    report: &mut Report,
    recorded: &mut Option<i64>,
) -> anyhow::Result<()> {
    let (page_size, pages_before, free_before) = pages(conn)?;
    let mode = auto_vacuum(conn)?;
    *report = Report {
        dry_run: options.dry_run,
        space: Space {
            auto_vacuum: auto_vacuum_name(mode).to_string(),
            page_size,
            pages_before,
            pages_after: pages_before,
            free_pages_before: free_before,
            free_pages_after: free_before,
            ..Space::default()
        },
        ..Report::default()
    };
    // A full VACUUM when asked, or once to switch a small old database.
    let full_vacuum = options.vacuum
        || (mode == AUTO_VACUUM_NONE && pages_before * page_size <= policy.switch_below_bytes);

    if options.dry_run {
        let tx = conn.transaction()?;
        let cut = OutboxCut::new(&tx, policy, now)?;
        report.delivered_messages = tx.query_row(
            &format!("SELECT count(*) FROM outbox WHERE {DOOMED_OUTBOX}"),
            params![cut.cutoff, cut.max_seq],
            |r| r.get::<_, i64>(0),
        )? as u64;
        let runs = doomed_runs(&tx, policy, &cut, Scan::Exact)?;
        report.runs = runs.len() as u64;
        report.run_computations = tx.query_row(
            "SELECT count(*) FROM run_computations WHERE run_id IN (SELECT value FROM json_each(?1))",
            [json_array(&runs)],
            |r| r.get::<_, i64>(0),
        )? as u64;
        for kind in [Kind::Computation, Kind::Membership] {
            let mut survey = survey(&tx, kind, policy, now)?;
            for snapshot in &mut survey.doomed {
                snapshot.rows = tx.query_row(
                    &format!(
                        "SELECT count(*) FROM {} WHERE snapshot_id = ?1",
                        kind.rows()
                    ),
                    [snapshot.id],
                    |r| r.get::<_, i64>(0),
                )? as u64;
            }
            survey.record(kind, report);
        }
        let (pending, dead, delivered) = outbox_counts(&tx)?;
        let runs_total: i64 = tx.query_row("SELECT count(*) FROM runs", [], |r| r.get(0))?;
        report.kept.pending_messages = pending;
        report.kept.dead_letters = dead;
        report.kept.delivered_messages = delivered.saturating_sub(report.delivered_messages);
        report.kept.runs = (runs_total as u64).saturating_sub(report.runs);
        report.space.vacuumed = full_vacuum;
        report.space.needs_vacuum = mode == AUTO_VACUUM_NONE && !full_vacuum;
        return Ok(());
    }

    let cut = OutboxCut::new(conn, policy, now)?;
    delete_outbox(conn, policy, &cut, report)?;
    let runs = doomed_runs(conn, policy, &cut, Scan::Fast)?;
    match delete_runs(conn, policy, &runs, report) {
        Err(e) if is_foreign_key_failure(&e) => {
            let runs = doomed_runs(conn, policy, &cut, Scan::Exact)?;
            delete_runs(conn, policy, &runs, report)?;
        }
        other => other?,
    }
    for kind in [Kind::Computation, Kind::Membership] {
        let mut survey = survey(conn, kind, policy, now)?;
        let doomed = std::mem::take(&mut survey.doomed);
        // Recorded first and filled as snapshots go, so a prune that fails part way reports
        // what it removed.
        survey.record(kind, report);
        for mut snapshot in doomed {
            if let Some(rows) = delete_snapshot(conn, kind, snapshot.id, policy, report)? {
                snapshot.rows = rows;
                match kind {
                    Kind::Computation => report.snapshots.push(snapshot),
                    Kind::Membership => report.membership_snapshots.push(snapshot),
                }
            }
        }
    }
    let (pending, dead, delivered) = outbox_counts(conn)?;
    report.kept.pending_messages = pending;
    report.kept.dead_letters = dead;
    report.kept.delivered_messages = delivered;
    report.kept.runs =
        conn.query_row("SELECT count(*) FROM runs", [], |r| r.get::<_, i64>(0))? as u64;

    // ── Space ──
    // Recorded before the space goes back, so that the pages of the record (and of the old
    // records it drops) are counted too; `prune` fills in the bytes returned.
    *recorded = Some(insert_record(
        conn,
        &PruneRecord::of(report, options.origin, now, Duration::ZERO, None),
    )?);
    let (_, _, free_after_deletes) = pages(conn)?;
    report.space.pages_freed = free_after_deletes.saturating_sub(free_before);
    if full_vacuum {
        if mode != AUTO_VACUUM_INCREMENTAL {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        }
        conn.execute_batch("VACUUM")?;
        report.space.vacuumed = true;
        report.transactions += 1;
    } else if mode == AUTO_VACUUM_INCREMENTAL {
        incremental_vacuum(conn, policy, report)?;
    } else if mode == AUTO_VACUUM_NONE {
        report.space.needs_vacuum = true;
    }
    checkpoint(conn)?;
    let (_, pages_after, free_after) = pages(conn)?;
    report.space.auto_vacuum = auto_vacuum_name(auto_vacuum(conn)?).to_string();
    report.space.pages_after = pages_after;
    report.space.free_pages_after = free_after;
    report.space.bytes_returned = pages_before.saturating_sub(pages_after) * page_size;
    Ok(())
}

// ─── Outbox ─────────────────────────────────────────────────────────────────────────────────

/// The delivered rows that go: delivered at or before ?1, below the highest seq ?2 (kept).
const DOOMED_OUTBOX: &str = "status = 'delivered' AND coalesce(finished_at, enqueued_at) <= ?1 \
                             AND seq < ?2";

struct OutboxCut {
    cutoff: i64,
    max_seq: i64,
}

impl OutboxCut {
    fn new(conn: &Connection, policy: &Policy, now: i64) -> rusqlite::Result<OutboxCut> {
        let max_seq: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) FROM outbox", [], |r| r.get(0))?;
        Ok(OutboxCut {
            cutoff: now.saturating_sub(policy.delivered_for.as_secs() as i64),
            max_seq,
        })
    }
}

/// (pending, dead, delivered) outbox rows.
fn outbox_counts(conn: &Connection) -> rusqlite::Result<(u64, u64, u64)> {
    conn.query_row(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead'), \
         count(*) FILTER (WHERE status = 'delivered') FROM outbox",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        },
    )
}

fn delete_outbox(
    conn: &mut Connection,
    policy: &Policy,
    cut: &OutboxCut,
    report: &mut Report,
) -> rusqlite::Result<()> {
    let sql = format!(
        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE {DOOMED_OUTBOX} AND seq > ?3 \
         ORDER BY seq LIMIT ?4) RETURNING seq"
    );
    let mut after = 0i64;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seqs = tx
            .prepare(&sql)?
            .query_map(
                params![cut.cutoff, cut.max_seq, after, policy.batch_rows as i64],
                |r| r.get::<_, i64>(0),
            )?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        if seqs.is_empty() {
            return Ok(());
        }
        tx.commit()?;
        report.transactions += 1;
        report.delivered_messages += seqs.len() as u64;
        after = seqs.iter().copied().max().unwrap_or(after);
        if seqs.len() < policy.batch_rows {
            return Ok(());
        }
    }
}

// ─── Runs ───────────────────────────────────────────────────────────────────────────────────

/// How [`doomed_runs`] finds the runs outbox rows refer to (`outbox.run_id` has no index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Every outbox row: exact, but reads the whole outbox.
    Exact,
    /// Only the rows enqueued before the oldest kept run's first row. A run's messages are
    /// enqueued after every earlier run's (and keep their seq when retried), so no later row
    /// refers to an older run. Should that ever not hold, deleting a referenced run fails on the
    /// foreign key, and [`prune`] asks again with [`Scan::Exact`].
    Fast,
}

/// Runs beyond the newest `policy.runs` that nothing needs, oldest first: no outbox row that
/// stays refers to them (rows [`DOOMED_OUTBOX`] names do not count: they go first), and none is
/// the last run that planned a computation.
fn doomed_runs(
    conn: &Connection,
    policy: &Policy,
    cut: &OutboxCut,
    scan: Scan,
) -> rusqlite::Result<Vec<i64>> {
    let keep_from: Option<i64> = conn
        .query_row(
            "SELECT id FROM runs ORDER BY id DESC LIMIT 1 OFFSET ?1",
            [policy.runs.saturating_sub(1) as i64],
            |r| r.get(0),
        )
        .optional()?;
    let Some(keep_from) = keep_from else {
        return Ok(Vec::new());
    };
    let before_seq = match scan {
        Scan::Exact => i64::MAX,
        // Walks the outbox in seq order up to the first row of a kept run.
        Scan::Fast => conn
            .query_row(
                "SELECT seq FROM outbox WHERE run_id >= ?1 ORDER BY seq LIMIT 1",
                [keep_from],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(i64::MAX),
    };
    conn.prepare(&format!(
        "SELECT id FROM runs WHERE id < ?3 \
         AND id NOT IN (SELECT run_id FROM outbox WHERE seq < ?4 AND run_id IS NOT NULL \
                        AND NOT ({DOOMED_OUTBOX})) \
         AND id NOT IN (SELECT max(run_id) FROM run_computations GROUP BY computation_id) \
         ORDER BY id"
    ))?
    .query_map(
        params![cut.cutoff, cut.max_seq, keep_from, before_seq],
        |r| r.get(0),
    )?
    .collect()
}

fn is_foreign_key_failure(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
    )
}

/// Each transaction deletes whole runs with their `run_computations` (at most one row per
/// computation each), about `batch_rows` rows in all.
fn delete_runs(
    conn: &mut Connection,
    policy: &Policy,
    runs: &[i64],
    report: &mut Report,
) -> rusqlite::Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let per_run: i64 = conn.query_row("SELECT count(*) FROM computations", [], |r| r.get(0))?;
    let chunk = (policy.batch_rows / (per_run.max(0) as usize + 1)).max(1);
    for ids in runs.chunks(chunk) {
        let ids = json_array(ids);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let computations = tx.execute(
            "DELETE FROM run_computations WHERE run_id IN (SELECT value FROM json_each(?1))",
            [&ids],
        )?;
        let deleted = tx.execute(
            "DELETE FROM runs WHERE id IN (SELECT value FROM json_each(?1))",
            [&ids],
        )?;
        tx.commit()?;
        report.transactions += 1;
        report.run_computations += computations as u64;
        report.runs += deleted as u64;
    }
    Ok(())
}

fn json_array(ids: &[i64]) -> String {
    let items: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(","))
}

// ─── Snapshots ──────────────────────────────────────────────────────────────────────────────

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Computation,
    Membership,
}

impl Kind {
    fn header(self) -> &'static str {
        match self {
            Kind::Computation => "snapshots",
            Kind::Membership => "membership_snapshots",
        }
    }

    fn rows(self) -> &'static str {
        match self {
            Kind::Computation => "snapshot_rows",
            Kind::Membership => "membership_rows",
        }
    }

    /// SQL true when planned state needs snapshot `{t}.id` (of table [`Kind::header`] under the
    /// name `t`): a planned base or a plan cursor names it.
    fn needed(self, t: &str) -> String {
        match self {
            Kind::Computation => format!(
                "(EXISTS (SELECT 1 FROM planned_bases b WHERE b.snapshot_id = {t}.id) \
                 OR EXISTS (SELECT 1 FROM run_progress g JOIN run_computations c \
                   ON c.run_id = g.run_id WHERE c.snapshot_id = {t}.id) \
                 OR EXISTS (SELECT 1 FROM plan_cursors p WHERE p.subject = {t}.computation_id \
                 AND p.snapshot_id = {t}.id))"
            ),
            Kind::Membership => format!(
                "(EXISTS (SELECT 1 FROM planned_bases b WHERE b.membership_snapshot_id = {t}.id) \
                 OR EXISTS (SELECT 1 FROM run_progress g JOIN runs r ON r.id = g.run_id \
                   WHERE r.membership_snapshot_id = {t}.id) \
                 OR EXISTS (SELECT 1 FROM plan_cursors p WHERE p.membership_snapshot_id = {t}.id) \
                 OR EXISTS (SELECT 1 FROM plan_cursors p WHERE p.subject = 'membership' \
                 AND p.snapshot_id = {t}.id))"
            ),
        }
    }

    /// SQL true when a snapshot inserted after `{t}` (a higher id; of the same computation)
    /// exists.
    fn superseded(self, t: &str) -> String {
        let same = match self {
            Kind::Computation => format!(" AND n.computation_id = {t}.computation_id"),
            Kind::Membership => String::new(),
        };
        format!(
            "EXISTS (SELECT 1 FROM {} n WHERE n.id > {t}.id{same})",
            self.header()
        )
    }
}

/// The snapshots of one kind that go, and the ones kept only for planned state or because they
/// may still be being written.
#[derive(Debug, Default)]
struct Survey {
    doomed: Vec<RemovedSnapshot>,
    planned: u64,
    incomplete: u64,
}

impl Survey {
    fn record(self, kind: Kind, report: &mut Report) {
        match kind {
            Kind::Computation => {
                report.snapshots = self.doomed;
                report.kept.planned_snapshots = self.planned;
                report.kept.incomplete_snapshots = self.incomplete;
            }
            Kind::Membership => {
                report.membership_snapshots = self.doomed;
                report.kept.planned_membership_snapshots = self.planned;
                report.kept.incomplete_membership_snapshots = self.incomplete;
            }
        }
    }
}

fn survey(conn: &Connection, kind: Kind, policy: &Policy, now: i64) -> rusqlite::Result<Survey> {
    let (partition, key, join) = match kind {
        Kind::Computation => (
            "PARTITION BY computation_id",
            "c.key",
            "LEFT JOIN computations c ON c.id = s.computation_id",
        ),
        Kind::Membership => ("", "NULL", ""),
    };
    let header = kind.header();
    let mut survey = Survey::default();
    // Complete snapshots beyond the newest N, in the order runs pick the newest.
    let beyond = format!(
        "SELECT s.id, {key}, s.taken_at, {needed} FROM \
         (SELECT *, row_number() OVER ({partition} ORDER BY {NEWEST_FIRST}) AS newest \
          FROM {header} WHERE complete = 1) s {join} \
         WHERE s.newest > ?1 AND s.id < (SELECT max(id) FROM {header}) ORDER BY s.id",
        needed = kind.needed("s"),
    );
    let mut stmt = conn.prepare(&beyond)?;
    let mut rows = stmt.query([policy.snapshots_per_computation as i64])?;
    while let Some(row) = rows.next()? {
        if row.get::<_, bool>(3)? {
            survey.planned += 1;
            continue;
        }
        survey.doomed.push(RemovedSnapshot {
            id: row.get(0)?,
            computation: row.get(1)?,
            taken_at: row.get(2)?,
            complete: true,
            rows: 0,
        });
    }
    // Incomplete snapshots: abandoned once a day old and superseded.
    let incomplete = format!(
        "SELECT s.id, {key}, s.taken_at, \
         s.taken_at <= ?1 AND {superseded} AND NOT {needed} AND s.id < (SELECT max(id) FROM {header}) \
         FROM {header} s {join} WHERE s.complete = 0 ORDER BY s.id",
        superseded = kind.superseded("s"),
        needed = kind.needed("s"),
    );
    let mut stmt = conn.prepare(&incomplete)?;
    let mut rows = stmt.query([now.saturating_sub(policy.abandoned_after.as_secs() as i64)])?;
    while let Some(row) = rows.next()? {
        if !row.get::<_, bool>(3)? {
            survey.incomplete += 1;
            continue;
        }
        survey.doomed.push(RemovedSnapshot {
            id: row.get(0)?,
            computation: row.get(1)?,
            taken_at: row.get(2)?,
            complete: false,
            rows: 0,
        });
    }
    survey.doomed.sort_by_key(|s| s.id);
    Ok(survey)
}

/// Delete one snapshot: its rows in batches, then its header. The first transaction makes it
/// incomplete (invisible) unless planned state has come to need it meanwhile; then `None`, and
/// nothing changed. Returns the rows deleted.
fn delete_snapshot(
    conn: &mut Connection,
    kind: Kind,
    id: i64,
    policy: &Policy,
    report: &mut Report,
) -> rusqlite::Result<Option<u64>> {
    let (header, rows_table) = (kind.header(), kind.rows());
    let hide = format!(
        "UPDATE {header} SET complete = 0 WHERE id = ?1 AND NOT {}",
        kind.needed(header)
    );
    let batch = format!(
        "DELETE FROM {rows_table} WHERE rowid IN \
         (SELECT rowid FROM {rows_table} WHERE snapshot_id = ?1 LIMIT ?2)"
    );
    let mut rows = 0u64;
    let mut first = true;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if first {
            if tx.execute(&hide, [id])? == 0 {
                return Ok(None);
            }
            first = false;
        }
        let deleted = tx.execute(&batch, params![id, policy.batch_rows as i64])?;
        rows += deleted as u64;
        let done = deleted < policy.batch_rows;
        if done {
            tx.execute(&format!("DELETE FROM {header} WHERE id = ?1"), [id])?;
        }
        tx.commit()?;
        report.transactions += 1;
        if done {
            return Ok(Some(rows));
        }
    }
}

// ─── Space ──────────────────────────────────────────────────────────────────────────────────

/// Return free pages to the file system a step at a time, each step one short transaction.
fn incremental_vacuum(
    conn: &mut Connection,
    policy: &Policy,
    report: &mut Report,
) -> rusqlite::Result<()> {
    let sql = format!(
        "PRAGMA incremental_vacuum({})",
        policy.vacuum_step_pages.max(1)
    );
    loop {
        let (_, _, free) = pages(conn)?;
        if free == 0 {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            // The pragma frees one page per step of the statement: step it to the end.
            let mut stmt = tx.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
        tx.commit()?;
        report.transactions += 1;
        let (_, _, left) = pages(conn)?;
        if left >= free {
            return Ok(());
        }
    }
}

/// Copy the WAL into the database file and truncate both (the file shrinks only then), waiting
/// briefly at most: a busy database is checkpointed later by SQLite itself.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(CHECKPOINT_WAIT)?;
    let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    conn.busy_timeout(super::BUSY_TIMEOUT)?;
    match result {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

// ─── Records ────────────────────────────────────────────────────────────────────────────────

/// One prune as table `prunes` keeps it: what `status` and `/metrics` show of the last prune.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneRecord {
    /// When it started (unix seconds).
    pub started_at: i64,
    pub took_ms: u64,
    pub origin: Origin,
    pub delivered_messages: u64,
    pub runs: u64,
    pub snapshots: u64,
    pub snapshot_rows: u64,
    pub membership_snapshots: u64,
    pub membership_rows: u64,
    pub bytes_returned: u64,
    /// Why it failed; `None`: it did not.
    pub error: Option<String>,
}

impl PruneRecord {
    fn of(
        report: &Report,
        origin: Origin,
        started_at: i64,
        took: Duration,
        error: Option<String>,
    ) -> PruneRecord {
        PruneRecord {
            started_at,
            took_ms: took.as_millis() as u64,
            origin,
            delivered_messages: report.delivered_messages,
            runs: report.runs,
            snapshots: report.snapshots.len() as u64,
            snapshot_rows: report.snapshot_rows(),
            membership_snapshots: report.membership_snapshots.len() as u64,
            membership_rows: report.membership_rows(),
            bytes_returned: report.space.bytes_returned,
            error,
        }
    }
}

/// Write `record` and drop all but the newest [`PRUNE_RECORDS`], in one transaction; its id.
fn insert_record(conn: &mut Connection, record: &PruneRecord) -> rusqlite::Result<i64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO prunes (started_at, took_ms, origin, delivered_messages, runs, snapshots, \
         snapshot_rows, membership_snapshots, membership_rows, bytes_returned, error) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            record.started_at,
            record.took_ms as i64,
            record.origin.as_str(),
            record.delivered_messages as i64,
            record.runs as i64,
            record.snapshots as i64,
            record.snapshot_rows as i64,
            record.membership_snapshots as i64,
            record.membership_rows as i64,
            record.bytes_returned as i64,
            record.error,
        ],
    )?;
    let id = tx.last_insert_rowid();
    tx.execute(
        "DELETE FROM prunes WHERE id <= (SELECT id FROM prunes ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        [PRUNE_RECORDS],
    )?;
    tx.commit()?;
    Ok(id)
}

/// Bring record `id` up to date with how the prune ended.
fn update_record(conn: &Connection, id: i64, record: &PruneRecord) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE prunes SET took_ms = ?2, delivered_messages = ?3, runs = ?4, snapshots = ?5, \
         snapshot_rows = ?6, membership_snapshots = ?7, membership_rows = ?8, \
         bytes_returned = ?9, error = ?10 WHERE id = ?1",
        params![
            id,
            record.took_ms as i64,
            record.delivered_messages as i64,
            record.runs as i64,
            record.snapshots as i64,
            record.snapshot_rows as i64,
            record.membership_snapshots as i64,
            record.membership_rows as i64,
            record.bytes_returned as i64,
            record.error,
        ],
    )?;
    Ok(())
}

/// The newest prune record, if any prune ran.
pub fn last_prune(conn: &Connection) -> rusqlite::Result<Option<PruneRecord>> {
    conn.query_row(
        "SELECT started_at, took_ms, origin, delivered_messages, runs, snapshots, snapshot_rows, \
         membership_snapshots, membership_rows, bytes_returned, error \
         FROM prunes ORDER BY id DESC LIMIT 1",
        [],
        |r| {
            Ok(PruneRecord {
                started_at: r.get(0)?,
                took_ms: r.get::<_, i64>(1)? as u64,
                origin: match r.get_ref(2)?.as_str()? {
                    "daemon" => Origin::Daemon,
                    _ => Origin::Command,
                },
                delivered_messages: r.get::<_, i64>(3)? as u64,
                runs: r.get::<_, i64>(4)? as u64,
                snapshots: r.get::<_, i64>(5)? as u64,
                snapshot_rows: r.get::<_, i64>(6)? as u64,
                membership_snapshots: r.get::<_, i64>(7)? as u64,
                membership_rows: r.get::<_, i64>(8)? as u64,
                bytes_returned: r.get::<_, i64>(9)? as u64,
                error: r.get(10)?,
            })
        },
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::{Connection, params};

    use super::*;
    use crate::store::{self, outbox, state};

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    /// A database file with the schema (as `store::open` creates it).
    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open(&dir.path().join("t.db")).unwrap();
        (dir, conn)
    }

    fn policy() -> Policy {
        Policy {
            delivered_for: Duration::from_secs(7 * DAY as u64),
            runs: 2,
            snapshots_per_computation: 2,
            abandoned_after: ABANDONED_AFTER,
            batch_rows: 3,
            vacuum_step_pages: 4,
            switch_below_bytes: SWITCH_BELOW_BYTES,
        }
    }

    fn apply(conn: &mut Connection, policy: &Policy) -> Report {
        prune(conn, policy, Options::default(), NOW).unwrap()
    }

    fn dry_run(conn: &mut Connection, policy: &Policy) -> Report {
        prune(
            conn,
            policy,
            Options {
                dry_run: true,
                ..Options::default()
            },
            NOW,
        )
        .unwrap()
    }

    fn computation(conn: &Connection, id: &str) {
        conn.execute(
            "INSERT INTO computations (id, key, name, kind, scope, created_at) \
             VALUES (?1, ?1, ?1, 'audience', 'user', 0)",
            [id],
        )
        .unwrap();
    }

    /// A snapshot of `rows` members (u0, u1, …) with padded emails; returns its id.
    fn snapshot(
        conn: &Connection,
        computation: &str,
        taken_at: i64,
        complete: bool,
        rows: usize,
    ) -> i64 {
        conn.execute(
            "INSERT INTO snapshots (computation_id, taken_at, complete, row_count) VALUES (?1, ?2, ?3, ?4)",
            params![computation, taken_at, complete, rows as i64],
        )
        .unwrap();
        let id = conn.last_insert_rowid();
        let mut insert = conn
            .prepare("INSERT INTO snapshot_rows (snapshot_id, entity_id, email, value) VALUES (?1, ?2, ?3, 'true')")
            .unwrap();
        for i in 0..rows {
            insert
                .execute(params![
                    id,
                    format!("u{i}"),
                    format!("{i:0>200}@example.com")
                ])
                .unwrap();
        }
        id
    }

    fn membership(conn: &Connection, taken_at: i64, complete: bool, rows: usize) -> i64 {
        conn.execute(
            "INSERT INTO membership_snapshots (taken_at, complete) VALUES (?1, ?2)",
            params![taken_at, complete],
        )
        .unwrap();
        let id = conn.last_insert_rowid();
        for i in 0..rows {
            conn.execute(
                "INSERT INTO membership_rows (snapshot_id, group_id, user_id) VALUES (?1, 'g', ?2)",
                params![id, format!("u{i}")],
            )
            .unwrap();
        }
        id
    }

    fn run(conn: &Connection, computations: &[&str]) -> i64 {
        let id = state::insert_run(conn, "incremental", NOW - 30 * DAY, None).unwrap();
        for c in computations {
            conn.execute(
                "INSERT INTO run_computations (run_id, computation_id, mode) \
                 VALUES (?1, ?2, 'incremental')",
                params![id, c],
            )
            .unwrap();
        }
        id
    }

    /// An outbox row of `run`; `finished`: days ago it was delivered / dead-lettered.
    fn message(conn: &Connection, run: Option<i64>, status: &str, finished: Option<i64>) -> i64 {
        conn.execute(
            "INSERT INTO outbox (run_id, lane, message_id, type, body, status, enqueued_at, finished_at) \
             VALUES (?1, 'u1', lower(hex(randomblob(8))), 'identify', '{}', ?2, ?3, ?4)",
            params![run, status, NOW - 30 * DAY, finished.map(|d| NOW - d * DAY)],
        )
        .unwrap();
        conn.last_insert_rowid()
    }

    fn ids(conn: &Connection, sql: &str) -> Vec<i64> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Every row of every table: equal dumps mean an unchanged database.
    fn dump(conn: &Connection) -> String {
        let tables = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>();
        let mut out = String::new();
        for table in tables {
            let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
            let n = stmt.column_count();
            let mut rows = stmt
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>();
            rows.sort();
            out.push_str(&format!("== {table}\n{}\n", rows.join("\n")));
        }
        out
    }

    #[test]
    fn delivered_messages_go_after_delivered_days_and_dead_letters_and_pending_never() {
        let (_dir, mut conn) = db();
        let old: Vec<i64> = (0..5)
            .map(|_| message(&conn, None, "delivered", Some(8)))
            .collect();
        let exactly_7_days = message(&conn, None, "delivered", Some(7));
        let recent = message(&conn, None, "delivered", Some(6));
        let dead = message(&conn, None, "dead", Some(300));
        let pending = message(&conn, None, "pending", None);
        let newest = message(&conn, None, "delivered", Some(300));

        let before = dump(&conn);
        let would = dry_run(&mut conn, &policy());
        assert_eq!(dump(&conn), before, "a dry run changes nothing");
        assert_eq!(would.delivered_messages, 6);

        let report = apply(&mut conn, &policy());
        assert_eq!(report.delivered_messages, 6);
        assert_eq!(
            ids(&conn, "SELECT seq FROM outbox ORDER BY seq"),
            vec![recent, dead, pending, newest],
            "old delivered rows {old:?} and {exactly_7_days} go; the newest row keeps seq from being reused"
        );
        assert_eq!(report.kept.dead_letters, 1);
        assert_eq!(report.kept.pending_messages, 1);
        assert_eq!(report.kept.delivered_messages, 2);

        // Dead letters stay however old; pending ones too, even when delivered_days is 0.
        let none = Policy {
            delivered_for: Duration::ZERO,
            ..policy()
        };
        let report = apply(&mut conn, &none);
        assert_eq!(
            report.delivered_messages, 1,
            "the recent one goes with 0 days"
        );
        assert_eq!(
            ids(&conn, "SELECT seq FROM outbox ORDER BY seq"),
            vec![dead, pending, newest]
        );
    }

    #[test]
    fn every_prune_is_recorded_a_failed_one_too_and_only_the_newest_are_kept() {
        let (_dir, mut conn) = db();
        assert_eq!(last_prune(&conn).unwrap(), None);
        for _ in 0..3 {
            message(&conn, None, "delivered", Some(8));
        }
        message(&conn, None, "delivered", Some(1));
        dry_run(&mut conn, &policy());
        assert_eq!(
            last_prune(&conn).unwrap(),
            None,
            "a dry run is not recorded"
        );

        let report = apply(&mut conn, &policy());
        let record = last_prune(&conn).unwrap().unwrap();
        assert_eq!(record.started_at, NOW);
        assert_eq!(record.origin, Origin::Command);
        assert_eq!(record.delivered_messages, 3);
        assert_eq!(record.bytes_returned, report.space.bytes_returned);
        assert_eq!(record.error, None);

        // A prune that fails part way says why, and what it had removed by then.
        message(&conn, None, "delivered", Some(9));
        message(&conn, None, "delivered", Some(1));
        computation(&conn, "aud_a");
        for taken_at in [1, 2, 3] {
            snapshot(&conn, "aud_a", taken_at, true, 2);
        }
        conn.execute_batch(
            "CREATE TEMP TRIGGER refuse BEFORE DELETE ON snapshot_rows \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
        let daemon = Options {
            origin: Origin::Daemon,
            ..Options::default()
        };
        let err = prune(&mut conn, &policy(), daemon, NOW + 1).unwrap_err();
        assert!(
            format!("{err:#}").contains("refused by the test"),
            "{err:#}"
        );
        let record = last_prune(&conn).unwrap().unwrap();
        assert_eq!(record.origin, Origin::Daemon);
        assert_eq!(record.started_at, NOW + 1);
        assert_eq!(record.delivered_messages, 1);
        assert_eq!(record.snapshots, 0);
        assert!(
            record
                .error
                .as_deref()
                .unwrap()
                .contains("refused by the test"),
            "{record:?}"
        );
        conn.execute_batch("DROP TRIGGER temp.refuse").unwrap();

        for i in 0..PRUNE_RECORDS + 5 {
            prune(&mut conn, &policy(), Options::default(), NOW + 10 + i).unwrap();
        }
        assert_eq!(count(&conn, "SELECT count(*) FROM prunes"), PRUNE_RECORDS);
        assert_eq!(
            last_prune(&conn).unwrap().unwrap().started_at,
            NOW + 10 + PRUNE_RECORDS + 4
        );
    }

    #[test]
    fn runs_beyond_the_newest_n_go_unless_a_kept_message_or_the_last_plan_of_a_computation_needs_them()
     {
        let (_dir, mut conn) = db();
        computation(&conn, "aud_a");
        computation(&conn, "aud_b");
        let delivered_long_ago = run(&conn, &["aud_a"]);
        let dead_letter = run(&conn, &["aud_a"]);
        let pending = run(&conn, &["aud_a"]);
        let recently_delivered = run(&conn, &["aud_a"]);
        let last_of_b = run(&conn, &["aud_a", "aud_b"]);
        let unreferenced = run(&conn, &["aud_a"]);
        let newest = [run(&conn, &[]), run(&conn, &["aud_a"])];
        message(&conn, Some(delivered_long_ago), "delivered", Some(10));
        message(&conn, Some(dead_letter), "dead", Some(100));
        message(&conn, Some(recently_delivered), "delivered", Some(1));
        message(&conn, Some(pending), "pending", None);

        let would = dry_run(&mut conn, &policy());
        assert_eq!((would.runs, would.run_computations), (2, 2));
        let report = apply(&mut conn, &policy());
        assert_eq!((report.runs, report.run_computations), (2, 2));
        assert_eq!(
            report.delivered_messages, 1,
            "the old delivered row goes first"
        );
        assert_eq!(
            ids(&conn, "SELECT id FROM runs ORDER BY id"),
            vec![
                dead_letter,
                pending,
                recently_delivered,
                last_of_b,
                newest[0],
                newest[1]
            ],
            "{delivered_long_ago} and {unreferenced} go"
        );
        assert_eq!(report.kept.runs, 6);
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM run_computations WHERE run_id NOT IN (SELECT id FROM runs)"
            ),
            0
        );
        // aud_b's next run is not an initial sync: its last planning run stays.
        assert!(state::ever_planned(&conn, "aud_b").unwrap());
        assert!(state::ever_planned(&conn, "aud_a").unwrap());
    }

    #[test]
    fn a_run_an_out_of_order_message_refers_to_is_kept_too() {
        let (_dir, mut conn) = db();
        let runs: Vec<i64> = (0..4).map(|_| run(&conn, &[])).collect();
        message(&conn, Some(runs[2]), "delivered", Some(1));
        // Enqueued after a newer run's messages (which runs never do): the fast scan misses it,
        // the foreign key refuses, and the exact scan keeps the run.
        message(&conn, Some(runs[0]), "dead", Some(100));
        message(&conn, Some(runs[3]), "pending", None);
        let report = apply(&mut conn, &policy());
        assert_eq!(report.runs, 1);
        assert_eq!(
            ids(&conn, "SELECT id FROM runs ORDER BY id"),
            vec![runs[0], runs[2], runs[3]]
        );
    }

    #[test]
    fn complete_snapshots_beyond_the_newest_n_go_but_a_planned_base_stays_however_old() {
        let (_dir, mut conn) = db();
        computation(&conn, "aud_a");
        computation(&conn, "aud_b");
        // aud_b: newest by taken_at, not by id.
        let b = [
            snapshot(&conn, "aud_b", 300, true, 2),
            snapshot(&conn, "aud_b", 100, true, 2),
            snapshot(&conn, "aud_b", 200, true, 2),
        ];
        let a: Vec<i64> = (1..=5)
            .map(|i| snapshot(&conn, "aud_a", 1000 + i, true, 7))
            .collect();
        // The last run planned a[0]: it is the planned base (and the cursor).
        state::set_planned_base(&conn, "aud_a", a[0], None).unwrap();
        state::set_cursor(&conn, "aud_a", Some(a[0]), None).unwrap();

        let would = dry_run(&mut conn, &policy());
        let report = apply(&mut conn, &policy());
        let removed = |r: &Report| {
            r.snapshots
                .iter()
                .map(|s| (s.id, s.rows))
                .collect::<Vec<_>>()
        };
        assert_eq!(removed(&report), vec![(b[1], 2), (a[1], 7), (a[2], 7)]);
        assert_eq!(removed(&would), removed(&report));
        assert!(report.snapshots.iter().all(|s| s.complete));
        assert_eq!(report.snapshots[1].computation.as_deref(), Some("aud_a"));
        assert_eq!(report.kept.planned_snapshots, 1);
        assert_eq!(
            ids(&conn, "SELECT id FROM snapshots ORDER BY id"),
            vec![b[0], b[2], a[0], a[3], a[4]]
        );
        assert_eq!(
            count(
                &conn,
                &format!(
                    "SELECT count(*) FROM snapshot_rows WHERE snapshot_id = {}",
                    a[0]
                )
            ),
            7,
            "the planned base keeps every row"
        );
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM snapshot_rows WHERE snapshot_id NOT IN (SELECT id FROM snapshots)"
            ),
            0
        );
        assert_eq!(
            state::planned_values(&conn, "aud_a", "user").unwrap().len(),
            7
        );
        // Nothing more to do.
        assert!(!apply(&mut conn, &policy()).removed_anything());
    }

    #[test]
    fn incomplete_snapshots_that_may_be_being_written_are_kept_and_abandoned_ones_go() {
        let (_dir, mut conn) = db();
        computation(&conn, "aud_a");
        computation(&conn, "aud_z");
        let two_days_ago = NOW - 2 * DAY;
        let c1 = snapshot(&conn, "aud_a", two_days_ago - 10, true, 1);
        let abandoned = snapshot(&conn, "aud_a", two_days_ago, false, 4);
        let recent = snapshot(&conn, "aud_a", NOW - 3600, false, 4);
        let c2 = snapshot(&conn, "aud_a", NOW - 60, true, 1);
        // Two days old but the newest attempt of its computation: maybe a slow writer.
        let newest_attempt = snapshot(&conn, "aud_a", two_days_ago, false, 4);
        let other = snapshot(&conn, "aud_z", NOW, true, 1);
        let m_abandoned = membership(&conn, two_days_ago, false, 3);
        let m_complete = membership(&conn, NOW - 60, true, 1);
        let m_writing = membership(&conn, NOW - 30, false, 2);

        let report = apply(&mut conn, &policy());
        assert_eq!(
            report
                .snapshots
                .iter()
                .map(|s| (s.id, s.complete, s.rows))
                .collect::<Vec<_>>(),
            vec![(abandoned, false, 4)]
        );
        assert_eq!(report.kept.incomplete_snapshots, 2);
        assert_eq!(
            ids(&conn, "SELECT id FROM snapshots ORDER BY id"),
            vec![c1, recent, c2, newest_attempt, other]
        );
        assert_eq!(
            report
                .membership_snapshots
                .iter()
                .map(|s| (s.id, s.complete, s.rows))
                .collect::<Vec<_>>(),
            vec![(m_abandoned, false, 3)]
        );
        assert_eq!(report.kept.incomplete_membership_snapshots, 1);
        assert_eq!(
            ids(&conn, "SELECT id FROM membership_snapshots ORDER BY id"),
            vec![m_complete, m_writing]
        );

        // A day later the writer of `recent` has clearly given up (c2 superseded it).
        let report = prune(&mut conn, &policy(), Options::default(), NOW + DAY).unwrap();
        assert_eq!(
            report.snapshots.iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![recent]
        );
    }

    #[test]
    fn membership_snapshots_beyond_the_newest_n_go_unless_planned_state_needs_them() {
        let (_dir, mut conn) = db();
        conn.execute(
            "INSERT INTO computations (id, key, name, kind, scope, created_at) \
             VALUES ('tra_acc', 'plan', 'Plan', 'trait', 'account', 0)",
            [],
        )
        .unwrap();
        let s = snapshot(&conn, "tra_acc", 1, true, 1);
        let m: Vec<i64> = (1..=5)
            .map(|i| membership(&conn, 100 + i, true, 3))
            .collect();
        // An account computation's base derives user values through m[0]; membership_state
        // reflects m[1].
        state::set_planned_base(&conn, "tra_acc", s, Some(m[0])).unwrap();
        state::set_cursor(&conn, "membership", Some(m[1]), None).unwrap();

        let report = apply(&mut conn, &policy());
        assert_eq!(
            report
                .membership_snapshots
                .iter()
                .map(|s| (s.id, s.rows))
                .collect::<Vec<_>>(),
            vec![(m[2], 3)]
        );
        assert_eq!(report.kept.planned_membership_snapshots, 2);
        assert_eq!(
            ids(&conn, "SELECT id FROM membership_snapshots ORDER BY id"),
            vec![m[0], m[1], m[3], m[4]]
        );
        assert_eq!(
            count(
                &conn,
                &format!(
                    "SELECT count(*) FROM membership_rows WHERE snapshot_id = {}",
                    m[0]
                )
            ),
            3
        );
        assert_eq!(
            count(
                &conn,
                &format!(
                    "SELECT count(*) FROM membership_rows WHERE snapshot_id = {}",
                    m[2]
                )
            ),
            0
        );
    }

    #[test]
    fn deletions_go_in_batches_of_at_most_batch_rows() {
        let (_dir, mut conn) = db();
        for _ in 0..10 {
            message(&conn, None, "delivered", Some(30));
        }
        message(&conn, None, "pending", None);
        let policy = policy();
        let mut report = Report::default();
        let cut = OutboxCut::new(&conn, &policy, NOW).unwrap();
        delete_outbox(&mut conn, &policy, &cut, &mut report).unwrap();
        assert_eq!(report.delivered_messages, 10);
        assert_eq!(report.transactions, 4, "3 + 3 + 3 + 1 rows");

        computation(&conn, "aud_a");
        let id = snapshot(&conn, "aud_a", 1, true, 7);
        let mut report = Report::default();
        let rows = delete_snapshot(&mut conn, Kind::Computation, id, &policy, &mut report).unwrap();
        assert_eq!(rows, Some(7));
        assert_eq!(report.transactions, 3, "3 + 3 + 1 rows and the header");
        assert_eq!(count(&conn, "SELECT count(*) FROM snapshots"), 0);

        // Runs: whole runs with their run_computations, at most about batch_rows rows a
        // transaction (here one run and its row each).
        let runs: Vec<i64> = (0..4).map(|_| run(&conn, &["aud_a"])).collect();
        let mut report = Report::default();
        delete_runs(&mut conn, &policy, &runs, &mut report).unwrap();
        assert_eq!((report.runs, report.run_computations), (4, 4));
        assert_eq!(report.transactions, 4);
    }

    #[test]
    fn a_snapshot_a_planned_base_comes_to_need_is_left_alone() {
        let (_dir, mut conn) = db();
        computation(&conn, "aud_a");
        let id = snapshot(&conn, "aud_a", 1, true, 2);
        state::set_planned_base(&conn, "aud_a", id, None).unwrap();
        let mut report = Report::default();
        let rows =
            delete_snapshot(&mut conn, Kind::Computation, id, &policy(), &mut report).unwrap();
        assert_eq!(rows, None);
        assert_eq!(
            count(&conn, "SELECT count(*) FROM snapshots WHERE complete = 1"),
            1
        );
        assert_eq!(count(&conn, "SELECT count(*) FROM snapshot_rows"), 2);
    }

    fn personas() -> crate::settings::PersonasSettings {
        crate::settings::PersonasSettings {
            space_id: "test".into(),
            track_on_initial_sync: false,
            audience_entered_event: "Audience Entered".into(),
            audience_exited_event: "Audience Exited".into(),
            trait_computed_event: "Trait Computed".into(),
        }
    }

    /// One run that enqueues, every message of it delivered `days_ago`.
    fn plan_and_deliver(conn: &mut Connection, days_ago: i64) -> crate::plan::Report {
        let options = crate::plan::RunOptions {
            mode: crate::plan::RunMode::Incremental,
            computation: None,
            now: NOW - days_ago * DAY,
            company_attribute_prefix: "account_",
        };
        let report =
            crate::plan::run(conn, &personas(), &options, crate::plan::Output::Enqueue).unwrap();
        for message in outbox::pending(conn, 1000).unwrap() {
            outbox::mark_delivered(conn, message.seq).unwrap();
        }
        conn.execute(
            "UPDATE outbox SET finished_at = ?1 WHERE run_id = ?2",
            params![NOW - days_ago * DAY, report.run_id],
        )
        .unwrap();
        report
    }

    #[test]
    fn after_a_prune_the_next_run_plans_nothing_new() {
        let (_dir, mut conn) = db();
        computation(&conn, "aud_a");
        let members = |n: usize| n;
        snapshot(&conn, "aud_a", NOW - 20 * DAY, true, members(50));
        assert_eq!(plan_and_deliver(&mut conn, 20).messages.identify, 50);
        let second = snapshot(&conn, "aud_a", NOW - 10 * DAY, true, members(40));
        assert_eq!(plan_and_deliver(&mut conn, 10).messages.identify, 10);
        // A newer snapshot, not planned yet, with the same members: the base stays `second`.
        let third = snapshot(&conn, "aud_a", NOW - DAY, true, members(40));
        let policy = Policy {
            runs: 1,
            snapshots_per_computation: 1,
            ..policy()
        };
        let report = apply(&mut conn, &policy);
        // 50 identifies, then 10 exits (identify + track): all but the newest row (kept so
        // that its seq is never reused).
        assert_eq!(report.delivered_messages, 69);
        assert_eq!(
            report.runs, 1,
            "the first run goes; the second planned aud_a last"
        );
        assert_eq!(report.snapshots.len(), 1);
        assert_eq!(report.kept.planned_snapshots, 1);
        assert_eq!(
            ids(&conn, "SELECT id FROM snapshots ORDER BY id"),
            vec![second, third]
        );
        // The run after: the same members, no message, and not an initial sync.
        let next = plan_and_deliver(&mut conn, 0);
        assert_eq!(next.messages, Default::default());
        assert_eq!(next.mode, crate::plan::RunMode::Incremental);
        assert!(
            next.computations
                .iter()
                .all(|c| c.mode == crate::plan::RunMode::Incremental),
            "{:?}",
            next.computations
        );
    }

    #[test]
    fn new_databases_return_free_pages_to_the_file_system() {
        let (dir, mut conn) = db();
        assert_eq!(auto_vacuum(&conn).unwrap(), AUTO_VACUUM_INCREMENTAL);
        assert_eq!(
            auto_vacuum(&store::open_in_memory().unwrap()).unwrap(),
            AUTO_VACUUM_INCREMENTAL
        );
        computation(&conn, "aud_a");
        for i in 0..4 {
            snapshot(&conn, "aud_a", i, true, 500);
        }
        let file = |path: &Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let (_, pages_before, _) = pages(&conn).unwrap();
        let policy = Policy {
            snapshots_per_computation: 1,
            batch_rows: 200,
            vacuum_step_pages: 16,
            ..policy()
        };
        let report = apply(&mut conn, &policy);
        assert_eq!(report.snapshot_rows(), 1500);
        assert_eq!(report.space.auto_vacuum, "incremental");
        assert!(report.space.pages_freed > 16, "{:?}", report.space);
        assert_eq!(report.space.free_pages_after, 0, "{:?}", report.space);
        assert_eq!(report.space.pages_before, pages_before);
        assert!(
            report.space.pages_after < pages_before - report.space.pages_freed / 2,
            "{:?}",
            report.space
        );
        assert_eq!(
            report.space.bytes_returned,
            (report.space.pages_before - report.space.pages_after) * report.space.page_size
        );
        assert!(!report.space.vacuumed && !report.space.needs_vacuum);
        // The checkpoint truncated the WAL and the file itself shrank.
        assert_eq!(file(&dir.path().join("t.db-wal")), 0);
        assert_eq!(
            file(&dir.path().join("t.db")),
            report.space.pages_after * report.space.page_size
        );
    }

    #[test]
    fn an_old_database_without_auto_vacuum_is_switched_by_a_vacuum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // A database made before retention: the schema without auto_vacuum.
            let conn = Connection::open(&path).unwrap();
            store::configure(&conn).unwrap();
            conn.execute_batch(store::SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", store::SCHEMA_VERSION)
                .unwrap();
        }
        let mut conn = store::open(&path).unwrap();
        assert_eq!(auto_vacuum(&conn).unwrap(), AUTO_VACUUM_NONE);
        computation(&conn, "aud_a");
        for i in 0..4 {
            snapshot(&conn, "aud_a", i, true, 300);
        }
        // A large database (here: any) is not rewritten unasked; free pages stay for reuse.
        let large = Policy {
            snapshots_per_computation: 3,
            switch_below_bytes: 0,
            ..policy()
        };
        let would = dry_run(&mut conn, &large);
        assert!(would.space.needs_vacuum && !would.space.vacuumed);
        let report = apply(&mut conn, &large);
        assert_eq!(report.snapshots.len(), 1);
        assert!(report.space.needs_vacuum, "{:?}", report.space);
        assert_eq!(report.space.auto_vacuum, "none");
        assert_eq!(report.space.pages_after, report.space.pages_before);
        assert!(report.space.free_pages_after > 0);

        // `prune --vacuum`: one VACUUM switches it, and the free pages go back.
        let options = Options {
            vacuum: true,
            ..Options::default()
        };
        let report = prune(&mut conn, &large, options, NOW).unwrap();
        assert!(report.space.vacuumed && !report.space.needs_vacuum);
        assert_eq!(report.space.auto_vacuum, "incremental");
        assert_eq!(auto_vacuum(&conn).unwrap(), AUTO_VACUUM_INCREMENTAL);
        assert_eq!(report.space.free_pages_after, 0);
        assert!(report.space.bytes_returned > 0, "{:?}", report.space);
        assert_eq!(count(&conn, "SELECT count(*) FROM snapshot_rows"), 900);
    }

    #[test]
    fn a_small_old_database_is_switched_without_being_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            store::configure(&conn).unwrap();
            conn.execute_batch(store::SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", store::SCHEMA_VERSION)
                .unwrap();
        }
        let mut conn = store::open(&path).unwrap();
        assert_eq!(auto_vacuum(&conn).unwrap(), AUTO_VACUUM_NONE);
        let report = apply(&mut conn, &policy());
        assert!(report.space.vacuumed, "{:?}", report.space);
        assert_eq!(auto_vacuum(&conn).unwrap(), AUTO_VACUUM_INCREMENTAL);
        // Once switched, later prunes return pages incrementally.
        assert!(!apply(&mut conn, &policy()).space.vacuumed);
    }
}
