//! A run, chunk by chunk (SPEC section 9).
//!
//! A run walks its computations in entity order — accounts' own values first, then users — and
//! commits in chunks: each chunk is one short write transaction holding its outbox messages, the
//! planned state they imply and where the run stands (`run_progress`), so SQLite's write lock is
//! held about as long as it takes to copy a chunk's staged rows, whatever the size of the run.
//! A chunk ends between two entities, so one user's changes of a run are never split.
//!
//! Reading: each computation's merge (and the membership's) runs on a worker thread with its own
//! read connection; the main thread merges their change streams k-way by entity and stages the
//! messages. Readers refresh their read transaction at least every [`READ_FOR`] (and whenever
//! the main thread is not keeping up), restarting their merge exactly where it stood: a reader
//! left on an old snapshot would keep SQLite from checkpointing the WAL. This is exact because
//! what a merge reads either never changes (complete snapshots) or changes only behind the run
//! (its own chunks write planned state for entities every stream has already passed) or through
//! a dead letter (detected: the run then leaves its cursors alone, see `write_chunk`).
//!
//! Planned state while a run is unfinished is split at its progress (`state::planned_source`):
//! what the run has committed is planned from its snapshots, the rest still from the old base,
//! and the last chunk moves the bases. A crash resumes the run from its last committed chunk with
//! the snapshots it started with: nothing is emitted twice (the committed chunks are behind the
//! progress) and nothing is lost (the uncommitted one is planned again).

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::Connection;
use tracing::{debug, info};

use super::{
    ABORT_HOOK, CHUNK_ROWS_HOOK, Comp, ComputationReport, Emitter, Estimator, HOLD_HOOK,
    MembershipReport, MessageCounts, Output, Report, RunMode, RunOptions,
};
use crate::domain::{Kind, Scope};
use crate::plan::diff::{self, Change};
use crate::settings::PersonasSettings;
use crate::store::connection;
use crate::store::outbox;
use crate::store::snapshots;
use crate::store::state::{
    self, ChangeRow, Counts, Merge, MergeStatements, Pass, Position, RunComputation, RunProgress,
    SnapshotRef, Source,
};

/// Staged rows (messages, planned values, attachments, event times) after which a chunk ends at
/// the next entity boundary. At this machine's write speed a chunk of this size commits in a
/// fraction of a second (BENCHMARKS.md, "Runs of any size").
pub const CHUNK_ROWS: usize = 30_000;

/// How long a chunk reads at most before it commits, however few rows it staged (the main
/// connection's read transaction stays short, and a crash loses little).
pub const CHUNK_READ_FOR: Duration = Duration::from_secs(2);

/// How long a diff reader keeps one read transaction at most.
pub const READ_FOR: Duration = Duration::from_secs(1);

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

/// What a run is made of: its computations, the membership, where it stands.
struct Setup {
    comps: Vec<Comp>,
    membership: Option<SnapshotRef>,
    mode: RunMode,
    resumed: bool,
    state: RunState,
}

/// What changes as a run goes.
struct RunState {
    reports: Vec<ComputationReport>,
    /// `Some` when the run diffs the membership (`skipped` says if not).
    membership_report: Option<MembershipReport>,
    /// `run_id` 0 until the first chunk records the run.
    progress: RunProgress,
}

/// What stays as a run goes.
#[derive(Clone, Copy)]
struct Fixed<'a> {
    comps: &'a [Comp],
    membership: Option<SnapshotRef>,
    mode: RunMode,
}

impl RunState {
    fn diffs_membership(&self) -> bool {
        self.membership_report
            .as_ref()
            .is_some_and(|m| m.skipped.is_none())
    }
}

/// Make one run: diff every enabled computation (or the one asked for) and the membership
/// against planned state and emit the messages to `output`; with `Output::Enqueue`, commit them
/// chunk by chunk (paced by `pace` when given). An unfinished run (a crash, a stop) is resumed
/// and finished instead, whatever `options` ask (`Report::resumed`): call again for a new run.
pub fn run(
    conn: &mut Connection,
    personas: &PersonasSettings,
    options: &RunOptions<'_>,
    output: Output<'_>,
    pace: Option<&Pace<'_>>,
    chunking: Chunking,
) -> anyhow::Result<Report> {
    let conn: &Connection = conn;
    let enqueue = matches!(output, Output::Enqueue);
    if enqueue {
        // The writes insert outbox rows into indexes keyed by random message ids: with the
        // default 2 MiB page cache they would spill and re-read pages many times over.
        connection::set_cache_size(conn, WRITE_CACHE_KIB)?;
    }
    let result = run_inner(conn, personas, options, output, pace, chunking);
    let _ = connection::rollback_open_transaction(conn);
    if enqueue {
        let _ = state::drop_staging(conn);
        connection::set_cache_size(conn, DEFAULT_CACHE_KIB)?;
    }
    result
}

/// Page cache of a run's connection while it writes (negative: KiB), and SQLite's default.
const WRITE_CACHE_KIB: i64 = -65536;
const DEFAULT_CACHE_KIB: i64 = -2000;

fn run_inner(
    conn: &Connection,
    personas: &PersonasSettings,
    options: &RunOptions<'_>,
    mut output: Output<'_>,
    pace: Option<&Pace<'_>>,
    chunking: Chunking,
) -> anyhow::Result<Report> {
    let enqueue = matches!(output, Output::Enqueue);
    let started = Instant::now();
    connection::begin_deferred(conn)?;
    let setup = match state::run_progress(conn)? {
        Some(progress) => resume(conn, progress)?,
        None => choose(conn, personas, options)?,
    };
    let Setup {
        comps,
        membership,
        mode,
        resumed,
        state: mut run,
    } = setup;
    let fixed = Fixed {
        comps: &comps,
        membership,
        mode,
    };
    if resumed {
        info!(
            run = run.progress.run_id,
            chunks = run.progress.chunks,
            "Resuming an unfinished run from its last committed chunk."
        );
    }
    let jobs_accounts = jobs(conn, fixed, &run, Pass::Accounts)?;
    let jobs_users = jobs(conn, fixed, &run, Pass::Users)?;
    if enqueue {
        state::create_staging(conn)?;
        connection::commit(conn)?;
    }

    let db_path = conn
        .path()
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from);
    let mut emitter = Emitter {
        conn,
        personas,
        comps: &comps,
        membership,
        stage: enqueue,
        counts: MessageCounts::default(),
        estimate: Estimator::default(),
        output: &mut output,
        chunk: ChunkCounts::new(comps.len()),
        staged: 0,
    };
    let mut chunker = Chunker {
        conn,
        enqueue,
        pace,
        limits: enqueue.then_some(chunking),
        now: options.now,
        messages: MessageCounts::default(),
        chunks: 0,
        longest_write: Duration::ZERO,
        held: false,
        stopped: false,
    };
    // Dry runs and plans change nothing: one read transaction for the whole run.
    let passes = [(Pass::Accounts, jobs_accounts), (Pass::Users, jobs_users)];
    let start_pass = run.progress.pass;
    for (pass, jobs) in passes {
        if pass == Pass::Accounts && start_pass == Pass::Users {
            continue;
        }
        let from = match (&run.progress.through, pass == start_pass) {
            (Some(through), true) => after(through),
            _ => Position::default(),
        };
        let last = pass == Pass::Users;
        let parallel = db_path
            .as_deref()
            .filter(|_| jobs.len() <= MAX_WORKERS && !jobs.is_empty());
        match parallel {
            Some(path) => std::thread::scope(|scope| -> anyhow::Result<()> {
                let mut streams = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    streams.push(spawn_worker(scope, path, job.clone(), from.clone())?);
                }
                let mut merger = Merger::new(streams)?;
                chunker.pass(
                    fixed,
                    &mut run,
                    &mut emitter,
                    pass,
                    last,
                    |emitter, limits| fill(&mut merger, emitter, limits),
                )
            })?,
            None => {
                let mut from = from;
                chunker.pass(
                    fixed,
                    &mut run,
                    &mut emitter,
                    pass,
                    last,
                    |emitter, limits| {
                        // Without worker threads the merges run here, opened afresh each chunk
                        // (the connection writes between chunks).
                        let mut statements = jobs
                            .iter()
                            .map(|job| job.statements(conn))
                            .collect::<rusqlite::Result<Vec<_>>>()?;
                        let mut streams = Vec::with_capacity(jobs.len());
                        for (job, statements) in jobs.iter().zip(statements.iter_mut()) {
                            streams.push(Stream::Local {
                                job,
                                conn,
                                replans: job.replans(conn)?,
                                merge: Box::new(statements.open_from(&from)?),
                            });
                        }
                        let mut merger = Merger::new(streams)?;
                        let (done, last) = fill(&mut merger, emitter, limits)?;
                        if let Some(entity) = &last {
                            from = after(entity);
                        }
                        Ok((done, last))
                    },
                )?
            }
        }
        if chunker.stopped {
            break;
        }
    }
    if !enqueue {
        connection::commit(conn)?;
    }
    let requests = std::mem::take(&mut emitter.estimate).finish(
        conn,
        &comps,
        options.company_attribute_prefix,
    )?;
    let messages = if enqueue {
        chunker.messages
    } else {
        emitter.counts
    };
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        chunks = chunker.chunks,
        longest_write_ms = chunker.longest_write.as_millis() as u64,
        "Run done."
    );
    Ok(Report {
        run_id: (run.progress.run_id != 0).then_some(run.progress.run_id),
        mode,
        computations: run.reports,
        membership: run.membership_report,
        messages,
        requests,
        resumed,
        finished: !chunker.stopped,
        chunks: chunker.chunks,
        longest_write_ms: chunker.longest_write.as_millis() as u64,
    })
}

/// A run that cannot begin because of what it was asked for (`RunOptions::computation`). Bad
/// input (the command line maps it to exit 2); nothing was read or written.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no computation with key {0:?}")]
    UnknownComputation(String),
    #[error("computation {0:?} is disabled (computations.enabled = 0)")]
    DisabledComputation(String),
}

/// The first key after `entity` (a merge restarted there yields what follows it).
fn after(entity: &str) -> Position {
    let mut key = String::with_capacity(entity.len() + 1);
    key.push_str(entity);
    key.push('\0');
    Position::at(&key)
}

/// A new run: the computations to diff, their newest complete snapshots, what is skipped.
fn choose(
    conn: &Connection,
    personas: &PersonasSettings,
    options: &RunOptions<'_>,
) -> anyhow::Result<Setup> {
    let full = options.mode == RunMode::Full;
    let mut selected = Vec::new();
    let all = snapshots::computations(conn)?;
    if let Some(key) = options.computation {
        let Some(c) = all.iter().find(|c| c.key == key) else {
            return Err(RunError::UnknownComputation(key.to_string()).into());
        };
        if !c.enabled {
            return Err(RunError::DisabledComputation(key.to_string()).into());
        }
        selected.push(c.clone());
    } else {
        selected.extend(all.into_iter().filter(|c| c.enabled));
    }

    let membership = state::newest_membership(conn)?;
    let mut comps = Vec::with_capacity(selected.len());
    let mut reports = Vec::with_capacity(selected.len());
    for c in &selected {
        let snapshot = state::newest_snapshot(conn, &c.id)?;
        let initial = !state::ever_planned(conn, &c.id)?;
        let account = c.scope == Scope::Account;
        let mode = if full || initial {
            RunMode::Full
        } else {
            RunMode::Incremental
        };
        let mut skipped = None;
        if snapshot.is_none() {
            skipped = Some("no complete snapshot");
        } else if !full && !initial {
            let inputs = (
                snapshot.map(|s| s.id),
                if account {
                    membership.map(|m| m.id)
                } else {
                    None
                },
            );
            if state::cursor(conn, &c.id)? == Some(inputs) {
                skipped = Some("unchanged");
            }
        }
        reports.push(ComputationReport {
            key: c.key.clone(),
            id: c.id.clone(),
            kind: c.kind.as_str(),
            scope: c.scope.as_str(),
            snapshot_id: snapshot.map(|s| s.id),
            mode,
            skipped,
            counts: Counts::default(),
        });
        comps.push(Comp {
            id: c.id.clone(),
            key: c.key.clone(),
            audience: c.kind == Kind::Audience,
            account,
            snapshot,
            resync: full,
            track: !full && (!initial || personas.track_on_initial_sync),
        });
    }
    let mut membership_report = None;
    if options.computation.is_none() {
        let unchanged =
            !full && state::cursor(conn, "membership")? == Some((membership.map(|m| m.id), None));
        membership_report = Some(MembershipReport {
            snapshot_id: membership.map(|m| m.id),
            skipped: unchanged.then_some("unchanged"),
            attached: 0,
            detached: 0,
        });
    }
    let diffs_membership = membership_report
        .as_ref()
        .is_some_and(|m| m.skipped.is_none());
    Ok(Setup {
        comps,
        membership,
        mode: options.mode,
        resumed: false,
        state: RunState {
            reports,
            membership_report,
            progress: RunProgress {
                run_id: 0,
                pass: Pass::Accounts,
                through: None,
                membership: diffs_membership,
                dead_letters: state::dead_letter_generation(conn)?,
                chunks: 0,
            },
        },
    })
}

/// An unfinished run, as it was recorded when it began.
fn resume(conn: &Connection, progress: RunProgress) -> anyhow::Result<Setup> {
    let run_id = progress.run_id;
    let (mode, membership_id) = state::run_row(conn, run_id)?;
    let mode = RunMode::from_recorded(&mode);
    let membership = match membership_id {
        Some(id) => Some(state::membership_ref(conn, id)?.with_context(|| {
            format!("run {run_id} is unfinished but its membership snapshot {id} is gone")
        })?),
        None => None,
    };
    let recorded = state::run_computations(conn, run_id)?;
    let mut comps = Vec::with_capacity(recorded.len());
    let mut reports = Vec::with_capacity(recorded.len());
    // In the order a new run takes them (the order of a user's traits in its identify).
    for c in snapshots::computations(conn)? {
        let Some(rc) = recorded.iter().find(|rc| rc.computation_id == c.id) else {
            continue;
        };
        let snapshot = state::snapshot_ref(conn, rc.snapshot_id)?.with_context(|| {
            format!(
                "run {run_id} is unfinished but its snapshot {} of {:?} is gone",
                rc.snapshot_id, c.key
            )
        })?;
        reports.push(ComputationReport {
            key: c.key.clone(),
            id: c.id.clone(),
            kind: c.kind.as_str(),
            scope: c.scope.as_str(),
            snapshot_id: Some(snapshot.id),
            mode: RunMode::from_recorded(&rc.mode),
            skipped: None,
            counts: Counts::default(),
        });
        comps.push(Comp {
            id: c.id.clone(),
            key: c.key.clone(),
            audience: c.kind == Kind::Audience,
            account: c.scope == Scope::Account,
            snapshot: Some(snapshot),
            resync: rc.resync,
            track: rc.track,
        });
    }
    let membership_report = progress.membership.then_some(MembershipReport {
        snapshot_id: membership_id,
        skipped: None,
        attached: 0,
        detached: 0,
    });
    Ok(Setup {
        comps,
        membership,
        mode,
        resumed: true,
        state: RunState {
            reports,
            membership_report,
            progress,
        },
    })
}

/// The merges of one pass: each computation's values against its planned base (the base
/// before this run: the pass reads only entities the run has not committed), and, in the
/// users' pass, the membership against the planned attachments.
fn jobs(
    conn: &Connection,
    setup: Fixed<'_>,
    run: &RunState,
    pass: Pass,
) -> anyhow::Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for (index, comp) in setup.comps.iter().enumerate() {
        if run.reports[index].skipped.is_some() {
            continue;
        }
        let snapshot = comp.snapshot.expect("a diffed computation has a snapshot");
        let (source, subject, lane) = match (pass, comp.account, setup.membership) {
            (Pass::Accounts, false, _) => continue,
            (Pass::Accounts, true, _) | (Pass::Users, false, _) => (
                Source::Snapshot {
                    snapshot_id: snapshot.id,
                    audience: comp.audience,
                },
                pass.as_str(),
                if pass == Pass::Accounts {
                    Scope::Account
                } else {
                    Scope::User
                },
            ),
            (Pass::Users, true, Some(m)) => (
                Source::Derived {
                    snapshot_id: snapshot.id,
                    membership_snapshot_id: m.id,
                    audience: comp.audience,
                },
                "user",
                Scope::User,
            ),
            (Pass::Users, true, None) => (Source::Empty, "user", Scope::User),
        };
        let base = state::base_source(conn, &comp.id, subject)?;
        jobs.push(Job::Values {
            spec: comp.spec(index, lane),
            source,
            base,
            computation_id: comp.id.clone(),
            key: comp.key.clone(),
            subject,
        });
    }
    if pass == Pass::Users && run.diffs_membership() {
        jobs.push(Job::Membership {
            snapshot_id: setup.membership.map(|m| m.id),
            full: setup.mode == RunMode::Full,
        });
    }
    Ok(jobs)
}

/// What a merge needs of its computation to classify its pairs, on whichever thread it runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct DiffSpec {
    /// Index into the run's computation list.
    pub index: usize,
    pub kind: Kind,
    pub resync: bool,
    pub track: bool,
    /// Whose lane its changes go in: an account's own values, or users'.
    pub lane: Scope,
}

impl DiffSpec {
    /// The change one merged pair makes, if any.
    fn change(&self, pair: state::Pair<'_>) -> Option<ChangeRow> {
        let (change, value) = diff::classify(self.kind, pair.old, pair.new, self.resync)?;
        Some(ChangeRow {
            lane: self.lane,
            entity_id: pair.entity_id.to_string(),
            computation: Some(self.index as i64),
            group_id: None,
            email: pair.email.map(str::to_string),
            change,
            value: value.map(str::to_string),
            track: self.track && change.tracks(),
            overrides: value != pair.new,
            event_at: None,
        })
    }
}

/// One merge of a pass.
#[derive(Debug, Clone)]
enum Job {
    /// A computation's values (or derived user values) against its planned state.
    Values {
        spec: DiffSpec,
        source: Source,
        base: Source,
        computation_id: String,
        key: String,
        subject: &'static str,
    },
    /// The membership snapshot (or none) against the planned attachments.
    Membership {
        snapshot_id: Option<i64>,
        /// `--full`: attach again what Intercom has not confirmed.
        full: bool,
    },
}

impl Job {
    fn statements<'c>(&self, conn: &'c Connection) -> rusqlite::Result<MergeStatements<'c>> {
        match self {
            Job::Values {
                source,
                base,
                computation_id,
                subject,
                ..
            } => MergeStatements::values(conn, *source, *base, computation_id, subject),
            Job::Membership { snapshot_id, .. } => MergeStatements::membership(conn, *snapshot_id),
        }
    }

    fn what(&self) -> String {
        match self {
            Job::Values { key, .. } => format!("cannot diff computation {key:?}"),
            Job::Membership { .. } => "cannot diff the account membership".to_string(),
        }
    }

    /// Whether dead-lettered changes of the job's computation wait to be re-planned (asked in
    /// each read transaction the merge runs in).
    fn replans(&self, conn: &Connection) -> rusqlite::Result<bool> {
        match self {
            Job::Values { computation_id, .. } => state::has_replans(conn, computation_id),
            Job::Membership { .. } => Ok(false),
        }
    }

    /// One step of the merge: `None` at the end, `Some(None)` for an entity without a change.
    /// With `replans`, a change is matched against its dead-lettered one in the same read
    /// transaction as the planned state it was diffed against ([`replan`]).
    fn step(
        &self,
        conn: &Connection,
        replans: bool,
        merge: &mut Merge<'_>,
    ) -> anyhow::Result<Option<Option<ChangeRow>>> {
        match self {
            Job::Values {
                spec,
                computation_id,
                subject,
                ..
            } => {
                let step = merge
                    .next_pair_unless_same(!spec.resync, |pair| spec.change(pair))?
                    .map(Option::flatten);
                if replans && let Some(Some(mut row)) = step {
                    replan(conn, computation_id, subject, &mut row)?;
                    return Ok(Some(Some(row)));
                }
                Ok(step)
            }
            Job::Membership { full, .. } => Ok(merge.next_member(|pair| {
                let change = match (pair.attached, pair.in_snapshot) {
                    (false, true) => Change::Attach,
                    (true, false) => Change::Detach,
                    // `--full` attaches again what Intercom has not confirmed; a confirmed
                    // attach would change nothing there.
                    (true, true) if *full && !pair.delivered => Change::Attach,
                    _ => return None,
                };
                Some(ChangeRow {
                    lane: Scope::User,
                    entity_id: pair.user_id.to_string(),
                    computation: None,
                    group_id: Some(pair.group_id.to_string()),
                    email: pair.email.map(str::to_string),
                    change,
                    value: None,
                    track: false,
                    overrides: false,
                    event_at: None,
                })
            })?),
        }
    }
}

/// Re-planning never invents events (SPEC section 6): a change that drives an entity to the
/// value a dead-lettered change was driving it to emits what that change emitted: no track
/// when it fired none (an initial sync's change, unless `track_on_initial_sync`), else its
/// track with the same event time (Intercom de-duplicates it if it was delivered). A change
/// to another value is a new change and is emitted as this run emits changes.
///
/// It is looked up by the merge, in the read transaction its planned state came from: a dead
/// letter writes its planned state and its `replans` row together, so a change diffed against
/// the state a dead letter put back always finds what that dead letter emitted.
fn replan(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    row: &mut ChangeRow,
) -> anyhow::Result<()> {
    let Some(replan) = state::replan(conn, computation_id, subject, &row.entity_id)? else {
        return Ok(());
    };
    if super::json_value(row.value.as_deref())? != super::json_value(replan.value.as_deref())? {
        return Ok(());
    }
    row.track = row.track && replan.track_at.is_some();
    row.event_at = replan.track_at;
    Ok(())
}

/// Most merges a pass runs on worker threads (one thread and read connection each).
pub(super) const MAX_WORKERS: usize = 64;

/// Page cache of a diff worker's connection (negative: KiB).
const WORKER_CACHE_KIB: i64 = -512;

/// Changes a worker sends at once: few enough to keep memory flat, enough to make the channel
/// cheap per change.
const WORKER_BATCH: usize = 1024;

type Batch = anyhow::Result<Vec<ChangeRow>>;

fn spawn_worker<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    path: &Path,
    job: Job,
    from: Position,
) -> anyhow::Result<Stream<'static>> {
    let (send, receive) = std::sync::mpsc::sync_channel::<Batch>(4);
    let path = path.to_path_buf();
    let name = match &job {
        Job::Values { key, .. } => format!("diff {key}"),
        Job::Membership { .. } => "diff membership".to_string(),
    };
    std::thread::Builder::new()
        .name(name)
        .spawn_scoped(scope, move || {
            if let Err(e) = worker(&path, &job, from, &send).with_context(|| job.what()) {
                let _ = send.send(Err(e));
            }
        })
        .context("cannot start a diff thread")?;
    Ok(Stream::Worker {
        receive,
        batch: Vec::new().into_iter(),
    })
}

/// Why a worker's read transaction ended.
enum Stop {
    /// The merge is done.
    End,
    /// Restart from here in a new read transaction.
    Restart(Position),
    /// The run stopped reading (it failed elsewhere or is done).
    Gone,
}

/// A worker: one merge, in read transactions of at most [`READ_FOR`] each, its changes sent in
/// batches. A batch the run cannot take at once is held outside any transaction.
fn worker(
    path: &Path,
    job: &Job,
    mut from: Position,
    send: &SyncSender<Batch>,
) -> anyhow::Result<()> {
    let conn = crate::store::open_reader(path)
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    // A merge reads each page once, in order: a small page cache loses nothing, and a run
    // holds one connection per merge, so memory grows with their number, not snapshot size.
    connection::set_cache_size(&conn, WORKER_CACHE_KIB)?;
    let mut batch = Vec::with_capacity(WORKER_BATCH);
    loop {
        connection::begin_deferred(&conn)?;
        let stop = read_some(&conn, job, &from, &mut batch, send);
        connection::commit(&conn)?;
        let stop = stop?;
        if matches!(stop, Stop::Gone) {
            return Ok(());
        }
        let end = matches!(stop, Stop::End);
        if (end && !batch.is_empty()) || batch.len() >= WORKER_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(WORKER_BATCH));
            if send.send(Ok(full)).is_err() {
                return Ok(());
            }
        }
        match stop {
            Stop::Restart(position) => from = position,
            Stop::End | Stop::Gone => return Ok(()),
        }
    }
}

fn read_some(
    conn: &Connection,
    job: &Job,
    from: &Position,
    batch: &mut Vec<ChangeRow>,
    send: &SyncSender<Batch>,
) -> anyhow::Result<Stop> {
    let replans = job.replans(conn)?;
    let mut statements = job.statements(conn)?;
    let mut merge = statements.open_from(from)?;
    let began = Instant::now();
    let mut steps = 0u32;
    let restart = |merge: &Merge<'_>| match merge.position() {
        Some(position) => Stop::Restart(position),
        None => Stop::End,
    };
    loop {
        let Some(step) = job.step(conn, replans, &mut merge)? else {
            return Ok(Stop::End);
        };
        if let Some(row) = step {
            batch.push(row);
            if batch.len() >= WORKER_BATCH {
                let full = std::mem::replace(batch, Vec::with_capacity(WORKER_BATCH));
                match send.try_send(Ok(full)) {
                    Ok(()) => {}
                    // The run is busy (or waits for delivery): hand the batch over outside the
                    // read transaction.
                    Err(TrySendError::Full(rows)) => {
                        *batch = rows?;
                        return Ok(restart(&merge));
                    }
                    Err(TrySendError::Disconnected(_)) => return Ok(Stop::Gone),
                }
            }
        }
        steps = steps.wrapping_add(1);
        if steps.is_multiple_of(1024) && began.elapsed() >= READ_FOR {
            return Ok(restart(&merge));
        }
    }
}

/// One sorted stream of changes: from a worker, or a merge on the run's connection.
enum Stream<'s> {
    Worker {
        receive: Receiver<Batch>,
        batch: std::vec::IntoIter<ChangeRow>,
    },
    Local {
        job: &'s Job,
        conn: &'s Connection,
        replans: bool,
        merge: Box<Merge<'s>>,
    },
}

impl Stream<'_> {
    /// The next change, in entity order.
    fn next_change(&mut self) -> anyhow::Result<Option<ChangeRow>> {
        loop {
            match self {
                Stream::Worker { receive, batch } => {
                    if let Some(row) = batch.next() {
                        return Ok(Some(row));
                    }
                    // A closed channel is a worker that finished (errors come as a batch).
                    match receive.recv() {
                        Ok(next) => *batch = next?.into_iter(),
                        Err(_) => return Ok(None),
                    }
                }
                Stream::Local {
                    job,
                    conn,
                    replans,
                    merge,
                } => {
                    match job
                        .step(conn, *replans, merge)
                        .with_context(|| job.what())?
                    {
                        None => return Ok(None),
                        Some(Some(row)) => return Ok(Some(row)),
                        Some(None) => {}
                    }
                }
            }
        }
    }
}

/// Sorted change streams merged k-way by entity: each entity's changes together, in stream
/// order (computations in run order, the membership last). No sort and no temp table: each
/// stream is already in entity order, and a stream without a change for a while costs nothing
/// but its cursor.
struct Merger<'s> {
    streams: Vec<Stream<'s>>,
    heads: Vec<Option<ChangeRow>>,
    /// The entity being gathered (reused: this runs once per entity of the run).
    entity: String,
}

impl<'s> Merger<'s> {
    fn new(mut streams: Vec<Stream<'s>>) -> anyhow::Result<Self> {
        let mut heads = Vec::with_capacity(streams.len());
        for stream in streams.iter_mut() {
            heads.push(stream.next_change()?);
        }
        Ok(Merger {
            streams,
            heads,
            entity: String::new(),
        })
    }

    /// The next entity's changes into `batch`; `false` at the end.
    fn next_entity(&mut self, batch: &mut Vec<ChangeRow>) -> anyhow::Result<bool> {
        batch.clear();
        // SQLite's BINARY collation orders like Rust's byte-wise str order.
        let Some(min) = self
            .heads
            .iter()
            .flatten()
            .map(|h| h.entity_id.as_str())
            .min()
        else {
            return Ok(false);
        };
        self.entity.clear();
        self.entity.push_str(min);
        for (head, stream) in self.heads.iter_mut().zip(self.streams.iter_mut()) {
            while head.as_ref().is_some_and(|h| h.entity_id == self.entity) {
                batch.push(head.take().expect("checked"));
                *head = stream.next_change()?;
            }
        }
        Ok(true)
    }
}

/// Emit entities until the chunk is full (`limits`) or the streams end. Returns whether they
/// ended, and the last entity emitted.
fn fill(
    merger: &mut Merger<'_>,
    emitter: &mut Emitter<'_, '_>,
    limits: Option<Chunking>,
) -> anyhow::Result<(bool, Option<String>)> {
    let began = Instant::now();
    let mut batch = Vec::new();
    let mut last: Option<String> = None;
    let mut entities = 0u32;
    loop {
        if !merger.next_entity(&mut batch)? {
            return Ok((true, last));
        }
        emitter.entity(&mut batch)?;
        match last.as_mut() {
            Some(l) => {
                l.clear();
                l.push_str(&batch[0].entity_id);
            }
            None => last = Some(batch[0].entity_id.clone()),
        }
        entities = entities.wrapping_add(1);
        if let Some(limits) = limits
            && (emitter.staged >= limits.rows
                || (entities.is_multiple_of(256) && began.elapsed() >= limits.read_for))
        {
            return Ok((false, last));
        }
    }
}

/// What one chunk counted, written with it.
pub(super) struct ChunkCounts {
    pub comps: Vec<Counts>,
    pub attached: u64,
    pub detached: u64,
}

impl ChunkCounts {
    pub fn new(comps: usize) -> Self {
        ChunkCounts {
            comps: vec![Counts::default(); comps],
            attached: 0,
            detached: 0,
        }
    }

    /// Count one entity's changes (as they are consumed: a chunk counts what it writes).
    pub fn count(&mut self, comps: &[Comp], rows: &[ChangeRow]) {
        for row in rows {
            match row.computation {
                Some(index) => {
                    let index = index as usize;
                    let counts = &mut self.comps[index];
                    if comps[index].account && row.lane == Scope::User {
                        counts.users += 1;
                    } else {
                        super::count(counts, row.change);
                    }
                }
                None if row.change == Change::Attach => self.attached += 1,
                None => self.detached += 1,
            }
        }
    }
}

/// Drives a run's passes chunk by chunk: waits for room in the outbox, reads a chunk, writes it.
struct Chunker<'c, 'p> {
    conn: &'c Connection,
    enqueue: bool,
    pace: Option<&'p Pace<'p>>,
    /// `None`: one chunk per pass (nothing is written).
    limits: Option<Chunking>,
    now: i64,
    /// What the chunks enqueued.
    messages: MessageCounts,
    chunks: u64,
    longest_write: Duration,
    /// The hold test hook has fired.
    held: bool,
    /// Stopped before the run's end (`Pace::stop`).
    stopped: bool,
}

impl Chunker<'_, '_> {
    /// One pass: chunks until `fill` says the streams ended; the users' pass (`last`) ends the
    /// run with its last chunk.
    #[allow(clippy::too_many_arguments)]
    fn pass(
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
            let membership_input = if comp.account {
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
