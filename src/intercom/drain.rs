//! The drain loop: deliver the outbox to Intercom, concurrently across lanes (users), strictly in
//! order within a lane, within the rate limit, until it is empty or delivery is told to stop.
//!
//! One coordinator owns the outbox: it pages pending messages in `seq` order, starts a lane's
//! first unfinished message when the lane is free and the message is due, and records each
//! result: `mark_delivered` after Intercom confirmed every request, `schedule_retry` (one more
//! attempt, the error, when to try again) for a failure that may be the message's own,
//! `schedule_transient` (no attempt; back-off from how long it has been failing) for 408 / 5xx /
//! timeouts / no connection, `mark_dead` for a failure for good, after `intercom.max_attempts`,
//! or after failing transiently for `intercom.retry_for_secs`. A lane whose message waits for a
//! retry blocks only itself.
//!
//! Outages: the coordinator reports every end to the [`Breaker`]. When transient failures across
//! lanes show Intercom is down, it starts no message but one probe at a time (1 s, then
//! doubling up to `intercom.outage_probe_secs`); the log says so once, `/healthz` answers 503,
//! `status` shows it (table `intercom_outage`). The first answer resumes every lane at once, and
//! the failures of the outage are forgotten (they were Intercom's, not the messages').
//! A message Intercom kept answering 429 is throttled, not failed: it is started again (the rate
//! limiter holds it until the window resets) with no attempt counted, so throttling never
//! dead-letters a message, however long the budget is shared.
//!
//! Crash safety: nothing is marked delivered before Intercom answered; a message in flight when
//! the process dies is simply pending, and is sent again by the next drain (safe, see
//! `executor/`).
//!
//! Stopping: when `shutdown` fires, no new message starts, requests already sent finish, and a
//! message between two of its requests stops there (it stays pending, no attempt counted).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::Connection;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::client::Client;
use super::disposition::{self, Disposition};
use super::executor::{Executor, Outcome, contact_key};
use super::outage::{Breaker, Transition};
use super::ratelimit::RateLimiter;
use super::resolve;
use crate::domain::Lane;
use crate::http;
use crate::metrics::{self, ProbeLabels, ProbeResult, metrics};
use crate::segment::Message;
use crate::settings::IntercomSettings;
use crate::store::{self, budget, cache, outbox};

/// How many pending messages the coordinator holds in memory at most (memory does not grow with
/// the outbox).
const BUFFER: usize = 2048;

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryReport {
    pub delivered: u64,
    pub dead: u64,
    /// Failed attempts that were scheduled for a retry.
    pub retries: u64,
    /// Messages still pending when the drain ended.
    pub pending: u64,
    /// Ended by the shutdown token before the outbox was empty.
    pub interrupted: bool,
    /// Why delivery stopped (a token Intercom refuses), if it did.
    pub stopped: Option<String>,
    /// Requests sent to Intercom.
    pub requests: u64,
    /// Of which answered 429.
    pub rate_limited: u64,
    /// Of the requests, bulk contact lookups (`POST /contacts/search` with `IN`).
    pub lookups: u64,
    /// Times delivery paused because Intercom was unreachable, and for how long in all.
    pub outages: u64,
    pub paused_ms: u64,
    pub elapsed_ms: u64,
}

/// Where a drain reports its progress (a progress bar, log lines, nothing).
pub trait Progress: Send + Sync {
    /// `done` messages finished (delivered or dead) of `total` known so far.
    fn update(&self, done: u64, total: u64);
}

/// No progress output.
pub struct Quiet;

impl Progress for Quiet {
    fn update(&self, _done: u64, _total: u64) {}
}

/// One pending message the coordinator holds.
struct Held {
    message: outbox::OutboxMessage,
    /// Not before this instant (a scheduled retry).
    due: Option<Instant>,
    running: bool,
    /// The user whose contact id a bulk lookup is finding for this message (it waits for it).
    lookup: Option<String>,
}

/// Bulk contact lookups of one drain (`resolve.rs`): users of pending messages whose Intercom id
/// is not cached are asked about [`resolve::BATCH`] at a time before their messages start.
#[derive(Default)]
struct Lookups {
    /// Users asked about (or to be) in this drain.
    asked: HashSet<String>,
    /// Users whose lookup has not answered yet: their messages wait.
    waiting: HashSet<String>,
    /// Users to ask about, by field.
    queued: Vec<(resolve::Field, String)>,
    /// Users whose lookup failed (no answer), and how often: asked again up to
    /// [`LOOKUP_TRIES`] times, then left to their messages' own searches.
    tries: HashMap<String, u8>,
    tasks: JoinSet<(resolve::Field, resolve::Found)>,
}

/// Lookups in flight at once.
const LOOKUPS_IN_FLIGHT: usize = 2;
/// Lookups of one user that may fail before its message searches on its own.
const LOOKUP_TRIES: u8 = 3;

impl Lookups {
    /// The user `message` needs a contact id for, when a bulk lookup should find it first: an
    /// identify or an attach (a track addresses its contact by `user_id` / email, and an
    /// account's own group call has none) whose id is not cached.
    fn needs(
        conn: &Connection,
        message: &outbox::OutboxMessage,
    ) -> Option<(resolve::Field, String)> {
        let parsed = message.message.as_ref().ok()?;
        let attach = matches!(parsed, Message::Group(group) if group.common.user_id.is_some());
        if !matches!(parsed, Message::Identify(_)) && !attach {
            return None;
        }
        let key = contact_key(parsed)?;
        if cache::contact_id(conn, &key).ok()?.is_some() {
            return None;
        }
        let field = if parsed.common().user_id.is_some() {
            resolve::Field::ExternalId
        } else {
            resolve::Field::Email
        };
        Some((field, key))
    }

    /// Note a message's user; returns the key the message waits for.
    fn note(&mut self, conn: &Connection, message: &outbox::OutboxMessage) -> Option<String> {
        let (field, key) = Self::needs(conn, message)?;
        if self.asked.insert(key.clone()) {
            self.waiting.insert(key.clone());
            self.queued.push((field, key.clone()));
        }
        self.waiting.contains(&key).then_some(key)
    }

    /// Start lookups of what is queued, [`LOOKUPS_IN_FLIGHT`] at most.
    fn start(&mut self, client: &Client, cancel: &CancellationToken) {
        while self.tasks.len() < LOOKUPS_IN_FLIGHT && !self.queued.is_empty() {
            let field = self.queued[0].0;
            let mut keys = Vec::with_capacity(resolve::BATCH);
            self.queued.retain(|(f, key)| {
                if *f == field && keys.len() < resolve::BATCH {
                    keys.push(key.clone());
                    false
                } else {
                    true
                }
            });
            let client = client.clone();
            let cancel = cancel.clone();
            self.tasks.spawn(async move {
                (field, resolve::lookup(&client, field, keys, &cancel).await)
            });
        }
    }

    /// What a lookup found: ids into the cache, absent users to the executor; their messages
    /// may start.
    fn finished(
        &mut self,
        db: &Mutex<Connection>,
        executor: &Executor,
        field: resolve::Field,
        found: resolve::Found,
    ) -> anyhow::Result<()> {
        // No answer: ask again in a later batch (the messages keep waiting), a few times.
        for key in found.failed {
            let tries = self.tries.entry(key.clone()).or_insert(0);
            *tries += 1;
            if *tries < LOOKUP_TRIES {
                self.queued.push((field, key));
            } else {
                self.tries.remove(&key);
                self.waiting.remove(&key);
            }
        }
        {
            let conn = lock(db);
            for (key, id) in &found.ids {
                cache::set_contact_id(&conn, key, id)?;
            }
        }
        for key in found
            .ids
            .iter()
            .map(|(k, _)| k)
            .chain(&found.absent)
            .chain(&found.unresolved)
        {
            self.waiting.remove(key);
            self.tries.remove(key);
        }
        executor.mark_absent(found.absent);
        Ok(())
    }
}

/// What a process keeps between drains (the daemon drains again after every scheduled run):
/// one database connection, one rate limiter, one executor with its attribute list and event
/// names (the attribute list itself is kept in the database), and the budget carries over.
pub struct Engine {
    db: Arc<Mutex<Connection>>,
    limiter: Arc<RateLimiter>,
    executor: Arc<Executor>,
    settings: IntercomSettings,
}

/// Delivery cannot start: the settings hold no access token. Bad input (the command line maps
/// it to exit 2).
#[derive(Debug, thiserror::Error)]
#[error(
    "intercom.access_token is empty: set it in the settings file, in \
     AUDIENCE_SYNC__INTERCOM__ACCESS_TOKEN, or with intercom.access_token_file"
)]
pub struct MissingToken;

/// Refuse to deliver without an access token, before anything is queued or sent.
pub fn require_token(settings: &IntercomSettings) -> Result<(), MissingToken> {
    if settings.access_token.is_empty() {
        return Err(MissingToken);
    }
    Ok(())
}

impl Engine {
    /// Open the database at `db_path` and get ready to deliver with `settings`.
    pub fn open(db_path: &Path, settings: &IntercomSettings) -> anyhow::Result<Engine> {
        require_token(settings)?;
        let conn = store::open(db_path)?;
        let persisted = budget::rate_limit(&conn)?;
        // A process that died while Intercom was unreachable left its pause behind.
        store::outage::clear(&conn)?;
        let db = Arc::new(Mutex::new(conn));
        let limiter = Arc::new(RateLimiter::new(
            settings.rate_limit,
            settings.rate_limit_window,
            persisted,
        ));
        let client = Client::new(settings, limiter.clone())?;
        let executor = Arc::new(Executor::new(client, db.clone(), settings)?);
        Ok(Engine {
            db,
            limiter,
            executor,
            settings: settings.clone(),
        })
    }

    /// Drain the outbox into Intercom. Returns when the outbox is empty, when `shutdown` fires
    /// (after the requests in flight finish), or when Intercom refuses the token (`stopped` is
    /// set; the caller exits 1).
    pub async fn drain(
        &self,
        shutdown: &CancellationToken,
        progress: &dyn Progress,
    ) -> anyhow::Result<DeliveryReport> {
        let before = self.limiter.stats();
        outbox::update_runs(&lock(&self.db), store::now_unix())?;
        let report = drain(&self.db, &self.executor, &self.settings, shutdown, progress).await;
        let budget = self.limiter.persisted();
        if let Err(error) = budget::save_rate_limit(&lock(&self.db), &budget) {
            warn!(%error, "Could not save the rate-limit budget.");
        }
        let mut report = report?;
        outbox::update_runs(&lock(&self.db), store::now_unix())?;
        let after = self.limiter.stats();
        report.requests = after.sent - before.sent;
        report.rate_limited = after.rate_limited - before.rate_limited;
        Ok(report)
    }
}

/// Drain the outbox of the database at `db_path` once, with a fresh [`Engine`] (what `sync` and
/// `send` do).
pub async fn deliver(
    db_path: &Path,
    settings: &IntercomSettings,
    shutdown: CancellationToken,
    progress: &dyn Progress,
) -> anyhow::Result<DeliveryReport> {
    Engine::open(db_path, settings)?
        .drain(&shutdown, progress)
        .await
}

fn lock(db: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    db.lock().unwrap_or_else(|p| p.into_inner())
}

async fn drain(
    db: &Arc<Mutex<Connection>>,
    executor: &Arc<Executor>,
    settings: &IntercomSettings,
    shutdown: &CancellationToken,
    progress: &dyn Progress,
) -> anyhow::Result<DeliveryReport> {
    let started = Instant::now();
    let max_concurrency = settings.max_concurrency.max(1);
    let limits = Limits {
        max_attempts: settings.max_attempts.max(1),
        retry_for: settings.retry_for,
        backoff_cap: settings.outage_probe,
    };
    let mut breaker = Breaker::new(settings.outage_probe);
    let mut outage_since_unix = 0i64;
    let mut report = DeliveryReport::default();
    let mut total = outbox::pending_count(&lock(db))?;
    // Messages enqueued while the drain runs (the daemon) add to the total.
    let max_seq_at_start = outbox::max_pending_seq(&lock(db))?.unwrap_or(0);
    info!(
        pending = total,
        concurrency = max_concurrency,
        "Delivery started."
    );
    progress.update(0, total);

    // Messages still running see this token: it fires on shutdown or on a stop.
    let stop_requests = CancellationToken::new();
    let mut held: BTreeMap<i64, Held> = BTreeMap::new();
    let mut last_seq = 0i64;
    let mut busy: HashSet<Lane> = HashSet::new();
    let mut tasks: JoinSet<(i64, Lane, Outcome)> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, (i64, Lane)> = HashMap::new();
    let mut stopping = false;
    let mut last_persist = Instant::now();
    let mut lookups = Lookups::default();
    executor.clear_absent();

    loop {
        if !stopping && shutdown.is_cancelled() {
            stopping = true;
            report.interrupted = true;
            stop_requests.cancel();
            info!(
                in_flight = tasks.len(),
                "Stopping delivery after the requests in flight."
            );
        }
        // Refill the buffer in outbox order.
        if !stopping && held.len() < BUFFER / 2 {
            let page = outbox::pending_after(&lock(db), last_seq, BUFFER - held.len())?;
            let now_unix = store::now_unix();
            for message in page {
                last_seq = message.seq;
                if message.seq > max_seq_at_start {
                    total += 1;
                }
                let due = message
                    .next_attempt_at
                    .filter(|at| *at > now_unix)
                    .map(|at| Instant::now() + Duration::from_secs((at - now_unix) as u64));
                let lookup = lookups.note(&lock(db), &message);
                held.insert(
                    message.seq,
                    Held {
                        message,
                        due,
                        running: false,
                        lookup,
                    },
                );
            }
        }
        if !stopping && !breaker.is_open() {
            lookups.start(executor.client(), &stop_requests);
        }

        // Start every lane head that is free and due, up to the concurrency; while Intercom is
        // unreachable, only the probe: the first free lane head, due or not.
        let now = Instant::now();
        let mut next_due: Option<Instant> = None;
        if !stopping {
            let probing = breaker.is_open();
            let mut blocked: HashSet<&str> = HashSet::new();
            let mut to_start = Vec::new();
            if !probing || (breaker.probe_due(now) && tasks.len() < max_concurrency) {
                for (seq, entry) in held.iter() {
                    if tasks.len() + to_start.len()
                        >= executor.client().in_flight_target(max_concurrency)
                    {
                        break;
                    }
                    let lane = entry.message.lane.as_str();
                    if entry.running || busy.contains(lane) || blocked.contains(lane) {
                        blocked.insert(lane);
                        continue;
                    }
                    if !probing
                        && entry
                            .lookup
                            .as_ref()
                            .is_some_and(|key| lookups.waiting.contains(key))
                    {
                        // Its contact id is being looked up in bulk.
                        blocked.insert(lane);
                        continue;
                    }
                    if !probing && let Some(due) = entry.due.filter(|d| *d > now) {
                        next_due = Some(next_due.map_or(due, |n: Instant| n.min(due)));
                        blocked.insert(lane);
                        continue;
                    }
                    blocked.insert(lane);
                    to_start.push(*seq);
                    if probing {
                        breaker.start_probe(*seq);
                        break;
                    }
                }
            }
            if probing {
                next_due = breaker.next_probe();
            }
            for seq in to_start {
                let entry = held.get_mut(&seq).expect("chosen above");
                entry.running = true;
                busy.insert(entry.message.lane.clone());
                let executor = executor.clone();
                let message = entry.message.message.clone();
                let lane = entry.message.lane.clone();
                let attempt = (entry.message.attempts + 1).clamp(1, u32::MAX as i64) as u32;
                let cancel = stop_requests.clone();
                let handle = tasks.spawn({
                    let lane = lane.clone();
                    async move {
                        let outcome = match &message {
                            Ok(message) => executor.execute(message, attempt, &cancel).await,
                            Err(error) => Outcome::not_a_message(error),
                        };
                        (seq, lane, outcome)
                    }
                });
                running.insert(handle.id(), (seq, lane));
            }
        }

        if tasks.is_empty() {
            if stopping {
                break;
            }
            if held.is_empty() {
                // Anything enqueued meanwhile (the daemon plans while it delivers)?
                let more = outbox::pending_after(&lock(db), last_seq, 1)?;
                if more.is_empty() {
                    break;
                }
                continue;
            }
            if next_due.is_none() && lookups.tasks.is_empty() {
                // Held messages but none startable and nothing running cannot happen; guard.
                continue;
            }
        }

        let sleep_until = next_due.unwrap_or_else(|| now + Duration::from_secs(3600));
        tokio::select! {
            joined = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let Some(joined) = joined else { continue };
                let (seq, lane, outcome) = match joined {
                    Ok((id, result)) => {
                        running.remove(&id);
                        result
                    }
                    Err(join_error) => {
                        // A panic in one message must not take the drain down with it: the
                        // message counts a failed attempt.
                        let Some((seq, lane)) = running.remove(&join_error.id()) else { continue };
                        error!(seq, %join_error, "A delivery task failed.");
                        let reason = format!("internal error while delivering: {join_error}");
                        (seq, lane, Outcome::Finished(Disposition::Retry { after: Duration::from_secs(5), reason }))
                    }
                };
                busy.remove(&lane);
                let Some(entry) = held.get_mut(&seq) else { continue };
                entry.running = false;
                match outcome {
                    Outcome::Interrupted => breaker.inconclusive(seq),
                    Outcome::Finished(disposition) => {
                        let now = Instant::now();
                        let transition = match &disposition {
                            Disposition::Transient { .. } => breaker.transient(seq, &lane, now),
                            Disposition::Retry { .. } => {
                                breaker.inconclusive(seq);
                                Transition::None
                            }
                            _ => breaker.answered(now),
                        };
                        let error = match &disposition {
                            Disposition::Transient { reason } => Some(reason.clone()),
                            _ => None,
                        };
                        let quiet = breaker.is_open() || transition != Transition::None;
                        let finished = record(db, entry, disposition, &limits, quiet, executor.jitter(), &mut report)?;
                        if finished.done {
                            held.remove(&seq);
                            progress.update(report.delivered + report.dead, total.max(report.delivered + report.dead));
                        }
                        match transition {
                            Transition::None => {}
                            Transition::Opened => {
                                outage_since_unix = store::now_unix();
                                report.outages += 1;
                                let error = error.unwrap_or_default();
                                warn!(%error, next_probe_ms = breaker.next_probe().map_or(0, |at| at.saturating_duration_since(now).as_millis() as u64), "Intercom is unreachable: delivery pauses and probes with one request at a time until it answers.");
                                outage_changed(db, Some((outage_since_unix, 0, error.as_str())));
                            }
                            Transition::ProbeFailed { next_in } => {
                                metrics().intercom_probes.get_or_create(&ProbeLabels { result: ProbeResult::Failed }).inc();
                                let error = error.unwrap_or_default();
                                debug!(%error, next_probe_ms = next_in.as_millis() as u64, "Intercom is still unreachable.");
                                outage_changed(db, Some((outage_since_unix, breaker.probes(), error.as_str())));
                            }
                            Transition::Closed { paused, probes } => {
                                metrics().intercom_probes.get_or_create(&ProbeLabels { result: ProbeResult::Answered }).inc();
                                report.paused_ms += paused.as_millis() as u64;
                                info!(paused_ms = paused.as_millis() as u64, failed_probes = probes, "Intercom answers again: delivery resumes.");
                                // The outage's failures were Intercom's: every lane goes now.
                                for entry in held.values_mut() {
                                    entry.due = None;
                                    entry.message.failing_since = None;
                                }
                                outbox::clear_transient_failures(&lock(db))?;
                                outage_changed(db, None);
                            }
                        }
                        if let Some(reason) = finished.stop
                            && !stopping
                        {
                            stopping = true;
                            stop_requests.cancel();
                            report.stopped = Some(reason);
                        }
                    }
                }
            }
            Some(found) = lookups.tasks.join_next(), if !lookups.tasks.is_empty() => {
                match found {
                    Ok((field, found)) => {
                        report.lookups += found.requests;
                        lookups.finished(db, executor, field, found)?;
                    }
                    Err(join_error) => {
                        // Its users are left to their messages' own searches.
                        error!(%join_error, "A bulk contact lookup failed.");
                        lookups.waiting.clear();
                    }
                }
            }
            _ = tokio::time::sleep_until(sleep_until.into()), if tasks.is_empty() || next_due.is_some() => {}
            _ = shutdown.cancelled(), if !stopping => {}
        }

        if last_persist.elapsed() >= Duration::from_secs(1) {
            last_persist = Instant::now();
            let budget = executor.client().limiter().persisted();
            if let Err(error) = budget::save_rate_limit(&lock(db), &budget) {
                warn!(%error, "Could not save the rate-limit budget.");
            }
        }
    }

    if breaker.is_open() {
        // Stopped while paused: this process no longer knows; the next drain finds out again.
        outage_changed(db, None);
    }
    report.pending = outbox::pending_count(&lock(db))?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    info!(
        delivered = report.delivered,
        dead = report.dead,
        retries = report.retries,
        pending = report.pending,
        elapsed_ms = report.elapsed_ms,
        "Delivery ended."
    );
    Ok(report)
}

/// Publish the pause (`Some((since, failed probes, last error))`) or its end: `/healthz`, the
/// metric, and `intercom_outage` for `status` in another process.
fn outage_changed(db: &Mutex<Connection>, outage: Option<(i64, u64, &str)>) {
    let written = match outage {
        Some((since, probes, error)) => {
            let mut text = format!(
                "Intercom unreachable since {}",
                crate::store::snapshots::rfc3339(since)
            );
            if probes > 0 {
                text.push_str(&format!(" ({probes} probes failed)"));
            }
            if !error.is_empty() {
                text.push_str(&format!("; last error: {error}"));
            }
            http::set_intercom_unreachable(Some(text));
            store::outage::record(
                &lock(db),
                &store::outage::Outage {
                    since,
                    probes: probes as i64,
                    last_error: (!error.is_empty()).then(|| error.to_string()),
                    updated_at: store::now_unix(),
                },
            )
        }
        None => {
            http::set_intercom_unreachable(None);
            store::outage::clear(&lock(db))
        }
    };
    if let Err(error) = written {
        warn!(%error, "Could not record the outage in the database.");
    }
}

struct Recorded {
    /// The message is finished (delivered or dead) and leaves the buffer.
    done: bool,
    stop: Option<String>,
}

/// What ends a message's retries.
struct Limits {
    /// Counted failures (`Disposition::Retry`).
    max_attempts: u32,
    /// Transient failures: for how long.
    retry_for: Duration,
    /// The longest back-off between transient retries.
    backoff_cap: Duration,
}

/// Dead-letter the message: planned state goes back (`mark_dead`).
fn dead_letter(
    db: &Mutex<Connection>,
    message: &outbox::OutboxMessage,
    reason: &str,
    report: &mut DeliveryReport,
) -> anyhow::Result<Recorded> {
    error!(seq = message.seq, user = %message.lane, message_id = %message.message_id, kind = %message.kind, %reason, "Message dead-lettered; its planned state goes back.");
    outbox::mark_dead(&mut lock(db), message.seq, reason)?;
    metrics::count_message(&metrics().messages_dead, message.kind);
    report.dead += 1;
    Ok(Recorded {
        done: true,
        stop: None,
    })
}

/// Record how a message's delivery ended. `quiet`: Intercom is unreachable, so a transient
/// failure is logged at debug level (the pause is logged once).
fn record(
    db: &Mutex<Connection>,
    entry: &mut Held,
    disposition: Disposition,
    limits: &Limits,
    quiet: bool,
    jitter: f64,
    report: &mut DeliveryReport,
) -> anyhow::Result<Recorded> {
    let message = &entry.message;
    let seq = message.seq;
    match disposition {
        Disposition::Delivered => {
            outbox::mark_delivered(&mut lock(db), seq)?;
            metrics::count_message(&metrics().messages_delivered, message.kind);
            report.delivered += 1;
            Ok(Recorded {
                done: true,
                stop: None,
            })
        }
        Disposition::DeadLetter { reason } => dead_letter(db, message, &reason, report),
        Disposition::Retry { after, reason } => {
            let attempts = message.attempts + 1;
            if attempts >= i64::from(limits.max_attempts) {
                let reason = format!("gave up after {attempts} attempts; the last: {reason}");
                return dead_letter(db, message, &reason, report);
            }
            warn!(seq, user = %message.lane, attempt = attempts, retry_in_ms = after.as_millis() as u64, %reason, "Delivery failed; will retry.");
            let at = store::now_unix() + after.as_secs_f64().ceil() as i64;
            outbox::schedule_retry(&lock(db), seq, &reason, at)?;
            metrics::count_message(&metrics().messages_retried, message.kind);
            report.retries += 1;
            entry.message.attempts = attempts;
            entry.due = Some(Instant::now() + after);
            Ok(Recorded {
                done: false,
                stop: None,
            })
        }
        Disposition::Transient { reason } => {
            let now = store::now_unix();
            let since = message.failing_since.unwrap_or(now);
            let failing_for = Duration::from_secs((now - since).max(0) as u64);
            if failing_for >= limits.retry_for {
                let reason = format!(
                    "Intercom kept failing for {} s (intercom.retry_for_secs = {}); the last: {reason}",
                    failing_for.as_secs(),
                    limits.retry_for.as_secs()
                );
                return dead_letter(db, message, &reason, report);
            }
            let after = disposition::transient_backoff(failing_for, limits.backoff_cap, jitter);
            if quiet {
                debug!(seq, user = %message.lane, retry_in_ms = after.as_millis() as u64, %reason, "Delivery failed while Intercom is unreachable; will retry.");
            } else {
                warn!(seq, user = %message.lane, failing_secs = failing_for.as_secs(), retry_in_ms = after.as_millis() as u64, %reason, "Delivery failed; will retry.");
            }
            let at = now + after.as_secs_f64().ceil() as i64;
            outbox::schedule_transient(&lock(db), seq, &reason, at, since)?;
            metrics::count_message(&metrics().messages_retried, message.kind);
            report.retries += 1;
            entry.message.failing_since = Some(since);
            entry.due = Some(Instant::now() + after);
            Ok(Recorded {
                done: false,
                stop: None,
            })
        }
        Disposition::Throttled { reason } => {
            // Not an attempt: nothing is written, the message runs again when the limiter
            // lets its requests through.
            warn!(seq, user = %message.lane, %reason, "Rate limited; will send again after the reset (no attempt counted).");
            metrics::count_message(&metrics().messages_throttled, message.kind);
            entry.due = None;
            Ok(Recorded {
                done: false,
                stop: None,
            })
        }
        Disposition::Stop { reason } => {
            error!(seq, %reason, "Delivery stopped.");
            Ok(Recorded {
                done: false,
                stop: Some(reason),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercom::disposition::{self, ApiError};
    use crate::segment::MessageKind;
    use crate::store::outbox::NewMessage;
    use serde_json::json;

    fn queued(db: &Mutex<Connection>) -> Held {
        let conn = lock(db);
        let body = json!({"type": "identify", "userId": "u1", "traits": {"vip": true}});
        outbox::enqueue(
            &conn,
            None,
            &NewMessage {
                lane: &Lane::user("u1"),
                message_id: "m1",
                kind: MessageKind::Identify,
                body: &body.to_string(),
                effects: "[]",
            },
            store::now_unix(),
        )
        .unwrap();
        let message = outbox::pending(&conn, 10).unwrap().remove(0);
        Held {
            message,
            due: None,
            running: false,
            lookup: None,
        }
    }

    fn attempts(db: &Mutex<Connection>) -> (i64, String) {
        lock(db)
            .query_row("SELECT attempts, status FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
    }

    #[test]
    fn a_429_does_not_consume_an_attempt() {
        let db = Mutex::new(store::open_in_memory().unwrap());
        let mut entry = queued(&db);
        let mut report = DeliveryReport::default();
        let error = ApiError {
            status: 429,
            code: Some("rate_limit_exceeded".into()),
            message: "Exceeded rate limit of 50 in 2_seconds".into(),
        };
        // With max_attempts = 1, any counted attempt would dead-letter the message.
        for _ in 0..20 {
            let disposition = disposition::for_error("POST /contacts/search", &error);
            let recorded = record(
                &db,
                &mut entry,
                disposition,
                &limits(1),
                false,
                0.5,
                &mut report,
            )
            .unwrap();
            assert!(!recorded.done);
            assert!(recorded.stop.is_none());
        }
        assert_eq!(attempts(&db), (0, "pending".to_string()));
        assert_eq!(entry.message.attempts, 0);
        assert_eq!((report.dead, report.retries), (0, 0));
        assert!(
            entry.due.is_none(),
            "the limiter, not the lane, waits for the reset"
        );

        // A failure that may be the message's own still counts.
        let failed = Disposition::Retry {
            after: Duration::from_millis(10),
            reason: "the local database: disk I/O error".into(),
        };
        record(&db, &mut entry, failed, &limits(3), false, 0.5, &mut report).unwrap();
        assert_eq!(attempts(&db), (1, "pending".to_string()));
        assert_eq!(report.retries, 1);
    }

    fn limits(max_attempts: u32) -> Limits {
        Limits {
            max_attempts,
            retry_for: Duration::from_secs(3600),
            backoff_cap: Duration::from_secs(30),
        }
    }

    fn failing_since(db: &Mutex<Connection>) -> Option<i64> {
        lock(db)
            .query_row("SELECT failing_since FROM outbox", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn transient_failures_wait_without_counting_attempts_until_retry_for() {
        let db = Mutex::new(store::open_in_memory().unwrap());
        let mut entry = queued(&db);
        let mut report = DeliveryReport::default();
        let transient = || Disposition::Transient {
            reason: "POST /contacts/search: 503: Service Unavailable".into(),
        };
        let fail = |entry: &mut Held, report: &mut DeliveryReport| {
            record(&db, entry, transient(), &limits(1), false, 0.5, report).unwrap()
        };
        // With max_attempts = 1, a counted attempt would dead-letter the message at once.
        for _ in 0..50 {
            assert!(!fail(&mut entry, &mut report).done);
        }
        assert_eq!(attempts(&db), (0, "pending".to_string()));
        assert_eq!(report.retries, 50);
        let since = failing_since(&db).expect("failing since the first transient failure");
        assert!((store::now_unix() - since).abs() <= 2);
        assert!(entry.due.is_some());

        // Failing for longer than retry_for: dead-lettered, saying why.
        let old = store::now_unix() - 3601;
        lock(&db)
            .execute("UPDATE outbox SET failing_since = ?1", [old])
            .unwrap();
        entry.message.failing_since = Some(old);
        assert!(fail(&mut entry, &mut report).done);
        assert_eq!(report.dead, 1);
        let (status, error): (String, String) = lock(&db)
            .query_row("SELECT status, last_error FROM outbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(status, "dead");
        assert!(
            error.contains("Intercom kept failing for 3601 s"),
            "{error}"
        );
        assert!(error.contains("intercom.retry_for_secs = 3600"), "{error}");
    }

    #[test]
    fn an_answer_after_an_outage_forgets_its_failures() {
        let db = Mutex::new(store::open_in_memory().unwrap());
        let mut entry = queued(&db);
        let mut report = DeliveryReport::default();
        let transient = Disposition::Transient {
            reason: "POST /events: connection failed".into(),
        };
        record(
            &db,
            &mut entry,
            transient,
            &limits(1),
            true,
            0.5,
            &mut report,
        )
        .unwrap();
        assert!(failing_since(&db).is_some());
        assert_eq!(outbox::clear_transient_failures(&lock(&db)).unwrap(), 1);
        assert_eq!(failing_since(&db), None);
        let next: Option<i64> = lock(&db)
            .query_row("SELECT next_attempt_at FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(next, None, "due at once");
    }
}
