//! The operator's HTTP endpoints on `http.listen`: `/metrics` (Prometheus text) and `/healthz`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::store::Connection;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::{
    self, ComputationLabels, DatabaseFile, DatabaseGauges, FileLabels, NoLabels, OutboxLabels,
    OutboxStatus, Pruned, PrunedLabels, metrics,
};
use crate::store::retention::{self, PruneRecord};
use crate::store::{self, DatabaseSize, outbox, snapshots, state};

/// What the endpoints read: the database (opened read-only per request) and the health rule.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub database: PathBuf,
    /// `/healthz` fails when the oldest message not yet delivered is older than this.
    pub max_pending_age: Duration,
    /// `plan.max_pending_messages`: the outbox's bound, exported beside its depth.
    pub max_pending_messages: u64,
}

/// The figures `/metrics` and `/healthz` read from the database.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DatabaseFigures {
    pub outbox: Vec<(String, i64)>,
    pub oldest_pending_age_secs: i64,
    pub last_run_started_at: Option<i64>,
    pub last_run_duration_secs: Option<i64>,
    pub computation_rows: Vec<(String, i64)>,
    /// The database's files and free pages.
    pub size: DatabaseSize,
    pub last_prune: Option<PruneRecord>,
}

/// Read the gauges from the database at `path`, open on `conn`; `now` in unix seconds.
pub fn read_figures(
    conn: &Connection,
    path: &std::path::Path,
    now: i64,
) -> crate::store::Result<DatabaseFigures> {
    let mut figures = DatabaseFigures {
        size: store::database_size(conn, path)?,
        last_prune: retention::last_prune(conn)?,
        ..DatabaseFigures::default()
    };
    figures.outbox = outbox::messages_by_status(conn)?
        .into_iter()
        .map(|c| (c.status, c.messages))
        .collect();
    let oldest = outbox::oldest_pending_enqueued_at(conn)?;
    figures.oldest_pending_age_secs = oldest.map(|t| (now - t).max(0)).unwrap_or(0);
    if let Some(last) = state::recent_runs(conn, 1)?.into_iter().next() {
        figures.last_run_started_at = Some(last.started_at);
        figures.last_run_duration_secs = last.finished_at.map(|f| (f - last.started_at).max(0));
    }
    figures.computation_rows = snapshots::newest_snapshot_rows(conn)?
        .into_iter()
        .map(|c| (c.key, c.rows))
        .collect();
    Ok(figures)
}

/// The gauges `/metrics` exports from `figures`.
fn gauges(figures: &DatabaseFigures, max_pending_messages: u64) -> DatabaseGauges {
    let gauges = DatabaseGauges::default();
    gauges
        .outbox_oldest_pending_age_seconds
        .set(figures.oldest_pending_age_secs);
    gauges.outbox_pending_limit.set(max_pending_messages as i64);
    gauges
        .database_free_bytes
        .set(figures.size.free_bytes as i64);
    for (file, bytes) in [
        (DatabaseFile::Main, figures.size.file_bytes),
        (DatabaseFile::Wal, figures.size.wal_bytes),
    ] {
        gauges
            .database_bytes
            .get_or_create(&FileLabels { file })
            .set(bytes as i64);
    }
    if let Some(prune) = &figures.last_prune {
        gauges
            .last_prune_timestamp_seconds
            .get_or_create(&NoLabels)
            .set(prune.started_at);
        gauges
            .last_prune_bytes_returned
            .get_or_create(&NoLabels)
            .set(prune.bytes_returned as i64);
        gauges
            .last_prune_failed
            .get_or_create(&NoLabels)
            .set(i64::from(prune.error.is_some()));
        for (what, n) in [
            (Pruned::DeliveredMessages, prune.delivered_messages),
            (Pruned::Runs, prune.runs),
            (Pruned::Snapshots, prune.snapshots),
            (Pruned::SnapshotRows, prune.snapshot_rows),
            (Pruned::MembershipSnapshots, prune.membership_snapshots),
            (Pruned::MembershipRows, prune.membership_rows),
        ] {
            gauges
                .last_prune_removed
                .get_or_create(&PrunedLabels { what })
                .set(n as i64);
        }
    }
    for &status in OutboxStatus::ALL {
        let n = figures
            .outbox
            .iter()
            .find(|(s, _)| s == status.as_str())
            .map(|(_, n)| *n)
            .unwrap_or(0);
        gauges
            .outbox_messages
            .get_or_create(&OutboxLabels { status })
            .set(n);
    }
    if let Some(started) = figures.last_run_started_at {
        gauges
            .last_run_timestamp_seconds
            .get_or_create(&NoLabels)
            .set(started);
    }
    if let Some(duration) = figures.last_run_duration_secs {
        gauges
            .last_run_duration_seconds
            .get_or_create(&NoLabels)
            .set(duration);
    }
    for (key, rows) in &figures.computation_rows {
        gauges
            .computation_rows
            .get_or_create(&ComputationLabels {
                computation: key.clone(),
            })
            .set(*rows);
    }
    gauges
}

async fn figures(endpoints: &Endpoints) -> Result<DatabaseFigures, String> {
    let path = endpoints.database.clone();
    tokio::task::spawn_blocking(move || {
        let conn = crate::store::connection::open_for_scrape(&path).map_err(|e| e.to_string())?;
        read_figures(&conn, &path, crate::store::now_unix()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn metrics_handler(State(endpoints): State<Arc<Endpoints>>) -> impl IntoResponse {
    let database = match figures(&endpoints).await {
        Ok(figures) => Some(gauges(&figures, endpoints.max_pending_messages)),
        Err(error) => {
            tracing::warn!(%error, "Cannot read the database for /metrics.");
            None
        }
    };
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(database.as_ref()),
    )
}

/// The health verdict: `Ok` with a short text, or the reason it is unhealthy.
pub fn health(
    stopped: Option<String>,
    unreachable: Option<String>,
    planning_failed: Option<String>,
    figures: &DatabaseFigures,
    max_pending_age: Duration,
) -> Result<String, String> {
    if let Some(reason) = stopped {
        return Err(format!("delivery stopped: {reason}"));
    }
    if let Some(reason) = planning_failed {
        return Err(format!(
            "the last run failed: {reason} (queued messages are still delivered; the next \
             scheduled run tries again)"
        ));
    }
    if let Some(outage) = unreachable {
        return Err(outage);
    }
    if figures.oldest_pending_age_secs as u64 > max_pending_age.as_secs() {
        return Err(format!(
            "the oldest pending message is {} s old, more than {} s",
            figures.oldest_pending_age_secs,
            max_pending_age.as_secs()
        ));
    }
    Ok("ok".to_string())
}

async fn healthz_handler(State(endpoints): State<Arc<Endpoints>>) -> impl IntoResponse {
    let verdict = match figures(&endpoints).await {
        Ok(figures) => health(
            delivery_stopped(),
            intercom_unreachable(),
            planning_failed(),
            &figures,
            endpoints.max_pending_age,
        ),
        Err(error) => Err(format!("cannot read the database: {error}")),
    };
    match verdict {
        Ok(text) => (StatusCode::OK, format!("{text}\n")),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}\n"),
        ),
    }
}

/// Why delivery stopped, when it did (a wrong or insufficient access token). Set by delivery.
pub fn delivery_stopped() -> Option<String> {
    STOPPED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Record that delivery stopped (or, with `None`, that it runs again).
pub fn set_delivery_stopped(reason: Option<String>) {
    metrics().delivery_stopped.set(i64::from(reason.is_some()));
    *STOPPED.lock().unwrap_or_else(|e| e.into_inner()) = reason;
}

static STOPPED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// "Intercom unreachable since …" while delivery is paused for an outage. Set by delivery.
pub fn intercom_unreachable() -> Option<String> {
    UNREACHABLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Record that delivery paused for an outage (the text `/healthz` answers with), or, with
/// `None`, that Intercom answers again.
pub fn set_intercom_unreachable(text: Option<String>) {
    metrics()
        .intercom_unreachable
        .set(i64::from(text.is_some()));
    *UNREACHABLE.lock().unwrap_or_else(|e| e.into_inner()) = text;
}

static UNREACHABLE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Why the daemon's last run failed to plan (a full disk, say), until a run succeeds.
pub fn planning_failed() -> Option<String> {
    PLANNING_FAILED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Record that the daemon's last run failed to plan (the reason `/healthz` answers with), or,
/// with `None`, that a run planned again. Set by the daemon's planning task.
pub fn set_planning_failed(reason: Option<String>) {
    metrics().planning_failed.set(i64::from(reason.is_some()));
    *PLANNING_FAILED.lock().unwrap_or_else(|e| e.into_inner()) = reason;
}

static PLANNING_FAILED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .with_state(Arc::new(endpoints))
}

/// Bind `listen` and serve until `shutdown` is cancelled. Returns the bound address at once.
pub async fn serve(
    listen: SocketAddr,
    endpoints: Endpoints,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http.listen = {listen} ({e})"))?;
    let bound = listener.local_addr()?;
    let app = router(endpoints);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "The metrics endpoint failed.");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn figures_and_health_from_the_database() {
        let conn = crate::store::open_in_memory().unwrap();
        conn.execute_batch(
            "INSERT INTO computations VALUES ('aud_1', 'vip', 'VIP', 'audience', 'user', 1, 0);
             INSERT INTO snapshots VALUES (1, 'aud_1', 100, 1, 3);
             INSERT INTO runs (id, mode, started_at, finished_at) VALUES (1, 'full', 1000, 1012);
             INSERT INTO outbox (lane, message_id, type, body, enqueued_at) VALUES ('u1', 'm1', 'identify', '{}', 900);
             INSERT INTO outbox (lane, message_id, type, body, status, enqueued_at) VALUES ('u1', 'm2', 'track', '{}', 'dead', 950);",
        )
        .unwrap();
        let figures = read_figures(&conn, Path::new(":memory:"), 1100).unwrap();
        assert_eq!(figures.oldest_pending_age_secs, 200);
        assert_eq!(figures.last_run_started_at, Some(1000));
        assert_eq!(figures.last_run_duration_secs, Some(12));
        assert_eq!(figures.computation_rows, vec![("vip".to_string(), 3)]);
        assert_eq!(
            figures.outbox,
            vec![("dead".to_string(), 1), ("pending".to_string(), 1)]
        );
        assert!(health(None, None, None, &figures, Duration::from_secs(300)).is_ok());
        let err = health(None, None, None, &figures, Duration::from_secs(100)).unwrap_err();
        assert!(err.contains("200 s old"), "{err}");
        let err = health(
            None,
            Some("Intercom unreachable since 2026-12-01T10:00:00Z".into()),
            None,
            &figures,
            Duration::from_secs(300),
        )
        .unwrap_err();
        assert_eq!(err, "Intercom unreachable since 2026-12-01T10:00:00Z");
        let err = health(
            Some("the token is wrong".into()),
            None,
            None,
            &figures,
            Duration::from_secs(300),
        )
        .unwrap_err();
        assert!(
            err.contains("delivery stopped: the token is wrong"),
            "{err}"
        );
        let err = health(
            None,
            None,
            Some("the disk holding /x/y.db is full".into()),
            &figures,
            Duration::from_secs(300),
        )
        .unwrap_err();
        assert!(
            err.starts_with("the last run failed: the disk holding /x/y.db is full"),
            "{err}"
        );
        let text = metrics::render(Some(&gauges(&figures, 100_000)));
        assert!(
            text.contains("audience_sync_outbox_messages{status=\"pending\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("audience_sync_last_run_duration_seconds 12\n"),
            "{text}"
        );
    }

    #[test]
    fn database_size_outbox_bound_and_last_prune_are_exported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = crate::store::open(&path).unwrap();
        let figures = read_figures(&conn, &path, 1100).unwrap();
        assert_eq!(figures.last_prune, None);
        let text = metrics::render(Some(&gauges(&figures, 250)));
        assert!(
            text.contains("# TYPE audience_sync_outbox_pending_limit gauge\naudience_sync_outbox_pending_limit 250\n"),
            "{text}"
        );
        assert!(
            !text.contains("audience_sync_last_prune_timestamp_seconds"),
            "no prune yet: {text}"
        );
        let main = std::fs::metadata(&path).unwrap().len();
        assert!(
            text.contains(&format!(
                "audience_sync_database_bytes{{file=\"main\"}} {main}\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("audience_sync_database_bytes{file=\"wal\"} "),
            "{text}"
        );
        assert!(
            text.contains("audience_sync_database_free_bytes "),
            "{text}"
        );

        conn.execute_batch(
            "INSERT INTO outbox (lane, message_id, type, body, status, enqueued_at, finished_at) \
             VALUES ('u1', 'm1', 'identify', '{}', 'delivered', 0, 0), \
                    ('u1', 'm2', 'identify', '{}', 'delivered', 0, 0);",
        )
        .unwrap();
        let policy = retention::Policy {
            delivered_for: Duration::ZERO,
            ..retention::Policy::from(&crate::settings::Settings::defaults().unwrap().retention)
        };
        retention::prune(&mut conn, &policy, retention::Options::default(), 1000).unwrap();
        let figures = read_figures(&conn, &path, 1100).unwrap();
        let text = metrics::render(Some(&gauges(&figures, 250)));
        for line in [
            "audience_sync_last_prune_timestamp_seconds 1000\n",
            "audience_sync_last_prune_failed 0\n",
            "audience_sync_last_prune_removed{what=\"delivered_messages\"} 1\n",
            "audience_sync_last_prune_removed{what=\"snapshots\"} 0\n",
            "# TYPE audience_sync_last_prune_bytes_returned gauge\n",
        ] {
            assert!(text.contains(line), "{line:?} missing: {text}");
        }
    }
}
