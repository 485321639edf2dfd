//! The diff engine and Personas emitter: newest snapshots against planned state, to messages in the outbox.
//!
//! A run reads in read transactions: per computation, the newest snapshot and the planned
//! state (its base snapshot overlaid with overrides) are walked as sorted cursors
//! (`store::state::Merge`), each computation on a worker thread with its own read connection,
//! and the per-computation change streams, all in entity order, are merged k-way, so each
//! entity's changes arrive together without any sort: one identify carrying every changed
//! value, then its group calls, then one track per change (`Emitter`, here). Enqueue stages the
//! outbox rows and the planned state they imply in temp tables while it reads and writes them
//! chunk by chunk, each chunk one short write transaction (`run.rs`). `plan` and
//! `sync --dry-run` write nothing. Memory holds one entity's changes at a time (and a worker's
//! batch), never a snapshot.

pub use audience_sync_core::plan::{diff, message};

pub mod run;

pub use run::{CHUNK_ROWS, Chunking, Pace, RunError};
use run::{ChunkCounts, DiffSpec};

use std::collections::HashSet;
use std::io::Write;

use anyhow::Context;
use rusqlite::Connection;
use serde::Serialize;
use serde_json::Value;

use crate::domain::{Kind, Scope};
use crate::settings::PersonasSettings;
use crate::store::outbox::{self, Effect, MembershipEffect};
use crate::store::state::{self, ChangeRow, Counts, SnapshotRef};
use diff::Change;
use message::{ComputationRef, User};

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
}

impl Comp {
    fn reference(&self) -> ComputationRef<'_> {
        ComputationRef {
            id: &self.id,
            key: &self.key,
            audience: self.audience,
        }
    }

    fn spec(&self, index: usize, lane: Scope) -> DiffSpec {
        DiffSpec {
            index,
            kind: self.kind(),
            resync: self.resync,
            track: self.track,
            lane,
        }
    }

    fn kind(&self) -> Kind {
        if self.audience {
            Kind::Audience
        } else {
            Kind::Trait
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
    /// What the current chunk counted, and the rows it staged.
    chunk: ChunkCounts,
    staged: usize,
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
        if rows[0].lane == Scope::Account {
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
        let attach = Change::Attach;
        let detach = Change::Detach;
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
        let known = crate::store::cache::contact_id(conn, entity_id)?.is_some();
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
                && crate::store::cache::company_id(conn, group_id)?.is_none()
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
                if crate::store::cache::company_id(conn, group_id)?.is_none() {
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
        let listed = crate::store::cache::data_attributes(conn)?;
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

impl<'a> Emitter<'a, '_> {
    fn comp(&self, row: &ChangeRow) -> &'a Comp {
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
        // The change's code, as message ids have always been derived from it.
        parts.push(row.change.code().to_string());
        parts.push(row.value.clone().unwrap_or_else(|| "null".into()));
        parts
    }

    fn entity(&mut self, rows: &mut [ChangeRow]) -> anyhow::Result<()> {
        self.chunk.count(self.comps, rows);
        self.estimate.entity(self.conn, rows)?;
        if matches!(self.output, Output::Plan) {
            return self.count_only(rows);
        }
        if rows[0].lane == Scope::Account {
            self.account(rows)
        } else {
            self.user(rows)
        }
    }

    /// `plan`: count the messages `account` / `user` would build, without building them (an
    /// initial sync of a million users would otherwise build a million bodies to count them).
    fn count_only(&mut self, rows: &[ChangeRow]) -> anyhow::Result<()> {
        for row in rows {
            if let Some(t) = row.value.as_deref() {
                serde_json::from_str::<serde::de::IgnoredAny>(t)
                    .with_context(|| format!("snapshot value {t:?} is not JSON"))?;
            }
        }
        if rows[0].lane == Scope::Account {
            self.counts.group_account += 1;
            return Ok(());
        }
        let attach = Change::Attach;
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
                subject: Scope::Account,
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
        if self.stage {
            self.staged += rows.len();
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
            let change = row.change;
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
            match row.change {
                Change::Attach => {}
                Change::Detach => {
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
                _ => {
                    let comp = self.comp(row);
                    let value = json_value(row.value.as_deref())?;
                    traits.push((comp.reference(), value.clone()));
                    effects.push(Effect::Value {
                        computation_id: comp.id.clone(),
                        subject: Scope::User,
                        entity_id: entity_id.to_string(),
                        value,
                        track_at: event_time.map(|(_, at)| at),
                    });
                    parts.extend(self.change_parts(row, comp.account));
                    timestamp = timestamp.max(comp.snapshot.map_or(0, |s| s.taken_at));
                }
            }
        }
        if !traits.is_empty() || !detached.is_empty() {
            let id = message::message_id(&parts.iter().map(String::as_str).collect::<Vec<_>>());
            let body = message::identify(space, user, &traits, &detached, timestamp, &id);
            self.emit(entity_id, &id, "identify", &body, &effects, false)?;
        }

        for row in rows.iter().filter(|r| r.change == Change::Attach) {
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
                self.staged += 1;
            }
        }

        if self.stage {
            self.staged += rows.len();
            for row in rows {
                match row.change {
                    Change::Attach | Change::Detach => state::stage_membership(
                        self.conn,
                        entity_id,
                        row.group_id.as_deref().unwrap_or_default(),
                        row.email.as_deref(),
                        row.change == Change::Attach,
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
                // As an `io::Error` (not wrapped in serde_json's): the command line must see a
                // closed standard output (a broken pipe) for what it is.
                serde_json::to_writer(&mut **out, body).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
                true
            }
            Output::Enqueue => {
                outbox::stage_values(
                    self.conn,
                    lane,
                    message_id,
                    kind,
                    body,
                    &serde_json::to_value(effects)?,
                    with_user,
                )?;
                self.staged += 1;
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
