//! Plan cursors (the inputs the last committed run planned each computation from), the base of
//! each computation's planned state, the [`Source`] that base and a run being planned are read
//! from, and the dead-letter generation a run compares across its read.

use rusqlite::{Connection, OptionalExtension, params};

use super::merge::Source;
use super::runs::run_progress;

/// The inputs the last committed run planned `subject` (a computation id or `membership`) from.
pub fn cursor(
    conn: &Connection,
    subject: &str,
) -> rusqlite::Result<Option<(Option<i64>, Option<i64>)>> {
    conn.query_row(
        "SELECT snapshot_id, membership_snapshot_id FROM plan_cursors WHERE subject = ?1",
        [subject],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

pub fn set_cursor(
    conn: &Connection,
    subject: &str,
    snapshot_id: Option<i64>,
    membership_snapshot_id: Option<i64>,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO plan_cursors (subject, snapshot_id, membership_snapshot_id) VALUES (?1, ?2, ?3) \
         ON CONFLICT (subject) DO UPDATE SET snapshot_id = excluded.snapshot_id, \
         membership_snapshot_id = excluded.membership_snapshot_id",
        params![subject, snapshot_id, membership_snapshot_id],
    )?;
    Ok(())
}

/// Whether a committed run has ever planned this computation (otherwise its next run is its
/// initial sync).
pub fn ever_planned(conn: &Connection, computation_id: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM run_computations WHERE computation_id = ?1)",
        [computation_id],
        |r| r.get(0),
    )
}

/// The base of a computation's planned state: (snapshot, membership snapshot), if it has one.
pub fn planned_base(
    conn: &Connection,
    computation_id: &str,
) -> rusqlite::Result<Option<(i64, Option<i64>)>> {
    conn.query_row(
        "SELECT snapshot_id, membership_snapshot_id FROM planned_bases WHERE computation_id = ?1",
        [computation_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Move the base of a computation's planned state (a run's write transaction, once it has
/// staged the overrides that keep every entity's planned value what the run planned).
pub fn set_planned_base(
    conn: &Connection,
    computation_id: &str,
    snapshot_id: i64,
    membership_snapshot_id: Option<i64>,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO planned_bases (computation_id, snapshot_id, membership_snapshot_id) \
         VALUES (?1, ?2, ?3) ON CONFLICT (computation_id) DO UPDATE SET \
         snapshot_id = excluded.snapshot_id, membership_snapshot_id = excluded.membership_snapshot_id",
        params![computation_id, snapshot_id, membership_snapshot_id],
    )?;
    Ok(())
}

/// The rows a computation's planned state for `subject` is based on, read as the diff reads a
/// new snapshot (`Source::Empty` without a base).
pub fn base_source(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
) -> rusqlite::Result<Source> {
    let Some((audience, account)) = conn
        .query_row(
            "SELECT kind = 'audience', scope = 'account' FROM computations WHERE id = ?1",
            [computation_id],
            |r| Ok((r.get::<_, bool>(0)?, r.get::<_, bool>(1)?)),
        )
        .optional()?
    else {
        return Ok(Source::Empty);
    };
    // A user computation has no account values.
    if subject == "account" && !account {
        return Ok(Source::Empty);
    }
    Ok(match planned_base(conn, computation_id)? {
        None => Source::Empty,
        Some((snapshot_id, _)) if subject == "account" || !account => Source::Snapshot {
            snapshot_id,
            audience,
        },
        Some((snapshot_id, Some(membership_snapshot_id))) => Source::Derived {
            snapshot_id,
            membership_snapshot_id,
            audience,
        },
        Some((_, None)) => Source::Empty,
    })
}

/// The base one entity's planned state is read from: the run being planned's snapshots if the
/// run has committed the entity (see `run_progress` in schema.sql), else [`base_source`].
pub fn planned_source(
    conn: &Connection,
    computation_id: &str,
    subject: &str,
    entity_id: &str,
) -> rusqlite::Result<Source> {
    if let Some(progress) = run_progress(conn)?
        && progress.committed(subject, entity_id)
        && let Some(source) = run_source(conn, progress.run_id, computation_id, subject)?
    {
        return Ok(source);
    }
    base_source(conn, computation_id, subject)
}

/// What `subject` of a computation is planned from in run `run_id` (`None`: the run does not
/// plan the computation).
pub(super) fn run_source(
    conn: &Connection,
    run_id: i64,
    computation_id: &str,
    subject: &str,
) -> rusqlite::Result<Option<Source>> {
    conn.prepare_cached(
        "SELECT rc.snapshot_id, r.membership_snapshot_id, c.kind = 'audience', c.scope = 'account' \
         FROM run_computations rc JOIN runs r ON r.id = rc.run_id \
         JOIN computations c ON c.id = rc.computation_id \
         WHERE rc.run_id = ?1 AND rc.computation_id = ?2",
    )?
    .query_row(params![run_id, computation_id], |r| {
        let snapshot_id: i64 = r.get(0)?;
        let membership: Option<i64> = r.get(1)?;
        let audience: bool = r.get(2)?;
        let account: bool = r.get(3)?;
        Ok(match (subject, account, membership) {
            ("account", false, _) => Source::Empty,
            ("account", true, _) | (_, false, _) => Source::Snapshot {
                snapshot_id,
                audience,
            },
            (_, true, Some(membership_snapshot_id)) => Source::Derived {
                snapshot_id,
                membership_snapshot_id,
                audience,
            },
            (_, true, None) => Source::Empty,
        })
    })
    .optional()
}

// ─── Dead letters while a run reads ──────────────────────────────────────────────────────────

/// The plan_cursors row that counts dead letters (`mark_dead` adds one in its transaction). A
/// run compares it between its read and its write transaction: if a message died in between,
/// planned state may have moved back under the diff, so the run leaves the cursors of what it
/// diffed alone and the next run diffs those computations again.
pub const DEAD_LETTERS: &str = "dead_letters";

pub fn dead_letter_generation(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce((SELECT snapshot_id FROM plan_cursors WHERE subject = ?1), 0)",
        [DEAD_LETTERS],
        |r| r.get(0),
    )
}

pub fn bump_dead_letter_generation(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO plan_cursors (subject, snapshot_id) VALUES (?1, 1) \
         ON CONFLICT (subject) DO UPDATE SET snapshot_id = coalesce(snapshot_id, 0) + 1",
        [DEAD_LETTERS],
    )?;
    Ok(())
}
