//! `audience-sync compute [--computation KEY] [--dry-run] [--now RFC3339]`: run the SQL-defined
//! computations (SPEC section 11) and store each result as a new snapshot.

use std::io::Write;

use super::error::CliError;
use super::output::{stdout, stdout_lossy};
use crate::cli::ComputeArgs;
use crate::compute::{self, Options, Outcome};
use crate::settings::Settings;
use crate::store::compute::Origin;
use crate::store::snapshots;

pub fn compute(settings: &Settings, args: ComputeArgs) -> anyhow::Result<()> {
    if settings.compute.is_empty() {
        return Err(CliError::usage(
            "nothing to compute: settings define no [[computations]] and no [membership] sql \
             (see settings.toml)",
        )
        .into());
    }
    let targets = compute::targets(&settings.compute, args.computation.as_deref())
        .map_err(CliError::usage)?;
    let now = super::load::instant("--now", args.now.as_deref())?;
    let options = Options {
        now,
        origin: Origin::Command,
        dry_run: args.dry_run,
    };
    let outcomes = compute::compute(
        &settings.database.path,
        &settings.compute,
        &targets,
        &options,
    )?;
    // A dry run only reports: a closed standard output ends it. Stored snapshots stay stored, and
    // the failures below still decide the exit code, whoever reads the report.
    let mut out = if args.dry_run {
        stdout()
    } else {
        stdout_lossy()
    };
    let mut bad_input = 0;
    let mut failed = 0;
    for outcome in &outcomes {
        match &outcome.result {
            Ok(_) => print_outcome(&mut out, outcome, &options)?,
            Err(e) => {
                failed += 1;
                if e.is_bad_input() {
                    bad_input += 1;
                }
                eprintln!(
                    "error: {}: {e}; nothing was stored for it{}",
                    outcome.target.describe(),
                    if args.dry_run {
                        ""
                    } else {
                        " (its previous snapshot stays)"
                    }
                );
            }
        }
    }
    if failed == 0 {
        return Ok(());
    }
    let summary = format!(
        "{failed} of {} {} failed",
        outcomes.len(),
        if outcomes.len() == 1 {
            "computation"
        } else {
            "computations"
        }
    );
    // A query or its rows being wrong is bad input (exit 2); the database failing is not.
    if bad_input == failed {
        Err(CliError::usage(summary).into())
    } else {
        Err(CliError::runtime(summary).into())
    }
}

fn print_outcome(
    out: &mut impl Write,
    outcome: &Outcome<'_>,
    options: &Options,
) -> std::io::Result<()> {
    let Ok(computed) = &outcome.result else {
        return Ok(());
    };
    let what = match outcome.target {
        compute::Target::Computation(c) => {
            format!(
                "{} {} computation {:?}",
                c.scope.as_str(),
                c.kind.as_str(),
                c.key
            )
        }
        compute::Target::Membership(_) => "the account membership".to_string(),
    };
    if options.dry_run {
        writeln!(
            out,
            "{what}: {} rows; would be stored as its newest snapshot taken at {} (dry run: \
             nothing stored){}",
            computed.rows,
            snapshots::rfc3339(options.now),
            if computed.sample.is_empty() { "" } else { ":" }
        )?;
        for row in &computed.sample {
            writeln!(out, "  {row}")?;
        }
        if computed.rows > computed.sample.len() as u64 && !computed.sample.is_empty() {
            writeln!(
                out,
                "  … {} more",
                computed.rows - computed.sample.len() as u64
            )?;
        }
    } else {
        writeln!(
            out,
            "Computed {} rows into {what}{}, snapshot {} taken at {}, in {:.2}s.",
            computed.rows,
            match (&computed.computation_id, computed.created) {
                (Some(id), true) => format!(" ({id}, created)"),
                (Some(id), false) => format!(" ({id})"),
                (None, _) => String::new(),
            },
            computed.snapshot_id.unwrap_or_default(),
            snapshots::rfc3339(options.now),
            outcome.took.as_secs_f64()
        )?;
    }
    if computed.emptied() {
        eprintln!(
            "warning: {} returned no rows (its newest snapshot had {}): {} an empty snapshot; \
             the next run makes every current member exit (or clears every value)",
            outcome.target.describe(),
            computed.previous_rows.unwrap_or(0),
            if options.dry_run {
                "it would store"
            } else {
                "stored"
            }
        );
    }
    Ok(())
}
