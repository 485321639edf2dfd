//! A run (SPEC section 9): a new one chosen (or an unfinished one resumed), the merges of its
//! passes set up, and each pass driven chunk by chunk.
//!
//! A run walks its computations in entity order in two passes — accounts' own values first,
//! then users (their values, account computations' values derived through the membership, the
//! membership itself). Each merge of a pass (a `Job`, see `jobs`) runs on a worker thread
//! (`workers.rs`) when the database is a file and the pass has at most `MAX_WORKERS` of them,
//! else on the run's connection; the pass's change streams are merged by entity (`merge.rs`)
//! into the emitter (`emit.rs`), and the chunker (`chunk.rs`) commits what the emitter staged,
//! chunk by chunk. Dry runs and plans read the whole run in one read transaction and write
//! nothing.
//!
//! Planned state while a run is unfinished is split at its progress (`state::planned_source`):
//! what the run has committed is planned from its snapshots, the rest still from the old base,
//! and the last chunk moves the bases. A crash resumes the run from its last committed chunk with
//! the snapshots it started with (`resume`): nothing is emitted twice (the committed chunks are
//! behind the progress) and nothing is lost (the uncommitted one is planned again).

use std::time::{Duration, Instant};

use crate::store::Connection;
use anyhow::Context;
use tracing::{debug, info};

use super::chunk::Chunker;
use super::emit::ChunkCounts;
use super::emit::Emitter;
use super::estimate::Estimator;
use super::merge::{Merger, fill};
use super::workers::{Job, MAX_WORKERS, Stream, spawn_worker};
use super::{
    Comp, ComputationReport, Fixed, MembershipReport, MessageCounts, Output, Report, RunMode,
    RunOptions, RunState,
};
use crate::domain::{Kind, Scope};
use crate::settings::PersonasSettings;
use crate::store::connection;
use crate::store::outbox;
use crate::store::snapshots;
use crate::store::state::{self, Counts, Pass, Position, RunProgress, SnapshotRef, Source};

// At their old paths (`plan::run::…`), beside the `run` that takes them.
pub use super::chunk::{CHUNK_READ_FOR, CHUNK_ROWS, Chunking, Pace};
pub use super::workers::READ_FOR;

/// What a run is made of: its computations, the membership, where it stands.
struct Setup {
    comps: Vec<Comp>,
    membership: Option<SnapshotRef>,
    mode: RunMode,
    resumed: bool,
    state: RunState,
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
        let _ = outbox::drop_staging(conn);
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
        outbox::create_staging(conn)?;
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
                            .collect::<crate::store::Result<Vec<_>>>()?;
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
            kind: c.kind,
            scope: c.scope,
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
            kind: c.kind,
            scope: c.scope,
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
        let audience = comp.kind == Kind::Audience;
        let (source, subject, lane) = match (pass, comp.scope, setup.membership) {
            (Pass::Accounts, Scope::User, _) => continue,
            (Pass::Accounts, Scope::Account, _) | (Pass::Users, Scope::User, _) => (
                Source::Snapshot {
                    snapshot_id: snapshot.id,
                    audience,
                },
                pass.as_str(),
                if pass == Pass::Accounts {
                    Scope::Account
                } else {
                    Scope::User
                },
            ),
            (Pass::Users, Scope::Account, Some(m)) => (
                Source::Derived {
                    snapshot_id: snapshot.id,
                    membership_snapshot_id: m.id,
                    audience,
                },
                "user",
                Scope::User,
            ),
            (Pass::Users, Scope::Account, None) => (Source::Empty, "user", Scope::User),
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
