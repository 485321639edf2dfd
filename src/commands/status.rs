//! `audience-sync status`.

use std::io::Write;

use super::output::stdout;
use crate::cli::StatusArgs;
use crate::settings::Settings;
use crate::{status, store};

pub fn status(settings: &Settings, args: StatusArgs) -> anyhow::Result<()> {
    let conn = store::open(&settings.database.path)?;
    let report = status::collect(
        &conn,
        &settings.database.path,
        settings.plan.max_pending_messages,
        &settings.compute,
    )?;
    if args.json {
        writeln!(stdout(), "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        stdout().write_all(status::render(&report).as_bytes())?;
    }
    Ok(())
}
