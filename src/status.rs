//! The status report: computations, snapshots, runs, the outbox against its bound, the
//! database's size and the last prune, as text or JSON.

use std::fmt::Write as _;
use std::path::Path;

use crate::store::Connection;
use serde::Serialize;

use crate::settings::ComputeSettings;
use crate::store::retention::{self, PruneRecord};
use crate::store::snapshots::{self, rfc3339};
use crate::store::{self, DatabaseSize, outbox, state};

#[derive(Debug, Serialize)]
pub struct Status {
    pub database: String,
    /// The database's files on disk and the free pages inside.
    pub database_size: DatabaseSize,
    pub computations: Vec<ComputationStatus>,
    pub membership: Option<SnapshotStatus>,
    pub outbox: OutboxStatus,
    /// Set while delivery is paused because Intercom is unreachable.
    pub intercom_unreachable: Option<UnreachableStatus>,
    pub runs: Vec<RunStatus>,
    /// The newest prune (`audience-sync prune` or the daemon's), failed or not.
    pub last_prune: Option<LastPrune>,
    /// The last compute of each SQL-defined computation (and of the membership query), and the
    /// ones settings define that were never computed.
    pub computes: Vec<ComputeStatus>,
}

#[derive(Debug, Serialize)]
pub struct ComputeStatus {
    /// The computation's key; `None` for the membership query.
    pub computation: Option<String>,
    /// Defined in the settings this report was made with.
    pub in_settings: bool,
    /// The last compute (`None`: never computed).
    pub last: Option<LastCompute>,
}

#[derive(Debug, Serialize)]
pub struct LastCompute {
    /// When it started (RFC 3339).
    pub at: String,
    /// What `:now` was (RFC 3339).
    pub now: String,
    pub origin: &'static str,
    pub took_ms: u64,
    pub snapshot_id: Option<i64>,
    pub rows: Option<u64>,
    /// Why it stored nothing.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LastPrune {
    /// When it started (RFC 3339).
    pub at: String,
    #[serde(flatten)]
    pub record: PruneRecord,
}

#[derive(Debug, Serialize)]
pub struct UnreachableStatus {
    /// When the pause began (RFC 3339).
    pub since: String,
    pub failed_probes: i64,
    pub last_error: Option<String>,
    /// When the delivering process last wrote this (RFC 3339).
    pub updated_at: String,
}

#[derive(Debug, Serialize)]
pub struct ComputationStatus {
    pub key: String,
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    pub scope: &'static str,
    pub enabled: bool,
    pub snapshot: Option<SnapshotStatus>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotStatus {
    pub id: i64,
    pub taken_at: String,
    pub rows: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct OutboxStatus {
    /// Waiting for their first delivery attempt.
    pub pending: i64,
    /// Waiting after at least one failed attempt (or transient failure).
    pub retrying: i64,
    pub delivered: i64,
    pub dead: i64,
    /// Enqueue time of the oldest message not yet delivered (RFC 3339).
    pub oldest_pending: Option<String>,
    /// Messages not yet delivered (pending + retrying): the outbox's depth.
    pub undelivered: i64,
    /// Its bound, `plan.max_pending_messages`: planning waits while the depth reaches it.
    pub pending_limit: u64,
}

#[derive(Debug, Serialize)]
pub struct RunStatus {
    pub id: i64,
    pub mode: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub messages: i64,
}

/// How many runs the report lists.
const RECENT_RUNS: usize = 5;

/// The report on the database at `database`, open on `conn`; `pending_limit` is
/// `plan.max_pending_messages`, `compute` the SQL-defined computations of the settings.
pub fn collect(
    conn: &Connection,
    database: &Path,
    pending_limit: u64,
    compute: &ComputeSettings,
) -> crate::store::Result<Status> {
    let mut computations = Vec::new();
    for c in snapshots::computations(conn)? {
        let snapshot =
            snapshots::newest_snapshot(conn, &c.id)?.map(|(id, taken_at, rows)| SnapshotStatus {
                id,
                taken_at: rfc3339(taken_at),
                rows,
            });
        computations.push(ComputationStatus {
            key: c.key,
            id: c.id,
            name: c.name,
            kind: c.kind.as_str(),
            scope: c.scope.as_str(),
            enabled: c.enabled,
            snapshot,
        });
    }
    let membership =
        snapshots::newest_membership(conn)?.map(|(id, taken_at, rows)| SnapshotStatus {
            id,
            taken_at: rfc3339(taken_at),
            rows,
        });
    let mut outbox = outbox(conn)?;
    outbox.undelivered = outbox.pending + outbox.retrying;
    outbox.pending_limit = pending_limit;
    Ok(Status {
        database: database.display().to_string(),
        database_size: store::database_size(conn, database)?,
        computations,
        membership,
        outbox,
        intercom_unreachable: crate::store::outage::current(conn)?.map(|o| UnreachableStatus {
            since: rfc3339(o.since),
            failed_probes: o.probes,
            last_error: o.last_error,
            updated_at: rfc3339(o.updated_at),
        }),
        runs: runs(conn)?,
        last_prune: retention::last_prune(conn)?.map(|record| LastPrune {
            at: rfc3339(record.started_at),
            record,
        }),
        computes: computes(conn, compute)?,
    })
}

fn computes(
    conn: &Connection,
    settings: &ComputeSettings,
) -> crate::store::Result<Vec<ComputeStatus>> {
    let mut defined: Vec<Option<String>> = settings
        .computations
        .iter()
        .map(|c| Some(c.key.clone()))
        .collect();
    if settings.membership.is_some() {
        defined.push(None);
    }
    let mut out: Vec<ComputeStatus> = Vec::new();
    for record in crate::store::compute::last_computes(conn)? {
        let (snapshot_id, rows, error) = match record.outcome {
            Ok((snapshot, rows)) => (Some(snapshot), Some(rows), None),
            Err(reason) => (None, None, Some(reason)),
        };
        out.push(ComputeStatus {
            in_settings: defined.contains(&record.computation),
            computation: record.computation,
            last: Some(LastCompute {
                at: rfc3339(record.started_at),
                now: rfc3339(record.now),
                origin: record.origin.as_str(),
                took_ms: record.took_ms,
                snapshot_id,
                rows,
                error,
            }),
        });
    }
    for key in defined {
        if !out.iter().any(|c| c.computation == key) {
            out.push(ComputeStatus {
                computation: key,
                in_settings: true,
                last: None,
            });
        }
    }
    Ok(out)
}

fn outbox(conn: &Connection) -> crate::store::Result<OutboxStatus> {
    let counts = outbox::outbox_counts(conn)?;
    Ok(OutboxStatus {
        pending: counts.pending,
        retrying: counts.retrying,
        delivered: counts.delivered,
        dead: counts.dead,
        oldest_pending: outbox::oldest_pending_enqueued_at(conn)?.map(rfc3339),
        ..OutboxStatus::default()
    })
}

fn runs(conn: &Connection) -> crate::store::Result<Vec<RunStatus>> {
    Ok(state::recent_runs(conn, RECENT_RUNS)?
        .into_iter()
        .map(|r| RunStatus {
            id: r.id,
            mode: r.mode,
            // A run still being planned (or interrupted: the next run resumes it) says how far
            // it got.
            status: match r.chunks_committed {
                Some(chunks) => format!("planning or interrupted: {chunks} chunks committed"),
                None => r.status,
            },
            started_at: rfc3339(r.started_at),
            finished_at: r.finished_at.map(rfc3339),
            messages: r.messages,
        })
        .collect())
}

/// The report as text for a person.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Database: {}", status.database);
    let size = &status.database_size;
    let _ = writeln!(
        out,
        "  {} on disk ({} file + {} write-ahead log); {} free inside ({} page{} reused by new \
         rows)",
        bytes(size.file_bytes + size.wal_bytes),
        bytes(size.file_bytes),
        bytes(size.wal_bytes),
        bytes(size.free_bytes),
        thousands(size.free_pages),
        plural(size.free_pages)
    );
    let _ = writeln!(out);
    if status.computations.is_empty() {
        let _ = writeln!(
            out,
            "No computations yet: load a snapshot with `audience-sync load`, or define one in \
             settings ([[computations]]) and run `audience-sync compute`."
        );
    } else {
        let _ = writeln!(
            out,
            "{:<32} {:<8} {:<7} {:<8} {:>10}  SNAPSHOT TAKEN AT",
            "COMPUTATION", "KIND", "SCOPE", "ENABLED", "ROWS"
        );
        for c in &status.computations {
            let (rows, taken) = match &c.snapshot {
                Some(s) => (s.rows.to_string(), s.taken_at.clone()),
                None => ("-".to_string(), "no complete snapshot".to_string()),
            };
            let _ = writeln!(
                out,
                "{:<32} {:<8} {:<7} {:<8} {:>10}  {}",
                c.key,
                c.kind,
                c.scope,
                if c.enabled { "yes" } else { "no" },
                rows,
                taken
            );
        }
    }
    let _ = writeln!(out);
    match &status.membership {
        Some(m) => {
            let _ = writeln!(
                out,
                "Account membership: {} rows, taken at {}",
                m.rows, m.taken_at
            );
        }
        None => {
            let _ = writeln!(out, "Account membership: no snapshot");
        }
    }
    let o = &status.outbox;
    let _ = writeln!(
        out,
        "Outbox: {} pending, {} retrying, {} delivered, {} dead{}",
        o.pending,
        o.retrying,
        o.delivered,
        o.dead,
        o.oldest_pending
            .as_ref()
            .map(|t| format!(" (oldest pending enqueued {t})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  {} undelivered of at most {} (plan.max_pending_messages){}",
        thousands(o.undelivered.max(0) as u64),
        thousands(o.pending_limit),
        if o.undelivered.max(0) as u64 >= o.pending_limit {
            ": planning waits for delivery"
        } else {
            ""
        }
    );
    if let Some(u) = &status.intercom_unreachable {
        let _ = writeln!(
            out,
            "Intercom: unreachable since {}, delivery paused ({} probes failed{}; as of {})",
            u.since,
            u.failed_probes,
            u.last_error
                .as_ref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default(),
            u.updated_at
        );
    }
    match &status.last_prune {
        None => {
            let _ = writeln!(out, "Last prune: none yet");
        }
        Some(p) => {
            let r = &p.record;
            let removed = format!(
                "{} delivered message{}, {} run{}, {} snapshot{} ({} rows), {} membership \
                 snapshot{} ({} rows)",
                thousands(r.delivered_messages),
                plural(r.delivered_messages),
                thousands(r.runs),
                plural(r.runs),
                thousands(r.snapshots),
                plural(r.snapshots),
                thousands(r.snapshot_rows),
                thousands(r.membership_snapshots),
                plural(r.membership_snapshots),
                thousands(r.membership_rows),
            );
            let by = match r.origin {
                retention::Origin::Command => "audience-sync prune",
                retention::Origin::Daemon => "the daemon",
            };
            match &r.error {
                None => {
                    let _ = writeln!(
                        out,
                        "Last prune: {} by {by}, removed {removed}; returned {} to the file system",
                        p.at,
                        bytes(r.bytes_returned)
                    );
                }
                Some(error) => {
                    let _ = writeln!(
                        out,
                        "Last prune: {} by {by}, FAILED: {error} (removed {removed} before that)",
                        p.at
                    );
                }
            }
        }
    }
    if !status.computes.is_empty() {
        let _ = writeln!(out, "SQL computations (audience-sync compute):");
        for c in &status.computes {
            let name = c.computation.as_deref().unwrap_or("[membership]");
            let note = if c.in_settings {
                ""
            } else {
                " (no longer in settings)"
            };
            match &c.last {
                None => {
                    let _ = writeln!(out, "  {name}: never computed");
                }
                Some(l) => match &l.error {
                    None => {
                        let _ = writeln!(
                            out,
                            "  {name}: {} rows at {} (:now {}) by {}, {:.2}s, snapshot {}{note}",
                            thousands(l.rows.unwrap_or(0)),
                            l.at,
                            l.now,
                            l.origin,
                            l.took_ms as f64 / 1000.0,
                            l.snapshot_id.unwrap_or_default()
                        );
                    }
                    Some(error) => {
                        let _ = writeln!(
                            out,
                            "  {name}: FAILED at {} by {}: {error}; its previous snapshot stays{note}",
                            l.at, l.origin
                        );
                    }
                },
            }
        }
    }
    if status.runs.is_empty() {
        let _ = writeln!(out, "Runs: none yet");
    } else {
        let _ = writeln!(out, "Recent runs:");
        for r in &status.runs {
            let _ = writeln!(
                out,
                "  #{:<5} {:<12} {:<10} started {}  finished {}  {} messages",
                r.id,
                r.mode,
                r.status,
                r.started_at,
                r.finished_at.as_deref().unwrap_or("-"),
                r.messages
            );
        }
    }
    out
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// 1234567 → "1,234,567".
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A size for a person: "512 B", "4.0 KiB", "1.5 MiB", "2.25 GiB".
pub fn bytes(value: u64) -> String {
    const KIB: f64 = 1024.0;
    let v = value as f64;
    if v < KIB {
        format!("{value} B")
    } else if v < KIB * KIB {
        format!("{:.1} KiB", v / KIB)
    } else if v < KIB * KIB * KIB {
        format!("{:.1} MiB", v / KIB / KIB)
    } else {
        format!("{:.2} GiB", v / KIB / KIB / KIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_sizes_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
