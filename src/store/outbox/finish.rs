//! The two transitions delivery ends every message with, each one transaction that also moves
//! state by the message's effects (`mark_delivered`, `mark_dead`), and the runs they finish.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::Effect;
use super::stored::{STORED, STORED_FROM, Stored};
use crate::store::now_unix;

/// What `mark_delivered` / `mark_dead` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// The row was pending and is now finished, with its effects applied.
    Done,
    /// No pending row with that seq (already finished, or unknown): nothing changed.
    NotPending,
}

/// Intercom confirmed the message: in ONE transaction the row becomes `delivered` and every
/// effect moves delivered state to the effect's value.
pub fn mark_delivered(conn: &mut Connection, seq: i64) -> anyhow::Result<Marked> {
    finish(conn, seq, None)
}

/// The message failed for good: in ONE transaction the row becomes `dead` with `reason`, and
/// every effect puts planned state back to delivered state (and forgets the plan cursors of what
/// it touched), so the next run re-emits those entities with fresh values.
pub fn mark_dead(conn: &mut Connection, seq: i64, reason: &str) -> anyhow::Result<Marked> {
    finish(conn, seq, Some(reason))
}

fn finish(conn: &mut Connection, seq: i64, dead: Option<&str>) -> anyhow::Result<Marked> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let sql =
        format!("SELECT {STORED} FROM {STORED_FROM} WHERE o.seq = ?1 AND o.status = 'pending'");
    let stored = tx
        .query_row(&sql, [seq], |r| Stored::read(r, 0))
        .optional()?;
    let Some(stored) = stored else {
        return Ok(Marked::NotPending);
    };
    let effects = stored
        .effects(&mut HashMap::new())
        .map_err(|e| anyhow::anyhow!("outbox message {seq} has unreadable effects: {e}"))?;
    let now = now_unix();
    match dead {
        None => {
            tx.execute(
                "UPDATE outbox SET status = 'delivered', finished_at = ?2 WHERE seq = ?1",
                params![seq, now],
            )?;
        }
        Some(reason) => {
            tx.execute(
                "UPDATE outbox SET status = 'dead', finished_at = ?2, last_error = ?3 WHERE seq = ?1",
                params![seq, now, reason],
            )?;
        }
    }
    for effect in &effects {
        apply(&tx, effect, dead.is_some())?;
    }
    tx.commit()?;
    Ok(Marked::Done)
}

fn apply(tx: &Transaction<'_>, effect: &Effect, dead: bool) -> rusqlite::Result<()> {
    match effect {
        Effect::Value {
            computation_id,
            subject,
            entity_id,
            value,
            track_at,
        } => {
            let subject = subject.as_str();
            if dead {
                // What the change emitted, so the re-plan emits exactly that (SPEC section 6).
                crate::store::state::remember_replan(
                    tx,
                    computation_id,
                    subject,
                    entity_id,
                    value,
                    *track_at,
                )?;
                let delivered =
                    crate::store::state::delivered_value(tx, computation_id, subject, entity_id)?;
                crate::store::state::override_planned(
                    tx,
                    computation_id,
                    subject,
                    entity_id,
                    None,
                    delivered.as_deref(),
                )?;
                tx.execute(
                    "DELETE FROM plan_cursors WHERE subject = ?1",
                    [computation_id],
                )?;
                crate::store::state::bump_dead_letter_generation(tx)?;
            } else {
                match crate::store::state::json_text(value) {
                    Some(value) => tx.execute(
                        "INSERT INTO delivered_state (computation_id, subject, entity_id, delivered) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (computation_id, subject, entity_id) \
                         DO UPDATE SET delivered = excluded.delivered",
                        params![computation_id, subject, entity_id, value],
                    )?,
                    None => tx.execute(
                        "DELETE FROM delivered_state WHERE computation_id = ?1 AND subject = ?2 \
                         AND entity_id = ?3",
                        params![computation_id, subject, entity_id],
                    )?,
                };
            }
        }
        Effect::Membership { membership } => {
            if dead {
                tx.execute(
                    "UPDATE membership_state SET planned = delivered WHERE user_id = ?1 AND group_id = ?2",
                    params![membership.user_id, membership.group_id],
                )?;
                tx.execute("DELETE FROM plan_cursors WHERE subject = 'membership'", [])?;
                crate::store::state::bump_dead_letter_generation(tx)?;
            } else {
                tx.execute(
                    "UPDATE membership_state SET delivered = ?3 WHERE user_id = ?1 AND group_id = ?2",
                    params![
                        membership.user_id,
                        membership.group_id,
                        membership.attached as i64
                    ],
                )?;
            }
            tx.execute(
                "DELETE FROM membership_state WHERE user_id = ?1 AND group_id = ?2 \
                 AND planned = 0 AND delivered = 0",
                params![membership.user_id, membership.group_id],
            )?;
        }
    }
    Ok(())
}

/// Runs whose messages are being delivered become `delivering`; runs with no message left pending
/// become `finished` (with `finished_at`). Called when a drain starts and ends.
pub fn update_runs(conn: &Connection, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE runs SET status = 'delivering' WHERE status = 'planned' AND planned_at IS NOT NULL \
         AND EXISTS (SELECT 1 FROM outbox WHERE run_id = runs.id AND status = 'pending')",
        [],
    )?;
    conn.execute(
        "UPDATE runs SET status = 'finished', finished_at = ?1 \
         WHERE status IN ('planned', 'delivering') AND planned_at IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM outbox WHERE run_id = runs.id AND status = 'pending')",
        [now],
    )?;
    Ok(())
}
