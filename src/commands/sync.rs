//! `audience-sync sync`: one run now (diff, enqueue, deliver until drained).

use crate::cli::SyncArgs;
use crate::settings::Settings;

pub fn sync(_settings: &Settings, _args: SyncArgs) -> anyhow::Result<()> {
    super::not_yet("sync")
}
