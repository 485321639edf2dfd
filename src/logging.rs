//! Logging: tracing to standard error, human-readable on a terminal, one JSON object a line under
//! systemd or when `log.format = "json"`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// Crates whose INFO lines are noise for an operator.
const QUIET: &str = "tokio_cron_scheduler=warn,hyper=warn,reqwest=warn";

/// Whether JSON lines are wanted: asked for, or `auto` with standard error going to the journal.
pub fn wants_json(format: LogFormat) -> bool {
    match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => {
            !std::io::stderr().is_terminal()
                && (std::env::var_os("JOURNAL_STREAM").is_some()
                    || std::env::var_os("INVOCATION_ID").is_some())
        }
    }
}

/// Install the global subscriber once; later calls are no-ops. `RUST_LOG`, when set, replaces
/// `log.level`.
pub fn init(settings: &LogSettings) {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| settings.level.clone());
    let filter = EnvFilter::try_new(format!("{level},{QUIET}"))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if wants_json(settings.format) {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
