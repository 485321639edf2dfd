//! The diff workers: each merge of a pass (a `Job`: a computation's values, or the membership,
//! against planned state) on a thread of its own with its own read connection, its changes sent
//! in batches to the run's thread, which merges the streams by entity (`merge.rs`).
//!
//! Readers refresh their read transaction at least every [`READ_FOR`] (and whenever the main
//! thread is not keeping up), restarting their merge exactly where it stood: a reader left on an
//! old snapshot would keep SQLite from checkpointing the WAL. This is exact because what a merge
//! reads either never changes (complete snapshots) or changes only behind the run (its own
//! chunks write planned state for entities every stream has already passed) or through a dead
//! letter (detected: the run then leaves its cursors alone, see `chunk::write_chunk`).
//!
//! A change a dead letter drove toward is re-planned here, in the read transaction its planned
//! state came from (`replan`).

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use crate::store::Connection;
use anyhow::Context;

use super::diff::{self, Change};
use super::emit::json_value;
use crate::domain::{Kind, Scope};
use crate::store::connection;
use crate::store::state::{self, ChangeRow, Merge, MergeStatements, Position, Source};

/// How long a diff reader keeps one read transaction at most.
pub const READ_FOR: Duration = Duration::from_secs(1);

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
pub(super) enum Job {
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
    pub(super) fn statements<'c>(
        &self,
        conn: &'c Connection,
    ) -> crate::store::Result<MergeStatements<'c>> {
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

    pub(super) fn what(&self) -> String {
        match self {
            Job::Values { key, .. } => format!("cannot diff computation {key:?}"),
            Job::Membership { .. } => "cannot diff the account membership".to_string(),
        }
    }

    /// Whether dead-lettered changes of the job's computation wait to be re-planned (asked in
    /// each read transaction the merge runs in).
    pub(super) fn replans(&self, conn: &Connection) -> crate::store::Result<bool> {
        match self {
            Job::Values { computation_id, .. } => state::has_replans(conn, computation_id),
            Job::Membership { .. } => Ok(false),
        }
    }

    /// One step of the merge: `None` at the end, `Some(None)` for an entity without a change.
    /// With `replans`, a change is matched against its dead-lettered one in the same read
    /// transaction as the planned state it was diffed against ([`replan`]).
    pub(super) fn step(
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
    if json_value(row.value.as_deref())? != json_value(replan.value.as_deref())? {
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

pub(super) type Batch = anyhow::Result<Vec<ChangeRow>>;

pub(super) fn spawn_worker<'scope>(
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
pub(super) enum Stream<'s> {
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
    pub(super) fn next_change(&mut self) -> anyhow::Result<Option<ChangeRow>> {
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
