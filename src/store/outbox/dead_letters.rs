//! Dead letters: listed (`dead-letters list`), put back in the queue with their planned state
//! (`retry_dead`), or discarded (`discard_dead`).

use rusqlite::{Connection, TransactionBehavior, params};
use serde::Serialize;

use super::Effect;
use super::stored::{self, message_id_from};
use crate::store::state::{self, json_text};

/// One dead letter, as `dead-letters list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    /// The lane: the user's entity id, or `account:<group id>`.
    pub user: String,
    pub message_id: String,
    pub reason: Option<String>,
    pub attempts: i64,
    /// Unix seconds when it was dead-lettered.
    pub dead_at: Option<i64>,
    pub run_id: Option<i64>,
}

pub fn dead_letters(conn: &Connection) -> rusqlite::Result<Vec<DeadLetter>> {
    conn.prepare(
        "SELECT seq, type, lane, message_id, last_error, attempts, finished_at, run_id \
         FROM outbox WHERE status = 'dead' ORDER BY seq",
    )?
    .query_map([], |r| {
        Ok(DeadLetter {
            seq: r.get(0)?,
            kind: r.get(1)?,
            user: r.get(2)?,
            message_id: message_id_from(r.get_ref(3)?).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
            })?,
            reason: r.get(4)?,
            attempts: r.get(5)?,
            dead_at: r.get(6)?,
            run_id: r.get(7)?,
        })
    })?
    .collect()
}

/// Which dead letters a command acts on.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    All,
    Seqs(&'a [i64]),
}

/// What `retry` / `discard` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Acted {
    pub done: Vec<i64>,
    /// Sequence numbers not acted on, with the reason.
    pub skipped: Vec<(i64, String)>,
}

/// A dead letter's seq.
type Found = i64;
/// Sequence numbers not acted on, with the reason.
type Skipped = Vec<(i64, String)>;

fn selected(
    conn: &Connection,
    selection: Selection<'_>,
) -> rusqlite::Result<(Vec<Found>, Skipped)> {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let mut by_seq = conn.prepare("SELECT seq, status FROM outbox WHERE seq = ?1")?;
    match selection {
        Selection::All => {
            let mut stmt =
                conn.prepare("SELECT seq FROM outbox WHERE status = 'dead' ORDER BY seq")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            for row in rows {
                found.push(row?);
            }
        }
        Selection::Seqs(seqs) => {
            for &seq in seqs {
                let mut rows = by_seq.query([seq])?;
                match rows.next()? {
                    None => skipped.push((seq, "no such message".to_string())),
                    Some(r) => {
                        let status: String = r.get(1)?;
                        if status == "dead" {
                            found.push(r.get(0)?);
                        } else {
                            skipped.push((seq, format!("not a dead letter (it is {status})")));
                        }
                    }
                }
            }
        }
    }
    Ok((found, skipped))
}

/// Put dead letters back in the queue (attempts reset) in one transaction. Their planned state
/// goes forward again where no newer plan has taken over, so the next run does not re-emit what
/// they carry. A dead letter whose message id is pending again (a later run re-planned it) is
/// left alone: the re-planned message supersedes it.
pub fn retry_dead(conn: &mut Connection, selection: Selection<'_>) -> anyhow::Result<Acted> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (found, mut skipped) = selected(&tx, selection)?;
    let mut done = Vec::new();
    for seq in found {
        let message_id: rusqlite::types::Value =
            tx.query_row("SELECT message_id FROM outbox WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })?;
        let superseded: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE message_id = ?1 AND status = 'pending')",
            [&message_id],
            |r| r.get(0),
        )?;
        if superseded {
            let message_id = message_id_from((&message_id).into())?;
            skipped.push((
                seq,
                format!("message {message_id} is queued again already (a later run re-planned it)"),
            ));
            continue;
        }
        tx.execute(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = NULL, \
             finished_at = NULL, last_error = NULL WHERE seq = ?1",
            [seq],
        )?;
        let effects = stored::effects(&tx, seq)?.unwrap_or_default();
        for effect in &effects {
            replan(&tx, effect)?;
        }
        done.push(seq);
    }
    tx.commit()?;
    Ok(Acted { done, skipped })
}

/// Planned state takes the effect's value again, unless a newer plan is already in flight
/// (planned differs from delivered). The computation's plan cursor goes, so the next run diffs
/// it again even if its snapshot did not change: should the snapshot have moved on since the
/// message died, that run sends the current value after the retried one.
fn replan(tx: &Connection, effect: &Effect) -> rusqlite::Result<()> {
    let cursor = match effect {
        Effect::Value { computation_id, .. } => computation_id.as_str(),
        Effect::Membership { .. } => "membership",
    };
    tx.execute("DELETE FROM plan_cursors WHERE subject = ?1", [cursor])?;
    match effect {
        Effect::Value {
            computation_id,
            subject,
            entity_id,
            value,
            ..
        } => {
            let subject = subject.as_str();
            // The message itself goes again: nothing is left to re-plan for it.
            state::forget_replan(tx, computation_id, subject, entity_id)?;
            let value = json_text(value);
            let (email, planned) = state::planned_row(tx, computation_id, subject, entity_id)?;
            let delivered = state::delivered_value(tx, computation_id, subject, entity_id)?;
            if planned == delivered {
                state::override_planned(
                    tx,
                    computation_id,
                    subject,
                    entity_id,
                    email.as_deref(),
                    value.as_deref(),
                )?;
            }
        }
        Effect::Membership { membership } => {
            let attached = membership.attached as i64;
            let updated = tx.execute(
                "UPDATE membership_state SET planned = ?3 WHERE user_id = ?1 AND group_id = ?2 \
                 AND planned = delivered",
                params![membership.user_id, membership.group_id, attached],
            )?;
            if updated == 0 && membership.attached {
                tx.execute(
                    "INSERT OR IGNORE INTO membership_state (user_id, group_id, planned) \
                     VALUES (?1, ?2, 1)",
                    params![membership.user_id, membership.group_id],
                )?;
            }
        }
    }
    Ok(())
}

/// Delete dead letters for good (their planned state already went back when they died).
pub fn discard_dead(conn: &mut Connection, selection: Selection<'_>) -> anyhow::Result<Acted> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (found, skipped) = selected(&tx, selection)?;
    let mut done = Vec::new();
    for seq in found {
        tx.execute(
            "DELETE FROM outbox WHERE seq = ?1 AND status = 'dead'",
            [seq],
        )?;
        done.push(seq);
    }
    tx.commit()?;
    Ok(Acted { done, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbox::{self, NewMessage};

    fn enqueue(conn: &Connection, message_id: &str, effects: &str) -> i64 {
        outbox::enqueue(
            conn,
            None,
            &NewMessage {
                lane: &crate::domain::Lane::user("u1"),
                message_id,
                kind: crate::segment::MessageKind::Identify,
                body: r#"{"type":"identify","userId":"u1"}"#,
                effects,
            },
            0,
        )
        .unwrap();
        conn.last_insert_rowid()
    }

    #[test]
    fn dead_letters_are_listed_retried_and_discarded() {
        let mut conn = crate::store::open_in_memory().unwrap();
        conn.execute(
            "INSERT INTO computations (id, key, name, kind, scope, created_at) \
             VALUES ('aud_1', 'vip', 'VIP', 'audience', 'user', 0)",
            [],
        )
        .unwrap();
        state::override_planned(&conn, "aud_1", "user", "u1", None, Some("true")).unwrap();
        let effects =
            r#"[{"computation_id":"aud_1","subject":"user","entity_id":"u1","value":true}]"#;
        let a = enqueue(&conn, "m1", effects);
        let b = enqueue(&conn, "m2", "[]");
        outbox::mark_dead(&mut conn, a, "400 parameter_invalid: nope").unwrap();
        outbox::mark_dead(&mut conn, b, "400: other").unwrap();
        let planned = state::planned_row(&conn, "aud_1", "user", "u1").unwrap().1;
        assert_eq!(planned, None, "mark_dead put planned back");

        let list = dead_letters(&conn).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[0].reason.as_deref(),
            Some("400 parameter_invalid: nope")
        );
        assert_eq!(list[0].user, "u1");

        let acted = retry_dead(&mut conn, Selection::Seqs(&[a, 999])).unwrap();
        assert_eq!(acted.done, [a]);
        assert_eq!(acted.skipped.len(), 1);
        let (status, attempts): (String, i64) = conn
            .query_row(
                "SELECT status, attempts FROM outbox WHERE seq = ?1",
                [a],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((status.as_str(), attempts), ("pending", 0));
        let planned = state::planned_row(&conn, "aud_1", "user", "u1").unwrap().1;
        assert_eq!(
            planned.as_deref(),
            Some("true"),
            "planned goes forward again"
        );
        crate::store::state::set_cursor(&conn, "aud_1", Some(1), None).unwrap();
        outbox::mark_dead(&mut conn, a, "400 again").unwrap();
        crate::store::state::set_cursor(&conn, "aud_1", Some(1), None).unwrap();
        retry_dead(&mut conn, Selection::Seqs(&[a])).unwrap();
        let cursors: i64 = conn
            .query_row(
                "SELECT count(*) FROM plan_cursors WHERE subject = 'aud_1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            cursors, 0,
            "a retry makes the next run diff the computation again"
        );

        let acted = discard_dead(&mut conn, Selection::All).unwrap();
        assert_eq!(acted.done, [b]);
        assert!(dead_letters(&conn).unwrap().is_empty());
        assert_eq!(outbox::pending_count(&conn).unwrap(), 1);
    }

    #[test]
    fn a_re_planned_message_supersedes_its_dead_letter() {
        let mut conn = crate::store::open_in_memory().unwrap();
        let a = enqueue(&conn, "m1", "[]");
        outbox::mark_dead(&mut conn, a, "x").unwrap();
        enqueue(&conn, "m1", "[]");
        let acted = retry_dead(&mut conn, Selection::All).unwrap();
        assert!(acted.done.is_empty());
        assert_eq!(acted.skipped.len(), 1);
    }
}
