//! One function per command: each reads settings, opens what it needs and calls the library.
//! [`main`] parses the command line (`cli`), runs the command, and turns its outcome into the
//! exit code (`error`): the library raises typed errors, only this module maps them to 0, 1 or 2.

mod compute;
mod dead_letters;
mod deliver;
pub mod error;
mod load;
pub mod output;
mod plan;
mod prune;
mod sandbox;
mod send;
mod send_deliver;
mod status;
mod sync;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::settings::Settings;

/// The binary: parse the command line, run the command, print any error once with its causes.
/// A command ended by a closed standard output (`| head`, see [`output`]) exits 0 and says
/// nothing, as ripgrep does.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if output::stdout_closed(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprint!("{}", error::error_text(&error));
            ExitCode::from(error::exit_code(&error))
        }
    }
}

/// Run the command. A full disk under the database, wherever it struck (a load, a run, a prune,
/// delivery confirming), comes back explained once with the database's path
/// (`store::DiskFull`); SQLite has rolled the failed transaction back.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.clone();
    let uses_settings = !matches!(cli.command, Command::Demo | Command::Sandbox(_));
    run(cli).map_err(|error| {
        if !uses_settings || crate::store::disk_full_cause(&error).is_none() {
            return error;
        }
        // Only on this path are the settings read again, for the database's path.
        match Settings::load(config.as_deref()) {
            Ok(settings) => crate::store::explain_disk_full(error, &settings.database.path),
            Err(_) => error,
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Load(args) => load::load(&settings(&cli.config)?, args),
        Command::LoadMembers(args) => load::load_members(&settings(&cli.config)?, args),
        Command::Status(args) => status::status(&settings(&cli.config)?, args),
        Command::Sandbox(args) => sandbox::sandbox(args),
        Command::Run => crate::daemon::run(cli.config.clone(), settings(&cli.config)?),
        Command::Sync(args) => sync::sync(&settings(&cli.config)?, args),
        Command::Plan(args) => plan::plan(&settings(&cli.config)?, args),
        Command::Send(args) => send::send(&settings(&cli.config)?, args),
        Command::DeadLetters(args) => dead_letters::dead_letters(&settings(&cli.config)?, args),
        Command::Compute(args) => compute::compute(&settings(&cli.config)?, args),
        Command::Prune(args) => prune::prune(&settings(&cli.config)?, args),
        Command::Demo => {
            crate::logging::init(&Settings::defaults()?.log);
            crate::demo::run(&mut output::stdout())
        }
    }
}

/// Load settings and, with them, start logging.
fn settings(path: &Option<std::path::PathBuf>) -> anyhow::Result<Settings> {
    let settings = Settings::load(path.as_deref())?;
    crate::logging::init(&settings.log);
    Ok(settings)
}
