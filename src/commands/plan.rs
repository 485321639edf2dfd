//! `audience-sync plan`: what the next run would emit, changing nothing.

use crate::cli::PlanArgs;
use crate::settings::Settings;

pub fn plan(_settings: &Settings, _args: PlanArgs) -> anyhow::Result<()> {
    super::not_yet("plan")
}
