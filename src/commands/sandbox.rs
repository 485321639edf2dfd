//! `audience-sync sandbox`: run the built-in Intercom-compatible sandbox in the foreground.

use crate::cli::SandboxArgs;
use crate::error::CliError;

pub fn sandbox(_args: SandboxArgs) -> anyhow::Result<()> {
    Err(CliError::runtime("`sandbox` is not yet available in this build").into())
}
