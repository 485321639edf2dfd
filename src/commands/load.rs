//! `audience-sync load` and `audience-sync load-members`.

use crate::cli::{LoadArgs, LoadMembersArgs};
use crate::settings::Settings;

pub fn load(_settings: &Settings, _args: LoadArgs) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}

pub fn load_members(_settings: &Settings, _args: LoadMembersArgs) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
