//! `audience-sync dead-letters [list|retry|discard]`: messages that failed for good.

use std::fmt::Write as _;
use std::io::Write as _;

use super::error::CliError;
use super::output::{stdout, stdout_lossy};
use crate::cli::{DeadLetterAction, DeadLettersArgs};
use crate::settings::Settings;
use crate::store::outbox::{self, Acted, DeadLetter, Selection};
use crate::store::{self, Lock, RunLock};

pub fn dead_letters(settings: &Settings, args: DeadLettersArgs) -> anyhow::Result<()> {
    let action = args
        .action
        .unwrap_or(DeadLetterAction::List { json: false });
    match action {
        DeadLetterAction::List { json } => {
            let conn = store::open(&settings.database.path)?;
            let letters = outbox::dead_letters(&conn)?;
            if json {
                writeln!(stdout(), "{}", serde_json::to_string_pretty(&letters)?)?;
            } else {
                stdout().write_all(render(&letters).as_bytes())?;
            }
            Ok(())
        }
        DeadLetterAction::Retry { ids, all } => {
            // It moves planned state forward again: not while a run plans. A delivering daemon
            // picks the messages up on its next drain.
            let _lock = RunLock::try_acquire(&settings.database.path, Lock::Plan)?;
            let mut conn = store::open(&settings.database.path)?;
            let acted = outbox::retry_dead(&mut conn, selection(&ids, all, "retry")?)?;
            let text = report(
                &acted,
                "queued again (delivered by the next `sync` or the daemon)",
            );
            stdout_lossy().write_all(text.as_bytes())?;
            Ok(())
        }
        DeadLetterAction::Discard { ids, all } => {
            let _lock = RunLock::try_acquire(&settings.database.path, Lock::Plan)?;
            let mut conn = store::open(&settings.database.path)?;
            let acted = outbox::discard_dead(&mut conn, selection(&ids, all, "discard")?)?;
            stdout_lossy().write_all(report(&acted, "discarded").as_bytes())?;
            Ok(())
        }
    }
}

fn selection<'a>(ids: &'a [i64], all: bool, verb: &str) -> anyhow::Result<Selection<'a>> {
    match (ids.is_empty(), all) {
        (true, true) => Ok(Selection::All),
        (false, false) => Ok(Selection::Seqs(ids)),
        (true, false) => Err(CliError::usage(format!(
            "name the dead letters to {verb} by their sequence numbers (see `dead-letters list`), or pass --all"
        ))
        .into()),
        (false, true) => Err(CliError::usage("give sequence numbers or --all, not both").into()),
    }
}

fn render(letters: &[DeadLetter]) -> String {
    let mut out = String::new();
    if letters.is_empty() {
        out.push_str("No dead letters.\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:>8}  {:<8}  {:<24}  {:<20}  {:>8}  reason",
        "seq", "type", "user", "dead at (UTC)", "attempts"
    );
    for l in letters {
        let at = l
            .dead_at
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:>8}  {:<8}  {:<24}  {:<20}  {:>8}  {}",
            l.seq,
            l.kind,
            l.user,
            at,
            l.attempts,
            l.reason.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(
        out,
        "{} dead letters. `dead-letters retry SEQ…` queues them again; `dead-letters discard SEQ…` forgets them.",
        letters.len()
    );
    out
}

fn report(acted: &Acted, verb: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} dead letters {verb}.", acted.done.len());
    for (seq, reason) in &acted.skipped {
        let _ = writeln!(out, "  {seq} skipped: {reason}");
    }
    out
}
