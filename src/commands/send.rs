//! `audience-sync send`: deliver (or with --dry-run, print the Intercom requests for) an NDJSON file of Segment messages.

use crate::cli::SendArgs;
use crate::settings::Settings;

pub fn send(_settings: &Settings, _args: SendArgs) -> anyhow::Result<()> {
    super::not_yet("send")
}
