//! Process metrics through `prometheus-client`: typed counter and gauge families the delivery
//! engine, the client and the daemon update ([`metrics`]), and the gauges `/metrics` reads from
//! the database at scrape time ([`DatabaseGauges`]), rendered in the Prometheus text format
//! (0.0.4).
//!
//! Every metric is registered here, once, with its help text; call sites use the typed fields
//! (`metrics().runs.get_or_create(&RunLabels { .. }).inc()`) and never spell a metric name.
//! README.md lists every metric (a test checks that none is missing). Counters are registered
//! without `_total`: the encoder adds it.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

use crate::domain::MessageKind;

/// The `Content-Type` of what [`render`] produces.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A float gauge.
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// A closed set of label values: an enum, its text, and its `EncodeLabelValue`.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in order.
            pub const ALL: &[$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_values! {
    /// A message's type (the outbox's `type`).
    MessageType { Identify => "identify", Track => "track", Group => "group" }
}

impl MessageType {
    /// The type of an outbox message's `kind` (the schema allows only the three).
    pub fn of(kind: &str) -> Option<MessageType> {
        MessageType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == kind)
    }
}

label_values! {
    /// A run's mode.
    Mode { Incremental => "incremental", Full => "full" }
}

label_values! {
    /// How a run ended.
    RunOutcome { Planned => "planned", Stopped => "stopped", Failed => "failed" }
}

label_values! {
    /// How a SQL-defined computation's query ended.
    ComputeOutcome { Stored => "stored", Failed => "failed" }
}

label_values! {
    /// What a probe sent while Intercom was unreachable got.
    ProbeResult { Failed => "failed", Answered => "answered" }
}

label_values! {
    /// An outbox message's status.
    OutboxStatus { Pending => "pending", Delivered => "delivered", Dead => "dead" }
}

label_values! {
    /// A file of the database.
    DatabaseFile { Main => "main", Wal => "wal" }
}

label_values! {
    /// What a prune removes.
    Pruned {
        DeliveredMessages => "delivered_messages",
        Runs => "runs",
        Snapshots => "snapshots",
        SnapshotRows => "snapshot_rows",
        MembershipSnapshots => "membership_snapshots",
        MembershipRows => "membership_rows",
    }
}

/// An Intercom answer's HTTP status, or none (no response: a timeout, no connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpStatus {
    NoResponse,
    Code(u16),
}

impl EncodeLabelValue for HttpStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        match self {
            HttpStatus::NoResponse => encoder.write_str("none"),
            HttpStatus::Code(code) => write!(encoder, "{code}"),
        }
    }
}

/// No labels, for a gauge that has no sample until it is known (a family with one series).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NoLabels;

impl EncodeLabelSet for NoLabels {
    fn encode(&self, _encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MessageLabels {
    pub r#type: MessageType,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// As [`crate::intercom::client::endpoint`] names it.
    pub endpoint: String,
    pub status: HttpStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProbeLabels {
    pub result: ProbeResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RunLabels {
    pub mode: Mode,
    pub outcome: RunOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ComputeLabels {
    /// The computation's key, `[membership]` for the membership query, `*` when none ran.
    pub computation: String,
    pub outcome: ComputeOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ComputationLabels {
    pub computation: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutboxLabels {
    pub status: OutboxStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FileLabels {
    pub file: DatabaseFile,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PrunedLabels {
    pub what: Pruned,
}

/// What the process itself counts and sets. One instance, [`metrics`].
#[derive(Debug)]
pub struct Metrics {
    pub messages_enqueued: Family<MessageLabels, Counter>,
    pub messages_delivered: Family<MessageLabels, Counter>,
    pub messages_retried: Family<MessageLabels, Counter>,
    pub messages_dead: Family<MessageLabels, Counter>,
    pub messages_throttled: Family<MessageLabels, Counter>,
    pub intercom_requests: Family<RequestLabels, Counter>,
    pub intercom_rate_limited: Counter,
    pub intercom_probes: Family<ProbeLabels, Counter>,
    /// No sample until Intercom first answers.
    pub rate_limit_remaining: Family<NoLabels, Gauge>,
    pub runs: Family<RunLabels, Counter>,
    pub computes: Family<ComputeLabels, Counter>,
    pub compute_failed: Family<ComputationLabels, Gauge>,
    pub compute_rows: Family<ComputationLabels, Gauge>,
    pub compute_duration_seconds: Family<ComputationLabels, FloatGauge>,
    pub delivery_stopped: Gauge,
    pub intercom_unreachable: Gauge,
    pub planning_failed: Gauge,
    pub next_run_timestamp_seconds: Gauge,
    pub up: Gauge,
    registry: Registry,
    names: Vec<String>,
}

/// A registry that also keeps the exported name of every metric registered (for [`names`]).
#[derive(Debug, Default)]
struct Registrar {
    registry: Registry,
    names: Vec<String>,
}

impl Registrar {
    /// Register `metric` as `name`; `help` is written without its final period (the encoder
    /// adds it), a counter's `name` without `_total` (the encoder adds that too).
    fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.names.push(match metric.metric_type() {
            MetricType::Counter => format!("{name}_total"),
            _ => name.to_string(),
        });
        self.registry
            .register(name, help.trim_end_matches('.'), metric);
    }
}

impl Metrics {
    fn new() -> Metrics {
        let metrics = Metrics {
            messages_enqueued: Family::default(),
            messages_delivered: Family::default(),
            messages_retried: Family::default(),
            messages_dead: Family::default(),
            messages_throttled: Family::default(),
            intercom_requests: Family::default(),
            intercom_rate_limited: Counter::default(),
            intercom_probes: Family::default(),
            rate_limit_remaining: Family::default(),
            runs: Family::default(),
            computes: Family::default(),
            compute_failed: Family::default(),
            compute_rows: Family::default(),
            compute_duration_seconds: Family::default(),
            delivery_stopped: Gauge::default(),
            intercom_unreachable: Gauge::default(),
            planning_failed: Gauge::default(),
            next_run_timestamp_seconds: Gauge::default(),
            up: Gauge::default(),
            registry: Registry::default(),
            names: Vec::new(),
        };
        metrics.up.set(1);
        let mut r = Registrar::default();
        r.register(
            "audience_sync_messages_enqueued",
            "Messages written to the outbox, by type",
            metrics.messages_enqueued.clone(),
        );
        r.register(
            "audience_sync_messages_delivered",
            "Messages Intercom confirmed, by type",
            metrics.messages_delivered.clone(),
        );
        r.register(
            "audience_sync_messages_retried",
            "Delivery attempts that will be retried, by type",
            metrics.messages_retried.clone(),
        );
        r.register(
            "audience_sync_messages_dead",
            "Messages that failed for good (dead letters), by type",
            metrics.messages_dead.clone(),
        );
        r.register(
            "audience_sync_messages_throttled",
            "Messages handed back to be sent again after Intercom kept answering 429 (no attempt \
             counted), by type",
            metrics.messages_throttled.clone(),
        );
        r.register(
            "audience_sync_intercom_requests",
            "Intercom requests by endpoint and HTTP status (status=\"none\": no response)",
            metrics.intercom_requests.clone(),
        );
        r.register(
            "audience_sync_intercom_rate_limited",
            "Intercom 429 responses",
            metrics.intercom_rate_limited.clone(),
        );
        r.register(
            "audience_sync_intercom_probes",
            "Probe requests sent while Intercom was unreachable, by result (failed, answered)",
            metrics.intercom_probes.clone(),
        );
        r.register(
            "audience_sync_rate_limit_remaining",
            "Requests left in the current rate-limit window, as last announced or estimated",
            metrics.rate_limit_remaining.clone(),
        );
        r.register(
            "audience_sync_runs",
            "Runs by mode and outcome (planned, stopped, failed)",
            metrics.runs.clone(),
        );
        r.register(
            "audience_sync_computes",
            "Queries of SQL-defined computations run before scheduled runs, by computation \
             (\"[membership]\": the membership query, \"*\": none could run) and outcome \
             (stored, failed)",
            metrics.computes.clone(),
        );
        r.register(
            "audience_sync_compute_failed",
            "1 while a SQL-defined computation's last query failed (its previous snapshot \
             stays), by computation",
            metrics.compute_failed.clone(),
        );
        r.register(
            "audience_sync_compute_rows",
            "Rows the last successful query of a SQL-defined computation stored, by computation",
            metrics.compute_rows.clone(),
        );
        r.register(
            "audience_sync_compute_duration_seconds",
            "How long the last query of a SQL-defined computation took (checking and storing \
             included), by computation",
            metrics.compute_duration_seconds.clone(),
        );
        r.register(
            "audience_sync_delivery_stopped",
            "1 when delivery stopped (a wrong or insufficient access token), else 0",
            metrics.delivery_stopped.clone(),
        );
        r.register(
            "audience_sync_intercom_unreachable",
            "1 while delivery is paused because Intercom is unreachable (every request failing \
             with 5xx, 408, a timeout or no connection), else 0",
            metrics.intercom_unreachable.clone(),
        );
        r.register(
            "audience_sync_planning_failed",
            "1 while the daemon's last run failed to plan (a full disk, say), else 0; delivery \
             goes on",
            metrics.planning_failed.clone(),
        );
        r.register(
            "audience_sync_next_run_timestamp_seconds",
            "When the daemon's next scheduled run starts, by schedule.cron (unix seconds); 0 \
             before the scheduler has said",
            metrics.next_run_timestamp_seconds.clone(),
        );
        r.register(
            "audience_sync_up",
            "1 while the process runs",
            metrics.up.clone(),
        );
        Metrics {
            registry: r.registry,
            names: r.names,
            ..metrics
        }
    }
}

/// Count one message of `kind` (an outbox message's type) in `family`.
pub fn count_message(family: &Family<MessageLabels, Counter>, kind: MessageKind) {
    let r#type = match kind {
        MessageKind::Identify => MessageType::Identify,
        MessageKind::Track => MessageType::Track,
        MessageKind::Group => MessageType::Group,
    };
    family.get_or_create(&MessageLabels { r#type }).inc();
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The gauges `/metrics` reads from the database (and `plan.max_pending_messages`) at scrape
/// time: set from one read, then rendered with the process's metrics. A gauge with no value yet
/// (no run, no prune) has no sample.
#[derive(Debug, Default)]
pub struct DatabaseGauges {
    pub outbox_messages: Family<OutboxLabels, Gauge>,
    pub outbox_oldest_pending_age_seconds: Gauge,
    pub outbox_pending_limit: Gauge,
    pub last_run_timestamp_seconds: Family<NoLabels, Gauge>,
    pub last_run_duration_seconds: Family<NoLabels, Gauge>,
    pub computation_rows: Family<ComputationLabels, Gauge>,
    pub database_bytes: Family<FileLabels, Gauge>,
    pub database_free_bytes: Gauge,
    pub last_prune_timestamp_seconds: Family<NoLabels, Gauge>,
    pub last_prune_bytes_returned: Family<NoLabels, Gauge>,
    pub last_prune_removed: Family<PrunedLabels, Gauge>,
    pub last_prune_failed: Family<NoLabels, Gauge>,
}

impl DatabaseGauges {
    fn registrar(&self) -> Registrar {
        let mut r = Registrar::default();
        r.register(
            "audience_sync_outbox_messages",
            "Outbox messages by status (pending, delivered, dead)",
            self.outbox_messages.clone(),
        );
        r.register(
            "audience_sync_outbox_oldest_pending_age_seconds",
            "Age of the oldest message not yet delivered (0 when none)",
            self.outbox_oldest_pending_age_seconds.clone(),
        );
        r.register(
            "audience_sync_outbox_pending_limit",
            "plan.max_pending_messages: planning waits while this many messages are undelivered \
             (compare audience_sync_outbox_messages{status=\"pending\"})",
            self.outbox_pending_limit.clone(),
        );
        r.register(
            "audience_sync_last_run_timestamp_seconds",
            "When the last run started (unix seconds)",
            self.last_run_timestamp_seconds.clone(),
        );
        r.register(
            "audience_sync_last_run_duration_seconds",
            "How long the last finished run took, planning and delivery",
            self.last_run_duration_seconds.clone(),
        );
        r.register(
            "audience_sync_computation_rows",
            "Rows in each computation's newest complete snapshot",
            self.computation_rows.clone(),
        );
        r.register(
            "audience_sync_database_bytes",
            "Size of the database on disk, by file (main, wal)",
            self.database_bytes.clone(),
        );
        r.register(
            "audience_sync_database_free_bytes",
            "Free pages inside the database file (freelist_count x page_size): reused by new \
             rows, returned to the file system by prune",
            self.database_free_bytes.clone(),
        );
        r.register(
            "audience_sync_last_prune_timestamp_seconds",
            "When the last prune (audience-sync prune, or the daemon's after a run) started \
             (unix seconds)",
            self.last_prune_timestamp_seconds.clone(),
        );
        r.register(
            "audience_sync_last_prune_bytes_returned",
            "Bytes the last prune returned to the file system",
            self.last_prune_bytes_returned.clone(),
        );
        r.register(
            "audience_sync_last_prune_removed",
            "What the last prune removed, by kind (delivered_messages, runs, snapshots, \
             snapshot_rows, membership_snapshots, membership_rows)",
            self.last_prune_removed.clone(),
        );
        r.register(
            "audience_sync_last_prune_failed",
            "1 when the last prune failed (see `audience-sync status`), else 0",
            self.last_prune_failed.clone(),
        );
        r
    }
}

/// The Prometheus text exposition (format 0.0.4) of the process's metrics, followed by
/// `database`'s gauges when the database could be read.
pub fn render(database: Option<&DatabaseGauges>) -> String {
    let mut out = String::new();
    prometheus_text::encode(&mut out, &metrics().registry).expect("writing to a String");
    if let Some(database) = database {
        prometheus_text::encode(&mut out, &database.registrar().registry)
            .expect("writing to a String");
    }
    out
}

/// The name of every metric `/metrics` can export (counters with their `_total`).
pub fn names() -> Vec<String> {
    let mut names = metrics().names.clone();
    names.extend(DatabaseGauges::default().registrar().names);
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_typed_families_with_their_labels_and_help() {
        let family: Family<ComputeLabels, Counter> = Family::default();
        family
            .get_or_create(&ComputeLabels {
                computation: "x\"y".into(),
                outcome: ComputeOutcome::Failed,
            })
            .inc_by(3);
        let mut r = Registrar::default();
        r.register("audience_sync_test", "A test.", family);
        assert_eq!(r.names, ["audience_sync_test_total"]);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &r.registry).unwrap();
        assert_eq!(
            text,
            "# HELP audience_sync_test_total A test.\n\
             # TYPE audience_sync_test_total counter\n\
             audience_sync_test_total{computation=\"x\\\"y\",outcome=\"failed\"} 3\n"
        );

        count_message(&metrics().messages_throttled, MessageKind::Track);
        count_message(&metrics().messages_throttled, MessageKind::Track);
        metrics()
            .intercom_requests
            .get_or_create(&RequestLabels {
                endpoint: "POST /events".into(),
                status: HttpStatus::NoResponse,
            })
            .inc();
        let gauges = DatabaseGauges::default();
        gauges
            .computation_rows
            .get_or_create(&ComputationLabels {
                computation: "vip".into(),
            })
            .set(12);
        let text = render(Some(&gauges));
        for line in [
            "# TYPE audience_sync_messages_throttled_total counter\n",
            "audience_sync_messages_throttled_total{type=\"track\"} 2\n",
            "audience_sync_intercom_requests_total{endpoint=\"POST /events\",status=\"none\"} 1\n",
            "# TYPE audience_sync_computation_rows gauge\n",
            "audience_sync_computation_rows{computation=\"vip\"} 12\n",
            "\naudience_sync_up 1\n",
            "# HELP audience_sync_intercom_rate_limited_total Intercom 429 responses.\n",
        ] {
            assert!(text.contains(line), "{line:?} missing: {text}");
        }
        assert!(!text.contains(".."), "{text}");
        assert!(!text.contains("untyped"), "{text}");
    }

    #[test]
    fn every_metric_is_documented_in_the_readme() {
        const README: &str = include_str!("../README.md");
        let names = names();
        assert!(names.len() >= 30, "{names:?}");
        for name in names {
            assert!(
                README.contains(&format!("`{name}`")),
                "{name} is not listed in README.md (Operations, Watch it)"
            );
        }
    }
}
