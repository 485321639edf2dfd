//! The error type that carries an exit code from a command back to `main`.

use std::fmt;

/// What the process exit code says: SPEC section 7 fixes 0 / 1 / 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Exit code 1: something failed while running (IO, Intercom, the database).
    Runtime,
    /// Exit code 2: the command line or the input was wrong.
    Usage,
}

/// An error that knows which exit code it deserves. Any other `anyhow::Error` exits 1.
#[derive(Debug)]
pub struct CliError {
    pub kind: ExitKind,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            kind: ExitKind::Usage,
            message: message.into(),
        }
    }

    pub fn runtime(message: impl Into<String>) -> Self {
        CliError {
            kind: ExitKind::Runtime,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// The exit code for an error: a `CliError` anywhere in the chain decides, otherwise 1.
pub fn exit_code_of(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(cli) = cause.downcast_ref::<CliError>() {
            return match cli.kind {
                ExitKind::Runtime => 1,
                ExitKind::Usage => 2,
            };
        }
    }
    1
}
