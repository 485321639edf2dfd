//! A run's chunks (SPEC section 9): pacing against delivery, reading a chunk, and the chunk's
//! write transaction.
//!
//! A run commits in chunks: each chunk is one short write transaction holding its outbox
//! messages, the planned state they imply and where the run stands (`run_progress`), so SQLite's
//! write lock is held about as long as it takes to copy a chunk's staged rows, whatever the size
//! of the run. A chunk ends between two entities, so one user's changes of a run are never split.
//!
//! The chunker (`Chunker::pass`, driven by `run.rs` once per pass) waits for room in the outbox
//! ([`Pace`]), lets the merge fill a chunk (`merge::fill`, until [`Chunking`] says it is full),
//! ends the read transaction and writes what the emitter staged (`write_chunk`: the first chunk
//! records the run, the last moves the bases and cursors), then truncates the WAL when it has
//! grown (`keep_wal_small`). The test hooks fire here.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::store::Connection;
use anyhow::Context;
use tracing::debug;

use super::emit::{ChunkCounts, Emitter};
use super::{Fixed, MessageCounts, RunState};
use crate::domain::Scope;
use crate::store::connection;
use crate::store::outbox;
use crate::store::state::{self, Counts, Pass, RunComputation};

/// Test hook: `AUDIENCE_SYNC_TEST_ABORT=before_commit|after_commit` aborts the process at that
/// point of an enqueueing run's last chunk, and `after_chunk:K` once its K-th chunk (not the
/// last) has committed, so the crash tests can prove each chunk atomic and a run resumable.
pub const ABORT_HOOK: &str = "AUDIENCE_SYNC_TEST_ABORT";

/// Test hook: `AUDIENCE_SYNC_TEST_CHUNK_ROWS=N` ends a run's chunks after N staged rows instead
/// of [`CHUNK_ROWS`], so tests put chunk boundaries (and crashes between chunks) in small runs.
pub const CHUNK_ROWS_HOOK: &str = "AUDIENCE_SYNC_TEST_CHUNK_ROWS";

/// Test hook: `AUDIENCE_SYNC_TEST_HOLD=PATH` makes an enqueueing run, once its first chunk is
/// read and while its read transaction is still open, create `PATH.reading` and wait (up to 60 s) until
/// `PATH` exists, so tests can write to the database while a run reads.
pub const HOLD_HOOK: &str = "AUDIENCE_SYNC_TEST_HOLD";

/// Staged rows (messages, planned values, attachments, event times) after which a chunk ends at
/// the next entity boundary. At this machine's write speed a chunk of this size commits in a
/// fraction of a second (BENCHMARKS.md, "Runs of any size").
pub const CHUNK_ROWS: usize = 30_000;

/// How long a chunk reads at most before it commits, however few rows it staged (the main
/// connection's read transaction stays short, and a crash loses little).
pub const CHUNK_READ_FOR: Duration = Duration::from_secs(2);

/// How often planning looks at the outbox again while it waits for delivery to drain it.
const PACE_POLL: Duration = Duration::from_millis(100);

/// How a run cuts its chunks.
#[derive(Debug, Clone, Copy)]
pub struct Chunking {
    /// A chunk ends after the entity that brings its staged rows to this many.
    pub rows: usize,
    /// … or after the entity that ends its reading this long.
    pub read_for: Duration,
}

impl Default for Chunking {
    /// [`CHUNK_ROWS`] and [`CHUNK_READ_FOR`]; tests may set the rows with
    /// `AUDIENCE_SYNC_TEST_CHUNK_ROWS` to put chunk boundaries in small runs.
    fn default() -> Self {
        let rows = std::env::var(CHUNK_ROWS_HOOK)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(CHUNK_ROWS);
        Chunking {
            rows,
            read_for: CHUNK_READ_FOR,
        }
    }
}

/// Planning runs ahead of delivery by at most `max_pending` undelivered messages (SPEC section
/// 9): before each chunk the run waits while the outbox holds that many.
pub struct Pace<'a> {
    pub max_pending: u64,
    /// Called after each chunk commits (wakes delivery).
    pub committed: &'a (dyn Fn() + Sync),
    /// Whether to stop (the daemon is stopping): the run stops before its next chunk and the
    /// next run resumes it.
    pub stop: &'a (dyn Fn() -> bool + Sync),
}

/// Drives a run's passes chunk by chunk: waits for room in the outbox, reads a chunk, writes it.
pub(super) struct Chunker<'c, 'p> {
    pub(super) conn: &'c Connection,
    pub(super) enqueue: bool,
    pub(super) pace: Option<&'p Pace<'p>>,
    /// `None`: one chunk per pass (nothing is written).
    pub(super) limits: Option<Chunking>,
    pub(super) now: i64,
    /// What the chunks enqueued.
    pub(super) messages: MessageCounts,
    pub(super) chunks: u64,
    pub(super) longest_write: Duration,
    /// The hold test hook has fired.
    pub(super) held: bool,
    /// Stopped before the run's end (`Pace::stop`).
    pub(super) stopped: bool,
}

impl Chunker<'_, '_> {
    /// One pass: chunks until `fill` says the streams ended; the users' pass (`last`) ends the
    /// run with its last chunk.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pass(
        &mut self,
        setup: Fixed<'_>,
        run: &mut RunState,
        emitter: &mut Emitter<'_, '_>,
        pass: Pass,
        last: bool,
        mut fill: impl FnMut(
            &mut Emitter<'_, '_>,
            Option<Chunking>,
        ) -> anyhow::Result<(bool, Option<String>)>,
    ) -> anyhow::Result<()> {
        loop {
            if self.enqueue && !self.wait_for_room()? {
                self.stopped = true;
                return Ok(());
            }
            if self.enqueue {
                connection::begin_deferred(self.conn)?;
            }
            let read = Instant::now();
            let (done, entity) = fill(emitter, self.limits)?;
            // Fold the chunk's counts into the run's report.
            for (report, counts) in run.reports.iter_mut().zip(&emitter.chunk.comps) {
                add_counts(&mut report.counts, counts);
            }
            if let Some(m) = run.membership_report.as_mut() {
                m.attached += emitter.chunk.attached;
                m.detached += emitter.chunk.detached;
            }
            if !self.enqueue {
                emitter.chunk = ChunkCounts::new(setup.comps.len());
                return Ok(());
            }
            if !self.held && (emitter.staged > 0 || (done && last)) {
                self.held = true;
                hold_hook();
            }
            connection::commit(self.conn).context("cannot end the run's read transaction")?;
            let finish = done && last;
            if done && !last && emitter.staged == 0 {
                // The pass had nothing more: the next pass's first chunk records the progress.
                return Ok(());
            }
            let write = Instant::now();
            let enqueued = write_chunk(
                self.conn,
                setup,
                run,
                &emitter.chunk,
                emitter.counts,
                pass,
                entity.as_deref(),
                finish,
                self.now,
            )?;
            let took = write.elapsed();
            self.longest_write = self.longest_write.max(took);
            self.chunks += 1;
            debug!(
                chunk = self.chunks,
                staged_rows = emitter.staged,
                read_ms = (write - read).as_millis() as u64,
                write_ms = took.as_millis() as u64,
                "Chunk committed."
            );
            add_messages(&mut self.messages, &enqueued);
            emitter.counts = MessageCounts::default();
            emitter.chunk = ChunkCounts::new(setup.comps.len());
            emitter.staged = 0;
            outbox::create_staging(self.conn)?;
            state::create_staging(self.conn)?;
            keep_wal_small(self.conn);
            if !finish {
                abort_hook_chunk(run.progress.chunks);
            }
            if let Some(pace) = self.pace {
                (pace.committed)();
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Wait while the outbox holds `max_pending` undelivered messages; `false` when asked to
    /// stop.
    fn wait_for_room(&self) -> anyhow::Result<bool> {
        let Some(pace) = self.pace else {
            return Ok(true);
        };
        let mut logged = false;
        loop {
            if (pace.stop)() {
                return Ok(false);
            }
            let pending = crate::store::outbox::pending_count(self.conn)?;
            if pending < pace.max_pending {
                return Ok(true);
            }
            if !logged {
                debug!(
                    pending,
                    max_pending = pace.max_pending,
                    "Planning waits for delivery (plan.max_pending_messages)."
                );
                logged = true;
            }
            std::thread::sleep(PACE_POLL);
        }
    }
}

/// The write-ahead log past which a run checkpoints it between chunks.
const WAL_LIMIT: u64 = 64 * 1024 * 1024;

/// Between chunks: when the WAL has grown past [`WAL_LIMIT`], copy it into the database and
/// truncate it. SQLite's automatic checkpoints copy what no reader still needs but cannot start
/// the log over while the diff's readers keep overlapping read transactions, so without this
/// the log of a big run grows by everything the run writes. The diff's readers hand over their
/// batches outside any transaction while the run is here, so the wait for them is short; a
/// checkpoint that cannot finish now (another reader) is simply tried after the next chunk.
fn keep_wal_small(conn: &Connection) {
    let Some(path) = conn.path().filter(|p| !p.is_empty()) else {
        return;
    };
    let wal = std::fs::metadata(format!("{path}-wal")).map_or(0, |m| m.len());
    if wal < WAL_LIMIT {
        return;
    }
    let started = Instant::now();
    let result = connection::checkpoint_truncate(conn);
    debug!(
        wal_bytes = wal,
        busy = result.as_ref().map_or(-1, |r| i64::from(r.busy)),
        took_ms = started.elapsed().as_millis() as u64,
        "Checkpointed the write-ahead log between chunks."
    );
}

fn add_counts(total: &mut Counts, chunk: &Counts) {
    total.entered += chunk.entered;
    total.exited += chunk.exited;
    total.changed += chunk.changed;
    total.resent += chunk.resent;
    total.users += chunk.users;
}

fn add_messages(total: &mut MessageCounts, chunk: &MessageCounts) {
    total.identify += chunk.identify;
    total.track += chunk.track;
    total.group_user += chunk.group_user;
    total.group_account += chunk.group_account;
}

/// One chunk's write transaction: the staged outbox and planned state, the chunk's counts and
/// where the run stands; the first chunk records the run, the last moves the bases and cursors.
/// Returns what was enqueued.
#[allow(clippy::too_many_arguments)]
fn write_chunk(
    conn: &Connection,
    setup: Fixed<'_>,
    run: &mut RunState,
    chunk: &ChunkCounts,
    staged: MessageCounts,
    pass: Pass,
    through: Option<&str>,
    finish: bool,
    now: i64,
) -> anyhow::Result<MessageCounts> {
    connection::begin_immediate(conn).context("cannot start the run's write transaction")?;
    if run.progress.run_id == 0 {
        let run_id = state::insert_run(
            conn,
            setup.mode.as_str(),
            now,
            setup.membership.map(|m| m.id),
        )?;
        for (comp, report) in setup.comps.iter().zip(&run.reports) {
            if report.skipped.is_some() {
                continue;
            }
            let snapshot = comp.snapshot.expect("a diffed computation has a snapshot");
            state::insert_run_computation(
                conn,
                run_id,
                &RunComputation {
                    computation_id: comp.id.clone(),
                    snapshot_id: snapshot.id,
                    mode: report.mode.as_str().to_string(),
                    track: comp.track,
                    resync: comp.resync,
                },
            )?;
        }
        run.progress.run_id = run_id;
    }
    let run_id = run.progress.run_id;
    let staged = outbox::EnqueuedCounts {
        identify: staged.identify,
        track: staged.track,
        group_user: staged.group_user,
        group_account: staged.group_account,
    };
    let enqueued = outbox::enqueue_staged(conn, run_id, now, staged)
        .context("cannot enqueue the run's messages")?;
    let enqueued = MessageCounts {
        identify: enqueued.identify,
        track: enqueued.track,
        group_user: enqueued.group_user,
        group_account: enqueued.group_account,
    };
    state::commit_staged_state(conn).context("cannot write the run's planned state")?;
    for (comp, counts) in setup.comps.iter().zip(&chunk.comps) {
        if *counts != Counts::default() {
            state::add_run_computation_counts(conn, run_id, &comp.id, counts)?;
        }
    }
    state::add_run_counts(
        conn,
        run_id,
        (chunk.attached, chunk.detached),
        (enqueued.identify, enqueued.track, enqueued.group()),
    )?;
    if finish {
        // If a message died while the run planned (the dead-letter generation moved), the run's
        // view of planned state may be stale for entities it did not change, so it does not
        // advance the cursors of what it diffed: the next run diffs them again against the
        // restored planned state. Values this run did change are planned and sent as the
        // newest snapshot says, which is right whatever the old value was.
        let stale = state::dead_letter_generation(conn)? != run.progress.dead_letters;
        if stale {
            debug!("A message was dead-lettered while the run planned: its cursors stay.");
        }
        for (comp, report) in setup.comps.iter().zip(&run.reports) {
            if report.skipped.is_some() {
                continue;
            }
            let membership_input = if comp.scope == Scope::Account {
                setup.membership.map(|m| m.id)
            } else {
                None
            };
            // Planned state is now the diffed snapshots plus the overrides written: every
            // entity the run changed has its planned value written by its chunk, and every
            // entity it did not change has the same value in the new snapshot as in planned
            // state (else it would have changed) or an override that keeps it.
            let snapshot = comp.snapshot.expect("a diffed computation has a snapshot");
            state::set_planned_base(conn, &comp.id, snapshot.id, membership_input)?;
            if !stale {
                state::set_cursor(conn, &comp.id, Some(snapshot.id), membership_input)?;
            }
        }
        if run.diffs_membership() && !stale {
            state::set_cursor(conn, "membership", setup.membership.map(|m| m.id), None)?;
        }
        state::finish_run_plan(conn, run_id, now)?;
        state::clear_run_progress(conn, run_id)?;
    } else {
        if run.progress.pass != pass {
            run.progress.pass = pass;
            run.progress.through = None;
        }
        if let Some(entity) = through {
            run.progress.through = Some(entity.to_string());
        }
        run.progress.chunks += 1;
        state::set_run_progress(conn, &run.progress)?;
    }
    if finish {
        abort_hook("before_commit");
    }
    connection::commit(conn).context("cannot commit the run's chunk")?;
    if finish {
        abort_hook("after_commit");
    }
    Ok(enqueued)
}

fn hold_hook() {
    let Ok(path) = std::env::var(HOLD_HOOK) else {
        return;
    };
    let _ = std::fs::write(format!("{path}.reading"), b"");
    let until = Instant::now() + Duration::from_secs(60);
    while !Path::new(&path).exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn abort_hook(point: &str) {
    if std::env::var(ABORT_HOOK).is_ok_and(|v| v == point) {
        eprintln!("{ABORT_HOOK}={point}: aborting");
        std::process::abort();
    }
}

/// `AUDIENCE_SYNC_TEST_ABORT=after_chunk:K` aborts once the run's K-th chunk (not its last)
/// has committed.
fn abort_hook_chunk(chunks: i64) {
    if std::env::var(ABORT_HOOK).is_ok_and(|v| v == format!("after_chunk:{chunks}")) {
        eprintln!("{ABORT_HOOK}=after_chunk:{chunks}: aborting");
        std::process::abort();
    }
}
