//! `audience-sync sync`: one run now (diff, enqueue, deliver until drained).

use std::io::Write;

use tracing::info;

use crate::cli::SyncArgs;
use crate::plan::{self, Output, RunMode, RunOptions};
use crate::settings::Settings;
use crate::store::{self, Lock, RunLock};

pub fn sync(settings: &Settings, args: SyncArgs) -> anyhow::Result<()> {
    let options = RunOptions {
        mode: if args.full {
            RunMode::Full
        } else {
            RunMode::Incremental
        },
        computation: args.computation.as_deref(),
        now: store::now_unix(),
        company_attribute_prefix: &settings.intercom.company_attribute_prefix,
    };
    if args.dry_run {
        // Changes nothing, so it needs no run lock: it may run beside the daemon.
        let mut conn = store::open(&settings.database.path)?;
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        plan::run(
            &mut conn,
            &settings.personas,
            &options,
            Output::DryRun(&mut out),
        )?;
        out.flush()?;
        return Ok(());
    }
    let planning = RunLock::try_acquire(&settings.database.path, Lock::Plan)?;
    let mut conn = store::open(&settings.database.path)?;
    let report = plan::run(&mut conn, &settings.personas, &options, Output::Enqueue)?;
    drop(planning);
    info!(
        run = report.run_id.unwrap_or_default(),
        identify = report.messages.identify,
        track = report.messages.track,
        group = report.messages.group(),
        "Run enqueued."
    );
    print!("{}", super::plan::report_text(settings, &report));
    if let Some(run_id) = report.run_id {
        println!("Enqueued as run {run_id}.");
    }
    if args.no_deliver {
        return Ok(());
    }
    drop(conn);
    let Some(delivered) = super::deliver::deliver_outbox(settings)? else {
        return Ok(());
    };
    if delivered.dead > 0 {
        return Err(crate::error::CliError::runtime(format!(
            "{} messages were dead-lettered during this sync: see them with `audience-sync \
             dead-letters list`, and send them again with `audience-sync dead-letters retry` once \
             the cause is fixed (their entities are re-planned by the next run otherwise)",
            delivered.dead
        ))
        .into());
    }
    Ok(())
}
