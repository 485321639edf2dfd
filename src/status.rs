//! The status report: computations, snapshots, runs and the outbox, as text or JSON.

use std::fmt::Write as _;

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use crate::store::snapshots::{self, rfc3339};

#[derive(Debug, Serialize)]
pub struct Status {
    pub database: String,
    pub computations: Vec<ComputationStatus>,
    pub membership: Option<SnapshotStatus>,
    pub outbox: OutboxStatus,
    /// Set while delivery is paused because Intercom is unreachable.
    pub intercom_unreachable: Option<UnreachableStatus>,
    pub runs: Vec<RunStatus>,
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

pub fn collect(conn: &Connection, database: &str) -> rusqlite::Result<Status> {
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
    Ok(Status {
        database: database.to_string(),
        computations,
        membership,
        outbox: outbox(conn)?,
        intercom_unreachable: crate::store::intercom::outage(conn)?.map(|o| UnreachableStatus {
            since: rfc3339(o.since),
            failed_probes: o.probes,
            last_error: o.last_error,
            updated_at: rfc3339(o.updated_at),
        }),
        runs: runs(conn)?,
    })
}

fn outbox(conn: &Connection) -> rusqlite::Result<OutboxStatus> {
    let mut status = OutboxStatus::default();
    let mut stmt = conn.prepare(
        "SELECT status, attempts > 0 OR failing_since IS NOT NULL, count(*) FROM outbox \
         GROUP BY 1, 2",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let state: String = row.get(0)?;
        let tried: bool = row.get(1)?;
        let n: i64 = row.get(2)?;
        match (state.as_str(), tried) {
            ("pending", false) => status.pending += n,
            ("pending", true) => status.retrying += n,
            ("delivered", _) => status.delivered += n,
            ("dead", _) => status.dead += n,
            _ => {}
        }
    }
    status.oldest_pending = conn
        .query_row(
            "SELECT min(enqueued_at) FROM outbox WHERE status = 'pending'",
            [],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten()
        .map(rfc3339);
    Ok(status)
}

fn runs(conn: &Connection) -> rusqlite::Result<Vec<RunStatus>> {
    let mut stmt = conn.prepare(
        "SELECT id, mode, status, started_at, finished_at, \
                messages_identify + messages_track + messages_group \
         FROM runs ORDER BY id DESC LIMIT ?1",
    )?;
    stmt.query_map([RECENT_RUNS as i64], |r| {
        Ok(RunStatus {
            id: r.get(0)?,
            mode: r.get(1)?,
            status: r.get(2)?,
            started_at: rfc3339(r.get(3)?),
            finished_at: r.get::<_, Option<i64>>(4)?.map(rfc3339),
            messages: r.get(5)?,
        })
    })?
    .collect()
}

/// The report as text for a person.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Database: {}", status.database);
    let _ = writeln!(out);
    if status.computations.is_empty() {
        let _ = writeln!(
            out,
            "No computations yet: load a snapshot with `audience-sync load`."
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
