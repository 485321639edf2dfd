//! The daemon (`audience-sync run`): runs on `schedule.cron`, continuous delivery between them,
//! `/metrics` and `/healthz`, systemd notify and watchdog, SIGHUP reload, clean stop on
//! SIGTERM / SIGINT.
//!
//! One task plans (a blocking run in `spawn_blocking`, never two at once: a tick that arrives
//! while a run plans is skipped and logged); one task delivers (drains the outbox, then waits to
//! be woken by a finished run, a reload or a timer). The main loop owns both and the signals.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::compute;
use crate::http::{self, Endpoints};
use crate::intercom::drain::{DeliveryReport, Engine, Quiet};
use crate::metrics::{
    ComputationLabels, ComputeLabels, ComputeOutcome, MessageLabels, MessageType, Mode, RunLabels,
    RunOutcome, metrics,
};
use crate::notify::{notify, watchdog_interval};
use crate::plan::{self, Pace, Report, RunMode, RunOptions};
use crate::settings::Settings;
use crate::store::{self, Lock, RunLock, retention};

/// How long a stop waits for requests in flight (and a run being planned) before it exits anyway.
/// Exiting mid-plan is safe: the run's transaction is rolled back as a whole.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// How often delivery looks at the outbox when nothing woke it (messages written by `sync
/// --no-deliver` or `send` from another process, retries that came due).
pub const DELIVERY_POLL: Duration = Duration::from_secs(30);

/// After Intercom refused the token, how long delivery waits before it tries again (a reload
/// with a new token tries at once).
pub const STOPPED_RETRY: Duration = Duration::from_secs(300);

/// Run the daemon until SIGTERM or SIGINT. `config` is the `--config` path, re-read on SIGHUP.
pub fn run(config: Option<PathBuf>, settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(daemon(config, settings))
}

async fn daemon(config: Option<PathBuf>, mut settings: Settings) -> anyhow::Result<()> {
    let database = settings.database.path.clone();
    // The daemon delivers for its whole life; it plans under the plan lock one run at a time,
    // so a manual `sync --no-deliver` may plan beside it.
    let _delivering = RunLock::try_acquire(&database, Lock::Deliver)?;
    health_check(&database)?;
    let engine = Arc::new(Engine::open(&database, &settings.intercom)?);
    let (engine_tx, engine_rx) = watch::channel(engine);

    let shutdown = CancellationToken::new();
    if let Some(listen) = settings.http.listen {
        let endpoints = Endpoints {
            database: database.clone(),
            max_pending_age: settings.http.max_pending_age,
            max_pending_messages: settings.plan.max_pending_messages,
        };
        let bound = http::serve(listen, endpoints, shutdown.clone()).await?;
        info!(address = %bound, "Serving /metrics and /healthz.");
    }

    let (tick_tx, mut ticks) = mpsc::channel::<()>(1);
    let mut scheduler = schedule(&settings.schedule.cron, tick_tx.clone()).await?;

    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let wake = Arc::new(Notify::new());
    let deliver_stop = CancellationToken::new();
    // Asks a run that waits for delivery (or is between chunks) to stop; the next run resumes it.
    let plan_stop = CancellationToken::new();
    let mut delivery = tokio::spawn(delivery_loop(engine_rx, wake.clone(), deliver_stop.clone()));

    info!(
        database = %database.display(),
        cron = %settings.schedule.cron,
        rate_limit = %settings.intercom.rate_limit_text(),
        window_secs = settings.intercom.rate_limit_window.as_secs(),
        "Daemon started."
    );
    publish_next_run(&mut scheduler, true).await;
    let _ = notify("READY=1\nSTATUS=Waiting for the next scheduled run");
    if settings.schedule.run_on_start {
        let _ = tick_tx.try_send(());
    }

    let mut watchdog =
        tokio::time::interval(watchdog_interval().unwrap_or(Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut planning: Option<(JoinHandle<anyhow::Result<Report>>, Instant)> = None;

    loop {
        tokio::select! {
            Some(()) = ticks.recv() => {
                publish_next_run(&mut scheduler, false).await;
                if planning.is_some() {
                    warn!("Scheduled run skipped: the previous run is still planning.");
                    continue;
                }
                let lock = match RunLock::acquire_if_free(&database, Lock::Plan) {
                    Ok(Some(lock)) => lock,
                    Ok(None) => {
                        warn!("Scheduled run skipped: another process (a manual sync) is planning.");
                        continue;
                    }
                    Err(e) => {
                        error!(error = %format!("{e:#}"), "Scheduled run skipped: cannot take the plan lock.");
                        continue;
                    }
                };
                let run_settings = settings.clone();
                let delivery_wake = wake.clone();
                let plan_stop = plan_stop.clone();
                planning = Some((
                    tokio::task::spawn_blocking(move || {
                        let _planning = lock;
                        let planned = plan_once(&run_settings, &delivery_wake, &plan_stop);
                        if planned.is_ok() {
                            // Delivery need not wait for the prune.
                            delivery_wake.notify_one();
                        }
                        // Retention after every scheduled run, under the same plan lock (not
                        // when stopping: the run stopped early, and the stop should be quick).
                        if !plan_stop.is_cancelled() {
                            prune_after_run(&run_settings);
                        }
                        planned
                    }),
                    Instant::now(),
                ));
                let _ = notify("STATUS=Planning a run");
            }
            joined = async { (&mut planning.as_mut().expect("guarded").0).await }, if planning.is_some() => {
                let started = planning.take().map(|(_, at)| at).unwrap_or_else(Instant::now);
                match joined.map_err(anyhow::Error::from).and_then(|r| r) {
                    Ok(report) => {
                        record_run(&report, started.elapsed());
                        http::set_planning_failed(None);
                        wake.notify_one();
                    }
                    Err(e) => {
                        metrics().runs.get_or_create(&RunLabels { mode: Mode::Incremental, outcome: RunOutcome::Failed }).inc();
                        // A full disk (or any failure) fails this run only: delivery goes on
                        // (on a disk that full its confirmations wait for room too), and /healthz
                        // says why until a run succeeds.
                        let reason = store::error_text(&store::explain_disk_full(e, &database));
                        error!(error = %reason, "Run failed; the next scheduled run tries again.");
                        http::set_planning_failed(Some(reason));
                    }
                }
                let _ = notify("STATUS=Waiting for the next scheduled run");
            }
            _ = sighup.recv() => {
                match reload(config.as_deref(), &settings) {
                    Ok(new) => {
                        if new.schedule.cron != settings.schedule.cron {
                            let _ = scheduler.shutdown().await;
                            scheduler = schedule(&new.schedule.cron, tick_tx.clone()).await?;
                            publish_next_run(&mut scheduler, true).await;
                        }
                        match Engine::open(&database, &new.intercom) {
                            Ok(engine) => {
                                let _ = engine_tx.send(Arc::new(engine));
                                wake.notify_one();
                            }
                            Err(e) => warn!(error = %format!("{e:#}"), "Reloaded settings kept the old Intercom settings."),
                        }
                        settings = new;
                        info!(cron = %settings.schedule.cron, "Settings reloaded.");
                    }
                    Err(e) => error!(error = %format!("{e:#}"), "Settings not reloaded; the old ones stay in force."),
                }
            }
            _ = watchdog.tick() => {
                let _ = notify("WATCHDOG=1");
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    info!("Stopping: no new runs; requests in flight finish, the rest stays queued.");
    let _ = notify("STOPPING=1");
    let _ = scheduler.shutdown().await;
    plan_stop.cancel();
    deliver_stop.cancel();
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    if tokio::time::timeout_at(deadline, &mut delivery)
        .await
        .is_err()
    {
        warn!(
            grace_secs = STOP_GRACE.as_secs(),
            "Delivery did not stop in time; exiting anyway (unconfirmed messages stay queued)."
        );
        delivery.abort();
    }
    if let Some((handle, _)) = planning
        && tokio::time::timeout_at(deadline, handle).await.is_err()
    {
        warn!(
            "A run was still planning; its uncommitted chunk is abandoned and the next run resumes \
             it from its last committed chunk."
        );
    }
    shutdown.cancel();
    info!("Daemon stopped.");
    Ok(())
}

/// The first health check before READY=1: the database opens, has the current schema and passes
/// SQLite's quick check.
fn health_check(database: &Path) -> anyhow::Result<()> {
    let conn = store::open(database)?;
    let problem = store::connection::quick_check(&conn)
        .with_context(|| format!("cannot check {}", database.display()))?;
    if let Some(verdict) = problem {
        anyhow::bail!(
            "the database {} fails PRAGMA quick_check: {verdict}",
            database.display()
        );
    }
    Ok(())
}

/// Publish when `scheduler` fires next (`audience_sync_next_run_timestamp_seconds`), and with
/// `log` say so (at start and when a reload changed the schedule).
async fn publish_next_run(scheduler: &mut JobScheduler, log: bool) {
    match scheduler.time_till_next_job().await {
        Ok(Some(wait)) => {
            let at = store::now_unix() + i64::try_from(wait.as_secs()).unwrap_or(i64::MAX / 2) + 1;
            metrics().next_run_timestamp_seconds.set(at);
            if log {
                info!(at = %store::snapshots::rfc3339(at), "Next scheduled run.");
            }
        }
        Ok(None) => {
            metrics().next_run_timestamp_seconds.set(0);
        }
        Err(e) => warn!(error = %e, "The scheduler cannot say when it runs next."),
    }
}

/// A cron job that sends a tick; the main loop decides whether to run.
async fn schedule(cron: &str, ticks: mpsc::Sender<()>) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new()
        .await
        .context("cannot start the scheduler")?;
    let job = Job::new_async(cron, move |_id, _scheduler| {
        let ticks = ticks.clone();
        Box::pin(async move {
            // A full channel means a tick is already waiting: this one is the same run.
            let _ = ticks.try_send(());
        })
    })
    .with_context(|| format!("schedule.cron {cron:?} is not a valid cron expression"))?;
    scheduler
        .add(job)
        .await
        .context("cannot schedule the run")?;
    scheduler
        .start()
        .await
        .context("cannot start the scheduler")?;
    Ok(scheduler)
}

/// One scheduled run: diff every enabled computation and enqueue, chunk by chunk, at most
/// `plan.max_pending_messages` ahead of delivery (woken after each chunk). An unfinished run
/// (a crash, a stop) is finished first, then the scheduled one is made.
fn plan_once(
    settings: &Settings,
    delivery: &Notify,
    stop: &CancellationToken,
) -> anyhow::Result<Report> {
    if !settings.compute.is_empty() {
        compute_before_run(settings);
    }
    let mut conn = store::open(&settings.database.path)?;
    let committed = || delivery.notify_one();
    let stopping = || stop.is_cancelled();
    let pace = Pace {
        max_pending: settings.plan.max_pending_messages,
        committed: &committed,
        stop: &stopping,
    };
    loop {
        let options = RunOptions {
            mode: RunMode::Incremental,
            computation: None,
            now: store::now_unix(),
            company_attribute_prefix: &settings.intercom.company_attribute_prefix,
        };
        let report = plan::run_paced(&mut conn, &settings.personas, &options, &pace)?;
        if report.resumed && report.finished {
            info!(
                run = report.run_id.unwrap_or_default(),
                identify = report.messages.identify,
                track = report.messages.track,
                group = report.messages.group(),
                "Unfinished run resumed and finished."
            );
            continue;
        }
        return Ok(report);
    }
}

/// The label the membership query's metrics carry in place of a computation key.
pub const MEMBERSHIP_LABEL: &str = "[membership]";

/// Run the SQL-defined computations before a scheduled run (SPEC section 11). A failing query is
/// logged and counted, and leaves that computation's previous snapshot in place: the run then
/// plans from it, so nobody exits because a query broke.
fn compute_before_run(settings: &Settings) {
    let targets = match compute::targets(&settings.compute, None) {
        Ok(targets) => targets,
        Err(e) => {
            error!(error = %e, "Computations not run.");
            return;
        }
    };
    let options = compute::Options {
        now: store::now_unix(),
        origin: store::compute::Origin::Daemon,
        dry_run: false,
    };
    let outcomes = match compute::compute(
        &settings.database.path,
        &settings.compute,
        &targets,
        &options,
    ) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let reason = store::error_text(&store::explain_disk_full(e, &settings.database.path));
            error!(error = %reason, "Computations not run; every computation keeps its previous snapshot.");
            metrics()
                .computes
                .get_or_create(&ComputeLabels {
                    computation: "*".to_string(),
                    outcome: ComputeOutcome::Failed,
                })
                .inc();
            return;
        }
    };
    for outcome in outcomes {
        let label = outcome.target.key().unwrap_or(MEMBERSHIP_LABEL).to_string();
        let computation = ComputationLabels {
            computation: label.clone(),
        };
        let computes = |outcome| {
            metrics()
                .computes
                .get_or_create(&ComputeLabels {
                    computation: label.clone(),
                    outcome,
                })
                .inc();
        };
        metrics()
            .compute_duration_seconds
            .get_or_create(&computation)
            .set(outcome.took.as_secs_f64());
        match &outcome.result {
            Ok(computed) => {
                computes(ComputeOutcome::Stored);
                metrics().compute_failed.get_or_create(&computation).set(0);
                metrics()
                    .compute_rows
                    .get_or_create(&computation)
                    .set(computed.rows as i64);
                info!(
                    computation = %label,
                    rows = computed.rows,
                    snapshot = computed.snapshot_id.unwrap_or_default(),
                    took_ms = outcome.took.as_millis() as u64,
                    "Computed."
                );
                if computed.emptied() {
                    warn!(
                        computation = %label,
                        previous_rows = computed.previous_rows.unwrap_or(0),
                        "The query returned no rows: stored an empty snapshot; every current \
                         member exits (or every value clears)."
                    );
                }
            }
            Err(e) => {
                computes(ComputeOutcome::Failed);
                metrics().compute_failed.get_or_create(&computation).set(1);
                error!(
                    computation = %label,
                    error = %e,
                    "Computation failed; its previous snapshot stays."
                );
            }
        }
    }
}

/// Apply `[retention]` (SPEC section 9) after a scheduled run; the caller holds the plan lock.
/// What went is logged; a failure is logged and the next run tries again.
fn prune_after_run(settings: &Settings) {
    let pruned = store::open(&settings.database.path).and_then(|mut conn| {
        retention::prune(
            &mut conn,
            &retention::Policy::from(&settings.retention),
            retention::Options {
                origin: retention::Origin::Daemon,
                ..retention::Options::default()
            },
            store::now_unix(),
        )
    });
    match pruned {
        Ok(report) if report.removed_anything() || report.space.bytes_returned > 0 => {
            info!(
                delivered_messages = report.delivered_messages,
                runs = report.runs,
                snapshots = report.snapshots.len(),
                snapshot_rows = report.snapshot_rows(),
                membership_snapshots = report.membership_snapshots.len(),
                membership_rows = report.membership_rows(),
                pages_freed = report.space.pages_freed,
                bytes_returned = report.space.bytes_returned,
                vacuumed = report.space.vacuumed,
                "Pruned."
            );
            if report.space.needs_vacuum {
                info!(
                    free_pages = report.space.free_pages_after,
                    "Freed pages stay in the database file for reuse (auto_vacuum = none, a \
                     database created before retention); `audience-sync prune --vacuum` once \
                     returns them to the file system."
                );
            }
        }
        Ok(_) => debug!("Nothing to prune."),
        Err(e) => {
            let reason = store::error_text(&store::explain_disk_full(e, &settings.database.path));
            error!(error = %reason, "Pruning failed; the next run tries again.");
        }
    }
}

fn record_run(report: &Report, took: Duration) {
    let outcome = if report.finished {
        RunOutcome::Planned
    } else {
        RunOutcome::Stopped
    };
    metrics()
        .runs
        .get_or_create(&RunLabels {
            mode: mode_label(report.mode),
            outcome,
        })
        .inc();
    for (r#type, n) in [
        (MessageType::Identify, report.messages.identify),
        (MessageType::Track, report.messages.track),
        (MessageType::Group, report.messages.group()),
    ] {
        metrics()
            .messages_enqueued
            .get_or_create(&MessageLabels { r#type })
            .inc_by(n);
    }
    info!(
        run = report.run_id.unwrap_or_default(),
        identify = report.messages.identify,
        track = report.messages.track,
        group = report.messages.group(),
        took_ms = took.as_millis() as u64,
        "Run enqueued."
    );
}

/// A run's mode as its metrics label (the metrics module names nothing of `plan`: layers
/// depend downwards only).
fn mode_label(mode: RunMode) -> Mode {
    match mode {
        RunMode::Incremental => Mode::Incremental,
        RunMode::Full => Mode::Full,
    }
}

fn reload(config: Option<&Path>, current: &Settings) -> anyhow::Result<Settings> {
    let new = Settings::load(config)?;
    if new.database.path != current.database.path {
        anyhow::bail!("database.path changed: that needs a restart");
    }
    if new.http.listen != current.http.listen {
        warn!("http.listen changed: the metrics endpoint moves only on a restart.");
    }
    Ok(new)
}

/// Drain, then wait to be woken (a run finished, a reload) or for the poll timer; until stopped.
async fn delivery_loop(
    engine: watch::Receiver<Arc<Engine>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let current = engine.borrow().clone();
        let pause = match current.drain(&stop, &Quiet).await {
            Ok(report) => after_drain(&report),
            Err(e) => {
                error!(error = %format!("{e:#}"), "Delivery failed; trying again shortly.");
                Duration::from_secs(5)
            }
        };
        if stop.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}

fn after_drain(report: &DeliveryReport) -> Duration {
    http::set_delivery_stopped(report.stopped.clone());
    if report.stopped.is_some() {
        let _ = notify("STATUS=Delivery stopped: Intercom refused the access token");
        return STOPPED_RETRY;
    }
    if report.delivered + report.dead > 0 {
        let _ = notify(&format!(
            "STATUS=Delivered {} messages ({} dead letters); {} pending",
            report.delivered, report.dead, report.pending
        ));
    }
    DELIVERY_POLL
}
