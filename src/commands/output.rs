//! Standard output for commands. Rust ignores SIGPIPE, so a write to a pipe whose reader has gone
//! (`audience-sync status | head -1`) fails with `BrokenPipe`, and `print!` would panic on it.
//! Commands write through [`Stdout`] instead:
//!
//! - [`stdout`], for a command that only reports (a dry run, `plan`, `status`, a list): the
//!   broken pipe is passed up as an error and `commands::main` ends the process quietly with
//!   success, as ripgrep does: nobody reads the rest, so it is not worked out.
//! - [`stdout_lossy`], for a command that changes state (`sync`, `send`, `load`, `compute`,
//!   `prune`, `dead-letters retry`): the output is lost, never the work, nor its outcome. The
//!   command carries on to its end and exits as it would have (a delivery that failed still
//!   exits 1).
//!
//! A broken pipe from anything else (an Intercom connection) is an error like any other: only a
//! write to standard output is marked.

use std::io::{self, Write};

/// The reader of standard output went away (a broken pipe). Carried inside the `io::Error` a
/// [`stdout`] write returns.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed (broken pipe)")]
pub struct StdoutClosed;

/// Standard output, locked for as long as the value lives.
pub struct Stdout {
    lock: io::StdoutLock<'static>,
    lossy: bool,
}

/// Standard output for a report: a closed pipe ends the command (quietly, exit 0). Hold it
/// across one piece of output, not across work.
pub fn stdout() -> Stdout {
    Stdout {
        lock: io::stdout().lock(),
        lossy: false,
    }
}

/// Standard output for a command that changes state: a closed pipe drops what is written.
pub fn stdout_lossy() -> Stdout {
    Stdout {
        lossy: true,
        ..stdout()
    }
}

impl Stdout {
    fn closed<T>(&self, result: io::Result<T>, dropped: T) -> io::Result<T> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe && self.lossy => Ok(dropped),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed))
            }
            other => other,
        }
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.lock.write(buf);
        self.closed(result, buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let result = self.lock.write_all(buf);
        self.closed(result, ())
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.lock.flush();
        self.closed(result, ())
    }
}

/// Whether `error` is (or was caused by) a write to a closed standard output.
pub fn stdout_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<StdoutClosed>()
            || cause
                .downcast_ref::<io::Error>()
                .and_then(|e| e.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken() -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }

    #[test]
    fn only_a_broken_pipe_on_standard_output_is_a_closed_stdout() {
        let closed = stdout().closed(broken(), ()).unwrap_err();
        assert_eq!(closed.kind(), io::ErrorKind::BrokenPipe);
        assert!(stdout_closed(
            &anyhow::Error::from(closed).context("while printing")
        ));
        // Elsewhere (a socket to Intercom) a broken pipe is a failure like any other.
        let socket = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!stdout_closed(&socket));
        // Other write failures stay what they are.
        let full = stdout().closed(Err::<(), _>(io::ErrorKind::StorageFull.into()), ());
        assert_eq!(full.unwrap_err().kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn lossy_output_drops_what_a_closed_pipe_refuses() {
        let lossy = stdout_lossy();
        assert_eq!(
            lossy
                .closed(Err(io::ErrorKind::BrokenPipe.into()), 5)
                .unwrap(),
            5
        );
        assert!(lossy.closed(broken(), ()).is_ok());
        let full = lossy.closed(Err::<(), _>(io::ErrorKind::StorageFull.into()), ());
        assert_eq!(full.unwrap_err().kind(), io::ErrorKind::StorageFull);
    }
}
