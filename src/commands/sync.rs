//! `audience-sync sync`: one run now (diff, enqueue, deliver until drained). The run is planned
//! chunk by chunk while its first messages are already being delivered, at most
//! `plan.max_pending_messages` ahead of delivery (SPEC section 9); `--no-deliver` plans it all.

use std::io::Write;
use std::sync::atomic::Ordering;

use tracing::info;

use crate::cli::SyncArgs;
use crate::plan::{self, Output, Pace, Report, RunMode, RunOptions};
use crate::settings::Settings;
use crate::store::{self, Lock, RunLock};

use super::deliver::Planning;
use super::error::CliError;
use super::output::{stdout, stdout_lossy};

pub fn sync(settings: &Settings, args: SyncArgs) -> anyhow::Result<()> {
    let mode = if args.full {
        RunMode::Full
    } else {
        RunMode::Incremental
    };
    let options = |now| RunOptions {
        mode,
        computation: args.computation.as_deref(),
        now,
        company_attribute_prefix: &settings.intercom.company_attribute_prefix,
    };
    if args.dry_run {
        // Changes nothing, so it needs no run lock: it may run beside the daemon.
        let mut conn = store::open(&settings.database.path)?;
        // A closed standard output (`| head`) ends the run at its next write; its read
        // transaction is rolled back, so there is nothing to undo.
        let mut out = std::io::BufWriter::new(stdout());
        plan::run(
            &mut conn,
            &settings.personas,
            &options(store::now_unix()),
            Output::DryRun(&mut out),
        )?;
        out.flush()?;
        return Ok(());
    }
    let _planning = RunLock::try_acquire(&settings.database.path, Lock::Plan)?;
    if args.no_deliver {
        // Nothing delivers here: plan the whole run (the outbox holds all of it).
        let mut conn = store::open(&settings.database.path)?;
        loop {
            let report = plan::run(
                &mut conn,
                &settings.personas,
                &options(store::now_unix()),
                Output::Enqueue,
            )?;
            print_report(settings, &report)?;
            if !report.resumed {
                return Ok(());
            }
        }
    }

    let delivering = RunLock::acquire_if_free(&settings.database.path, Lock::Deliver)?;
    if delivering.is_none() {
        writeln!(
            stdout_lossy(),
            "Another audience-sync process (the daemon?) is delivering from {}: it delivers \
             these messages as this run plans them; `audience-sync status` shows the outbox.",
            settings.database.path.display()
        )?;
    }
    let planning = Planning::new();
    let (planned, delivered) = std::thread::scope(|scope| {
        let planner = scope.spawn(|| {
            let result = plan_paced(settings, &planning, options);
            planning.done.store(true, Ordering::SeqCst);
            planning.committed.notify_one();
            result
        });
        let delivered = match delivering {
            Some(lock) => super::deliver::deliver_while(settings, lock, &planning).map(Some),
            None => Ok(None),
        };
        let planned = planner
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the planning thread panicked")));
        (planned, delivered)
    });
    let stopped = planned?;
    let Some(delivered) = delivered? else {
        return Ok(());
    };
    if stopped {
        return Err(CliError::runtime(
            "the run stopped before its end; the next `sync` (or the daemon) resumes it from its \
             last committed chunk",
        )
        .into());
    }
    if delivered.dead > 0 {
        return Err(CliError::runtime(format!(
            "{} messages were dead-lettered during this sync: see them with `audience-sync \
             dead-letters list`, and send them again with `audience-sync dead-letters retry` once \
             the cause is fixed (their entities are re-planned by the next run otherwise)",
            delivered.dead
        ))
        .into());
    }
    Ok(())
}

/// Plan (an unfinished run first, then the one asked for) paced by delivery; `true` when it
/// stopped before the end because delivery was stopped.
fn plan_paced<'a>(
    settings: &'a Settings,
    planning: &Planning,
    options: impl Fn(i64) -> RunOptions<'a>,
) -> anyhow::Result<bool> {
    let mut conn = store::open(&settings.database.path)?;
    let committed = || planning.committed.notify_one();
    let stop = || planning.stop.load(Ordering::SeqCst);
    let pace = Pace {
        max_pending: settings.plan.max_pending_messages,
        committed: &committed,
        stop: &stop,
    };
    loop {
        let report = plan::run_paced(
            &mut conn,
            &settings.personas,
            &options(store::now_unix()),
            &pace,
        )?;
        print_report(settings, &report)?;
        if !report.finished {
            return Ok(true);
        }
        if !report.resumed {
            return Ok(false);
        }
    }
}

fn print_report(settings: &Settings, report: &Report) -> std::io::Result<()> {
    info!(
        run = report.run_id.unwrap_or_default(),
        identify = report.messages.identify,
        track = report.messages.track,
        group = report.messages.group(),
        chunks = report.chunks,
        "Run enqueued."
    );
    if report.resumed {
        writeln!(
            stdout_lossy(),
            "Run {} was unfinished (a crash or a stop): resumed from its last committed chunk.",
            report.run_id.unwrap_or_default()
        )?;
    }
    stdout_lossy().write_all(super::plan::report_text(settings, report).as_bytes())?;
    if let Some(run_id) = report.run_id {
        if report.finished {
            writeln!(stdout_lossy(), "Enqueued as run {run_id}.")?;
        } else {
            writeln!(
                stdout_lossy(),
                "Run {run_id} stopped before its end; the next run resumes it."
            )?;
        }
    }
    Ok(())
}
