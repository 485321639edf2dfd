//! Exit codes (SPEC section 7: 0 success, 1 runtime failure, 2 bad usage or bad input) and how a
//! failed command is printed. The library raises typed errors that say what happened; which exit
//! code each deserves is decided here, and only here.

use std::fmt;

use crate::intercom::drain::MissingToken;
use crate::plan::RunError;
use crate::settings::SettingsError;
use crate::store::LockError;

/// What the process exit code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Exit code 1: something failed while running (IO, Intercom, the database).
    Runtime,
    /// Exit code 2: the command line or the input was wrong.
    Usage,
}

impl ExitKind {
    pub fn code(self) -> u8 {
        match self {
            ExitKind::Runtime => 1,
            ExitKind::Usage => 2,
        }
    }
}

/// An error a command raises itself (a flag that makes no sense, a summary of failures) with the
/// exit code it deserves.
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

/// The exit code for an error: the outermost error in the chain whose type is known here
/// decides, otherwise 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    error
        .chain()
        .find_map(exit_kind)
        .unwrap_or(ExitKind::Runtime)
        .code()
}

/// The exit code a library error deserves, when it is one this module knows.
fn exit_kind(cause: &(dyn std::error::Error + 'static)) -> Option<ExitKind> {
    if let Some(cli) = cause.downcast_ref::<CliError>() {
        Some(cli.kind)
    } else if cause.is::<SettingsError>() || cause.is::<RunError>() || cause.is::<MissingToken>() {
        Some(ExitKind::Usage)
    } else if cause.is::<LockError>() {
        Some(ExitKind::Runtime)
    } else {
        None
    }
}

/// An error as `main` prints it: the error, then each cause on its own line. A full disk
/// (`store::DiskFull`) leads, and the causes that only repeat SQLite's message are left out: it
/// is explained once.
pub fn error_text(error: &anyhow::Error) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let full = error.downcast_ref::<crate::store::DiskFull>();
    let head = match full {
        Some(full) => full.to_string(),
        None => error.to_string(),
    };
    let _ = writeln!(out, "error: {head}");
    for cause in error.chain() {
        let text = cause.to_string();
        if text == head {
            continue;
        }
        if let Some(full) = full
            && (text.contains(&full.cause) || text.contains(crate::store::DISK_FULL_TEXT))
        {
            continue;
        }
        let _ = writeln!(out, "  caused by: {text}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_map_to_their_exit_codes() {
        let usage: [anyhow::Error; 4] = [
            CliError::usage("bad flag").into(),
            SettingsError::Missing("x.toml".into()).into(),
            RunError::UnknownComputation("k".into()).into(),
            MissingToken.into(),
        ];
        for error in &usage {
            assert_eq!(exit_code(error), 2, "{error}");
            // The type decides, not the text.
            let untyped = anyhow::anyhow!("{error}");
            assert_eq!(exit_code(&untyped), 1, "{error}");
        }
        let wrapped = anyhow::Error::from(RunError::DisabledComputation("k".into())).context("x");
        assert_eq!(exit_code(&wrapped), 2);
        let held = LockError::Held {
            lock: crate::store::Lock::Plan,
            database: "t.db".into(),
            lock_file: "t.db.plan.lock".into(),
        };
        assert_eq!(exit_code(&held.into()), 1);
        assert_eq!(exit_code(&CliError::runtime("failed").into()), 1);
        assert_eq!(exit_code(&anyhow::anyhow!("anything else")), 1);
        // Found as a cause, under an error of another type.
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] SettingsError);
        let outer = Outer(SettingsError::Missing("x.toml".into()));
        assert_eq!(exit_code(&anyhow::Error::from(outer)), 2);
    }
}
