//! Process metrics: counters the delivery engine and runs increment, rendered in the Prometheus
//! text format together with gauges read from the database at scrape time.
//!
//! A small hand-written registry: a handful of labelled counters does not justify an exporter
//! crate and its dependency tree. Labels are kept sorted so a series has one identity.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

/// Every counter and gauge this process exports, with its help text. A name not listed here is
/// still exported, as `untyped`.
pub const DESCRIPTIONS: &[(&str, &str, &str)] = &[
    (
        "audience_sync_messages_enqueued_total",
        "counter",
        "Messages written to the outbox, by type.",
    ),
    (
        "audience_sync_messages_delivered_total",
        "counter",
        "Messages Intercom confirmed, by type.",
    ),
    (
        "audience_sync_messages_retried_total",
        "counter",
        "Delivery attempts that will be retried, by type.",
    ),
    (
        "audience_sync_messages_dead_total",
        "counter",
        "Messages that failed for good (dead letters), by type.",
    ),
    (
        "audience_sync_intercom_requests_total",
        "counter",
        "Intercom requests by endpoint and HTTP status (status=\"none\": no response).",
    ),
    (
        "audience_sync_intercom_rate_limited_total",
        "counter",
        "Intercom 429 responses.",
    ),
    (
        "audience_sync_runs_total",
        "counter",
        "Runs by mode and outcome.",
    ),
    (
        "audience_sync_rate_limit_remaining",
        "gauge",
        "Requests left in the current rate-limit window, as last announced or estimated.",
    ),
    (
        "audience_sync_outbox_messages",
        "gauge",
        "Outbox messages by status.",
    ),
    (
        "audience_sync_outbox_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest message not yet delivered (0 when none).",
    ),
    (
        "audience_sync_last_run_timestamp_seconds",
        "gauge",
        "When the last run started (unix seconds).",
    ),
    (
        "audience_sync_last_run_duration_seconds",
        "gauge",
        "How long the last finished run took, planning and delivery.",
    ),
    (
        "audience_sync_computes_total",
        "counter",
        "Queries of SQL-defined computations run before scheduled runs, by computation (\"[membership]\": the membership query) and outcome (stored, failed).",
    ),
    (
        "audience_sync_compute_failed",
        "gauge",
        "1 while a SQL-defined computation's last query failed (its previous snapshot stays), by computation.",
    ),
    (
        "audience_sync_compute_rows",
        "gauge",
        "Rows the last successful query of a SQL-defined computation stored, by computation.",
    ),
    (
        "audience_sync_compute_duration_seconds",
        "gauge",
        "How long the last query of a SQL-defined computation took (checking and storing included), by computation.",
    ),
    (
        "audience_sync_computation_rows",
        "gauge",
        "Rows in each computation's newest complete snapshot.",
    ),
    (
        "audience_sync_delivery_stopped",
        "gauge",
        "1 when delivery stopped (a wrong or insufficient access token), else 0.",
    ),
    (
        "audience_sync_intercom_unreachable",
        "gauge",
        "1 while delivery is paused because Intercom is unreachable (every request failing with \
         5xx, 408, a timeout or no connection), else 0.",
    ),
    (
        "audience_sync_intercom_probes_total",
        "counter",
        "Probe requests sent while Intercom was unreachable, by result (failed, answered).",
    ),
    (
        "audience_sync_messages_throttled_total",
        "counter",
        "Messages sent again after Intercom kept answering 429 (no attempt counted), by type.",
    ),
    (
        "audience_sync_outbox_pending_limit",
        "gauge",
        "plan.max_pending_messages: planning waits while this many messages are undelivered \
         (compare audience_sync_outbox_messages{status=\"pending\"}).",
    ),
    (
        "audience_sync_database_bytes",
        "gauge",
        "Size of the database on disk, by file (main, wal).",
    ),
    (
        "audience_sync_database_free_bytes",
        "gauge",
        "Free pages inside the database file (freelist_count x page_size): reused by new rows, \
         returned to the file system by prune.",
    ),
    (
        "audience_sync_last_prune_timestamp_seconds",
        "gauge",
        "When the last prune (audience-sync prune, or the daemon's after a run) started (unix \
         seconds).",
    ),
    (
        "audience_sync_last_prune_bytes_returned",
        "gauge",
        "Bytes the last prune returned to the file system.",
    ),
    (
        "audience_sync_last_prune_removed",
        "gauge",
        "What the last prune removed, by kind (delivered_messages, runs, snapshots, \
         snapshot_rows, membership_snapshots, membership_rows).",
    ),
    (
        "audience_sync_last_prune_failed",
        "gauge",
        "1 when the last prune failed (see `audience-sync status`), else 0.",
    ),
    (
        "audience_sync_planning_failed",
        "gauge",
        "1 while the daemon's last run failed to plan (a full disk, say), else 0; delivery goes \
         on.",
    ),
    ("audience_sync_up", "gauge", "1 while the process runs."),
];

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Registry {
    counters: BTreeMap<(String, Labels), u64>,
    gauges: BTreeMap<(String, Labels), f64>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    let mut labels: Labels = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    labels
}

/// Add `by` to a counter.
pub fn add(name: &str, pairs: &[(&str, &str)], by: u64) {
    let mut registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    *registry
        .counters
        .entry((name.to_string(), labels(pairs)))
        .or_default() += by;
}

/// Add one to a counter.
pub fn inc(name: &str, pairs: &[(&str, &str)]) {
    add(name, pairs, 1);
}

/// Set a gauge the process itself keeps (gauges read from the database are passed to [`render`]).
pub fn set(name: &str, pairs: &[(&str, &str)], value: f64) {
    let mut registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    registry
        .gauges
        .insert((name.to_string(), labels(pairs)), value);
}

/// The current value of a counter (for tests and the status report).
pub fn counter(name: &str, pairs: &[(&str, &str)]) -> u64 {
    let registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    registry
        .counters
        .get(&(name.to_string(), labels(pairs)))
        .copied()
        .unwrap_or(0)
}

/// A gauge sample computed at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// The Prometheus text exposition (format 0.0.4) of every counter and gauge, plus `extra`.
pub fn render(extra: &[Sample]) -> String {
    let registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut series: BTreeMap<&str, Vec<(Labels, String)>> = BTreeMap::new();
    for ((name, labels), value) in &registry.counters {
        series
            .entry(name)
            .or_default()
            .push((labels.clone(), value.to_string()));
    }
    for ((name, labels), value) in &registry.gauges {
        series
            .entry(name)
            .or_default()
            .push((labels.clone(), format_float(*value)));
    }
    for sample in extra {
        let labels = labels(
            &sample
                .labels
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        series
            .entry(sample.name)
            .or_default()
            .push((labels, format_float(sample.value)));
    }
    let mut out = String::new();
    for (name, rows) in series {
        let (kind, help) = DESCRIPTIONS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, kind, help)| (*kind, *help))
            .unwrap_or(("untyped", ""));
        if !help.is_empty() {
            let _ = writeln!(out, "# HELP {name} {help}");
        }
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in rows {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let inner: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = writeln!(out, "{name}{{{}}} {value}", inner.join(","));
            }
        }
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_float(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_sorted_escaped_labels() {
        add(
            "audience_sync_test_total",
            &[("type", "identify"), ("a", "x\"y")],
            2,
        );
        inc(
            "audience_sync_test_total",
            &[("a", "x\"y"), ("type", "identify")],
        );
        assert_eq!(
            counter(
                "audience_sync_test_total",
                &[("type", "identify"), ("a", "x\"y")]
            ),
            3
        );
        let text = render(&[Sample {
            name: "audience_sync_computation_rows",
            labels: vec![("computation", "vip".to_string())],
            value: 12.0,
        }]);
        assert!(
            text.contains("audience_sync_test_total{a=\"x\\\"y\",type=\"identify\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE audience_sync_computation_rows gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("audience_sync_computation_rows{computation=\"vip\"} 12\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE audience_sync_test_total untyped\n"),
            "{text}"
        );
    }
}
