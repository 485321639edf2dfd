//! The `audience-sync` binary: parse the command line, run the command, map the outcome to an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    audience_sync::commands::main()
}
