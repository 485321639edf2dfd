//! Enqueueing: one message whole (`enqueue`), or a run's messages staged in temp tables while it
//! reads (`stage`, `stage_values`) and enqueued in its write transaction (`enqueue_staged`).

use audience_sync_core::shape;
use rusqlite::{Connection, params};
use serde_json::Value;

use super::NewMessage;
use super::stored::stored_message_id;
use crate::domain::Lane;
use crate::segment::MessageKind;

/// Insert one message; `false` when a pending message with the same id is already queued (the
/// same change planned twice: nothing new to send). The row keeps its body and effects whole
/// (`send` queues messages of any shape; a run's messages go through [`stage`]).
pub fn enqueue(
    tx: &Connection,
    run_id: Option<i64>,
    message: &NewMessage<'_>,
    now: i64,
) -> rusqlite::Result<bool> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO outbox (run_id, lane, message_id, type, body, effects, enqueued_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let n = stmt.execute(params![
        run_id,
        message.lane.as_str(),
        stored_message_id(message.message_id),
        message.kind.as_str(),
        message.body,
        message.effects,
        now
    ])?;
    Ok(n == 1)
}

thread_local! {
    /// The shapes staged on this thread since the staging tables were created: shape text →
    /// its id in `temp.run_outbox_shapes` (a run stages on one thread, with one connection).
    static STAGED_SHAPES: std::cell::RefCell<std::collections::HashMap<String, i64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Create (or empty) the connection's temp tables of a run's staged messages and their shapes
/// (called by `state::create_staging`, inside the run's read transaction).
pub fn create_staging(conn: &Connection) -> rusqlite::Result<()> {
    STAGED_SHAPES.with(|shapes| shapes.borrow_mut().clear());
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.run_outbox;
         DROP TABLE IF EXISTS temp.run_outbox_shapes;
         CREATE TEMP TABLE run_outbox (
             lane TEXT NOT NULL,
             message_id TEXT NOT NULL,
             type TEXT NOT NULL,
             body TEXT NOT NULL,
             effects TEXT NOT NULL,
             shape INTEGER,
             parts TEXT,
             with_user INTEGER NOT NULL
         );
         CREATE TEMP TABLE run_outbox_shapes (
             id INTEGER PRIMARY KEY,
             shape TEXT NOT NULL UNIQUE
         );",
    )
}

pub fn drop_staging(conn: &Connection) -> rusqlite::Result<()> {
    STAGED_SHAPES.with(|shapes| shapes.borrow_mut().clear());
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.run_outbox; DROP TABLE IF EXISTS temp.run_outbox_shapes;",
    )
}

/// Stage one message of a run (see `state::create_staging`); `enqueue_staged` enqueues them.
/// `with_user`: a `group` call carrying a userId (an attach). The body and effects are staged
/// split into their shape and parts (`audience_sync_core::shape`), or whole when they do not
/// split.
pub fn stage(conn: &Connection, message: &NewMessage<'_>, with_user: bool) -> rusqlite::Result<()> {
    let split = shape::split(
        message.body,
        message.effects,
        message.message_id,
        message.lane.as_str(),
    );
    stage_split(conn, message, split.as_ref(), with_user)
}

/// [`stage`] of a message the planner holds as values (no text to parse back).
pub fn stage_values(
    conn: &Connection,
    lane: &Lane,
    message_id: &str,
    kind: MessageKind,
    body: &Value,
    effects: &Value,
    with_user: bool,
) -> rusqlite::Result<()> {
    let split = shape::split_values(body, effects, message_id, lane.as_str());
    let message = NewMessage {
        lane,
        message_id,
        kind,
        body: "",
        effects: "",
    };
    stage_split(conn, &message, Some(&split), with_user)
}

/// Stage a message split into shape and parts, or (without a split) whole.
fn stage_split(
    conn: &Connection,
    message: &NewMessage<'_>,
    split: Option<&shape::Split>,
    with_user: bool,
) -> rusqlite::Result<()> {
    let (body, effects, shape, parts) = match split {
        Some(split) => {
            // A run has a handful of shapes and stages them thousands of times each: the
            // staged id is looked up here, not by an upsert on the shape text's index.
            let known = STAGED_SHAPES.with(|shapes| shapes.borrow().get(&split.shape).copied());
            let id = match known {
                Some(id) => id,
                None => {
                    let mut stmt = conn.prepare_cached(
                        "INSERT INTO temp.run_outbox_shapes (shape) VALUES (?1) \
                         ON CONFLICT (shape) DO UPDATE SET shape = excluded.shape RETURNING id",
                    )?;
                    let id: i64 = stmt.query_row([&split.shape], |r| r.get(0))?;
                    STAGED_SHAPES
                        .with(|shapes| shapes.borrow_mut().insert(split.shape.clone(), id));
                    id
                }
            };
            ("", "", Some(id), Some(split.parts.as_str()))
        }
        None => (message.body, message.effects, None, None),
    };
    let mut stmt = conn.prepare_cached(
        "INSERT INTO temp.run_outbox (lane, message_id, type, body, effects, shape, parts, with_user) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    stmt.execute(params![
        message.lane.as_str(),
        stored_message_id(message.message_id),
        message.kind.as_str(),
        body,
        effects,
        shape,
        parts,
        with_user
    ])?;
    Ok(())
}

/// Messages staged or enqueued, by type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnqueuedCounts {
    pub identify: u64,
    pub track: u64,
    /// `group` calls with a userId (an attach).
    pub group_user: u64,
    /// An account's own `group` call (no userId).
    pub group_account: u64,
}

impl EnqueuedCounts {
    pub fn total(&self) -> u64 {
        self.identify + self.track + self.group_user + self.group_account
    }
}

/// Enqueue the staged messages in staging order, for `run_id` (inside the run's write
/// transaction), with their shapes; shapes no message uses any more go. A message whose id is
/// already pending is skipped, as [`enqueue`] does. `staged` is what was staged, by type; the
/// result is what was enqueued.
pub fn enqueue_staged(
    tx: &Connection,
    run_id: i64,
    now: i64,
    staged: EnqueuedCounts,
) -> rusqlite::Result<EnqueuedCounts> {
    let before: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM outbox", [], |r| r.get(0))?;
    // The staged shapes' ids in outbox_shapes (a map, so that each row's is a rowid lookup).
    tx.execute_batch(
        "INSERT INTO outbox_shapes (shape) SELECT shape FROM temp.run_outbox_shapes WHERE true \
           ON CONFLICT (shape) DO NOTHING;
         DROP TABLE IF EXISTS temp.run_outbox_shape_ids;
         CREATE TEMP TABLE run_outbox_shape_ids (staged INTEGER PRIMARY KEY, id INTEGER NOT NULL);
         INSERT INTO temp.run_outbox_shape_ids (staged, id) \
           SELECT t.id, s.id FROM temp.run_outbox_shapes t JOIN outbox_shapes s ON s.shape = t.shape;",
    )?;
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO outbox \
           (run_id, lane, message_id, type, body, effects, shape_id, parts, enqueued_at) \
         SELECT ?1, r.lane, r.message_id, r.type, r.body, r.effects, m.id, r.parts, ?2 \
         FROM temp.run_outbox r LEFT JOIN temp.run_outbox_shape_ids m ON m.staged = r.shape \
         ORDER BY r.rowid",
        params![run_id, now],
    )? as u64;
    // Every row of a shape has a seq at most its last_seq, so a shape whose last_seq is below
    // the oldest row's seq has no row left (rows are never renumbered).
    tx.execute_batch(
        "UPDATE outbox_shapes SET last_seq = (SELECT coalesce(max(seq), 0) FROM outbox) \
           WHERE id IN (SELECT id FROM temp.run_outbox_shape_ids);
         DROP TABLE temp.run_outbox_shape_ids;
         DELETE FROM outbox_shapes WHERE last_seq < (SELECT coalesce(min(seq), 0) FROM outbox) \
           OR NOT EXISTS (SELECT 1 FROM outbox);",
    )?;
    if inserted == staged.total() {
        return Ok(staged);
    }
    // Some were already pending (re-planned with the same id): count what went in.
    let mut counts = EnqueuedCounts::default();
    let mut stmt = tx.prepare(
        "SELECT s.type, s.with_user, count(*) FROM temp.run_outbox s \
         WHERE EXISTS (SELECT 1 FROM outbox o WHERE o.message_id = s.message_id \
           AND o.status = 'pending' AND o.seq > ?1) \
         GROUP BY s.type, s.with_user",
    )?;
    let mut rows = stmt.query([before])?;
    while let Some(r) = rows.next()? {
        let kind: String = r.get(0)?;
        let with_user: bool = r.get(1)?;
        let n = r.get::<_, i64>(2)? as u64;
        match (kind.as_str(), with_user) {
            ("identify", _) => counts.identify += n,
            ("track", _) => counts.track += n,
            (_, true) => counts.group_user += n,
            (_, false) => counts.group_account += n,
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Kind;
    use crate::domain::Scope;
    use crate::plan::message::{self, ComputationRef, User};
    use crate::segment::Message;
    use crate::store::outbox::{self, Effect, pending};
    use serde_json::json;

    const COMPUTATIONS: [ComputationRef<'static>; 5] = [
        ComputationRef {
            id: "tra_2TqVbMcFZ1x9lqbrUYsEbQnUDWj",
            key: "lifetime_value",
            kind: Kind::Trait,
        },
        ComputationRef {
            id: "tra_2TqVbNfGk3Lw0pQzRmXsYtUvAbC",
            key: "plan_tier",
            kind: Kind::Trait,
        },
        ComputationRef {
            id: "tra_2TqVbPhJm5Ny2rSaTnZuAwBxCdE",
            key: "orders_last_30_days",
            kind: Kind::Trait,
        },
        ComputationRef {
            id: "tra_2TqVbQkLo7Pa4tUcVpBwCyDzEfG",
            key: "country",
            kind: Kind::Trait,
        },
        ComputationRef {
            id: "tra_2TqVbRmNq9Rc6vWeXrDyEaFbGhI",
            key: "is_vip",
            kind: Kind::Trait,
        },
    ];

    /// A typical initial-sync identify of user `i` with its five traits and effects, as the
    /// planner builds them.
    fn typical_identify(i: usize) -> (String, String, String, String) {
        let entity_id = format!("user{i:08}");
        let email = format!("user{i:08}@example.com");
        let user = User {
            entity_id: &entity_id,
            email: Some(&email),
        };
        let values = [
            json!(i as f64 * 1.5),
            json!(["free", "pro", "enterprise"][i % 3]),
            json!(i % 40),
            json!(["DE", "US", "FR", "BR"][i % 4]),
            json!(i.is_multiple_of(7)),
        ];
        let traits: Vec<_> = COMPUTATIONS
            .iter()
            .copied()
            .zip(values.iter().cloned())
            .collect();
        let id = message::message_id(&["identify", &entity_id, &i.to_string()]);
        let body =
            message::identify("spa_prod", user, &traits, &[], 1_700_000_000, &id).into_value();
        let effects: Vec<Effect> = traits
            .iter()
            .map(|(c, v)| Effect::Value {
                computation_id: c.id.to_string(),
                subject: Scope::User,
                entity_id: entity_id.clone(),
                value: v.clone(),
                track_at: None,
            })
            .collect();
        (
            entity_id,
            id,
            body.to_string(),
            serde_json::to_string(&effects).unwrap(),
        )
    }

    /// Bytes on disk of the outbox and everything that stores it (its indexes and tables),
    /// by b-tree, from `dbstat`.
    fn outbox_bytes(conn: &Connection) -> Vec<(String, i64)> {
        conn.prepare(
            "SELECT name, sum(pgsize) FROM dbstat WHERE name LIKE 'outbox%' GROUP BY name ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn a_typical_identify_takes_at_most_400_bytes_on_disk() {
        const N: usize = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open(&dir.path().join("t.db")).unwrap();
        let messages: Vec<_> = (0..N).map(typical_identify).collect();
        create_staging(&conn).unwrap();
        // As the planner stages them: values, inside the run's transaction; every tenth as
        // text (`stage`), which must give the same rows.
        let values: Vec<(Value, Value)> = messages
            .iter()
            .map(|(_, _, body, effects)| {
                (
                    serde_json::from_str(body).unwrap(),
                    serde_json::from_str(effects).unwrap(),
                )
            })
            .collect();
        let started = std::time::Instant::now();
        conn.execute_batch("BEGIN").unwrap();
        for (i, ((lane, id, body, effects), (body_value, effects_value))) in
            messages.iter().zip(&values).enumerate()
        {
            let lane = &Lane::user(lane);
            if i % 10 == 0 {
                let message = NewMessage {
                    lane,
                    message_id: id,
                    kind: MessageKind::Identify,
                    body,
                    effects,
                };
                stage(&conn, &message, false).unwrap();
            } else {
                stage_values(
                    &conn,
                    lane,
                    id,
                    MessageKind::Identify,
                    body_value,
                    effects_value,
                    false,
                )
                .unwrap();
            }
        }
        conn.execute_batch("COMMIT").unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO runs (id, mode, started_at) VALUES (1, 'full', 0)",
            [],
        )
        .unwrap();
        let identifies = EnqueuedCounts {
            identify: N as u64,
            ..EnqueuedCounts::default()
        };
        let counts = enqueue_staged(&tx, 1, 0, identifies).unwrap();
        tx.commit().unwrap();
        assert_eq!(counts, identifies);
        drop_staging(&conn).unwrap();
        eprintln!("staged and enqueued {N} in {:?}", started.elapsed());

        let bytes = outbox_bytes(&conn);
        let total: i64 = bytes.iter().map(|(_, b)| b).sum();
        let per_message = total as f64 / N as f64;
        eprintln!(
            "body {} B, effects {} B; on disk {per_message:.1} B a message: {bytes:?}",
            messages[0].2.len(),
            messages[0].3.len()
        );
        let pending = pending(&conn, N + 1).unwrap();
        assert_eq!(pending.len(), N);
        for (message, (lane, id, body, effects)) in pending.iter().zip(&messages) {
            assert_eq!(message.lane.as_str(), lane);
            assert_eq!(&message.message_id, id);
            assert_eq!(message.kind, MessageKind::Identify);
            assert_eq!(
                outbox::body(&conn, message.seq)
                    .unwrap()
                    .unwrap()
                    .to_string(),
                *body,
                "the body is the planner's, byte for byte"
            );
            assert_eq!(
                message.message,
                Message::from_json_str(body),
                "read as the planner's message"
            );
            let read = outbox::effects(&conn, message.seq).unwrap().unwrap();
            assert_eq!(serde_json::to_string(&read).unwrap(), *effects);
        }
        let shapes: i64 = conn
            .query_row("SELECT count(*) FROM outbox_shapes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(shapes, 1, "one shape for every identify of the same traits");
        assert!(per_message <= 400.0, "{per_message:.1} bytes a message");
    }

    #[test]
    fn rows_queued_before_the_migration_read_as_before_and_still_deduplicate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(include_str!("../../../tests/fixtures/schema_v1.sql"))
            .unwrap();
        let (lane, id, body, effects) = typical_identify(7);
        old.execute(
            "INSERT INTO outbox (lane, message_id, type, body, effects, enqueued_at) \
             VALUES (?1, ?2, 'identify', ?3, ?4, 0)",
            params![lane, id, body, effects],
        )
        .unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        drop(old);

        let mut conn = crate::store::open(&path).unwrap();
        let stored: String = conn
            .query_row("SELECT typeof(message_id) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, "blob");
        let pending = pending(&conn, 10).unwrap();
        assert_eq!(pending[0].message_id, id);
        assert_eq!(
            outbox::body(&conn, pending[0].seq)
                .unwrap()
                .unwrap()
                .to_string(),
            body
        );
        assert_eq!(pending[0].message, Message::from_json_str(&body));
        let read = outbox::effects(&conn, pending[0].seq).unwrap().unwrap();
        assert_eq!(serde_json::to_string(&read).unwrap(), effects);

        // The same message planned again while the old one is pending is not queued twice.
        create_staging(&conn).unwrap();
        let message = NewMessage {
            lane: &Lane::user(&lane),
            message_id: &id,
            kind: MessageKind::Identify,
            body: &body,
            effects: &effects,
        };
        stage(&conn, &message, false).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO runs (id, mode, started_at) VALUES (1, 'full', 0)",
            [],
        )
        .unwrap();
        assert_eq!(
            enqueue_staged(
                &tx,
                1,
                0,
                EnqueuedCounts {
                    identify: 1,
                    ..EnqueuedCounts::default()
                }
            )
            .unwrap(),
            EnqueuedCounts::default()
        );
        tx.commit().unwrap();
        assert!(!enqueue(&conn, None, &message, 0).unwrap());
    }
}
