//! Delivery from a command (`sync`, `send`): a tokio runtime, Ctrl-C / SIGTERM to stop after the
//! requests in flight, a progress bar on a terminal (log lines otherwise), and the summary.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::error::CliError;
use super::output::stdout_lossy;
use crate::intercom::drain::{self, DeliveryReport, Progress};
use crate::settings::Settings;
use crate::store::{Lock, RunLock};

/// Drain the outbox now, until it is empty or the user stops it. Exit 1 when Intercom refuses
/// the token or the drain was interrupted. When another process (the daemon) is delivering this
/// outbox already, it delivers what was just queued: say so and return `None`.
pub fn deliver_outbox(settings: &Settings) -> anyhow::Result<Option<DeliveryReport>> {
    let Some(delivering) = RunLock::acquire_if_free(&settings.database.path, Lock::Deliver)? else {
        writeln!(
            stdout_lossy(),
            "Another audience-sync process (the daemon?) is delivering from {}: it delivers \
             these messages; `audience-sync status` shows the outbox.",
            settings.database.path.display()
        )?;
        return Ok(None);
    };
    deliver_while(settings, delivering, &Planning::done()).map(Some)
}

/// Whether a run is still being planned beside delivery (`sync`), and how to tell it to stop.
pub struct Planning {
    /// Set by the planner once it is done (or failed).
    pub done: std::sync::atomic::AtomicBool,
    /// Set by delivery when the user stops it: the planner stops before its next chunk.
    pub stop: std::sync::atomic::AtomicBool,
    /// Notified by the planner after each chunk it commits.
    pub committed: tokio::sync::Notify,
}

impl Planning {
    pub fn new() -> Planning {
        Planning {
            done: false.into(),
            stop: false.into(),
            committed: tokio::sync::Notify::new(),
        }
    }

    /// Nothing is being planned.
    pub fn done() -> Planning {
        let planning = Planning::new();
        planning.done.store(true, Ordering::SeqCst);
        planning
    }
}

impl Default for Planning {
    fn default() -> Self {
        Planning::new()
    }
}

/// Drain the outbox (holding the deliver lock) until it is empty and `planning` is done, or the
/// user stops it: messages a run commits meanwhile are delivered as they come.
pub fn deliver_while(
    settings: &Settings,
    _delivering: RunLock,
    planning: &Planning,
) -> anyhow::Result<DeliveryReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let progress: Box<dyn Progress> = if std::io::stderr().is_terminal() {
            Box::new(Bar::new())
        } else {
            Box::new(LogLines::new())
        };
        let engine = drain::Engine::open(&settings.database.path, &settings.intercom)?;
        let mut total = DeliveryReport::default();
        let started = Instant::now();
        loop {
            // Read before the drain: once planning is done, a drain that starts after it sees
            // every message it planned.
            let planned = planning.done.load(Ordering::SeqCst);
            let report = engine.drain(&shutdown, progress.as_ref()).await;
            let report = match report {
                Ok(report) => report,
                Err(e) => {
                    planning.stop.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            };
            absorb(&mut total, report);
            if total.stopped.is_some() || total.interrupted {
                planning.stop.store(true, Ordering::SeqCst);
                break;
            }
            if planned {
                break;
            }
            tokio::select! {
                _ = planning.committed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        drop(progress);
        total.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok::<_, anyhow::Error>(total)
    })?;
    writeln!(stdout_lossy(), "{}", summary(&report))?;
    if let Some(reason) = &report.stopped {
        return Err(CliError::runtime(format!(
            "delivery stopped: {reason}; {} messages remain queued",
            report.pending
        ))
        .into());
    }
    if report.interrupted {
        return Err(CliError::runtime(format!(
            "delivery interrupted; {} messages remain queued for the next `sync` or the daemon",
            report.pending
        ))
        .into());
    }
    Ok(report)
}

/// Add one drain's report to the totals of a delivery.
fn absorb(total: &mut DeliveryReport, report: DeliveryReport) {
    total.delivered += report.delivered;
    total.dead += report.dead;
    total.retries += report.retries;
    total.pending = report.pending;
    total.interrupted |= report.interrupted;
    total.stopped = total.stopped.take().or(report.stopped);
    total.requests += report.requests;
    total.rate_limited += report.rate_limited;
    total.lookups += report.lookups;
    total.outages += report.outages;
    total.paused_ms += report.paused_ms;
    total.elapsed_ms += report.elapsed_ms;
}

/// One line for standard output.
pub fn summary(report: &DeliveryReport) -> String {
    let mut text = format!(
        "Delivered {} messages in {:.1} s ({} requests",
        report.delivered,
        report.elapsed_ms as f64 / 1000.0,
        report.requests
    );
    if report.rate_limited > 0 {
        text.push_str(&format!(", {} answered 429", report.rate_limited));
    }
    if report.retries > 0 {
        text.push_str(&format!(", {} retries", report.retries));
    }
    text.push(')');
    if report.outages > 0 {
        text.push_str(&format!(
            "; paused {:.0} s while Intercom was unreachable",
            report.paused_ms as f64 / 1000.0
        ));
    }
    if report.dead > 0 {
        text.push_str(&format!(
            "; {} dead letters (see `audience-sync dead-letters`)",
            report.dead
        ));
    }
    if report.pending > 0 {
        text.push_str(&format!("; {} still queued", report.pending));
    }
    text.push('.');
    text
}

/// Ctrl-C (and SIGTERM) ask delivery to stop after the requests in flight.
async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    info!("Stop requested: finishing the requests in flight, the rest stays queued.");
    shutdown.cancel();
}

/// A progress bar on standard error: delivered / total, rate, ETA.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} Delivering [{bar:30}] {pos}/{len} messages, {per_sec}, ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar(bar)
    }
}

impl Progress for Bar {
    fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Without a terminal: an INFO line every 10 seconds.
struct LogLines {
    started: Instant,
    last: Mutex<Instant>,
}

impl LogLines {
    fn new() -> LogLines {
        LogLines {
            started: Instant::now(),
            last: Mutex::new(Instant::now()),
        }
    }
}

impl Progress for LogLines {
    fn update(&self, done: u64, total: u64) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < Duration::from_secs(10) {
            return;
        }
        *last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            (total.saturating_sub(done) as f64 / rate).round() as u64
        } else {
            0
        };
        info!(
            done,
            total,
            per_sec = format!("{rate:.1}"),
            eta_secs = eta,
            "Delivering."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_what_needs_attention() {
        let report = DeliveryReport {
            delivered: 10,
            dead: 1,
            retries: 2,
            pending: 0,
            requests: 14,
            rate_limited: 0,
            elapsed_ms: 2500,
            ..DeliveryReport::default()
        };
        assert_eq!(
            summary(&report),
            "Delivered 10 messages in 2.5 s (14 requests, 2 retries); 1 dead letters \
             (see `audience-sync dead-letters`)."
        );
    }
}
