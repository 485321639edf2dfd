//! The diff engine and Personas emitter: newest snapshots against planned state, to messages in the outbox.
//!
//! A run reads in read transactions: per computation, the newest snapshot and the planned
//! state (its base snapshot overlaid with overrides) are walked as sorted cursors
//! (`store::state::Merge`), each computation on a worker thread with its own read connection
//! (`Workers`), and the per-computation change streams, all in entity order, are merged k-way
//! (`merge_streams`), so each entity's changes arrive together without any sort: one identify
//! carrying every changed value, then its group calls, then one track per change. Enqueue
//! stages the outbox rows and the planned state they imply in temp tables while it reads, then
//! writes them, with the run record, in ONE short write transaction (see `run` for why that is
//! correct). `plan` and `sync --dry-run` write nothing. Memory holds one entity's changes at a
//! time, never a snapshot.

pub mod diff;
pub mod message;

use std::collections::HashSet;
use std::io::Write;

use anyhow::Context;
use rusqlite::{Connection, TransactionBehavior};
use serde::Serialize;
use serde_json::Value;
use tracing::debug;

use crate::error::CliError;
use crate::load::{Kind, Scope};
use crate::settings::PersonasSettings;
use crate::store::outbox::{self, Effect, MembershipEffect, NewMessage};
use crate::store::snapshots;
use crate::store::state::{self, ChangeRow, Counts, MergeStatements, SnapshotRef, Source};
use diff::Change;
use message::{ComputationRef, User};

/// Test hook: `AUDIENCE_SYNC_TEST_ABORT=before_commit|after_commit` aborts the process at that
/// point of an enqueueing run, so the crash tests can prove the outbox transaction atomic.
pub const ABORT_HOOK: &str = "AUDIENCE_SYNC_TEST_ABORT";

/// Test hook: `AUDIENCE_SYNC_TEST_HOLD=PATH` makes an enqueueing run, once its diff is done and
/// while its read transaction is still open, create `PATH.reading` and wait (up to 60 s) until
/// `PATH` exists, so tests can write to the database while a run reads.
pub const HOLD_HOOK: &str = "AUDIENCE_SYNC_TEST_HOLD";

/// Incremental (diff against planned state) or full (`--full`: re-send current values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    Incremental,
    Full,
}

impl RunMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Incremental => "incremental",
            RunMode::Full => "full",
        }
    }
}

/// What a run does with its messages.
pub enum Output<'a> {
    /// Write them to the outbox with their planned state, in one committed transaction.
    Enqueue,
    /// Write them as NDJSON and change nothing.
    DryRun(&'a mut dyn Write),
    /// Count them and change nothing.
    Plan,
}

/// Which run to make.
#[derive(Debug, Clone)]
pub struct RunOptions<'a> {
    pub mode: RunMode,
    /// Only this computation key (and no membership changes).
    pub computation: Option<&'a str>,
    /// Unix seconds: when the run starts (recorded; never used for message times).
    pub now: i64,
    /// `intercom.company_attribute_prefix`: the company attribute an account computation
    /// writes (for the request estimate).
    pub company_attribute_prefix: &'a str,
}

/// Messages of a run, by type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MessageCounts {
    pub identify: u64,
    pub track: u64,
    /// `group` calls with a userId (attach): two Intercom requests each.
    pub group_user: u64,
    /// An account's own `group` call (no userId): one request.
    pub group_account: u64,
}

impl MessageCounts {
    pub fn group(&self) -> u64 {
        self.group_user + self.group_account
    }

    pub fn total(&self) -> u64 {
        self.identify + self.track + self.group()
    }

    /// The Intercom requests the messages will take, in steady state (ids cached): one per
    /// identify and track, two per group with a user (upsert + attach), one per account group.
    pub fn requests(&self) -> u64 {
        self.identify + self.track + 2 * self.group_user + self.group_account
    }
}

/// The Intercom requests a run's messages will take (SPEC section 6, "Request floor"), as
/// delivery makes them: contacts without a cached id are looked up in bulk ([`LOOKUP_BATCH`] a
/// search) and created with every value in one request; a known contact is one write; a company
/// is upserted once a run (an account's own values, or the first attach of a company whose id is
/// not cached); one request per attach, detach, event and data attribute created. A user the
/// cache does not know is counted as new: if Intercom has it after all, its create is an update,
/// the same one request (only an exit for such a user costs one more than predicted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestEstimate {
    /// Bulk searches for the users below.
    pub lookups: u64,
    /// Users with a message that needs their contact and no cached contact id.
    pub unknown_users: u64,
    /// `POST /contacts` for new users (carrying every value).
    pub creates: u64,
    /// `PUT /contacts/{id}` for known users.
    pub updates: u64,
    /// `POST /events`.
    pub events: u64,
    /// `POST /companies`.
    pub companies: u64,
    /// `POST /contacts/{id}/companies`.
    pub attaches: u64,
    /// `DELETE /contacts/{id}/companies/{id}`, and `GET /companies` for a company whose id is
    /// not cached.
    pub detaches: u64,
    pub company_lookups: u64,
    /// `GET /data_attributes` (twice, once per model, when this database never listed them)
    /// and `POST /data_attributes` for attributes Intercom does not have yet.
    pub attribute_lists: u64,
    pub attributes: u64,
}

/// Users one bulk lookup asks about (`intercom::resolve::BATCH`).
pub const LOOKUP_BATCH: u64 = crate::intercom::resolve::BATCH as u64;

impl RequestEstimate {
    pub fn total(&self) -> u64 {
        self.lookups
            + self.creates
            + self.updates
            + self.events
            + self.companies
            + self.attaches
            + self.detaches
            + self.company_lookups
            + self.attribute_lists
            + self.attributes
    }
}

/// One computation's part of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ComputationReport {
    pub key: String,
    pub id: String,
    pub kind: &'static str,
    pub scope: &'static str,
    pub snapshot_id: Option<i64>,
    /// `full` for the initial sync or `--full`, else `incremental`.
    pub mode: RunMode,
    /// Why the computation was not diffed (`no complete snapshot`, `unchanged`), if it was not.
    pub skipped: Option<&'static str>,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct MembershipReport {
    pub snapshot_id: Option<i64>,
    pub skipped: Option<&'static str>,
    pub attached: u64,
    pub detached: u64,
}

/// What a run planned.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The recorded run (enqueue only).
    pub run_id: Option<i64>,
    pub mode: RunMode,
    pub computations: Vec<ComputationReport>,
    pub membership: Option<MembershipReport>,
    pub messages: MessageCounts,
    /// The Intercom requests the messages will take.
    pub requests: RequestEstimate,
}

struct Comp {
    id: String,
    key: String,
    audience: bool,
    account: bool,
    snapshot: Option<SnapshotRef>,
    /// Diffed with `--full` semantics (re-send unchanged values).
    resync: bool,
    /// Changes fire track events in this run.
    track: bool,
    /// Dead-lettered changes of this computation wait to be re-planned (`replans`).
    replans: bool,
}

impl Comp {
    fn reference(&self) -> ComputationRef<'_> {
        ComputationRef {
            id: &self.id,
            key: &self.key,
            audience: self.audience,
        }
    }

    fn spec(&self, index: usize, lane_kind: i64, derived: bool) -> DiffSpec {
        DiffSpec {
            index,
            kind: self.kind(),
            resync: self.resync,
            track: self.track,
            lane_kind,
            derived,
        }
    }

    fn kind(&self) -> diff::Kind {
        if self.audience {
            diff::Kind::Audience
        } else {
            diff::Kind::Trait
        }
    }
}

/// Make one run: diff every enabled computation (or the one asked for) and the membership
/// against planned state and emit the messages to `output`. Enqueue is one transaction.
pub fn run(
    conn: &mut Connection,
    personas: &PersonasSettings,
    options: &RunOptions<'_>,
    mut output: Output<'_>,
) -> anyhow::Result<Report> {
    let enqueue = matches!(output, Output::Enqueue);
    // The read transaction: every SELECT of the diff sees one snapshot of the database, and
    // nothing here takes the write lock (staging writes only the connection's temp database).
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let full = options.mode == RunMode::Full;

    let mut selected = Vec::new();
    let all = snapshots::computations(&tx)?;
    if let Some(key) = options.computation {
        let Some(c) = all.iter().find(|c| c.key == key) else {
            return Err(CliError::usage(format!("no computation with key {key:?}")).into());
        };
        if !c.enabled {
            return Err(CliError::usage(format!(
                "computation {key:?} is disabled (computations.enabled = 0)"
            ))
            .into());
        }
        selected.push(c.clone());
    } else {
        selected.extend(all.into_iter().filter(|c| c.enabled));
    }

    let membership = state::newest_membership(&tx)?;
    let mut comps = Vec::with_capacity(selected.len());
    let mut reports = Vec::with_capacity(selected.len());
    for c in &selected {
        let snapshot = state::newest_snapshot(&tx, &c.id)?;
        let initial = !state::ever_planned(&tx, &c.id)?;
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
            if state::cursor(&tx, &c.id)? == Some(inputs) {
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
            replans: state::has_replans(&tx, &c.id)?,
        });
    }

    // What the write transaction will check: a dead letter committed after this point may
    // have moved planned state back under the diff.
    let dead_letters = if enqueue {
        state::dead_letter_generation(&tx)?
    } else {
        0
    };
    if enqueue {
        state::create_staging(&tx)?;
    }

    let started = std::time::Instant::now();
    let mut membership_report = None;
    let mut emitter = Emitter {
        conn: &tx,
        personas,
        comps: &comps,
        membership,
        stage: enqueue,
        counts: MessageCounts::default(),
        estimate: Estimator::default(),
        output: &mut output,
    };

    // Each computation's merge runs on its own thread and read connection when the database is
    // a file (the diff is CPU-bound and reads two B-trees per computation: two cores halve it);
    // an in-memory database (unit tests) has no second connection, so its merges run here.
    let db_path = tx
        .path()
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // ── Accounts' own values: one group call per account, merged over account computations ──
        let mut specs = Vec::new();
        for (index, comp) in comps.iter().enumerate() {
            if comp.account && reports[index].skipped.is_none() {
                let snapshot = comp.snapshot.expect("skipped without a snapshot");
                let source = Source::Snapshot {
                    snapshot_id: snapshot.id,
                    audience: comp.audience,
                };
                let base = state::base_source(&tx, &comp.id, "account")?;
                specs.push((comp.spec(index, 0, false), source, base, "account"));
            }
        }
        let mut workers = Workers::new(scope, db_path.as_deref(), &tx, &comps, &specs)?;
        let mut streams = workers.streams()?;
        merge_streams(&mut streams, &comps, &mut reports, &mut None, |rows| {
            emitter.entity(rows)
        })?;
        drop(streams);
        drop(workers);

        // ── Users: every user computation, the derived user values of account computations and
        // the membership, merged by user ──
        let mut specs = Vec::new();
        for (index, comp) in comps.iter().enumerate() {
            if reports[index].skipped.is_some() {
                continue;
            }
            let snapshot = comp.snapshot.expect("skipped without a snapshot");
            let source = match (comp.account, membership) {
                (false, _) => Source::Snapshot {
                    snapshot_id: snapshot.id,
                    audience: comp.audience,
                },
                (true, Some(m)) => Source::Derived {
                    snapshot_id: snapshot.id,
                    membership_snapshot_id: m.id,
                    audience: comp.audience,
                },
                (true, None) => Source::Empty,
            };
            let base = state::base_source(&tx, &comp.id, "user")?;
            specs.push((comp.spec(index, 1, comp.account), source, base, "user"));
        }
        let mut workers = Workers::new(scope, db_path.as_deref(), &tx, &comps, &specs)?;
        let mut membership_statements = None;
        if options.computation.is_none() {
            let mut report = MembershipReport {
                snapshot_id: membership.map(|m| m.id),
                skipped: None,
                attached: 0,
                detached: 0,
            };
            if !full && state::cursor(&tx, "membership")? == Some((membership.map(|m| m.id), None))
            {
                report.skipped = Some("unchanged");
            } else {
                membership_statements =
                    Some(MergeStatements::membership(&tx, membership.map(|m| m.id))?);
            }
            membership_report = Some(report);
        }
        let mut streams = workers.streams()?;
        if let Some(st) = membership_statements.as_mut() {
            streams.push(Stream::Membership {
                merge: st.open()?,
                full,
            });
        }
        merge_streams(
            &mut streams,
            &comps,
            &mut reports,
            &mut membership_report,
            |rows| emitter.entity(rows),
        )?;
        Ok(())
    })?;
    let messages = emitter.counts;
    let requests = std::mem::take(&mut emitter.estimate).finish(
        &tx,
        &comps,
        options.company_attribute_prefix,
    )?;
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Diff done, messages built."
    );

    if !enqueue {
        // Plan and dry run: dropping the read transaction changes nothing.
        drop(tx);
        return Ok(Report {
            run_id: None,
            mode: options.mode,
            computations: reports,
            membership: membership_report,
            messages,
            requests,
        });
    }

    // End the read transaction (it wrote only the temp staging tables) and write everything in
    // ONE write transaction: the outbox, the planned state, the cursors and the run record.
    //
    // Why reading and writing in two transactions is correct: everything the diff read is
    // unchanged at the write, or its change is harmless or detected.
    // - Snapshots: a complete snapshot never changes; a snapshot that completes meanwhile is
    //   not the one this run diffed, and the cursors record the ids it did diff, so the next
    //   run diffs the newer one against the planned state written here.
    // - Planned state, attachments, event times, cursors, run records: only runs write them,
    //   and runs never overlap (the run lock), except delivery: `mark_delivered` writes only
    //   `delivered` (and deletes rows that are NULL on both sides, which reads as "no value"
    //   either way; the upsert below recreates a row the run plans); `mark_dead` moves planned
    //   state back and deletes the cursor of what it touched. If a message died between the two
    //   transactions (the dead-letter generation moved), this run's view of planned state may
    //   be stale for entities it did not change, so it does not advance the cursors of what it
    //   diffed: the next run diffs them again against the restored planned state. Values this
    //   run did change are planned and sent as the newest snapshot says, which is right
    //   whatever the old value was.
    // So the write lock is held only for copying the staged rows, not for the whole diff, and
    // an upstream writer (or delivery) is never kept waiting past its busy timeout by a run.
    hold_hook();
    tx.commit()
        .context("cannot end the run's read transaction")?;
    let write_started = std::time::Instant::now();
    // The write inserts the outbox rows into indexes keyed by random message ids: with the
    // default 2 MiB page cache it would spill and re-read pages many times over.
    conn.pragma_update(None, "cache_size", WRITE_CACHE_KIB)?;
    let result = write(
        conn,
        options,
        &comps,
        &reports,
        membership,
        membership_report.as_ref(),
        dead_letters,
        messages,
    );
    conn.pragma_update(None, "cache_size", DEFAULT_CACHE_KIB)?;
    let messages = result?;
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        write_ms = write_started.elapsed().as_millis() as u64,
        "Run committed."
    );
    Ok(Report {
        run_id: Some(messages.1),
        mode: options.mode,
        computations: reports,
        membership: membership_report,
        messages: messages.0,
        requests,
    })
}

/// Page cache of a run's write transaction (negative: KiB), and SQLite's default.
const WRITE_CACHE_KIB: i64 = -65536;
const DEFAULT_CACHE_KIB: i64 = -2000;

/// A run's write transaction: the staged outbox and planned state, the bases, cursors and run
/// record, committed at once. Returns what was enqueued and the run id.
#[allow(clippy::too_many_arguments)]
fn write(
    conn: &mut Connection,
    options: &RunOptions<'_>,
    comps: &[Comp],
    reports: &[ComputationReport],
    membership: Option<SnapshotRef>,
    membership_report: Option<&MembershipReport>,
    dead_letters: i64,
    messages: MessageCounts,
) -> anyhow::Result<(MessageCounts, i64)> {
    let started = std::time::Instant::now();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let stale = state::dead_letter_generation(&tx)? != dead_letters;
    let run_id = state::insert_run(&tx, options.mode.as_str(), options.now)?;
    let (identify, track, group_user, group_account) = outbox::enqueue_staged(
        &tx,
        run_id,
        options.now,
        (
            messages.identify,
            messages.track,
            messages.group_user,
            messages.group_account,
        ),
    )
    .context("cannot enqueue the run's messages")?;
    let messages = MessageCounts {
        identify,
        track,
        group_user,
        group_account,
    };
    let outbox_ms = started.elapsed().as_millis() as u64;
    state::commit_staged_state(&tx).context("cannot write the run's planned state")?;
    state::drop_staging(&tx)?;
    if stale {
        debug!("A message was dead-lettered while the run read: its cursors are not advanced.");
    }
    for (comp, report) in comps.iter().zip(reports) {
        if report.skipped.is_some() {
            continue;
        }
        state::insert_run_computation(
            &tx,
            run_id,
            &comp.id,
            report.snapshot_id,
            report.mode.as_str(),
            &report.counts,
        )?;
        let membership_input = if comp.account {
            membership.map(|m| m.id)
        } else {
            None
        };
        // Planned state is now the diffed snapshots plus the overrides just written: every
        // entity the run changed has its planned value staged above, and every entity it did
        // not change has the same value in the new snapshot as in planned state (else it would
        // have changed) or an override that keeps it. Also right when a message died since the
        // read: its override, written after the read, stays unless this run changed the entity
        // (and then the run's value is the one being sent).
        let snapshot = comp.snapshot.expect("a diffed computation has a snapshot");
        state::set_planned_base(&tx, &comp.id, snapshot.id, membership_input)?;
        if !stale {
            state::set_cursor(&tx, &comp.id, report.snapshot_id, membership_input)?;
        }
    }
    if let Some(report) = membership_report.filter(|r| r.skipped.is_none())
        && !stale
    {
        state::set_cursor(&tx, "membership", report.snapshot_id, None)?;
    }
    let (attached, detached) = membership_report.map_or((0, 0), |m| (m.attached, m.detached));
    state::finish_run_plan(
        &tx,
        run_id,
        options.now,
        membership.map(|m| m.id),
        attached,
        detached,
        messages.identify,
        messages.track,
        messages.group(),
    )?;
    let state_ms = started.elapsed().as_millis() as u64 - outbox_ms;
    abort_hook("before_commit");
    let commit = std::time::Instant::now();
    tx.commit().context("cannot commit the run's outbox")?;
    abort_hook("after_commit");
    debug!(
        outbox_ms,
        state_ms,
        commit_ms = commit.elapsed().as_millis() as u64,
        "Run written."
    );
    Ok((messages, run_id))
}

/// What a merge needs of its computation to classify its pairs, on whichever thread it runs.
#[derive(Debug, Clone, Copy)]
struct DiffSpec {
    /// Index into the run's computation list.
    index: usize,
    kind: diff::Kind,
    resync: bool,
    track: bool,
    /// 0: an account's own values; 1: user values.
    lane_kind: i64,
    /// Derived user values of an account computation (counted as `users`).
    derived: bool,
}

impl DiffSpec {
    /// The change one merged pair makes, if any.
    fn change(&self, pair: state::Pair<'_>) -> Option<ChangeRow> {
        let (change, value) = diff::classify(self.kind, pair.old, pair.new, self.resync)?;
        Some(ChangeRow {
            lane_kind: self.lane_kind,
            entity_id: pair.entity_id.to_string(),
            computation: Some(self.index as i64),
            group_id: None,
            email: pair.email.map(str::to_string),
            change: change.code(),
            value: value.map(str::to_string),
            track: self.track && change.tracks(),
            overrides: value != pair.new,
            event_at: None,
        })
    }

    /// Count a change this merge yielded in its computation's report.
    fn count(&self, counts: &mut Counts, row: &ChangeRow) {
        if self.derived {
            counts.users += 1;
        } else if let Some(change) = Change::from_code(row.change) {
            count(counts, change);
        }
    }
}

/// Most merges a pass runs on worker threads (one thread and read connection each).
const MAX_WORKERS: usize = 64;

/// Page cache of a diff worker's connection (negative: KiB).
const WORKER_CACHE_KIB: i64 = -512;

/// Changes a worker sends at once: few enough to keep memory flat, enough to make the channel
/// cheap per change.
const WORKER_BATCH: usize = 1024;

type Batch = anyhow::Result<Vec<ChangeRow>>;

/// The value merges of one pass of a run (the accounts' or the users'), each on a worker thread
/// with its own read connection, or, without a database file, prepared on the run's connection.
enum Workers<'c> {
    Threads(Vec<(DiffSpec, std::sync::mpsc::Receiver<Batch>)>),
    Local(Vec<(DiffSpec, MergeStatements<'c>)>),
}

impl<'c> Workers<'c> {
    fn new<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        path: Option<&std::path::Path>,
        conn: &'c Connection,
        comps: &[Comp],
        specs: &[(DiffSpec, Source, Source, &'static str)],
    ) -> anyhow::Result<Self> {
        // Beyond MAX_WORKERS computations the merges share the run's connection: threads and
        // connections (each with its page cache) stay bounded however many computations exist.
        let Some(path) = path.filter(|_| specs.len() <= MAX_WORKERS) else {
            let mut local = Vec::with_capacity(specs.len());
            for (spec, source, base, subject) in specs {
                let id = &comps[spec.index].id;
                let statements = MergeStatements::values(conn, *source, *base, id, subject)?;
                local.push((*spec, statements));
            }
            return Ok(Workers::Local(local));
        };
        let mut threads = Vec::with_capacity(specs.len());
        for &(spec, source, base, subject) in specs {
            let (send, receive) = std::sync::mpsc::sync_channel::<Batch>(4);
            let path = path.to_path_buf();
            let id = comps[spec.index].id.clone();
            let key = comps[spec.index].key.clone();
            std::thread::Builder::new()
                .name(format!("diff {key}"))
                .spawn_scoped(scope, move || {
                    let result = diff_worker(&path, spec, (source, base), &id, subject, &send)
                        .with_context(|| format!("cannot diff computation {key:?}"));
                    if let Err(e) = result {
                        let _ = send.send(Err(e));
                    }
                })
                .context("cannot start a diff thread")?;
            threads.push((spec, receive));
        }
        Ok(Workers::Threads(threads))
    }

    /// One stream per merge, in the order of `specs`.
    fn streams(&mut self) -> anyhow::Result<Vec<Stream<'_>>> {
        match self {
            Workers::Threads(threads) => Ok(threads
                .iter()
                .map(|(spec, receive)| Stream::Worker {
                    spec: *spec,
                    receive,
                    batch: Vec::new().into_iter(),
                })
                .collect()),
            Workers::Local(local) => local
                .iter_mut()
                .map(|(spec, statements)| {
                    Ok(Stream::Values {
                        spec: *spec,
                        merge: statements.open()?,
                    })
                })
                .collect(),
        }
    }
}

/// A worker: one computation's merge in its own read transaction, its changes sent in batches.
/// Reading in a second transaction is as safe as the run's own read (see `run`): complete
/// snapshots never change, only runs write planned state, and a dead letter committed after
/// the run read the dead-letter generation is caught at the write.
fn diff_worker(
    path: &std::path::Path,
    spec: DiffSpec,
    (source, base): (Source, Source),
    computation_id: &str,
    subject: &str,
    send: &std::sync::mpsc::SyncSender<Batch>,
) -> anyhow::Result<()> {
    let mut conn = crate::store::open_reader(path)
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    // A merge reads each page once, in order: a small page cache loses nothing, and a run
    // holds one connection per computation, so memory grows with their number, not with
    // snapshot size.
    conn.pragma_update(None, "cache_size", WORKER_CACHE_KIB)?;
    let read = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let mut statements = MergeStatements::values(&read, source, base, computation_id, subject)?;
    let mut merge = statements.open()?;
    let mut batch = Vec::with_capacity(WORKER_BATCH);
    while let Some(change) = merge.next_pair_unless_same(!spec.resync, |pair| spec.change(pair))? {
        let Some(row) = change.flatten() else {
            continue;
        };
        batch.push(row);
        if batch.len() == WORKER_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(WORKER_BATCH));
            if send.send(Ok(full)).is_err() {
                // The run stopped reading (it failed elsewhere): nothing left to do.
                return Ok(());
            }
        }
    }
    if !batch.is_empty() {
        let _ = send.send(Ok(batch));
    }
    Ok(())
}

/// One sorted stream of changes: a computation's values (or derived user values) against its
/// planned state, merged here or by a worker, or the membership against the planned
/// attachments.
enum Stream<'s> {
    Values {
        spec: DiffSpec,
        merge: state::Merge<'s>,
    },
    Worker {
        spec: DiffSpec,
        receive: &'s std::sync::mpsc::Receiver<Batch>,
        batch: std::vec::IntoIter<ChangeRow>,
    },
    Membership {
        merge: state::Merge<'s>,
        full: bool,
    },
}

impl Stream<'_> {
    /// The next change, in entity order, counting it in its report.
    fn next_change(
        &mut self,
        comps: &[Comp],
        reports: &mut [ComputationReport],
        membership: &mut Option<MembershipReport>,
    ) -> anyhow::Result<Option<ChangeRow>> {
        loop {
            let step = match self {
                Stream::Values { spec, merge } => merge
                    .next_pair_unless_same(!spec.resync, |pair| spec.change(pair))
                    .with_context(|| {
                        format!("cannot diff computation {:?}", comps[spec.index].key)
                    })?
                    .map(Option::flatten),
                Stream::Worker { receive, batch, .. } => match batch.next() {
                    Some(row) => Some(Some(row)),
                    // A closed channel is a worker that finished (errors come as a batch).
                    None => match receive.recv() {
                        Ok(next) => {
                            *batch = next?.into_iter();
                            Some(None)
                        }
                        Err(_) => None,
                    },
                },
                Stream::Membership { merge, full } => {
                    let report = membership
                        .as_mut()
                        .expect("a membership stream has a report");
                    let full = *full;
                    merge
                        .next_member(|pair| {
                            let change = match (pair.attached, pair.in_snapshot) {
                                (false, true) => Change::Attach,
                                (true, false) => Change::Detach,
                                // `--full` attaches again what Intercom has not
                                // confirmed; a confirmed attach would change nothing there.
                                (true, true) if full && !pair.delivered => Change::Attach,
                                _ => return None,
                            };
                            if change == Change::Attach {
                                report.attached += 1;
                            } else {
                                report.detached += 1;
                            }
                            Some(ChangeRow {
                                lane_kind: 1,
                                entity_id: pair.user_id.to_string(),
                                computation: None,
                                group_id: Some(pair.group_id.to_string()),
                                email: pair.email.map(str::to_string),
                                change: change.code(),
                                value: None,
                                track: false,
                                overrides: false,
                                event_at: None,
                            })
                        })
                        .context("cannot diff the account membership")?
                }
            };
            match step {
                None => return Ok(None),
                Some(Some(row)) => {
                    if let Stream::Values { spec, .. } | Stream::Worker { spec, .. } = self {
                        spec.count(&mut reports[spec.index].counts, &row);
                    }
                    return Ok(Some(row));
                }
                Some(None) => {}
            }
        }
    }
}

/// Merge sorted change streams k-way by entity: `f` gets each entity's changes together, in
/// stream order (computations in run order, the membership last), then the next entity. No
/// sort and no temp table: each stream is already in entity order, and a stream that has no
/// change for a while costs nothing but its cursor.
fn merge_streams(
    streams: &mut [Stream<'_>],
    comps: &[Comp],
    reports: &mut [ComputationReport],
    membership: &mut Option<MembershipReport>,
    mut f: impl FnMut(&mut [ChangeRow]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut heads = Vec::with_capacity(streams.len());
    for stream in streams.iter_mut() {
        heads.push(stream.next_change(comps, reports, membership)?);
    }
    let mut batch: Vec<ChangeRow> = Vec::new();
    let mut entity = String::new();
    loop {
        // SQLite's BINARY collation orders like Rust's byte-wise str order.
        let Some(min) = heads.iter().flatten().map(|h| h.entity_id.as_str()).min() else {
            return Ok(());
        };
        entity.clear();
        entity.push_str(min);
        batch.clear();
        for (head, stream) in heads.iter_mut().zip(streams.iter_mut()) {
            while head.as_ref().is_some_and(|h| h.entity_id == entity) {
                batch.push(head.take().expect("checked"));
                *head = stream.next_change(comps, reports, membership)?;
            }
        }
        f(&mut batch)?;
    }
}

fn hold_hook() {
    let Ok(path) = std::env::var(HOLD_HOOK) else {
        return;
    };
    let _ = std::fs::write(format!("{path}.reading"), b"");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::path::Path::new(&path).exists() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn abort_hook(point: &str) {
    if std::env::var(ABORT_HOOK).is_ok_and(|v| v == point) {
        eprintln!("{ABORT_HOOK}={point}: aborting");
        std::process::abort();
    }
}

fn count(counts: &mut Counts, change: Change) {
    match change {
        Change::Entered | Change::Appeared => counts.entered += 1,
        Change::Exited | Change::Gone => counts.exited += 1,
        Change::Changed => counts.changed += 1,
        Change::Resent => counts.resent += 1,
        Change::Attach | Change::Detach => {}
    }
}

fn json_value(text: Option<&str>) -> anyhow::Result<Value> {
    match text {
        None => Ok(Value::Null),
        Some(t) => {
            serde_json::from_str(t).with_context(|| format!("snapshot value {t:?} is not JSON"))
        }
    }
}

struct Emitter<'a, 'o> {
    conn: &'a Connection,
    personas: &'a PersonasSettings,
    comps: &'a [Comp],
    membership: Option<SnapshotRef>,
    /// Enqueue: stage messages and planned state (`store::state::create_staging`).
    stage: bool,
    counts: MessageCounts,
    estimate: Estimator,
    output: &'a mut Output<'o>,
}

/// Counts the requests a run's messages will take, entity by entity (see [`RequestEstimate`]).
#[derive(Default)]
struct Estimator {
    requests: RequestEstimate,
    /// Companies this run upserts (their first upsert caches the id for the rest).
    companies: HashSet<String>,
    /// Per computation index: it writes a user value / an account value (its data attributes).
    user_values: HashSet<usize>,
    account_values: HashSet<usize>,
}

/// A value that is written as such (not an exit's `false` or a clear).
fn writes_value(value: Option<&str>) -> bool {
    !matches!(value, None | Some("false") | Some("null"))
}

impl Estimator {
    fn entity(&mut self, conn: &Connection, rows: &[ChangeRow]) -> anyhow::Result<()> {
        let entity_id = rows[0].entity_id.as_str();
        if rows[0].lane_kind == 0 {
            // An account's own group call: one upsert of its company.
            self.requests.companies += 1;
            self.companies.insert(entity_id.to_string());
            for row in rows {
                if let Some(index) = row.computation {
                    self.account_values.insert(index as usize);
                }
            }
            return Ok(());
        }
        let attach = Change::Attach.code();
        let detach = Change::Detach.code();
        let values: Vec<&ChangeRow> = rows
            .iter()
            .filter(|r| r.change != attach && r.change != detach)
            .collect();
        let detaches = rows.iter().filter(|r| r.change == detach);
        let attaches: Vec<&ChangeRow> = rows.iter().filter(|r| r.change == attach).collect();
        let identify = !values.is_empty() || rows.iter().any(|r| r.change == detach);
        let creates = values.iter().any(|r| writes_value(r.value.as_deref()));
        for row in &values {
            if let Some(index) = row.computation
                && row.value.is_some()
            {
                self.user_values.insert(index as usize);
            }
        }
        let known = crate::store::intercom::contact_id(conn, entity_id)?.is_some();
        if !known && (identify || !attaches.is_empty()) {
            self.requests.unknown_users += 1;
        }
        // The identify: one write, unless it only exits a user Intercom has no contact for.
        let mut contact = known;
        if identify {
            if known {
                self.requests.updates += 1;
            } else if creates {
                self.requests.creates += 1;
                contact = true;
            }
        }
        for row in detaches {
            let group_id = row.group_id.as_deref().unwrap_or_default();
            self.requests.detaches += 1;
            if !self.companies.contains(group_id)
                && crate::store::intercom::company_id(conn, group_id)?.is_none()
            {
                self.requests.company_lookups += 1;
            }
        }
        for row in attaches {
            let group_id = row.group_id.as_deref().unwrap_or_default();
            if !contact {
                // Joining an account creates the contact.
                self.requests.creates += 1;
                contact = true;
            }
            if !self.companies.contains(group_id) {
                if crate::store::intercom::company_id(conn, group_id)?.is_none() {
                    self.requests.companies += 1;
                }
                self.companies.insert(group_id.to_string());
            }
            self.requests.attaches += 1;
        }
        self.requests.events += rows.iter().filter(|r| r.track).count() as u64;
        Ok(())
    }

    /// The run's totals: lookups for the unknown users, the data attributes its values need.
    fn finish(
        mut self,
        conn: &Connection,
        comps: &[Comp],
        company_prefix: &str,
    ) -> anyhow::Result<RequestEstimate> {
        self.requests.lookups = self.requests.unknown_users.div_ceil(LOOKUP_BATCH);
        let listed = crate::store::intercom::data_attributes(conn)?;
        if listed.is_none() && !(self.user_values.is_empty() && self.account_values.is_empty()) {
            self.requests.attribute_lists = 2;
        }
        let has = |model: &str, name: &str| {
            listed
                .as_ref()
                .is_some_and(|rows| rows.iter().any(|(m, n, _)| m == model && n == name))
        };
        let mut needed: Vec<(&str, String)> = Vec::new();
        for index in &self.user_values {
            needed.push(("contact", comps[*index].key.clone()));
        }
        for index in &self.account_values {
            needed.push(("company", format!("{company_prefix}{}", comps[*index].key)));
        }
        self.requests.attributes = needed.iter().filter(|(m, n)| !has(m, n)).count() as u64;
        Ok(self.requests)
    }
}

impl Emitter<'_, '_> {
    fn comp(&self, row: &ChangeRow) -> &Comp {
        &self.comps[row.computation.expect("a computation change") as usize]
    }

    /// The id parts that name a computation change: computation, snapshot (and membership
    /// snapshot for a derived user value), change and value.
    fn change_parts(&self, row: &ChangeRow, derived: bool) -> Vec<String> {
        let comp = self.comp(row);
        let mut parts = vec![
            comp.id.clone(),
            comp.snapshot.map(|s| s.id).unwrap_or_default().to_string(),
        ];
        if derived {
            parts.push(self.membership.map(|m| m.id).unwrap_or(-1).to_string());
        }
        parts.push(row.change.to_string());
        parts.push(row.value.clone().unwrap_or_else(|| "null".into()));
        parts
    }

    fn entity(&mut self, rows: &mut [ChangeRow]) -> anyhow::Result<()> {
        self.replan(rows)?;
        self.estimate.entity(self.conn, rows)?;
        if matches!(self.output, Output::Plan) {
            return self.count_only(rows);
        }
        if rows[0].lane_kind == 0 {
            self.account(rows)
        } else {
            self.user(rows)
        }
    }

    /// Re-planning never invents events (SPEC section 6): a change that drives an entity to the
    /// value a dead-lettered change was driving it to emits what that change emitted: no track
    /// when it fired none (an initial sync's change, unless `track_on_initial_sync`), else its
    /// track with the same event time (Intercom de-duplicates it if it was delivered). A change
    /// to another value is a new change and is emitted as this run emits changes.
    fn replan(&self, rows: &mut [ChangeRow]) -> anyhow::Result<()> {
        for row in rows.iter_mut() {
            let Some(index) = row.computation else {
                continue;
            };
            let comp = &self.comps[index as usize];
            if !comp.replans {
                continue;
            }
            let subject = if row.lane_kind == 0 {
                "account"
            } else {
                "user"
            };
            let Some(replan) = state::replan(self.conn, &comp.id, subject, &row.entity_id)? else {
                continue;
            };
            if json_value(row.value.as_deref())? != json_value(replan.value.as_deref())? {
                continue;
            }
            row.track = row.track && replan.track_at.is_some();
            row.event_at = replan.track_at;
        }
        Ok(())
    }

    /// `plan`: count the messages `account` / `user` would build, without building them (an
    /// initial sync of a million users would otherwise build a million bodies to count them).
    fn count_only(&mut self, rows: &[ChangeRow]) -> anyhow::Result<()> {
        for row in rows {
            if Change::from_code(row.change).is_none() {
                anyhow::bail!("unknown change code {}", row.change);
            }
            if let Some(t) = row.value.as_deref() {
                serde_json::from_str::<serde::de::IgnoredAny>(t)
                    .with_context(|| format!("snapshot value {t:?} is not JSON"))?;
            }
        }
        if rows[0].lane_kind == 0 {
            self.counts.group_account += 1;
            return Ok(());
        }
        let attach = Change::Attach.code();
        if rows.iter().any(|r| r.change != attach) {
            self.counts.identify += 1;
        }
        self.counts.group_user += rows.iter().filter(|r| r.change == attach).count() as u64;
        self.counts.track += rows.iter().filter(|r| r.track).count() as u64;
        Ok(())
    }

    /// An account's own changed values: one group call, no userId.
    fn account(&mut self, rows: &[ChangeRow]) -> anyhow::Result<()> {
        let group_id = rows[0].entity_id.as_str();
        let mut traits = Vec::with_capacity(rows.len());
        let mut effects = Vec::with_capacity(rows.len());
        let mut parts = vec!["group".to_string(), group_id.to_string()];
        let mut timestamp = i64::MIN;
        for row in rows {
            let comp = self.comp(row);
            let value = json_value(row.value.as_deref())?;
            traits.push((comp.reference(), value.clone()));
            effects.push(Effect::Value {
                computation_id: comp.id.clone(),
                subject: "account".into(),
                entity_id: group_id.to_string(),
                value,
                // An account's own group call fires no event.
                track_at: None,
            });
            parts.extend(self.change_parts(row, false));
            timestamp = timestamp.max(comp.snapshot.map_or(0, |s| s.taken_at));
            if self.stage {
                state::stage_value(
                    self.conn,
                    &comp.id,
                    "account",
                    group_id,
                    None,
                    row.value.as_deref(),
                    row.overrides,
                )?;
            }
        }
        let id = message::message_id(&parts.iter().map(String::as_str).collect::<Vec<_>>());
        let body =
            message::group_account(&self.personas.space_id, group_id, &traits, timestamp, &id);
        let lane = format!("account:{group_id}");
        self.emit(&lane, &id, "group", &body, &effects, false)
    }

    /// A user's changes: one identify (every changed value, every account left), then one group
    /// per account joined, then one track per change that tracks.
    fn user(&mut self, rows: &[ChangeRow]) -> anyhow::Result<()> {
        let entity_id = rows[0].entity_id.as_str();
        let email = rows.iter().find_map(|r| r.email.as_deref());
        let user = User { entity_id, email };
        let space = self.personas.space_id.as_str();
        let membership_taken = self.membership.map_or(0, |m| m.taken_at);

        // Event times first: each value effect keeps the time of the track its change fires, so
        // a dead letter can re-plan it with that time (`replans`). Per event name (at most
        // three): the last time used for this user in this run.
        let mut last_times: Vec<(&str, i64)> = Vec::new();
        let mut event_times: Vec<Option<(&str, i64)>> = Vec::with_capacity(rows.len());
        for row in rows.iter() {
            if !row.track {
                event_times.push(None);
                continue;
            }
            let comp = self.comp(row);
            let change = Change::from_code(row.change)
                .ok_or_else(|| anyhow::anyhow!("unknown change code {}", row.change))?;
            let event = match change {
                Change::Entered => self.personas.audience_entered_event.as_str(),
                Change::Exited => self.personas.audience_exited_event.as_str(),
                _ => self.personas.trait_computed_event.as_str(),
            };
            let seen = last_times.iter().position(|(name, _)| *name == event);
            let last = match seen {
                Some(i) => Some(last_times[i].1),
                None => state::last_event_time(self.conn, entity_id, event)?,
            };
            // A re-planned change keeps its time (already below `last`: nothing moves).
            let at = row.event_at.unwrap_or_else(|| {
                message::event_time(comp.snapshot.map_or(0, |s| s.taken_at), last)
            });
            let newest = last.map_or(at, |l| l.max(at));
            match seen {
                Some(i) => last_times[i].1 = newest,
                None => last_times.push((event, newest)),
            }
            event_times.push(Some((event, at)));
        }

        let mut traits = Vec::new();
        let mut detached = Vec::new();
        let mut effects = Vec::new();
        let mut parts = vec!["identify".to_string(), entity_id.to_string()];
        let mut timestamp = i64::MIN;
        for (row, event_time) in rows.iter().zip(&event_times) {
            match Change::from_code(row.change) {
                Some(Change::Attach) => {}
                Some(Change::Detach) => {
                    let group_id = row.group_id.as_deref().unwrap_or_default();
                    detached.push(group_id);
                    effects.push(Effect::Membership {
                        membership: MembershipEffect {
                            group_id: group_id.to_string(),
                            user_id: entity_id.to_string(),
                            attached: false,
                        },
                    });
                    parts.extend([
                        "detach".to_string(),
                        group_id.to_string(),
                        self.membership.map(|m| m.id).unwrap_or(-1).to_string(),
                    ]);
                    timestamp = timestamp.max(membership_taken);
                }
                Some(_) => {
                    let comp = self.comp(row);
                    let value = json_value(row.value.as_deref())?;
                    traits.push((comp.reference(), value.clone()));
                    effects.push(Effect::Value {
                        computation_id: comp.id.clone(),
                        subject: "user".into(),
                        entity_id: entity_id.to_string(),
                        value,
                        track_at: event_time.map(|(_, at)| at),
                    });
                    parts.extend(self.change_parts(row, comp.account));
                    timestamp = timestamp.max(comp.snapshot.map_or(0, |s| s.taken_at));
                }
                None => anyhow::bail!("unknown change code {}", row.change),
            }
        }
        if !traits.is_empty() || !detached.is_empty() {
            let id = message::message_id(&parts.iter().map(String::as_str).collect::<Vec<_>>());
            let body = message::identify(space, user, &traits, &detached, timestamp, &id);
            self.emit(entity_id, &id, "identify", &body, &effects, false)?;
        }

        for row in rows.iter().filter(|r| r.change == Change::Attach.code()) {
            let group_id = row.group_id.as_deref().unwrap_or_default();
            let m = self.membership.map(|m| m.id).unwrap_or(-1).to_string();
            let id = message::message_id(&["attach", entity_id, group_id, &m]);
            let body = message::group_attach(space, user, group_id, membership_taken, &id);
            let effects = [Effect::Membership {
                membership: MembershipEffect {
                    group_id: group_id.to_string(),
                    user_id: entity_id.to_string(),
                    attached: true,
                },
            }];
            self.emit(entity_id, &id, "group", &body, &effects, true)?;
        }

        for (row, event_time) in rows.iter().zip(&event_times) {
            let Some((event, at)) = *event_time else {
                continue;
            };
            let comp = self.comp(row);
            let mut id_parts = vec![
                "track".to_string(),
                entity_id.to_string(),
                event.to_string(),
            ];
            id_parts.extend(self.change_parts(row, comp.account));
            let id = message::message_id(&id_parts.iter().map(String::as_str).collect::<Vec<_>>());
            let value = json_value(row.value.as_deref())?;
            let body = message::track(space, user, comp.reference(), event, value, at, &id);
            self.emit(entity_id, &id, "track", &body, &[], false)?;
        }
        if self.stage {
            // One row per event name: the last time used for this user.
            for (event, at) in &last_times {
                state::stage_event_time(self.conn, entity_id, event, *at)?;
            }
        }

        if self.stage {
            for row in rows {
                match Change::from_code(row.change) {
                    Some(Change::Attach) | Some(Change::Detach) => state::stage_membership(
                        self.conn,
                        entity_id,
                        row.group_id.as_deref().unwrap_or_default(),
                        row.email.as_deref(),
                        row.change == Change::Attach.code(),
                    )?,
                    _ => state::stage_value(
                        self.conn,
                        &self.comp(row).id,
                        "user",
                        entity_id,
                        row.email.as_deref(),
                        row.value.as_deref(),
                        row.overrides,
                    )?,
                }
            }
        }
        Ok(())
    }

    fn emit(
        &mut self,
        lane: &str,
        message_id: &str,
        kind: &str,
        body: &Value,
        effects: &[Effect],
        with_user: bool,
    ) -> anyhow::Result<()> {
        let counted = match self.output {
            Output::Plan => true,
            Output::DryRun(out) => {
                serde_json::to_writer(&mut **out, body)?;
                out.write_all(b"\n")?;
                true
            }
            Output::Enqueue => {
                outbox::stage(
                    self.conn,
                    &NewMessage {
                        lane,
                        message_id,
                        kind,
                        body: &body.to_string(),
                        effects: &serde_json::to_string(effects)?,
                    },
                    with_user,
                )?;
                true
            }
        };
        if counted {
            match kind {
                "identify" => self.counts.identify += 1,
                "track" => self.counts.track += 1,
                _ if with_user => self.counts.group_user += 1,
                _ => self.counts.group_account += 1,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
