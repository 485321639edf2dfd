//! `audience-sync status`.

use crate::cli::StatusArgs;
use crate::settings::Settings;

pub fn status(_settings: &Settings, _args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
