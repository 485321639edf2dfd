//! `audience-sync load` and `audience-sync load-members`.

use std::io::Write;
use std::time::Instant;

use super::error::CliError;
use super::output::stdout_lossy;
use crate::cli::{KindArg, LoadArgs, LoadMembersArgs, ScopeArg};
use crate::domain::{Kind, Scope};
use crate::load::{self, Input, LoadError};
use crate::settings::Settings;
use crate::store::{self, snapshots};

pub fn load(settings: &Settings, args: LoadArgs) -> anyhow::Result<()> {
    load::check_key(&args.computation).map_err(CliError::usage)?;
    let kind = match args.kind {
        KindArg::Audience => Kind::Audience,
        KindArg::Trait => Kind::Trait,
    };
    let scope = match args.scope {
        ScopeArg::User => Scope::User,
        ScopeArg::Account => Scope::Account,
    };
    if let Some(name) = args.name.as_deref()
        && name.trim().is_empty()
    {
        return Err(CliError::usage("--name must not be empty").into());
    }
    if settings.compute.find(&args.computation).is_some() {
        return Err(CliError::usage(format!(
            "computation {:?} is defined in settings ([[computations]]) and stored by \
             `audience-sync compute`; it cannot also be loaded (use another key)",
            args.computation
        ))
        .into());
    }
    let taken_at = taken_at(args.taken_at.as_deref())?;
    let input = Input::from_arg(&args.file);
    // The input is checked (format, CSV header) before the database is touched.
    input.format().map_err(refusal)?;
    let mut conn = store::open(&settings.database.path)?;
    let started = Instant::now();
    let spec = snapshots::ComputationSpec {
        key: &args.computation,
        name: args.name.as_deref(),
        kind,
        scope,
        source: snapshots::Source::Load,
    };
    let stored =
        snapshots::load_snapshot_with(&mut conn, &input, &spec, taken_at, store::now_unix(), true)
            .map_err(refusal)?;
    if stored.rows == 0 {
        // SPEC section 4 stores any file without a bad row, and an audience nobody matches any
        // more is a real state; but a failed export can look the same, so say what follows.
        eprintln!(
            "warning: {} holds no rows: stored an empty snapshot of {:?}; the next run makes \
             every current member exit (or clears every value)",
            input.display_name(),
            stored.computation.key
        );
    }
    let elapsed = started.elapsed();
    writeln!(
        stdout_lossy(),
        "Loaded {} rows into {} {} computation {:?} ({}{}), snapshot {} taken at {}, in {:.2}s.",
        stored.rows,
        scope.as_str(),
        kind.as_str(),
        stored.computation.key,
        stored.computation.id,
        if stored.created { ", created" } else { "" },
        stored.snapshot_id,
        snapshots::rfc3339(taken_at),
        elapsed.as_secs_f64()
    )?;
    Ok(())
}

pub fn load_members(settings: &Settings, args: LoadMembersArgs) -> anyhow::Result<()> {
    let taken_at = taken_at(args.taken_at.as_deref())?;
    let input = Input::from_arg(&args.file);
    input.format().map_err(refusal)?;
    let mut conn = store::open(&settings.database.path)?;
    let (snapshot_id, count) =
        snapshots::load_membership_with(&mut conn, &input, taken_at, true).map_err(refusal)?;
    if count == 0 {
        eprintln!(
            "warning: {} holds no rows: stored an empty membership snapshot; the next run \
             detaches every user from every account",
            input.display_name()
        );
    }
    writeln!(
        stdout_lossy(),
        "Loaded {count} account memberships, membership snapshot {snapshot_id} taken at {}.",
        snapshots::rfc3339(taken_at)
    )?;
    Ok(())
}

/// `--taken-at` as unix seconds; now when absent.
fn taken_at(arg: Option<&str>) -> anyhow::Result<i64> {
    instant("--taken-at", arg)
}

/// A flag's RFC 3339 instant as unix seconds (the flag named when it is not one); now when absent.
pub(super) fn instant(flag: &str, arg: Option<&str>) -> anyhow::Result<i64> {
    match arg {
        None => Ok(store::now_unix()),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp())
            .map_err(|e| {
                CliError::usage(format!("{flag} {text:?} is not an RFC 3339 time ({e})")).into()
            }),
    }
}

/// A refused load: bad input exits 2, a database failure exits 1. Either way nothing was stored.
fn refusal(error: LoadError) -> anyhow::Error {
    if error.is_bad_input() {
        anyhow::Error::new(CliError::usage(format!("{error}; nothing was stored")))
    } else {
        anyhow::Error::new(error).context("the load failed; nothing was stored")
    }
}
