//! Unit tests of the engine against an in-memory database: every row of SPEC section 5's
//! table, coalescing, ordering, initial and full syncs, event times, re-planning after a dead
//! letter, and property tests of the diff.

use proptest::prelude::*;
use rusqlite::{Connection, params};
use serde_json::{Value, json};

use super::*;
use crate::store::outbox::{mark_dead, mark_delivered, pending};
use crate::store::state;

fn personas() -> PersonasSettings {
    PersonasSettings {
        space_id: "test".into(),
        track_on_initial_sync: false,
        audience_entered_event: "Audience Entered".into(),
        audience_exited_event: "Audience Exited".into(),
        trait_computed_event: "Trait Computed".into(),
    }
}

struct Db {
    conn: Connection,
    personas: PersonasSettings,
    clock: i64,
    /// Where an on-disk database lives (its merges run on worker threads).
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    /// In memory: a run's merges run on the run's own connection.
    fn new() -> Db {
        Db {
            conn: crate::store::open_in_memory().unwrap(),
            personas: personas(),
            clock: 1_700_000_000,
            _dir: None,
        }
    }

    /// A database file: a run's merges run on worker threads with their own connections.
    fn on_disk() -> Db {
        let dir = tempfile::tempdir().unwrap();
        Db {
            conn: crate::store::open(&dir.path().join("state.db")).unwrap(),
            personas: personas(),
            clock: 1_700_000_000,
            _dir: Some(dir),
        }
    }

    fn computation(&self, id: &str, key: &str, name: &str, kind: &str, scope: &str) {
        self.conn
            .execute(
                "INSERT INTO computations (id, key, name, kind, scope, created_at) VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                params![id, key, name, kind, scope],
            )
            .unwrap();
    }

    /// A complete snapshot of (entity, email, value JSON) rows; returns its id.
    fn snapshot(&mut self, computation: &str, rows: &[(&str, Option<&str>, &str)]) -> i64 {
        self.clock += 60;
        self.conn
            .execute(
                "INSERT INTO snapshots (computation_id, taken_at, complete) VALUES (?1, ?2, 0)",
                params![computation, self.clock],
            )
            .unwrap();
        let id = self.conn.last_insert_rowid();
        for (entity, email, value) in rows {
            self.conn
                .execute(
                    "INSERT INTO snapshot_rows (snapshot_id, entity_id, email, value) VALUES (?1, ?2, ?3, ?4)",
                    params![id, entity, email, value],
                )
                .unwrap();
        }
        self.conn
            .execute("UPDATE snapshots SET complete = 1 WHERE id = ?1", [id])
            .unwrap();
        id
    }

    /// A complete membership snapshot of (group, user) rows.
    fn members(&mut self, rows: &[(&str, &str)]) -> i64 {
        self.clock += 60;
        self.conn
            .execute(
                "INSERT INTO membership_snapshots (taken_at, complete) VALUES (?1, 1)",
                [self.clock],
            )
            .unwrap();
        let id = self.conn.last_insert_rowid();
        for (group, user) in rows {
            self.conn
                .execute(
                    "INSERT INTO membership_rows (snapshot_id, group_id, user_id) VALUES (?1, ?2, ?3)",
                    params![id, group, user],
                )
                .unwrap();
        }
        id
    }

    fn run_with(&mut self, mode: RunMode, computation: Option<&str>) -> (Report, Vec<Value>) {
        let before: i64 = self
            .conn
            .query_row("SELECT coalesce(max(seq), 0) FROM outbox", [], |r| r.get(0))
            .unwrap();
        let options = RunOptions {
            mode,
            computation,
            now: self.clock,
            company_attribute_prefix: "account_",
        };
        let report = run(&mut self.conn, &self.personas, &options, Output::Enqueue).unwrap();
        (report, self.bodies_after(before))
    }

    /// The bodies of the messages enqueued after `seq`, in outbox order.
    fn bodies_after(&self, seq: i64) -> Vec<Value> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq FROM outbox WHERE seq > ?1 ORDER BY seq")
            .unwrap();
        let seqs: Vec<i64> = stmt
            .query_map([seq], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        seqs.into_iter()
            .map(|seq| {
                crate::store::outbox::body(&self.conn, seq)
                    .unwrap()
                    .unwrap()
            })
            .collect()
    }

    fn run(&mut self) -> Vec<Value> {
        self.run_with(RunMode::Incremental, None).1
    }

    fn dry_run(&mut self, mode: RunMode) -> Vec<Value> {
        let mut out = Vec::new();
        let options = RunOptions {
            mode,
            computation: None,
            now: self.clock,
            company_attribute_prefix: "account_",
        };
        run(
            &mut self.conn,
            &self.personas,
            &options,
            Output::DryRun(&mut out),
        )
        .unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn deliver_all(&mut self) {
        for m in pending(&self.conn, 1_000_000).unwrap() {
            mark_delivered(&mut self.conn, m.seq).unwrap();
        }
    }

    fn state(
        &self,
        computation: &str,
        subject: &str,
        entity: &str,
    ) -> Option<(Option<String>, Option<String>)> {
        let planned = state::planned_row(&self.conn, computation, subject, entity)
            .unwrap()
            .1;
        let delivered = state::delivered_value(&self.conn, computation, subject, entity).unwrap();
        (planned.is_some() || delivered.is_some()).then_some((planned, delivered))
    }
}

/// A compact view of a message: (type, user or group, what it carries).
fn summary(m: &Value) -> (String, String, Value) {
    let kind = m["type"].as_str().unwrap().to_string();
    let who = m
        .get("userId")
        .and_then(Value::as_str)
        .or_else(|| m.get("groupId").and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    let what = match kind.as_str() {
        "identify" => {
            let mut t = m["traits"].clone();
            t.as_object_mut().unwrap().remove("email");
            t
        }
        "track" => json!({"event": m["event"], "properties": m["properties"]}),
        _ => json!({"groupId": m["groupId"], "userId": m.get("userId"), "traits": m["traits"]}),
    };
    (kind, who, what)
}

fn summaries(ms: &[Value]) -> Vec<(String, String, Value)> {
    ms.iter().map(summary).collect()
}

fn s(kind: &str, who: &str, what: Value) -> (String, String, Value) {
    (kind.to_string(), who.to_string(), what)
}

/// A database where `aud_1` (user audience `vip`) and `tra_1` (user trait `ltv`) already had
/// their initial sync from empty snapshots, so the next run is incremental.
fn user_db() -> Db {
    user_db_in(Db::new())
}

fn user_db_in(mut db: Db) -> Db {
    db.computation("aud_1", "vip", "VIP", "audience", "user");
    db.computation("tra_1", "ltv", "LTV", "trait", "user");
    db.snapshot("aud_1", &[]);
    db.snapshot("tra_1", &[]);
    assert!(db.run().is_empty());
    db
}

#[test]
fn spec_table_user_rows() {
    // (audience members, trait values) before and after → messages of the second run.
    type Snap<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    type Case<'a> = (&'a str, Snap<'a>, Snap<'a>, Vec<(String, String, Value)>);
    let cases: Vec<Case> = vec![
        (
            "user audience entered",
            (&[], &[]),
            (&["u1"], &[]),
            vec![
                s("identify", "u1", json!({"vip": true})),
                s(
                    "track",
                    "u1",
                    json!({"event": "Audience Entered", "properties": {"audience_key": "vip", "vip": true}}),
                ),
            ],
        ),
        (
            "user audience exited",
            (&["u1"], &[]),
            (&[], &[]),
            vec![
                s("identify", "u1", json!({"vip": false})),
                s(
                    "track",
                    "u1",
                    json!({"event": "Audience Exited", "properties": {"audience_key": "vip", "vip": false}}),
                ),
            ],
        ),
        (
            "user trait new",
            (&[], &[]),
            (&[], &[("u1", "42")]),
            vec![
                s("identify", "u1", json!({"ltv": 42})),
                s(
                    "track",
                    "u1",
                    json!({"event": "Trait Computed", "properties": {"trait_key": "ltv", "ltv": 42}}),
                ),
            ],
        ),
        (
            "user trait changed",
            (&[], &[("u1", "42")]),
            (&[], &[("u1", "\"gold\"")]),
            vec![
                s("identify", "u1", json!({"ltv": "gold"})),
                s(
                    "track",
                    "u1",
                    json!({"event": "Trait Computed", "properties": {"trait_key": "ltv", "ltv": "gold"}}),
                ),
            ],
        ),
        (
            "user trait gone from the snapshot",
            (&[], &[("u1", "42")]),
            (&[], &[]),
            vec![s("identify", "u1", json!({"ltv": null}))],
        ),
        (
            "user trait value null is the same as gone",
            (&[], &[("u1", "42")]),
            (&[], &[("u1", "null")]),
            vec![s("identify", "u1", json!({"ltv": null}))],
        ),
        (
            "no change",
            (&["u1"], &[("u1", "42")]),
            (&["u1"], &[("u1", "42")]),
            vec![],
        ),
        (
            "coalesced: one identify, then one track per change",
            (&[], &[]),
            (&["u1"], &[("u1", "[1,2]")]),
            // Computations go in key order: ltv before vip.
            vec![
                s("identify", "u1", json!({"ltv": [1, 2], "vip": true})),
                s(
                    "track",
                    "u1",
                    json!({"event": "Trait Computed", "properties": {"trait_key": "ltv", "ltv": [1, 2]}}),
                ),
                s(
                    "track",
                    "u1",
                    json!({"event": "Audience Entered", "properties": {"audience_key": "vip", "vip": true}}),
                ),
            ],
        ),
    ];
    for (name, before, after, want) in cases {
        let mut db = user_db();
        let rows =
            |members: &[&'static str]| -> Vec<(&'static str, Option<&'static str>, &'static str)> {
                members.iter().map(|m| (*m, None, "true")).collect()
            };
        db.snapshot("aud_1", &rows(before.0));
        db.snapshot(
            "tra_1",
            &before
                .1
                .iter()
                .map(|(u, v)| (*u, None, *v))
                .collect::<Vec<_>>(),
        );
        db.run();
        db.snapshot("aud_1", &rows(after.0));
        db.snapshot(
            "tra_1",
            &after
                .1
                .iter()
                .map(|(u, v)| (*u, None, *v))
                .collect::<Vec<_>>(),
        );
        assert_eq!(summaries(&db.run()), want, "{name}");
    }
}

fn account_db() -> Db {
    let mut db = Db::new();
    db.computation("aud_a", "enterprise", "Enterprise", "audience", "account");
    db.computation("tra_a", "plan_tier", "Plan tier", "trait", "account");
    db.snapshot("aud_a", &[]);
    db.snapshot("tra_a", &[]);
    db.members(&[("acme", "u1"), ("acme", "u2"), ("beta", "u2")]);
    // Initial: attaches only.
    let first = summaries(&db.run());
    assert_eq!(
        first,
        vec![
            s(
                "group",
                "u1",
                json!({"groupId": "acme", "userId": "u1", "traits": {}})
            ),
            s(
                "group",
                "u2",
                json!({"groupId": "acme", "userId": "u2", "traits": {}})
            ),
            s(
                "group",
                "u2",
                json!({"groupId": "beta", "userId": "u2", "traits": {}})
            ),
        ]
    );
    db
}

#[test]
fn spec_table_account_audience_entered_and_exited() {
    let mut db = account_db();
    db.snapshot("aud_a", &[("acme", None, "true")]);
    assert_eq!(
        summaries(&db.run()),
        vec![
            s(
                "group",
                "acme",
                json!({"groupId": "acme", "userId": null, "traits": {"enterprise": true}})
            ),
            s("identify", "u1", json!({"enterprise": true})),
            s(
                "track",
                "u1",
                json!({"event": "Audience Entered", "properties": {"audience_key": "enterprise", "enterprise": true}})
            ),
            s("identify", "u2", json!({"enterprise": true})),
            s(
                "track",
                "u2",
                json!({"event": "Audience Entered", "properties": {"audience_key": "enterprise", "enterprise": true}})
            ),
        ]
    );
    // u2 is also in beta: beta entering changes the account but not u2's derived value.
    db.snapshot("aud_a", &[("acme", None, "true"), ("beta", None, "true")]);
    assert_eq!(
        summaries(&db.run()),
        vec![s(
            "group",
            "beta",
            json!({"groupId": "beta", "userId": null, "traits": {"enterprise": true}})
        )]
    );
    // acme exits: u1 exits, u2 stays a member through beta.
    db.snapshot("aud_a", &[("beta", None, "true")]);
    assert_eq!(
        summaries(&db.run()),
        vec![
            s(
                "group",
                "acme",
                json!({"groupId": "acme", "userId": null, "traits": {"enterprise": false}})
            ),
            s("identify", "u1", json!({"enterprise": false})),
            s(
                "track",
                "u1",
                json!({"event": "Audience Exited", "properties": {"audience_key": "enterprise", "enterprise": false}})
            ),
        ]
    );
}

#[test]
fn spec_table_account_trait_new_changed_gone_and_two_accounts() {
    let mut db = account_db();
    // u2 is in acme and beta: the smallest group_id with a value (acme) wins.
    db.snapshot(
        "tra_a",
        &[("acme", None, "\"gold\""), ("beta", None, "\"silver\"")],
    );
    assert_eq!(
        summaries(&db.run()),
        vec![
            s(
                "group",
                "acme",
                json!({"groupId": "acme", "userId": null, "traits": {"plan_tier": "gold"}})
            ),
            s(
                "group",
                "beta",
                json!({"groupId": "beta", "userId": null, "traits": {"plan_tier": "silver"}})
            ),
            s("identify", "u1", json!({"plan_tier": "gold"})),
            s(
                "track",
                "u1",
                json!({"event": "Trait Computed", "properties": {"trait_key": "plan_tier", "plan_tier": "gold"}})
            ),
            s("identify", "u2", json!({"plan_tier": "gold"})),
            s(
                "track",
                "u2",
                json!({"event": "Trait Computed", "properties": {"trait_key": "plan_tier", "plan_tier": "gold"}})
            ),
        ]
    );
    // acme's value goes: acme gets null; u1 loses the value (null, no track); u2 falls back to beta.
    db.snapshot("tra_a", &[("beta", None, "\"silver\"")]);
    assert_eq!(
        summaries(&db.run()),
        vec![
            s(
                "group",
                "acme",
                json!({"groupId": "acme", "userId": null, "traits": {"plan_tier": null}})
            ),
            s("identify", "u1", json!({"plan_tier": null})),
            s("identify", "u2", json!({"plan_tier": "silver"})),
            s(
                "track",
                "u2",
                json!({"event": "Trait Computed", "properties": {"trait_key": "plan_tier", "plan_tier": "silver"}})
            ),
        ]
    );
}

#[test]
fn spec_table_membership_join_and_leave() {
    let mut db = account_db();
    db.snapshot("aud_a", &[("beta", None, "true")]);
    db.run();
    // u1 joins beta (attach; derived value appears), u2 leaves beta (detach; derived value goes).
    db.members(&[("acme", "u1"), ("acme", "u2"), ("beta", "u1")]);
    assert_eq!(
        summaries(&db.run()),
        vec![
            s("identify", "u1", json!({"enterprise": true})),
            s(
                "group",
                "u1",
                json!({"groupId": "beta", "userId": "u1", "traits": {}})
            ),
            s(
                "track",
                "u1",
                json!({"event": "Audience Entered", "properties": {"audience_key": "enterprise", "enterprise": true}})
            ),
            s(
                "identify",
                "u2",
                json!({"enterprise": false, "companies": [{"id": "beta", "remove": true}]})
            ),
            s(
                "track",
                "u2",
                json!({"event": "Audience Exited", "properties": {"audience_key": "enterprise", "enterprise": false}})
            ),
        ]
    );
    // A join that changes no derived value: the attach alone.
    db.members(&[
        ("acme", "u1"),
        ("acme", "u2"),
        ("beta", "u1"),
        ("acme", "u3"),
    ]);
    assert_eq!(
        summaries(&db.run()),
        vec![s(
            "group",
            "u3",
            json!({"groupId": "acme", "userId": "u3", "traits": {}})
        )]
    );
}

#[test]
fn initial_sync_sends_identifies_only_unless_asked() {
    for track_on_initial_sync in [false, true] {
        let mut db = Db::new();
        db.personas.track_on_initial_sync = track_on_initial_sync;
        db.computation("aud_1", "vip", "VIP", "audience", "user");
        db.snapshot("aud_1", &[("u1", Some("u1@example.com"), "true")]);
        let (report, ms) = db.run_with(RunMode::Incremental, None);
        assert_eq!(report.computations[0].mode, RunMode::Full);
        let kinds: Vec<_> = ms.iter().map(|m| m["type"].as_str().unwrap()).collect();
        if track_on_initial_sync {
            assert_eq!(kinds, ["identify", "track"]);
        } else {
            assert_eq!(kinds, ["identify"]);
        }
        assert_eq!(ms[0]["traits"]["email"], "u1@example.com");
    }
}

#[test]
fn initial_sync_coalesces_one_identify_per_user() {
    let mut db = Db::new();
    let users: Vec<String> = (0..50).map(|i| format!("u{i:03}")).collect();
    for c in 0..5 {
        let id = format!("tra_{c}");
        db.computation(&id, &format!("t{c}"), &format!("T {c}"), "trait", "user");
        let rows: Vec<_> = users.iter().map(|u| (u.as_str(), None, "1")).collect();
        db.snapshot(&id, &rows);
    }
    let (report, ms) = db.run_with(RunMode::Incremental, None);
    assert_eq!(report.messages.identify, 50);
    assert_eq!(ms.len(), 50);
    assert_eq!(
        ms[0]["traits"],
        json!({"t0": 1, "t1": 1, "t2": 1, "t3": 1, "t4": 1})
    );
    assert_eq!(
        ms[0]["context"]["personas"]["computations"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn full_resync_resends_values_clears_vanished_and_tracks_nothing() {
    let mut db = user_db();
    db.snapshot("aud_1", &[("u1", None, "true"), ("u2", None, "true")]);
    db.snapshot("tra_1", &[("u1", None, "5"), ("u3", None, "7")]);
    db.run();
    // u2 exits and u3's value goes, but we ask for a full resync.
    db.snapshot("aud_1", &[("u1", None, "true")]);
    db.snapshot("tra_1", &[("u1", None, "5")]);
    let (report, ms) = db.run_with(RunMode::Full, None);
    assert_eq!(
        summaries(&ms),
        vec![
            s("identify", "u1", json!({"ltv": 5, "vip": true})),
            s("identify", "u2", json!({"vip": false})),
            s("identify", "u3", json!({"ltv": null})),
        ]
    );
    assert_eq!(report.messages.track, 0);
    // The same full resync again while its messages are pending queues nothing new for u1
    // (same messageId already pending); u2's false was an exit and is now a re-send.
    let (_, ms) = db.run_with(RunMode::Full, None);
    assert_eq!(
        summaries(&ms),
        vec![s("identify", "u2", json!({"vip": false}))]
    );
    // Once delivered, a full resync re-sends current values (exited u2 keeps its false).
    db.deliver_all();
    let (_, ms) = db.run_with(RunMode::Full, None);
    assert_eq!(
        summaries(&ms),
        vec![
            s("identify", "u1", json!({"ltv": 5, "vip": true})),
            s("identify", "u2", json!({"vip": false})),
        ]
    );
}

#[test]
fn explicit_key_differs_from_the_snake_case_of_the_name() {
    let mut db = Db::new();
    db.computation(
        "aud_9",
        "order_completed_last_30days",
        "Order Completed Last 30 Days",
        "audience",
        "user",
    );
    db.snapshot("aud_9", &[("u1", None, "true")]);
    let ms = db.run();
    assert_eq!(
        ms[0]["traits"],
        json!({"order_completed_last_30days": true})
    );
    assert_eq!(
        ms[0]["context"]["personas"]["computation_key"],
        "order_completed_last_30days"
    );
    assert_eq!(ms[0]["context"]["personas"]["computation_id"], "aud_9");
    assert_eq!(
        ms[0]["context"]["personas"]["computation_class"],
        "audience"
    );
    assert_eq!(ms[0]["context"]["personas"]["namespace"], "spa_test");
    assert_eq!(
        ms[0]["integrations"],
        json!({"All": false, "Intercom": true})
    );
    assert!(
        ms[0]["messageId"]
            .as_str()
            .unwrap()
            .starts_with("personas_")
    );
}

#[test]
fn email_only_users_are_addressed_by_email() {
    let mut db = user_db();
    db.snapshot("aud_1", &[("x@example.com", Some("x@example.com"), "true")]);
    let ms = db.run();
    assert!(ms[0].get("userId").is_none());
    assert_eq!(ms[0]["traits"]["email"], "x@example.com");
    assert_eq!(ms[1]["context"]["traits"]["email"], "x@example.com");
}

#[test]
fn a_replanned_message_keeps_its_message_id() {
    let mut db = user_db();
    db.snapshot("tra_1", &[("u1", None, "5")]);
    let first = db.run();
    assert_eq!(first.len(), 2);
    let identify = pending(&db.conn, 10)
        .unwrap()
        .into_iter()
        .find(|m| m.kind == crate::segment::MessageKind::Identify)
        .unwrap();
    assert_eq!(
        db.state("tra_1", "user", "u1"),
        Some((Some("5".into()), None))
    );
    mark_dead(&mut db.conn, identify.seq, "400 bad attribute").unwrap();
    assert_eq!(
        db.state("tra_1", "user", "u1"),
        None,
        "planned went back to delivered (none)"
    );
    // The next run re-emits u1 from the same snapshot, with the same messageId.
    let again = db.run();
    let again_identify = again.iter().find(|m| m["type"] == "identify").unwrap();
    assert_eq!(again_identify["messageId"], first[0]["messageId"]);
    assert_eq!(again_identify["traits"]["ltv"], 5);
}

#[test]
fn delivery_moves_delivered_state_and_dead_letters_restore_planned() {
    let mut db = user_db();
    db.snapshot("aud_1", &[("u1", None, "true")]);
    db.run();
    db.deliver_all();
    assert_eq!(
        db.state("aud_1", "user", "u1"),
        Some((Some("true".into()), Some("true".into())))
    );
    db.snapshot("aud_1", &[]);
    db.run();
    assert_eq!(
        db.state("aud_1", "user", "u1"),
        Some((Some("false".into()), Some("true".into())))
    );
    let identify = pending(&db.conn, 10)
        .unwrap()
        .into_iter()
        .find(|m| m.kind == crate::segment::MessageKind::Identify)
        .unwrap();
    mark_dead(&mut db.conn, identify.seq, "gone").unwrap();
    assert_eq!(
        db.state("aud_1", "user", "u1"),
        Some((Some("true".into()), Some("true".into())))
    );
    // The exit is planned again by the next run.
    let ms = db.run();
    assert_eq!(summary(&ms[0]), s("identify", "u1", json!({"vip": false})));
}

/// `aud_1` (vip) and `tra_1` (ltv) with no run yet: the next run is their initial sync.
fn initial_db() -> Db {
    let db = Db::new();
    db.computation("aud_1", "vip", "VIP", "audience", "user");
    db.computation("tra_1", "ltv", "LTV", "trait", "user");
    db
}

fn tracks(ms: &[Value]) -> Vec<&Value> {
    ms.iter().filter(|m| m["type"] == "track").collect()
}

#[test]
fn a_dead_letter_of_an_initial_sync_is_replanned_without_events() {
    let mut db = initial_db();
    db.snapshot("aud_1", &[("u1", None, "true"), ("u2", None, "true")]);
    db.snapshot("tra_1", &[("u1", None, "5")]);
    let first = db.run();
    assert!(tracks(&first).is_empty(), "an initial sync sends no events");
    for m in pending(&db.conn, 10).unwrap() {
        if m.lane.as_str() == "u1" {
            mark_dead(&mut db.conn, m.seq, "400 bad attribute").unwrap();
        } else {
            mark_delivered(&mut db.conn, m.seq).unwrap();
        }
    }
    // Re-planned from the same snapshots: the identify again, no event.
    let again = db.run();
    assert_eq!(
        summaries(&again),
        vec![s("identify", "u1", json!({"vip": true, "ltv": 5}))]
    );
    // Re-planned once more from newer snapshots with the same values: still no event.
    let identify = pending(&db.conn, 10).unwrap().remove(0);
    mark_dead(&mut db.conn, identify.seq, "400 bad attribute").unwrap();
    db.snapshot("aud_1", &[("u1", None, "true"), ("u2", None, "true")]);
    db.snapshot("tra_1", &[("u1", None, "5")]);
    let later = db.run();
    assert_eq!(
        summaries(&later),
        vec![s("identify", "u1", json!({"vip": true, "ltv": 5}))]
    );
    // Once delivered, nothing waits to be re-planned, and a real change tracks as usual.
    db.deliver_all();
    db.snapshot("aud_1", &[("u2", None, "true")]);
    db.snapshot("tra_1", &[("u1", None, "6")]);
    let changed = db.run();
    assert_eq!(tracks(&changed).len(), 2, "{changed:#?}");
}

#[test]
fn a_value_that_moved_on_after_a_dead_letter_is_a_new_change() {
    let mut db = initial_db();
    db.snapshot("aud_1", &[]);
    db.snapshot("tra_1", &[("u1", None, "5")]);
    db.run();
    let identify = pending(&db.conn, 10).unwrap().remove(0);
    mark_dead(&mut db.conn, identify.seq, "400 bad attribute").unwrap();
    // Undisturbed, 5 → 7 would fire Trait Computed: so does the re-plan to 7.
    db.snapshot("tra_1", &[("u1", None, "7")]);
    let ms = db.run();
    assert_eq!(
        summaries(&ms),
        vec![
            s("identify", "u1", json!({"ltv": 7})),
            s(
                "track",
                "u1",
                json!({"event": "Trait Computed", "properties": {"trait_key": "ltv", "ltv": 7}})
            ),
        ]
    );
}

#[test]
fn a_dead_letter_of_an_incremental_change_keeps_its_event_time() {
    let mut db = user_db();
    db.snapshot("aud_1", &[("u1", None, "true")]);
    let first = db.run();
    let first_track = tracks(&first)[0].clone();
    for m in pending(&db.conn, 10).unwrap() {
        if m.kind == crate::segment::MessageKind::Identify {
            mark_dead(&mut db.conn, m.seq, "400 bad attribute").unwrap();
        } else {
            // The event went through (its contact existed).
            mark_delivered(&mut db.conn, m.seq).unwrap();
        }
    }
    // A newer snapshot, same membership: the re-plan sends the event with the same time, so
    // Intercom de-duplicates it instead of recording a second one.
    db.snapshot("aud_1", &[("u1", None, "true")]);
    let again = db.run();
    let track = tracks(&again)[0];
    assert_eq!(track["event"], "Audience Entered");
    assert_eq!(track["timestamp"], first_track["timestamp"]);
    assert_ne!(
        track["messageId"], first_track["messageId"],
        "planned from another snapshot"
    );
    // The next real event of that name for u1 still gets a later time.
    db.deliver_all();
    db.snapshot("aud_1", &[]);
    db.run();
    db.deliver_all();
    db.snapshot("aud_1", &[("u1", None, "true")]);
    let entered = db.run();
    let later = tracks(&entered)[0];
    assert!(
        later["timestamp"].as_str().unwrap() > first_track["timestamp"].as_str().unwrap(),
        "{later} after {first_track}"
    );
}

#[test]
fn dead_letters_retry_sends_the_message_itself_and_nothing_is_replanned() {
    let mut db = initial_db();
    db.snapshot("aud_1", &[("u1", None, "true")]);
    db.snapshot("tra_1", &[]);
    db.run();
    let identify = pending(&db.conn, 10).unwrap().remove(0);
    mark_dead(&mut db.conn, identify.seq, "400 bad attribute").unwrap();
    crate::store::outbox::retry_dead(&mut db.conn, crate::store::outbox::Selection::All).unwrap();
    let replans: i64 = db
        .conn
        .query_row("SELECT count(*) FROM replans", [], |r| r.get(0))
        .unwrap();
    assert_eq!(replans, 0);
    assert!(
        db.run().is_empty(),
        "the retried message carries the change"
    );
}

#[test]
fn event_times_are_distinct_within_and_across_runs() {
    let mut db = user_db();
    db.computation("tra_2", "score", "Score", "trait", "user");
    db.snapshot("tra_2", &[]);
    db.run();
    db.snapshot("tra_1", &[("u1", None, "1")]);
    db.snapshot("tra_2", &[("u1", None, "2")]);
    let ms = db.run();
    let times: Vec<_> = ms
        .iter()
        .filter(|m| m["type"] == "track")
        .map(|m| m["timestamp"].clone())
        .collect();
    assert_eq!(times.len(), 2);
    assert_ne!(
        times[0], times[1],
        "two Trait Computed for one user in one run"
    );
    // A later run whose snapshot is older than the last event time still moves forward.
    db.conn
        .execute("UPDATE event_times SET last_at = last_at + 1000", [])
        .unwrap();
    let last: i64 = db
        .conn
        .query_row(
            "SELECT last_at FROM event_times WHERE entity_id = 'u1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.snapshot("tra_1", &[("u1", None, "3")]);
    let ms = db.run();
    let track = ms.iter().find(|m| m["type"] == "track").unwrap();
    assert_eq!(track["timestamp"], message::rfc3339(last + 1));
}

#[test]
fn plan_and_dry_run_change_nothing_and_match_the_run() {
    let mut db = user_db();
    db.snapshot("aud_1", &[("u1", None, "true")]);
    let count = |db: &Db| -> (i64, i64, i64) {
        db.conn
            .query_row(
                "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM planned_bases) + (SELECT count(*) FROM planned_overrides), (SELECT count(*) FROM runs)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    };
    let before = count(&db);
    let dry = db.dry_run(RunMode::Incremental);
    let options = RunOptions {
        mode: RunMode::Incremental,
        computation: None,
        now: 0,
        company_attribute_prefix: "account_",
    };
    let report = run(&mut db.conn, &db.personas, &options, Output::Plan).unwrap();
    assert_eq!(count(&db), before);
    assert_eq!(report.messages.identify, 1);
    assert_eq!(report.messages.track, 1);
    let real = db.run();
    assert_eq!(dry, real);
}

#[test]
fn unchanged_snapshots_are_skipped_and_disabled_computations_ignored() {
    let mut db = user_db();
    let (report, ms) = db.run_with(RunMode::Incremental, None);
    assert!(ms.is_empty());
    assert!(
        report
            .computations
            .iter()
            .all(|c| c.skipped == Some("unchanged"))
    );
    db.conn
        .execute("UPDATE computations SET enabled = 0 WHERE id = 'aud_1'", [])
        .unwrap();
    db.snapshot("aud_1", &[("u1", None, "true")]);
    let (report, ms) = db.run_with(RunMode::Incremental, None);
    assert!(ms.is_empty());
    assert_eq!(report.computations.len(), 1);
}

#[test]
fn one_computation_only() {
    let mut db = user_db();
    db.snapshot("aud_1", &[("u1", None, "true")]);
    db.snapshot("tra_1", &[("u1", None, "1")]);
    let (_, ms) = db.run_with(RunMode::Incremental, Some("ltv"));
    assert_eq!(summaries(&ms)[0], s("identify", "u1", json!({"ltv": 1})));
    assert_eq!(ms.len(), 2);
}

// ─── Properties ──────────────────────────────────────────────────────────────────────────────

fn snapshot_strategy() -> impl Strategy<Value = (Vec<u8>, Vec<Option<u8>>)> {
    // 12 users: audience membership and trait values (None = no row).
    (
        proptest::collection::vec(0u8..2, 12),
        proptest::collection::vec(proptest::option::of(0u8..3), 12),
    )
}

fn load(db: &mut Db, snap: &(Vec<u8>, Vec<Option<u8>>)) {
    let users: Vec<String> = (0..12).map(|i| format!("u{i:02}")).collect();
    let members: Vec<_> = users
        .iter()
        .zip(&snap.0)
        .filter(|(_, m)| **m == 1)
        .map(|(u, _)| (u.as_str(), None, "true"))
        .collect();
    db.snapshot("aud_1", &members);
    let values: Vec<String> = snap
        .1
        .iter()
        .map(|v| v.map(|v| v.to_string()).unwrap_or_default())
        .collect();
    let rows: Vec<_> = users
        .iter()
        .zip(&snap.1)
        .zip(&values)
        .filter(|((_, v), _)| v.is_some())
        .map(|((u, _), t)| (u.as_str(), None, t.as_str()))
        .collect();
    db.snapshot("tra_1", &rows);
}

/// What Intercom would hold after applying identifies: per user, vip and ltv.
fn apply(model: &mut std::collections::BTreeMap<(String, String), Value>, ms: &[Value]) {
    for m in ms.iter().filter(|m| m["type"] == "identify") {
        let user = m["userId"].as_str().unwrap().to_string();
        for (k, v) in m["traits"].as_object().unwrap() {
            if v.is_null() || *v == json!(false) {
                model.remove(&(user.clone(), k.clone()));
            } else {
                model.insert((user.clone(), k.clone()), v.clone());
            }
        }
    }
}

fn expected(
    snap: &(Vec<u8>, Vec<Option<u8>>),
) -> std::collections::BTreeMap<(String, String), Value> {
    let mut m = std::collections::BTreeMap::new();
    for i in 0..12 {
        let u = format!("u{i:02}");
        if snap.0[i] == 1 {
            m.insert((u.clone(), "vip".to_string()), json!(true));
        }
        if let Some(v) = snap.1[i] {
            m.insert((u, "ltv".to_string()), json!(v));
        }
    }
    m
}

/// What Intercom takes from the initial sync of `a` and the run to `b`, everything delivered.
fn undisturbed(a: &(Vec<u8>, Vec<Option<u8>>), b: &(Vec<u8>, Vec<Option<u8>>)) -> Vec<Value> {
    let mut calm = initial_db();
    load(&mut calm, a);
    calm.run();
    let mut delivered = deliver_with(&mut calm, &[]);
    load(&mut calm, b);
    calm.run();
    delivered.extend(deliver_with(&mut calm, &[]));
    delivered
}

/// A track as Intercom keeps it: it drops an event with the same contact, name and
/// `created_at` as an earlier one.
type Event = (String, String, String);

/// Deliver everything pending in outbox order; the n-th identify is dead-lettered when
/// `dead[n % len]` is set. Returns the messages Intercom took.
fn deliver_with(db: &mut Db, dead: &[bool]) -> Vec<Value> {
    let mut identifies = 0;
    let mut delivered = Vec::new();
    for m in pending(&db.conn, 1_000_000).unwrap() {
        let dies = m.kind == crate::segment::MessageKind::Identify
            && !dead.is_empty()
            && dead[identifies % dead.len()];
        if m.kind == crate::segment::MessageKind::Identify {
            identifies += 1;
        }
        if dies {
            mark_dead(&mut db.conn, m.seq, "400 refused").unwrap();
        } else {
            mark_delivered(&mut db.conn, m.seq).unwrap();
            delivered.push(m.message.expect("a planned message parses").into_value());
        }
    }
    delivered
}

/// The events Intercom records, with their properties.
fn events(delivered: &[Value]) -> std::collections::BTreeMap<Event, Value> {
    let mut events = std::collections::BTreeMap::new();
    for m in delivered.iter().filter(|m| m["type"] == "track") {
        let key = (
            m["userId"].as_str().unwrap().to_string(),
            m["event"].as_str().unwrap().to_string(),
            m["timestamp"].as_str().unwrap().to_string(),
        );
        events.entry(key).or_insert_with(|| m["properties"].clone());
    }
    events
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn applying_emitted_changes_to_the_old_state_gives_the_new(a in snapshot_strategy(), b in snapshot_strategy()) {
        let mut db = user_db();
        load(&mut db, &a);
        let mut model = Default::default();
        apply(&mut model, &db.run());
        prop_assert_eq!(&model, &expected(&a));
        load(&mut db, &b);
        apply(&mut model, &db.run());
        prop_assert_eq!(&model, &expected(&b));
    }

    #[test]
    fn worker_threads_emit_exactly_what_one_connection_does(a in snapshot_strategy(), b in snapshot_strategy(), full: bool) {
        let mut memory = user_db();
        let mut disk = user_db_in(Db::on_disk());
        let mode = if full { RunMode::Full } else { RunMode::Incremental };
        for db in [&mut memory, &mut disk] {
            load(db, &a);
            db.run();
            load(db, &b);
        }
        let (memory_report, memory_messages) = memory.run_with(mode, None);
        let (disk_report, disk_messages) = disk.run_with(mode, None);
        prop_assert_eq!(memory_messages, disk_messages);
        prop_assert_eq!(
            serde_json::to_value(&memory_report).unwrap(),
            serde_json::to_value(&disk_report).unwrap()
        );
    }

    #[test]
    fn a_dead_letter_followed_by_a_replan_emits_no_event_the_undisturbed_runs_would_not(
        a in snapshot_strategy(),
        b in snapshot_strategy(),
        dead_initial in proptest::collection::vec(any::<bool>(), 1..6),
        dead_incremental in proptest::collection::vec(any::<bool>(), 1..6),
    ) {
        // Undisturbed: the initial sync of a, then the run to b, everything delivered.
        let calm_delivered = undisturbed(&a, &b);

        // Disturbed: identifies dead-lettered in both runs, then re-planned until none is left.
        let mut rough = initial_db();
        load(&mut rough, &a);
        rough.run();
        let mut rough_delivered = deliver_with(&mut rough, &dead_initial);
        load(&mut rough, &b);
        rough.run();
        rough_delivered.extend(deliver_with(&mut rough, &dead_incremental));
        rough.run();
        rough_delivered.extend(deliver_with(&mut rough, &[]));
        prop_assert!(rough.run().is_empty(), "everything was re-planned");

        let calm_events = events(&calm_delivered);
        for (event, properties) in events(&rough_delivered) {
            prop_assert_eq!(
                calm_events.get(&event),
                Some(&properties),
                "{:?} is an event the undisturbed runs do not send", event
            );
        }
        // And Intercom ends as the snapshots say.
        let mut model = Default::default();
        apply(&mut model, &rough_delivered);
        prop_assert_eq!(&model, &expected(&b));
    }

    #[test]
    fn diffing_a_state_against_itself_emits_nothing(a in snapshot_strategy()) {
        let mut db = user_db();
        load(&mut db, &a);
        db.run();
        // The same content again, as new snapshots (so nothing is skipped as unchanged).
        load(&mut db, &a);
        prop_assert!(db.run().is_empty());
    }

    #[test]
    fn enqueueing_the_same_run_twice_enqueues_nothing_the_second_time(a in snapshot_strategy()) {
        let mut db = user_db();
        load(&mut db, &a);
        db.run();
        let outbox = |db: &Db| -> i64 { db.conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap() };
        let before = outbox(&db);
        // Forget the cursors so the second run really diffs again.
        db.conn.execute("DELETE FROM plan_cursors", []).unwrap();
        prop_assert!(db.run().is_empty());
        prop_assert_eq!(outbox(&db), before);
    }
}

#[test]
fn the_planned_base_cannot_be_pruned_until_a_newer_snapshot_is_planned() {
    let mut db = user_db();
    let first = db.snapshot("aud_1", &[("u1", None, "true"), ("u2", None, "true")]);
    db.run();
    let err = db
        .conn
        .execute("DELETE FROM snapshot_rows WHERE snapshot_id = ?1", [first])
        .unwrap_err();
    assert!(err.to_string().contains("planned base"), "{err}");
    // Nothing went: planned state still holds both members.
    assert_eq!(
        state::planned_values(&db.conn, "aud_1", "user")
            .unwrap()
            .len(),
        2
    );
    // Once a newer snapshot is planned, the old one is just an old snapshot.
    db.snapshot("aud_1", &[("u1", None, "true")]);
    db.run();
    let pruned = db
        .conn
        .execute("DELETE FROM snapshot_rows WHERE snapshot_id = ?1", [first])
        .unwrap();
    assert_eq!(pruned, 2);
    assert_eq!(
        db.state("aud_1", "user", "u2"),
        Some((Some("false".into()), None))
    );
}

#[test]
fn more_computations_than_worker_threads_are_merged_on_the_run_connection() {
    let n = super::workers::MAX_WORKERS + 1;
    let mut results = Vec::new();
    for mut db in [Db::new(), Db::on_disk()] {
        for i in 0..n {
            let (id, key) = (format!("tra_{i}"), format!("t{i:03}"));
            db.computation(&id, &key, &key, "trait", "user");
            let value = i.to_string();
            db.snapshot(&id, &[("u1", None, value.as_str())]);
        }
        let ms = db.run();
        assert_eq!(ms.len(), 1, "one identify, no tracks on the initial sync");
        assert_eq!(ms[0]["traits"].as_object().unwrap().len(), n);
        results.push(ms);
    }
    assert_eq!(results[0], results[1]);
}

// ─── Chunked runs (SPEC section 9) ──────────────────────────────────────────────────────────

/// Users' and accounts' snapshots and the membership of one step: the user snapshot of
/// [`snapshot_strategy`], four accounts' audience and trait values, each user's accounts.
type World = (
    (Vec<u8>, Vec<Option<u8>>),
    (Vec<u8>, Vec<Option<u8>>),
    Vec<u8>,
);

fn world_strategy() -> impl Strategy<Value = World> {
    (
        snapshot_strategy(),
        (
            proptest::collection::vec(0u8..2, 4),
            proptest::collection::vec(proptest::option::of(0u8..3), 4),
        ),
        proptest::collection::vec(0u8..16, 12),
    )
}

/// A database with user and account computations and a membership, nothing planned yet.
fn world_db(disk: bool) -> Db {
    let mut db = if disk { Db::on_disk() } else { Db::new() };
    db.computation("aud_1", "vip", "VIP", "audience", "user");
    db.computation("tra_1", "ltv", "LTV", "trait", "user");
    db.computation("aud_a", "enterprise", "Enterprise", "audience", "account");
    db.computation("tra_a", "plan_tier", "Plan tier", "trait", "account");
    db.personas.track_on_initial_sync = true;
    db
}

fn load_world(db: &mut Db, world: &World) {
    load(db, &world.0);
    let accounts: Vec<String> = (0..4).map(|i| format!("g{i}")).collect();
    let members: Vec<_> = accounts
        .iter()
        .zip(&world.1.0)
        .filter(|(_, m)| **m == 1)
        .map(|(g, _)| (g.as_str(), None, "true"))
        .collect();
    db.snapshot("aud_a", &members);
    let values: Vec<String> = world
        .1
        .1
        .iter()
        .map(|v| v.map(|v| format!("\"tier{v}\"")).unwrap_or_default())
        .collect();
    let rows: Vec<_> = accounts
        .iter()
        .zip(&world.1.1)
        .zip(&values)
        .filter(|((_, v), _)| v.is_some())
        .map(|((g, _), t)| (g.as_str(), None, t.as_str()))
        .collect();
    db.snapshot("tra_a", &rows);
    let users: Vec<String> = (0..12).map(|i| format!("u{i:02}")).collect();
    let mut pairs = Vec::new();
    for (user, mask) in users.iter().zip(&world.2) {
        for (bit, account) in accounts.iter().enumerate() {
            if mask & (1 << bit) != 0 {
                pairs.push((account.as_str(), user.as_str()));
            }
        }
    }
    db.members(&pairs);
}

impl Db {
    /// A run in chunks of `rows` staged rows, stopped (as a crash or a stop would leave it)
    /// once `stop` chunks have committed; `between` runs then, and the run is resumed until
    /// it is finished. Returns every message the run enqueued, in outbox order.
    fn run_chunked(
        &mut self,
        mode: RunMode,
        rows: usize,
        stop: Option<u64>,
        mut between: impl FnMut(&mut Db),
    ) -> Vec<Value> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let before: i64 = self
            .conn
            .query_row("SELECT coalesce(max(seq), 0) FROM outbox", [], |r| r.get(0))
            .unwrap();
        let options = RunOptions {
            mode,
            computation: None,
            now: self.clock,
            company_attribute_prefix: "account_",
        };
        let chunking = Chunking {
            rows,
            read_for: std::time::Duration::from_secs(3600),
        };
        let committed = AtomicU64::new(0);
        let on_commit = || {
            committed.fetch_add(1, Ordering::SeqCst);
        };
        let should_stop = || stop.is_some_and(|k| committed.load(Ordering::SeqCst) >= k);
        let pace = Pace {
            max_pending: u64::MAX,
            committed: &on_commit,
            stop: &should_stop,
        };
        let personas = self.personas.clone();
        let first = run::run(
            &mut self.conn,
            &personas,
            &options,
            Output::Enqueue,
            Some(&pace),
            chunking,
        )
        .unwrap();
        if !first.finished {
            assert!(state::run_progress(&self.conn).unwrap().is_some());
            between(self);
            let resumed = run::run(
                &mut self.conn,
                &personas,
                &options,
                Output::Enqueue,
                None,
                chunking,
            )
            .unwrap();
            assert!(resumed.resumed && resumed.finished);
        }
        assert!(state::run_progress(&self.conn).unwrap().is_none());
        self.bodies_after(before)
    }

    /// Everything planning keeps, as comparable text.
    fn planning_state(&self) -> Vec<String> {
        let mut out = Vec::new();
        for id in ["aud_1", "tra_1", "aud_a", "tra_a"] {
            for subject in ["user", "account"] {
                out.push(format!(
                    "{id} {subject} {:?}",
                    state::planned_values(&self.conn, id, subject).unwrap()
                ));
            }
        }
        for sql in [
            "SELECT user_id, group_id, planned FROM membership_state ORDER BY 1, 2",
            "SELECT entity_id, event_name, last_at FROM event_times ORDER BY 1, 2",
            "SELECT subject, snapshot_id, membership_snapshot_id FROM plan_cursors ORDER BY 1",
            "SELECT computation_id, snapshot_id, membership_snapshot_id FROM planned_bases ORDER BY 1",
            "SELECT computation_id, entered, exited, changed, resent, users FROM run_computations ORDER BY run_id, 1",
            "SELECT messages_identify, messages_track, messages_group, attached, detached FROM runs ORDER BY id",
        ] {
            let mut stmt = self.conn.prepare(sql).unwrap();
            let n = stmt.column_count();
            let rows: Vec<String> = stmt
                .query_map([], |r| {
                    let mut row = Vec::new();
                    for i in 0..n {
                        row.push(format!("{:?}", r.get_ref(i)?));
                    }
                    Ok(row.join(","))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            out.push(format!("{sql}: {rows:?}"));
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A run cut into chunks anywhere, and stopped after any chunk and resumed, emits exactly
    /// what the run in one chunk does, and leaves exactly the same planned state.
    #[test]
    fn chunked_and_resumed_runs_emit_and_plan_exactly_what_one_chunk_does(
        a in world_strategy(),
        b in world_strategy(),
        rows in 1usize..8,
        stop in proptest::option::of(1u64..6),
        full: bool,
        disk: bool,
    ) {
        let mode = if full { RunMode::Full } else { RunMode::Incremental };
        let mut whole = world_db(false);
        let mut cut = world_db(disk);
        let mut emitted = [Vec::new(), Vec::new()];
        for (i, db) in [&mut whole, &mut cut].into_iter().enumerate() {
            for (step, world) in [&a, &b].into_iter().enumerate() {
                load_world(db, world);
                let step_mode = if step == 0 { RunMode::Incremental } else { mode };
                let ms = if i == 0 {
                    db.run_with(step_mode, None).1
                } else {
                    db.run_chunked(step_mode, rows, stop, |_| {})
                };
                emitted[i].push(ms);
            }
        }
        prop_assert_eq!(&emitted[0], &emitted[1]);
        prop_assert_eq!(whole.planning_state(), cut.planning_state());
    }

    /// Messages delivered and dead-lettered between the chunks of a run: after the run, its
    /// delivery and the re-plans that follow, Intercom holds exactly the newest snapshots, and
    /// no event reaches it that the undisturbed run would not send.
    #[test]
    fn dead_letters_between_chunks_leave_planned_state_exact(
        a in snapshot_strategy(),
        b in snapshot_strategy(),
        rows in 1usize..8,
        stop in 1u64..6,
        dead in proptest::collection::vec(any::<bool>(), 1..6),
    ) {
        let calm_delivered = undisturbed(&a, &b);

        let mut rough = initial_db();
        load(&mut rough, &a);
        rough.run();
        let mut rough_delivered = deliver_with(&mut rough, &[]);
        load(&mut rough, &b);
        let mut between = Vec::new();
        let ms = rough.run_chunked(RunMode::Incremental, rows, Some(stop), |db| {
            between = deliver_with(db, &dead);
        });
        prop_assert!(!ms.is_empty() || between.is_empty());
        rough_delivered.extend(between);
        rough_delivered.extend(deliver_with(&mut rough, &[]));
        // Re-plan what died until nothing is left.
        for _ in 0..3 {
            rough.run();
            rough_delivered.extend(deliver_with(&mut rough, &[]));
        }
        let mut model = Default::default();
        apply(&mut model, &rough_delivered);
        prop_assert_eq!(&model, &expected(&b));
        prop_assert_eq!(state::undelivered_count(&rough.conn).unwrap(), 0);
        let calm_events = events(&calm_delivered);
        for (event, _) in events(&rough_delivered) {
            prop_assert!(calm_events.contains_key(&event), "invented {:?}", event);
        }
    }
}
