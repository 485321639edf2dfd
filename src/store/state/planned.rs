//! Planned and delivered state of one entity: its planned row (an override, else its base row),
//! its delivered value, overrides, the replans a dead letter leaves, event times, and the
//! planned change a merge yields ([`ChangeRow`]).

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use audience_sync_core::plan::diff::Change;

use super::cursors::{base_source, planned_source, run_source};
use super::json_text;
use super::merge::{MergeStatements, Reading, Source, bytes, source_sql, text};
use super::runs::run_progress;
use crate::domain::Scope;

/// The planned (email, value) of one entity: its override, else its base row, else nothing.
pub fn planned_row(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
) -> rusqlite::Result<(Option<String>, Option<String>)> {
    let overridden = conn
        .prepare_cached(
            "SELECT email, planned FROM planned_overrides \
             WHERE computation_id = ?1 AND subject = ?2 AND entity_id = ?3",
        )?
        .query_row(params![computation_id, subject, entity_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some(row) = overridden {
        return Ok(row);
    }
    let source = planned_source(conn, computation_id, subject, entity_id)?;
    let sql = source_sql(source, true);
    let mut stmt = conn.prepare_cached(&sql)?;
    let reading = Reading::of(source);
    let row = match source {
        Source::Snapshot { snapshot_id, .. } => stmt
            .query_row(params![snapshot_id, entity_id], |r| {
                let value = text(reading.read(bytes(r.get_ref(2)?)?))?;
                Ok((r.get(1)?, value.map(str::to_string)))
            })
            .optional()?,
        Source::Derived {
            snapshot_id,
            membership_snapshot_id,
            ..
        } => stmt
            .query_row(
                params![snapshot_id, membership_snapshot_id, entity_id],
                |r| Ok((r.get(1)?, r.get(2)?)),
            )
            .optional()?,
        Source::Empty => None,
    };
    Ok(row.unwrap_or((None, None)))
}

/// The delivered value of one entity (`None`: no value, or never delivered).
pub fn delivered_value(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(
        "SELECT delivered FROM delivered_state \
         WHERE computation_id = ?1 AND subject = ?2 AND entity_id = ?3",
    )?
    .query_row(params![computation_id, subject, entity_id], |r| r.get(0))
    .optional()
}

/// Set the planned value of one entity as an override (a dead letter putting it back, a retry
/// sending it forward, or a test), keeping the email planned state knows for it.
pub fn override_planned(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
    email: Option<&str>,
    planned: Option<&str>,
) -> rusqlite::Result<()> {
    let email = match email {
        Some(e) => Some(e.to_string()),
        None => planned_row(conn, computation_id, subject, entity_id)?.0,
    };
    conn.prepare_cached(
        "INSERT INTO planned_overrides (computation_id, subject, entity_id, email, planned) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (computation_id, subject, entity_id) DO UPDATE SET \
           planned = excluded.planned, email = excluded.email",
    )?
    .execute(params![computation_id, subject, entity_id, email, planned])?;
    Ok(())
}

/// What a dead-lettered change emitted (table `replans`): the value it drove toward and the
/// time of the track event it fired, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Replan {
    pub value: Option<String>,
    pub track_at: Option<i64>,
}

/// Keep what a dead-lettered change emitted (in `mark_dead`'s transaction).
pub fn remember_replan(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
    value: &Value,
    track_at: Option<i64>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO replans (computation_id, subject, entity_id, value, track_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (computation_id, subject, entity_id) \
         DO UPDATE SET value = excluded.value, track_at = excluded.track_at",
    )?
    .execute(params![
        computation_id,
        subject,
        entity_id,
        json_text(value),
        track_at
    ])?;
    Ok(())
}

/// Forget what a dead-lettered change of one entity emitted (`dead-letters retry` sends the
/// message itself again).
pub fn forget_replan(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM replans WHERE computation_id = ?1 AND subject = ?2 AND entity_id = ?3",
    )?
    .execute(params![computation_id, subject, entity_id])?;
    Ok(())
}

/// Whether any dead-lettered change of the computation waits to be re-planned (a run looks its
/// changes up in `replans` only then).
pub fn has_replans(conn: &Connection, computation_id: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM replans WHERE computation_id = ?1)")?
        .query_row([computation_id], |r| r.get(0))
}

/// What the dead-lettered change of one entity emitted, if one waits to be re-planned.
pub fn replan(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
) -> rusqlite::Result<Option<Replan>> {
    conn.prepare_cached(
        "SELECT value, track_at FROM replans \
         WHERE computation_id = ?1 AND subject = ?2 AND entity_id = ?3",
    )?
    .query_row(params![computation_id, subject, entity_id], |r| {
        Ok(Replan {
            value: r.get(0)?,
            track_at: r.get(1)?,
        })
    })
    .optional()
}

/// Every entity planned state holds a value for in (computation, subject), in entity order, as
/// the diff reads it: the base snapshot overlaid with the overrides. For tests and inspection:
/// it walks the whole base snapshot into memory.
pub fn planned_values(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
) -> rusqlite::Result<Vec<(String, String)>> {
    let base = base_source(conn, computation_id, subject)?;
    let split = match run_progress(conn)? {
        Some(p) => run_source(conn, p.run_id, computation_id, subject)?.map(|s| (p, s)),
        None => None,
    };
    let Some((progress, run_base)) = split else {
        let mut out = Vec::new();
        walk_planned(conn, base, computation_id, subject, |entity, planned| {
            out.push((entity.to_string(), planned.to_string()))
        })?;
        return Ok(out);
    };
    // A run is being planned: each entity from the base the run's progress says.
    let mut values = std::collections::BTreeMap::new();
    walk_planned(conn, base, computation_id, subject, |entity, planned| {
        if !progress.committed(subject, entity) {
            values.insert(entity.to_string(), planned.to_string());
        }
    })?;
    walk_planned(
        conn,
        run_base,
        computation_id,
        subject,
        |entity, planned| {
            if progress.committed(subject, entity) {
                values.insert(entity.to_string(), planned.to_string());
            }
        },
    )?;
    Ok(values.into_iter().collect())
}

/// Every entity with a planned value over `base` and the overrides.
fn walk_planned(
    conn: &Connection,
    base: Source,
    computation_id: &str,
    subject: &str,
    mut f: impl FnMut(&str, &str),
) -> rusqlite::Result<()> {
    let mut statements =
        MergeStatements::values(conn, Source::Empty, base, computation_id, subject)?;
    let mut merge = statements.open()?;
    while merge
        .next_pair(|pair| {
            if let Some(planned) = pair.old {
                f(pair.entity_id, planned);
            }
        })?
        .is_some()
    {}
    Ok(())
}

/// How many (computation, subject, entity) have a planned value other than the delivered one:
/// zero once the outbox is drained without dead letters. For tests and inspection, like
/// [`planned_values`].
pub fn undelivered_count(conn: &Connection) -> rusqlite::Result<u64> {
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM computations ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut differ = 0;
    for id in &ids {
        for subject in ["user", "account"] {
            let planned: std::collections::BTreeMap<String, String> =
                planned_values(conn, id, subject)?.into_iter().collect();
            let delivered: std::collections::BTreeMap<String, String> = conn
                .prepare(
                    "SELECT entity_id, delivered FROM delivered_state \
                     WHERE computation_id = ?1 AND subject = ?2",
                )?
                .query_map(params![id, subject], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            differ += planned
                .iter()
                .filter(|(entity, value)| delivered.get(*entity) != Some(value))
                .count();
            differ += delivered
                .keys()
                .filter(|entity| !planned.contains_key(*entity))
                .count();
        }
    }
    Ok(differ as u64)
}

/// The last event time used for (user, event name), if any.
pub fn last_event_time(
    conn: &Connection,
    entity_id: &str,
    event_name: &str,
) -> rusqlite::Result<Option<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT last_at FROM event_times WHERE entity_id = ?1 AND event_name = ?2",
    )?;
    stmt.query_row(params![entity_id, event_name], |r| r.get(0))
        .optional()
}

// ─── One planned change, as the merges yield it ───────────────────────────────────────────────

/// One planned change of one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    /// Whose lane the change goes in: an account's own (its group call) or a user's.
    pub lane: Scope,
    pub entity_id: String,
    /// Index into the run's computation list; `None` for a membership change.
    pub computation: Option<i64>,
    pub group_id: Option<String>,
    pub email: Option<String>,
    pub change: Change,
    pub value: Option<String>,
    pub track: bool,
    /// The planned value differs from the entity's row in the snapshot diffed (an audience
    /// exit's `false`): it is stored as an override of the planned base.
    pub overrides: bool,
    /// The event time of a re-planned change's track (the one the dead-lettered change used),
    /// instead of a new one.
    pub event_at: Option<i64>,
}
