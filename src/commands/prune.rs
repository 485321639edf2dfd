//! `audience-sync prune [--dry-run] [--vacuum] [--json]`: apply the retention settings now
//! (`store::retention`, SPEC section 9) and report what was removed.

use std::fmt::Write as _;
use std::io::Write as _;

use super::output::{stdout, stdout_lossy};
use crate::cli::PruneArgs;
use crate::settings::Settings;
use crate::status::{bytes, thousands};
use crate::store::retention::{self, Options, Origin, Policy, RemovedSnapshot, Report};
use crate::store::{self, Lock, RunLock};

/// Snapshots listed one by one at most; the rest are counted.
const LISTED: usize = 20;

pub fn prune(settings: &Settings, args: PruneArgs) -> anyhow::Result<()> {
    let database = &settings.database.path;
    // Deleting snapshots and runs must not race a run that plans from them (or a dead letter
    // being retried): take the plan lock. A dry run changes nothing and reads in one
    // transaction, so it may run beside a planning run.
    let _planning = if args.dry_run {
        None
    } else {
        Some(RunLock::try_acquire(database, Lock::Plan)?)
    };
    let mut conn = store::open(database)?;
    let options = Options {
        dry_run: args.dry_run,
        vacuum: args.vacuum,
        origin: Origin::Command,
    };
    let policy = Policy::from(&settings.retention);
    let report = retention::prune(&mut conn, &policy, options, store::now_unix())?;
    // What was pruned is pruned: a closed standard output only loses the report.
    let mut out = if args.dry_run {
        stdout()
    } else {
        stdout_lossy()
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out.write_all(render(settings, &report).as_bytes())?;
    }
    Ok(())
}

fn render(settings: &Settings, report: &Report) -> String {
    let retention = &settings.retention;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}{}:",
        if report.dry_run {
            "Would prune"
        } else {
            "Pruned"
        },
        settings.database.path.display(),
        if report.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    let days = retention.delivered_for.as_secs() / 86_400;
    let _ = writeln!(
        out,
        "  delivered messages    {:>9}  (delivered {days} day{} ago or more)",
        thousands(report.delivered_messages),
        plural(days)
    );
    let _ = writeln!(
        out,
        "  runs                  {:>9}  ({} computation record{}; beyond the newest {})",
        thousands(report.runs),
        thousands(report.run_computations),
        plural(report.run_computations),
        thousands(retention.runs)
    );
    let _ = writeln!(
        out,
        "  snapshots             {:>9}  ({} rows; beyond the newest {} per computation)",
        thousands(report.snapshots.len() as u64),
        thousands(report.snapshot_rows()),
        retention.snapshots_per_computation
    );
    list(&mut out, &report.snapshots);
    let _ = writeln!(
        out,
        "  membership snapshots  {:>9}  ({} rows; beyond the newest {})",
        thousands(report.membership_snapshots.len() as u64),
        thousands(report.membership_rows()),
        retention.snapshots_per_computation
    );
    list(&mut out, &report.membership_snapshots);

    let kept = &report.kept;
    let incomplete = kept.incomplete_snapshots + kept.incomplete_membership_snapshots;
    let _ = writeln!(
        out,
        "Kept: {} pending and {} dead-lettered message{} (never pruned; dead letters stay until \
         retried or discarded), {} delivered message{}, {} run{}.",
        thousands(kept.pending_messages),
        thousands(kept.dead_letters),
        plural(kept.pending_messages + kept.dead_letters),
        thousands(kept.delivered_messages),
        plural(kept.delivered_messages),
        thousands(kept.runs),
        plural(kept.runs),
    );
    let _ = writeln!(
        out,
        "Kept for planned state: {} older snapshot{} and {} membership snapshot{}; kept as \
         possibly still being written: {} incomplete snapshot{}.",
        thousands(kept.planned_snapshots),
        plural(kept.planned_snapshots),
        thousands(kept.planned_membership_snapshots),
        plural(kept.planned_membership_snapshots),
        thousands(incomplete),
        plural(incomplete),
    );

    let space = &report.space;
    let size = |pages: u64| bytes(pages * space.page_size);
    if report.dry_run {
        let _ = write!(
            out,
            "Space: {} ({} free pages now, auto_vacuum = {}). ",
            size(space.pages_before),
            thousands(space.free_pages_before),
            space.auto_vacuum
        );
        if space.vacuumed {
            out.push_str(
                "Prune would rewrite the file once (VACUUM) and switch it to incremental vacuum.\n",
            );
        } else if space.needs_vacuum {
            out.push_str(
                "Freed pages would stay in the file for reuse; see `audience-sync prune --vacuum`.\n",
            );
        } else {
            out.push_str("The pages prune frees go back to the file system.\n");
        }
        return out;
    }
    let _ = writeln!(
        out,
        "Space: {} page{} freed; {} returned to the file system ({} -> {}){}.",
        thousands(space.pages_freed),
        plural(space.pages_freed),
        bytes(space.bytes_returned),
        size(space.pages_before),
        size(space.pages_after),
        if space.vacuumed {
            "; the file was rewritten (VACUUM) and uses incremental vacuum from now on"
        } else {
            ""
        }
    );
    if space.needs_vacuum {
        let _ = writeln!(
            out,
            "This database was created before retention (auto_vacuum = none): its {} free \
             page{} ({}) stay in the file and are reused by new rows, so it stops growing but \
             does not shrink. To return them, run once `audience-sync prune --vacuum` (it \
             rewrites the whole file; writers wait meanwhile, and it needs about {} of free \
             disk space); later prunes return freed pages by themselves.",
            thousands(space.free_pages_after),
            plural(space.free_pages_after),
            size(space.free_pages_after),
            size(space.pages_after)
        );
    }
    out
}

fn list(out: &mut String, snapshots: &[RemovedSnapshot]) {
    for s in snapshots.iter().take(LISTED) {
        let _ = writeln!(
            out,
            "    {}#{} taken at {}, {} rows{}",
            s.computation
                .as_deref()
                .map(|key| format!("{key} "))
                .unwrap_or_default(),
            s.id,
            store::snapshots::rfc3339(s.taken_at),
            thousands(s.rows),
            if s.complete {
                ""
            } else {
                " (incomplete, abandoned by its writer)"
            }
        );
    }
    if snapshots.len() > LISTED {
        let _ = writeln!(
            out,
            "    … and {} more",
            thousands((snapshots.len() - LISTED) as u64)
        );
    }
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}
