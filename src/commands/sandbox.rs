//! `audience-sync sandbox`: run the built-in Intercom-compatible sandbox in the foreground.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use intercom_sandbox::{
    FaultPoint, Faults, LongStrings, Outage, RateLimitHeaders, Sandbox, SandboxConfig,
    ScheduledOutage, SlowResponses,
};

use super::error::CliError;
use super::output::stdout;
use crate::cli::{FaultPointArg, SandboxArgs};

/// Start the sandbox, print its base URL as the first line of standard output, and serve until
/// SIGINT or SIGTERM.
pub fn sandbox(args: SandboxArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    let config_outage = config.outage;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let sandbox = Sandbox::start(config)
            .await
            .context("cannot start the Intercom sandbox")?;
        let mut out = stdout();
        writeln!(out, "{}", sandbox.base_url())?;
        out.flush()?;
        drop(out);
        eprintln!(
            "Intercom sandbox at {} ({} requests per {} s). State: {}/_sandbox/state. Ctrl-C stops it.",
            sandbox.base_url(),
            args.rate_limit,
            args.window_secs,
            sandbox.base_url()
        );
        if let Some(scheduled) = config_outage {
            eprintln!(
                "An outage ({}, {}) begins after {} answered requests; DELETE {}/_sandbox/outage ends it.",
                scheduled.outage.kind,
                scheduled
                    .outage
                    .length
                    .map_or("until ended".to_owned(), |l| format!("{} s", l.as_secs_f64())),
                scheduled.after_requests,
                sandbox.base_url()
            );
        }
        stopped().await;
        sandbox.shutdown().await;
        anyhow::Ok(())
    })
}

fn config(args: &SandboxArgs) -> anyhow::Result<SandboxConfig> {
    let listen: SocketAddr = args.listen.parse().map_err(|_| {
        CliError::usage(format!(
            "--listen must be an address like 127.0.0.1:8080, not {:?}",
            args.listen
        ))
    })?;
    for (flag, share) in [
        ("--fault-rate", args.fault_rate),
        ("--drop-rate", args.drop_rate),
        ("--slow-rate", args.slow_rate),
    ] {
        if !(0.0..=1.0).contains(&share) {
            return Err(CliError::usage(format!("{flag} must be between 0 and 1")).into());
        }
    }
    if args.fault_rate + args.drop_rate > 1.0 {
        return Err(CliError::usage("--fault-rate plus --drop-rate must not exceed 1").into());
    }
    if args.rate_limit == 0 || args.window_secs == 0 {
        return Err(CliError::usage("--rate-limit and --window-secs must be at least 1").into());
    }
    let mut config = SandboxConfig::new(args.token.clone());
    config.listen = listen;
    config.rate_limit = args.rate_limit;
    config.window_secs = args.window_secs;
    config.rate_limit_headers = if args.hide_rate_limit_headers {
        RateLimitHeaders::Hide
    } else {
        RateLimitHeaders::Announce
    };
    config.faults = Faults {
        error_rate: args.fault_rate,
        drop_rate: args.drop_rate,
        point: match args.fault_point {
            FaultPointArg::Before => FaultPoint::BeforeEffect,
            FaultPointArg::After => FaultPoint::AfterEffect,
            FaultPointArg::Either => FaultPoint::Either,
        },
        seed: args.seed,
    };
    config.latency = Duration::from_millis(args.latency_ms);
    config.slow = SlowResponses {
        rate: args.slow_rate,
        delay: Duration::from_millis(args.slow_ms),
    };
    config.search_lag = Duration::from_secs(args.search_lag_secs);
    config.event_name_limit = args.event_name_limit;
    config.long_strings = if args.allow_long_strings {
        LongStrings::Allow
    } else {
        LongStrings::Refuse
    };
    config.outage = match args.outage_after_requests {
        None => None,
        Some(after_requests) => Some(ScheduledOutage {
            after_requests,
            outage: Outage {
                kind: args.outage_kind,
                length: args.outage_secs.map(outage_length).transpose()?,
            },
        }),
    };
    Ok(config)
}

/// `--outage-secs` as a length: a positive, finite number of seconds.
fn outage_length(secs: f64) -> anyhow::Result<Duration> {
    match Duration::try_from_secs_f64(secs) {
        Ok(length) if !length.is_zero() => Ok(length),
        _ => Err(CliError::usage(format!(
            "--outage-secs must be a positive number of seconds, not {secs}"
        ))
        .into()),
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
