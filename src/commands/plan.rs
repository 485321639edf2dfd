//! `audience-sync plan`: what the next run would emit, changing nothing.

use std::fmt::Write as _;

use serde_json::json;

use crate::cli::PlanArgs;
use crate::plan::{self, Output, Report, RunMode, RunOptions};
use crate::settings::Settings;
use crate::store;

pub fn plan(settings: &Settings, args: PlanArgs) -> anyhow::Result<()> {
    let mut conn = store::open(&settings.database.path)?;
    let options = RunOptions {
        mode: if args.full {
            RunMode::Full
        } else {
            RunMode::Incremental
        },
        computation: None,
        now: store::now_unix(),
    };
    let report = plan::run(&mut conn, &settings.personas, &options, Output::Plan)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(settings, &report))?
        );
    } else {
        print!("{}", report_text(settings, &report));
    }
    Ok(())
}

/// Seconds the requests take at the configured rate limit.
pub fn delivery_secs(settings: &Settings, requests: u64) -> f64 {
    let window = settings.intercom.rate_limit_window.as_secs_f64();
    requests as f64 * window / settings.intercom.rate_limit as f64
}

pub fn report_json(settings: &Settings, report: &Report) -> serde_json::Value {
    let requests = report.messages.requests();
    let mut value = serde_json::to_value(report).expect("a report serialises");
    value["messages"]["group"] = json!(report.messages.group());
    value["messages"]["total"] = json!(report.messages.total());
    value["intercom"] = json!({
        "requests": requests,
        "rate_limit": settings.intercom.rate_limit,
        "rate_limit_window_secs": settings.intercom.rate_limit_window.as_secs(),
        "seconds": delivery_secs(settings, requests).ceil() as u64,
    });
    value
}

pub fn report_text(settings: &Settings, report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} run", capitalised(report.mode.as_str()));
    if report.computations.is_empty() {
        let _ = writeln!(out, "  no enabled computations");
    } else {
        let _ = writeln!(
            out,
            "  {:<32} {:<8} {:<8} {:<11} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "computation",
            "scope",
            "kind",
            "mode",
            "entered",
            "exited",
            "changed",
            "resent",
            "users"
        );
        for c in &report.computations {
            match c.skipped {
                Some(why) => {
                    let _ = writeln!(out, "  {:<32} {:<8} {:<8} {}", c.key, c.scope, c.kind, why);
                }
                None => {
                    let users = if c.scope == "account" {
                        c.counts.users.to_string()
                    } else {
                        "-".to_string()
                    };
                    let _ = writeln!(
                        out,
                        "  {:<32} {:<8} {:<8} {:<11} {:>9} {:>9} {:>9} {:>9} {:>9}",
                        c.key,
                        c.scope,
                        c.kind,
                        c.mode.as_str(),
                        c.counts.entered,
                        c.counts.exited,
                        c.counts.changed,
                        c.counts.resent,
                        users
                    );
                }
            }
        }
    }
    if let Some(m) = &report.membership {
        match m.skipped {
            Some(why) => {
                let _ = writeln!(out, "  account membership: {why}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "  account membership: {} attached, {} detached",
                    m.attached, m.detached
                );
            }
        }
    }
    let n = &report.messages;
    let _ = writeln!(
        out,
        "Messages: {} identify, {} track, {} group ({} attach, {} account), {} in all",
        n.identify,
        n.track,
        n.group(),
        n.group_user,
        n.group_account,
        n.total()
    );
    let requests = n.requests();
    let _ = writeln!(
        out,
        "Intercom: about {requests} requests, {} at {} requests per {} s",
        duration(delivery_secs(settings, requests)),
        settings.intercom.rate_limit,
        settings.intercom.rate_limit_window.as_secs()
    );
    out
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn duration(secs: f64) -> String {
    let secs = secs.ceil() as u64;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
    }
}
