//! `audience-sync send`: deliver (or with --dry-run, print the Intercom requests for) an NDJSON file of Segment messages.
//!
//! `--dry-run` assumes nothing is known about Intercom: every contact is resolved by a search
//! first, every company id is a `{company_id}` placeholder, and every custom attribute is
//! created (`POST /data_attributes`, once per attribute in the file) before its first write.
//! A message that may create its contact (see `intercom::requests::OnMissing`) is printed as what a
//! contact new to Intercom costs: the search, then the `POST /contacts` carrying every value
//! (no `PUT` follows it). A message that may not (an exit) is printed with the `PUT` an
//! existing contact gets (see `Plan::dry_run_requests`).
//!
//! A line that cannot be mapped is reported on standard error with its line number; the other
//! lines are still printed, and the command then exits 2.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};

use anyhow::Context;

use super::error::CliError;
use super::output::stdout;
use crate::cli::SendArgs;
use crate::intercom::mapping::{EventNames, KnownIds, MapOptions, map_message};
use crate::intercom::requests::AttributeNeed;
use crate::segment::{Message, NdjsonLines, Track};
use crate::settings::Settings;

pub fn send(settings: &Settings, args: SendArgs) -> anyhow::Result<()> {
    if !args.dry_run {
        return super::send_deliver::send(settings, args);
    }
    let input: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(&args.file)
            .map_err(|e| CliError::usage(format!("cannot open {}: {e}", args.file.display())))?;
        Box::new(BufReader::new(file))
    };
    // The edge reads the clock once; the mapping itself is pure.
    let options = crate::intercom::map_options(&settings.intercom, chrono::Utc::now().timestamp());
    let mut out = io::BufWriter::new(stdout());
    let summary = dry_run(input, &mut out, &mut io::stderr(), &options)?;
    out.flush().context("cannot write to standard output")?;
    if summary.refused > 0 {
        return Err(CliError::usage(format!(
            "{} of {} messages cannot be mapped to Intercom requests (see the lines above)",
            summary.refused, summary.messages
        ))
        .into());
    }
    Ok(())
}

struct Summary {
    messages: usize,
    refused: usize,
}

fn dry_run(
    input: impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
    options: &MapOptions,
) -> anyhow::Result<Summary> {
    let known = KnownIds::nothing();
    let mut event_names = EventNames::new([]);
    let mut created: BTreeSet<AttributeNeed> = BTreeSet::new();
    let mut summary = Summary {
        messages: 0,
        refused: 0,
    };
    for read in NdjsonLines::new(input) {
        let (number, line) = read.context("cannot read the input")?;
        if line.as_deref().is_ok_and(|l| l.trim().is_empty()) {
            continue;
        }
        summary.messages += 1;
        let planned = line
            .and_then(|line| Message::from_json_str(&line))
            .map_err(|e| e.to_string())
            .and_then(|message| {
                if let Message::Track(Track { event, .. }) = &message {
                    event_names.check(event).map_err(|e| e.to_string())?;
                    event_names.record(event);
                }
                map_message(&message, options, &known).map_err(|e| e.to_string())
            });
        let plan = match planned {
            Ok(plan) => plan,
            Err(reason) => {
                summary.refused += 1;
                writeln!(err, "line {number}: {reason}")?;
                continue;
            }
        };
        for warning in &plan.warnings {
            writeln!(err, "line {number}: warning: {warning}")?;
        }
        for need in &plan.attributes {
            if created.insert(need.clone()) {
                writeln!(out, "{}", need.create_request().to_json())?;
            }
        }
        for request in plan.dry_run_requests() {
            writeln!(out, "{}", request.to_json())?;
        }
    }
    Ok(summary)
}
