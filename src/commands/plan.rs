//! `audience-sync plan`: what the next run would emit, changing nothing.

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::json;

use super::output::stdout;
use crate::cli::PlanArgs;
use crate::intercom::ratelimit::Persisted;
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
        company_attribute_prefix: &settings.intercom.company_attribute_prefix,
    };
    let report = plan::run(&mut conn, &settings.personas, &options, Output::Plan)?;
    let budget = EtaBudget::current(settings, store::budget::rate_limit(&conn)?);
    if args.json {
        writeln!(
            stdout(),
            "{}",
            serde_json::to_string_pretty(&report_json_with(settings, &report, &budget))?
        )?;
    } else {
        stdout().write_all(report_text_with(settings, &report, &budget).as_bytes())?;
    }
    Ok(())
}

/// The budget the Intercom time estimate assumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtaBudget {
    /// Requests per window.
    pub requests: u32,
    pub window_secs: u64,
    /// Where `requests` comes from.
    pub source: BudgetSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetSource {
    /// `intercom.rate_limit`.
    Settings,
    /// `intercom.rate_limit = "auto"` before Intercom announced a budget: what Intercom
    /// documents for a private app (10,000 a minute).
    Documented,
    /// The budget Intercom announced last (`intercom_rate_limit`): with `"auto"` the budget,
    /// with a number when lower than it.
    Announced,
}

impl BudgetSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetSource::Settings => "settings",
            BudgetSource::Documented => "documented",
            BudgetSource::Announced => "announced",
        }
    }
}

impl EtaBudget {
    /// The settings' budget (for `"auto"`, Intercom's documented one).
    pub fn settings(settings: &Settings) -> EtaBudget {
        EtaBudget {
            requests: settings.intercom.rate_limit_estimate().max(1),
            window_secs: settings.intercom.rate_limit_window.as_secs().max(1),
            source: if settings.intercom.rate_limit_is_auto() {
                BudgetSource::Documented
            } else {
                BudgetSource::Settings
            },
        }
    }

    /// The last budget Intercom announced (persisted by delivery): with `"auto"` that is the
    /// budget; with a number, when it is lower than the number. Else the settings'.
    pub fn current(settings: &Settings, persisted: Option<Persisted>) -> EtaBudget {
        let configured = EtaBudget::settings(settings);
        let auto = settings.intercom.rate_limit_is_auto();
        match persisted {
            Some(p) if p.limit > 0 && (auto || p.limit < configured.requests) => EtaBudget {
                requests: p.limit,
                source: BudgetSource::Announced,
                ..configured
            },
            _ => configured,
        }
    }

    /// Seconds `requests` take at this budget.
    pub fn secs(&self, requests: u64) -> f64 {
        requests as f64 * self.window_secs as f64 / f64::from(self.requests)
    }
}

pub fn report_json_with(
    settings: &Settings,
    report: &Report,
    budget: &EtaBudget,
) -> serde_json::Value {
    let requests = report.requests.total();
    let mut value = serde_json::to_value(report).expect("a report serialises");
    value["messages"]["group"] = json!(report.messages.group());
    value["messages"]["total"] = json!(report.messages.total());
    value["requests"]["total"] = json!(requests);
    value["intercom"] = json!({
        "requests": requests,
        "rate_limit": budget.requests,
        "rate_limit_window_secs": budget.window_secs,
        "rate_limit_source": budget.source.as_str(),
        "settings_rate_limit": settings.intercom.rate_limit_text(),
        "seconds": budget.secs(requests).ceil() as u64,
    });
    value
}

/// The report with the time estimate at the settings' budget (see [`report_text_with`]).
pub fn report_text(settings: &Settings, report: &Report) -> String {
    report_text_with(settings, report, &EtaBudget::settings(settings))
}

pub fn report_text_with(settings: &Settings, report: &Report, budget: &EtaBudget) -> String {
    let mut out = String::new();
    // A run whose every planned computation has its initial sync is the initial sync.
    let planned: Vec<_> = report
        .computations
        .iter()
        .filter(|c| c.skipped.is_none())
        .collect();
    let heading = if report.mode == RunMode::Incremental
        && !planned.is_empty()
        && planned.iter().all(|c| c.mode == RunMode::Full)
    {
        "Initial sync".to_string()
    } else {
        format!("{} run", capitalised(report.mode.as_str()))
    };
    let _ = writeln!(out, "{heading}");
    if report.resumed {
        let _ = writeln!(
            out,
            "  run {} was unfinished (a crash or a stop ended it): these are the counts of what \
             is left of it after its last committed chunk",
            report.run_id.unwrap_or_default()
        );
    }
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
    let r = &report.requests;
    let requests = r.total();
    let _ = writeln!(
        out,
        "Requests: {} contact lookups ({} users without a known id), {} contacts created, {} \
         updated, {} events, {} company upserts, {} attaches, {} detaches, {} data attributes{}",
        r.lookups,
        r.unknown_users,
        r.creates,
        r.updates,
        r.events,
        r.companies,
        r.attaches,
        r.detaches + r.company_lookups,
        r.attributes,
        if r.attribute_lists > 0 {
            " (and the attribute list)"
        } else {
            ""
        }
    );
    let source = match budget.source {
        BudgetSource::Settings => "the settings' budget".to_string(),
        BudgetSource::Documented => {
            "Intercom's documented 10,000 a minute, until it announces the app's budget".to_string()
        }
        BudgetSource::Announced if settings.intercom.rate_limit_is_auto() => {
            "the budget Intercom announced last".to_string()
        }
        BudgetSource::Announced => format!(
            "the budget Intercom announced last, below the settings' {}",
            settings.intercom.rate_limit
        ),
    };
    let _ = writeln!(
        out,
        "Intercom: about {requests} requests, {} at {} requests per {} s ({source})",
        duration(budget.secs(requests)),
        budget.requests,
        budget.window_secs,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn persisted(limit: u32) -> Option<Persisted> {
        Some(Persisted {
            limit,
            remaining: 0,
            reset_at: 0,
        })
    }

    #[test]
    fn with_auto_the_estimate_is_the_announced_budget_or_the_documented_one() {
        let settings = Settings::defaults().unwrap();
        assert!(settings.intercom.rate_limit_is_auto());
        let window = settings.intercom.rate_limit_window.as_secs();
        let before = EtaBudget::current(&settings, None);
        assert_eq!(before.source, BudgetSource::Documented);
        assert_eq!(before.requests, 1666, "10,000 a minute in 10 s windows");
        // Announced: that is the budget, higher or lower.
        for limit in [83, 5000] {
            let announced = EtaBudget::current(&settings, persisted(limit));
            assert_eq!(announced.requests, limit);
            assert_eq!(announced.source, BudgetSource::Announced);
            assert_eq!(announced.window_secs, window);
        }
    }

    #[test]
    fn the_estimate_uses_a_lower_announced_budget() {
        let mut settings = Settings::defaults().unwrap();
        settings.intercom.rate_limit = 83;
        let configured = settings.intercom.rate_limit;
        let window = settings.intercom.rate_limit_window.as_secs();
        assert_eq!(
            EtaBudget::current(&settings, None),
            EtaBudget {
                requests: configured,
                window_secs: window,
                source: BudgetSource::Settings
            }
        );
        // A larger announced budget (Intercom's per-app 1,666) does not raise the settings'.
        assert_eq!(
            EtaBudget::current(&settings, persisted(configured + 100)).source,
            BudgetSource::Settings
        );
        let lower = EtaBudget::current(&settings, persisted(40));
        assert_eq!(lower.requests, 40);
        assert_eq!(lower.window_secs, window);
        assert_eq!(lower.source, BudgetSource::Announced);
        assert_eq!(lower.secs(80), 2.0 * window as f64);
    }
}
