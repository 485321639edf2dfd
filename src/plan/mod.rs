//! The diff engine and Personas emitter: newest snapshots against planned state, to messages in the outbox.
//!
//! A run reads in read transactions: per computation, the newest snapshot and the planned
//! state (its base snapshot overlaid with overrides) are walked as sorted cursors
//! (`store::state::Merge`), each computation on a worker thread with its own read connection,
//! and the per-computation change streams, all in entity order, are merged k-way, so each
//! entity's changes arrive together without any sort: one identify carrying every changed
//! value, then its group calls, then one track per change. Enqueue stages the outbox rows and
//! the planned state they imply in temp tables while it reads and writes them chunk by chunk,
//! each chunk one short write transaction. `plan` and `sync --dry-run` write nothing. Memory
//! holds one entity's changes at a time (and a worker's batch), never a snapshot.
//!
//! One file per stage, in the order a change goes through them:
//!
//! - `run.rs`: the run: a new one chosen (or an unfinished one resumed), the merges of its two
//!   passes (accounts, then users) set up, each pass driven through the chunker.
//! - `workers.rs`: each merge (`Job`) on a worker thread with its own read connection, its read
//!   transaction refreshed as it goes, its changes sent in batches to the run's thread.
//! - `merge.rs`: the pass's change streams merged k-way by entity, each entity's changes handed
//!   together to the emitter until the chunk is full.
//! - `emit.rs`: the Personas emitter: an entity's changes coalesced into identify / group /
//!   track messages, staged with the planned state they imply (or printed, or counted).
//! - `estimate.rs`: the Intercom requests those messages will take ([`RequestEstimate`]).
//! - `chunk.rs`: the chunks: pacing against delivery, each chunk's write transaction (outbox,
//!   planned state, the run's progress), the test hooks.
//!
//! This file holds what the rest of the crate sees of a run (its options, output and report)
//! and the computation as every stage sees it (`Comp`).

pub use audience_sync_core::plan::{diff, message};

mod chunk;
mod emit;
mod estimate;
mod merge;
pub mod run;
mod workers;

pub use chunk::{ABORT_HOOK, CHUNK_ROWS, CHUNK_ROWS_HOOK, Chunking, HOLD_HOOK, Pace};
pub use estimate::{LOOKUP_BATCH, RequestEstimate};
pub use run::RunError;

use std::io::Write;

use crate::store::Connection;
use serde::Serialize;

use crate::domain::{Kind, Scope};
use crate::settings::PersonasSettings;
use crate::store::state::{Counts, RunProgress, SnapshotRef};
use message::ComputationRef;
use workers::DiffSpec;

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

    /// A mode as recorded (`runs.mode`, `run_computations.mode`); anything but `full` is
    /// incremental (the schema allows only the two).
    pub fn from_recorded(text: &str) -> RunMode {
        if text == "full" {
            RunMode::Full
        } else {
            RunMode::Incremental
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
    /// This was an unfinished run (a crash, a stop) resumed from its last committed chunk; the
    /// counts are what this call planned of it.
    pub resumed: bool,
    /// `false` when the run stopped before its end (`Pace::stop`): the next run resumes it.
    pub finished: bool,
    /// Chunks committed, and the longest chunk's write transaction.
    pub chunks: u64,
    /// A measurement, left out of the printed report (it differs run to run).
    #[serde(skip)]
    pub longest_write_ms: u64,
}

/// A computation as every stage of a run sees it.
struct Comp {
    id: String,
    key: String,
    kind: Kind,
    /// An account computation's values are its accounts' own (and, through the membership,
    /// their users'); a user computation's, its users'.
    scope: Scope,
    snapshot: Option<SnapshotRef>,
    /// Diffed with `--full` semantics (re-send unchanged values).
    resync: bool,
    /// Changes fire track events in this run.
    track: bool,
}

impl Comp {
    fn reference(&self) -> ComputationRef<'_> {
        ComputationRef {
            id: &self.id,
            key: &self.key,
            kind: self.kind,
        }
    }

    fn spec(&self, index: usize, lane: Scope) -> DiffSpec {
        DiffSpec {
            index,
            kind: self.kind,
            resync: self.resync,
            track: self.track,
            lane,
        }
    }
}

/// Make one run and emit its messages to `output` (with `Output::Enqueue`, committed chunk by
/// chunk, as fast as it can: `sync --no-deliver`, tests). See [`run::run`].
pub fn run(
    conn: &mut Connection,
    personas: &PersonasSettings,
    options: &RunOptions<'_>,
    output: Output<'_>,
) -> anyhow::Result<Report> {
    run::run(conn, personas, options, output, None, Chunking::default())
}

/// Make one run, enqueued at most `pace.max_pending` messages ahead of delivery (the daemon,
/// `sync`). See [`run::run`].
pub fn run_paced(
    conn: &mut Connection,
    personas: &PersonasSettings,
    options: &RunOptions<'_>,
    pace: &Pace<'_>,
) -> anyhow::Result<Report> {
    run::run(
        conn,
        personas,
        options,
        Output::Enqueue,
        Some(pace),
        Chunking::default(),
    )
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

#[cfg(test)]
mod tests;
