//! Whether delivery is paused because Intercom is unreachable (table `intercom_outage`): written
//! by the delivering process (core `intercom::outage` decides), read by `status` in another.

use rusqlite::{Connection, OptionalExtension, params};

/// Delivery is paused because Intercom is unreachable (table `intercom_outage`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outage {
    /// Unix seconds: when the pause began.
    pub since: i64,
    /// Probes that failed since.
    pub probes: i64,
    pub last_error: Option<String>,
    /// Unix seconds: when the delivering process last wrote this (a process that died while
    /// paused leaves the row behind; the next delivery clears it).
    pub updated_at: i64,
}

/// Record (or update) the pause.
pub fn record(conn: &Connection, outage: &Outage) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO intercom_outage (id, since, probes, last_error, updated_at) \
         VALUES (1, ?1, ?2, ?3, ?4) ON CONFLICT (id) DO UPDATE SET since = excluded.since, \
         probes = excluded.probes, last_error = excluded.last_error, updated_at = excluded.updated_at",
        params![
            outage.since,
            outage.probes,
            outage.last_error,
            outage.updated_at
        ],
    )?;
    Ok(())
}

/// The pause ended (or a new process starts delivering).
pub fn clear(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM intercom_outage", [])?;
    Ok(())
}

/// The pause, while there is one.
pub fn current(conn: &Connection) -> rusqlite::Result<Option<Outage>> {
    conn.query_row(
        "SELECT since, probes, last_error, updated_at FROM intercom_outage WHERE id = 1",
        [],
        |r| {
            Ok(Outage {
                since: r.get(0)?,
                probes: r.get(1)?,
                last_error: r.get(2)?,
                updated_at: r.get(3)?,
            })
        },
    )
    .optional()
}
