//! `plan`, `sync --dry-run`, `sync --no-deliver` and the crash safety of the outbox
//! transaction, through the real binary on a real SQLite file.

use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::harness::{Env, assert_integrity};

/// The harness's [`Env`] (a directory whose settings put the database at `state/test.db`), with
/// text logs: some tests read what a run logs.
fn env() -> Env {
    let env = Env::new();
    env.write(
        "settings.toml",
        "[database]\npath = \"state/test.db\"\n[http]\nlisten = \"\"\n[log]\nformat = \"text\"\n",
    );
    env
}

/// The database, opened (and created) as the product opens it.
fn open(env: &Env) -> Connection {
    audience_sync::store::open(&env.db_path()).unwrap()
}

/// Run `args`, which must succeed; its standard output.
fn ok(env: &Env, args: &[&str]) -> String {
    env.run(args).success().stdout
}

fn seed(conn: &Connection, users: usize) {
    conn.execute_batch(
        "INSERT INTO computations (id, key, name, kind, scope, created_at) VALUES
           ('aud_1', 'vip', 'VIP', 'audience', 'user', 0),
           ('tra_1', 'ltv', 'LTV', 'trait', 'user', 0);",
    )
    .unwrap();
    snapshot(conn, "aud_1", 1_700_000_000, users, |i| {
        (i % 2 == 0).then(|| "true".to_string())
    });
    snapshot(conn, "tra_1", 1_700_000_000, users, |i| Some(i.to_string()));
}

fn snapshot(
    conn: &Connection,
    computation: &str,
    taken_at: i64,
    users: usize,
    value: impl Fn(usize) -> Option<String>,
) {
    conn.execute(
        "INSERT INTO snapshots (computation_id, taken_at, complete) VALUES (?1, ?2, 0)",
        params![computation, taken_at],
    )
    .unwrap();
    let id = conn.last_insert_rowid();
    for i in 0..users {
        if let Some(v) = value(i) {
            conn.execute(
                "INSERT INTO snapshot_rows (snapshot_id, entity_id, email, value) VALUES (?1, ?2, ?3, ?4)",
                params![id, format!("u{i:04}"), format!("u{i}@example.com"), v],
            )
            .unwrap();
        }
    }
    conn.execute("UPDATE snapshots SET complete = 1 WHERE id = ?1", [id])
        .unwrap();
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The Segment message of outbox row `seq` (the outbox stores it compact).
fn body(conn: &Connection, seq: i64) -> Value {
    audience_sync::store::outbox::body(conn, seq)
        .unwrap()
        .expect("an outbox row")
}

/// Entities with a planned value, over every computation.
fn planned(conn: &Connection) -> i64 {
    ["aud_1", "tra_1"]
        .iter()
        .map(|c| {
            audience_sync::store::state::planned_values(conn, c, "user")
                .unwrap()
                .len() as i64
        })
        .sum()
}

#[test]
fn plan_reports_and_changes_nothing() {
    let env = env();
    seed(&open(&env), 10);
    let json: Value = serde_json::from_str(&ok(&env, &["plan", "--json"])).unwrap();
    assert_eq!(json["messages"]["identify"], 10, "{json:#}");
    assert_eq!(json["messages"]["track"], 0, "initial sync: no tracks");
    // Ten new users: one bulk lookup, ten creates carrying every value, the attribute list
    // (contacts and companies) and the two attributes this workspace needs.
    let requests = &json["requests"];
    assert_eq!(
        (
            &requests["lookups"],
            &requests["creates"],
            &requests["attribute_lists"],
            &requests["attributes"]
        ),
        (&json!(1), &json!(10), &json!(2), &json!(2)),
        "{json:#}"
    );
    assert_eq!(json["intercom"]["requests"], 15);
    assert_eq!(requests["total"], 15);
    let vip = json["computations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "vip")
        .unwrap();
    assert_eq!(vip["entered"], 5);
    assert_eq!(vip["mode"], "full");
    let text = ok(&env, &["plan"]);
    assert!(text.contains("10 identify"), "{text}");
    assert!(text.contains("requests per 10 s"), "{text}");
    let conn = open(&env);
    assert_eq!(count(&conn, "SELECT count(*) FROM outbox"), 0);
    assert_eq!(count(&conn, "SELECT count(*) FROM planned_bases"), 0);
    assert_eq!(count(&conn, "SELECT count(*) FROM planned_overrides"), 0);
    assert_eq!(count(&conn, "SELECT count(*) FROM runs"), 0);
}

#[test]
fn dry_run_prints_the_messages_and_no_deliver_enqueues_them_once() {
    let env = env();
    seed(&open(&env), 6);
    let dry = ok(&env, &["sync", "--dry-run"]);
    let dry: Vec<Value> = dry
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dry.len(), 6);
    assert_eq!(dry[0]["type"], "identify");
    assert_eq!(dry[0]["traits"]["vip"], true);
    assert_eq!(dry[0]["traits"]["email"], "u0@example.com");
    assert_eq!(count(&open(&env), "SELECT count(*) FROM outbox"), 0);

    let summary = ok(&env, &["sync", "--no-deliver"]);
    assert!(summary.contains("6 identify"), "{summary}");
    let conn = open(&env);
    let bodies: Vec<Value> = conn
        .prepare("SELECT seq FROM outbox ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|seq| body(&conn, seq.unwrap()))
        .collect();
    assert_eq!(bodies, dry, "the dry run printed exactly what was enqueued");
    assert_eq!(count(&conn, "SELECT count(*) FROM runs"), 1);
    assert_eq!(count(&conn, "SELECT count(*) FROM run_computations"), 2);

    // The same run again enqueues nothing.
    ok(&env, &["sync", "--no-deliver"]);
    assert_eq!(count(&conn, "SELECT count(*) FROM outbox"), 6);

    // An incremental change: one user leaves the audience.
    snapshot(&conn, "aud_1", 1_700_000_600, 6, |i| {
        (i % 2 == 0 && i != 0).then(|| "true".into())
    });
    ok(&env, &["sync", "--no-deliver"]);
    let last: Vec<(String, Value)> = conn
        .prepare("SELECT type, seq FROM outbox WHERE seq > 6 ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|row| {
            let (kind, seq) = row.unwrap();
            (kind, body(&conn, seq))
        })
        .collect();
    assert_eq!(last.len(), 2, "{last:?}");
    assert_eq!(last[0].0, "identify");
    assert_eq!(last[1].0, "track");
    let track = &last[1].1;
    assert_eq!(track["event"], "Audience Exited");
    assert_eq!(track["timestamp"], "2023-11-14T22:23:20Z");
}

#[test]
fn sync_one_computation_and_unknown_keys() {
    let env = env();
    seed(&open(&env), 4);
    ok(&env, &["sync", "--no-deliver", "--computation", "ltv"]);
    let conn = open(&env);
    assert_eq!(
        count(
            &conn,
            "SELECT (SELECT count(*) FROM planned_bases WHERE computation_id = 'aud_1') \
             + (SELECT count(*) FROM planned_overrides WHERE computation_id = 'aud_1')"
        ),
        0
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM outbox"), 4);
    let out = env.run(&["sync", "--no-deliver", "--computation", "nope"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("nope"), "{}", out.stderr);
}

#[test]
fn runs_never_overlap() {
    let env = env();
    seed(&open(&env), 2);
    let _held = audience_sync::store::RunLock::try_acquire(
        &env.db_path(),
        audience_sync::store::Lock::Plan,
    )
    .unwrap();
    let out = env.run(&["sync", "--no-deliver"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("runs never overlap"), "{}", out.stderr);
    assert_eq!(count(&open(&env), "SELECT count(*) FROM outbox"), 0);
}

#[test]
fn a_crash_before_commit_leaves_nothing_and_after_commit_everything() {
    let env = env();
    seed(&open(&env), 200);
    let out = env
        .command(&["sync", "--no-deliver"])
        .env(audience_sync::plan::ABORT_HOOK, "before_commit")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the hook aborts");
    assert_integrity(&env.db_path());
    let conn = open(&env);
    for table in [
        "outbox",
        "runs",
        "run_computations",
        "planned_bases",
        "planned_overrides",
        "plan_cursors",
        "event_times",
    ] {
        assert_eq!(
            count(&conn, &format!("SELECT count(*) FROM {table}")),
            0,
            "{table}"
        );
    }
    drop(conn);

    let out = env
        .command(&["sync", "--no-deliver"])
        .env(audience_sync::plan::ABORT_HOOK, "after_commit")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the hook aborts");
    assert_integrity(&env.db_path());
    let conn = open(&env);
    assert_eq!(count(&conn, "SELECT count(*) FROM outbox"), 200);
    assert_eq!(count(&conn, "SELECT count(*) FROM runs"), 1);
    assert_eq!(count(&conn, "SELECT messages_identify FROM runs"), 200);
    assert_eq!(count(&conn, "SELECT count(*) FROM planned_bases"), 2);
    assert_eq!(planned(&conn), 300);
    // And the run is complete: a new run has nothing to add.
    ok(&env, &["sync", "--no-deliver"]);
    assert_eq!(count(&conn, "SELECT count(*) FROM outbox"), 200);
}

#[test]
fn a_sigkill_mid_run_loses_nothing_and_the_next_run_finishes_it_without_repeats() {
    // A bigger run in small chunks, SIGKILLed as soon as its first chunk has committed (the
    // test watches `run_progress`, it does not guess a delay; a fresh database each try): the
    // database is intact, what is queued came from whole chunks, and the next run resumes the
    // killed one and ends with every message once.
    let mut landed = None;
    for attempt in 1..=5 {
        let env = env();
        seed(&open(&env), 20_000);
        let mut child = env
            .command(&["sync", "--no-deliver"])
            .env(audience_sync::plan::CHUNK_ROWS_HOOK, "2000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let watcher =
            Connection::open_with_flags(env.db_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        watcher
            .busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while child.try_wait().unwrap().is_none()
            && count(&watcher, "SELECT count(*) FROM run_progress") == 0
        {
            assert!(std::time::Instant::now() < deadline, "no chunk committed");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        drop(watcher);
        let _ = child.kill();
        let _ = child.wait();
        assert_integrity(&env.db_path());
        let conn = open(&env);
        // Whatever is queued came from committed chunks: never a message twice.
        let queued = count(&conn, "SELECT count(*) FROM outbox");
        assert_eq!(
            queued,
            count(&conn, "SELECT count(DISTINCT message_id) FROM outbox")
        );
        if count(&conn, "SELECT count(*) FROM run_progress") == 1 {
            assert!(queued < 20_000, "{queued} queued by an unfinished run");
            landed = Some((env, attempt, queued));
            break;
        }
        // The run finished before the kill (everything queued, nothing to resume).
        assert_eq!(queued, 20_000, "{queued} without a run to resume");
    }
    let (env, attempt, queued) = landed.expect("no kill landed between two chunks");
    eprintln!("killed in attempt {attempt} with {queued} messages queued");
    let out = ok(&env, &["sync", "--no-deliver"]);
    assert!(
        out.contains("resumed from its last committed chunk"),
        "{out}"
    );
    let conn = open(&env);
    assert_eq!(count(&conn, "SELECT count(*) FROM run_progress"), 0);
    assert_eq!(count(&conn, "SELECT count(*) FROM outbox"), 20_000);
    assert_eq!(
        count(&conn, "SELECT count(DISTINCT message_id) FROM outbox"),
        20_000
    );
    assert_eq!(
        count(&conn, "SELECT messages_identify FROM runs WHERE id = 1"),
        20_000
    );
    assert_eq!(planned(&conn), 30_000);
    // And the run is complete: a new run has nothing to add.
    ok(&env, &["sync", "--no-deliver"]);
    assert_eq!(count(&open(&env), "SELECT count(*) FROM outbox"), 20_000);
}

#[test]
fn a_crash_between_chunks_is_resumed_from_the_last_committed_chunk() {
    let env = env();
    seed(&open(&env), 3_000);
    // Chunks of about 500 staged rows (a user: one identify and one or two values).
    let out = env
        .command(&["sync", "--no-deliver"])
        .env(audience_sync::plan::CHUNK_ROWS_HOOK, "500")
        .env(audience_sync::plan::ABORT_HOOK, "after_chunk:2")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the hook aborts");
    assert_integrity(&env.db_path());
    let conn = open(&env);
    assert_eq!(count(&conn, "SELECT chunks FROM run_progress"), 2);
    let queued = count(&conn, "SELECT count(*) FROM outbox");
    assert!(queued > 0 && queued < 3_000, "{queued} after two chunks");
    assert_eq!(
        count(&conn, "SELECT count(*) FROM runs WHERE planned_at IS NULL"),
        1
    );
    // The snapshots the run plans from cannot be deleted under it.
    let err = conn
        .execute("DELETE FROM snapshot_rows", [])
        .unwrap_err()
        .to_string();
    assert!(err.contains("run being planned"), "{err}");
    drop(conn);
    let status = ok(&env, &["status"]);
    assert!(
        status.contains("planning or interrupted: 2 chunks committed"),
        "{status}"
    );
    // `plan` shows the rest of the unfinished run and changes nothing.
    let plan = ok(&env, &["plan", "--json"]);
    let plan: Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["resumed"], json!(true));
    assert_eq!(
        plan["messages"]["identify"].as_i64().unwrap() + queued,
        3_000,
        "{plan}"
    );
    let out = ok(&env, &["sync", "--no-deliver"]);
    assert!(
        out.contains("resumed from its last committed chunk"),
        "{out}"
    );
    let conn = open(&env);
    assert_eq!(count(&conn, "SELECT count(*) FROM run_progress"), 0);
    // The resumed run holds every message; the run `sync` then made found nothing left.
    assert_eq!(count(&conn, "SELECT count(*) FROM runs"), 2);
    assert_eq!(
        count(&conn, "SELECT messages_identify FROM runs WHERE id = 1"),
        3_000
    );
    assert_eq!(
        count(&conn, "SELECT messages_identify FROM runs WHERE id = 2"),
        0
    );
    assert_eq!(
        count(&conn, "SELECT count(DISTINCT message_id) FROM outbox"),
        3_000
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM outbox"), 3_000);
    assert_eq!(planned(&conn), 4_500);
}

/// Start `sync --no-deliver` held (by the test hook) after its diff, inside its read
/// transaction; returns the child and the path that releases it.
fn held_sync(env: &Env) -> (std::process::Child, PathBuf) {
    let release = env.db_path().with_file_name("release");
    let _ = std::fs::remove_file(&release);
    let reading = env.db_path().with_file_name("release.reading");
    let _ = std::fs::remove_file(&reading);
    let child = env
        .command(&["sync", "--no-deliver"])
        .env(audience_sync::plan::HOLD_HOOK, &release)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reading.exists() {
        assert!(
            std::time::Instant::now() < until,
            "the run never reached the hold"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (child, release)
}

fn finish(child: std::process::Child, release: &Path) {
    std::fs::write(release, b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_upstream_load_during_a_run_neither_waits_nor_is_seen_half_done() {
    // The run diffs inside a read transaction and writes in one short transaction at the end,
    // so an upstream writer is not kept waiting while it reads, and the run sees the snapshot
    // that was complete when it started, never a half-loaded one.
    let env = env();
    let users = 5_000;
    seed(&open(&env), users);
    ok(&env, &["sync", "--no-deliver"]);
    let first = count(&open(&env), "SELECT count(*) FROM outbox");
    // An upstream writer starts a new tra_1 snapshot (every value + 1) before the run: rows
    // committed, not complete yet.
    let upstream = Connection::open(env.db_path()).unwrap();
    upstream
        .busy_timeout(std::time::Duration::from_secs(1))
        .unwrap();
    upstream
        .execute(
            "INSERT INTO snapshots (computation_id, taken_at, complete) VALUES ('tra_1', 1700003600, 0)",
            [],
        )
        .unwrap();
    let new_snapshot = upstream.last_insert_rowid();
    let insert = |from: usize, to: usize| {
        let tx = upstream.unchecked_transaction().unwrap();
        for i in from..to {
            tx.execute(
                "INSERT INTO snapshot_rows (snapshot_id, entity_id, email, value) VALUES (?1, ?2, ?3, ?4)",
                params![new_snapshot, format!("u{i:04}"), format!("u{i}@example.com"), (i + 1).to_string()],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    };
    insert(0, users / 2);
    // A change the run must see: aud_1 gains everyone (a complete snapshot before the run).
    snapshot(&open(&env), "aud_1", 1_700_003_600, users, |_| {
        Some("true".into())
    });

    let (child, release) = held_sync(&env);
    // While the run holds its read transaction: the upstream writer finishes its snapshot with
    // a 1 s busy timeout: it would fail if the run held the write lock.
    insert(users / 2, users);
    upstream
        .execute(
            "UPDATE snapshots SET complete = 1 WHERE id = ?1",
            [new_snapshot],
        )
        .unwrap();
    finish(child, &release);

    let conn = open(&env);
    // The run saw aud_1's new snapshot and tra_1's old one: 2,500 enters, no tra_1 change.
    let tra_snapshot: i64 = conn
        .query_row(
            "SELECT snapshot_id FROM run_computations WHERE computation_id = 'tra_1' ORDER BY run_id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_ne!(
        tra_snapshot, new_snapshot,
        "tra_1 was unchanged for the run"
    );
    let aud_runs = count(
        &conn,
        "SELECT count(*) FROM run_computations WHERE computation_id = 'aud_1'",
    );
    assert_eq!(aud_runs, 2);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM outbox") - first,
        (users / 2 * 2) as i64,
        "one identify and one track per entered user"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM plan_cursors WHERE subject = 'tra_1' AND snapshot_id = (SELECT min(id) FROM snapshots WHERE computation_id = 'tra_1')"
        ),
        1,
        "tra_1's cursor is still its first snapshot"
    );
    drop(conn);

    // The next run sees the upstream snapshot whole: every tra_1 value changed.
    let before = count(&open(&env), "SELECT count(*) FROM outbox");
    ok(&env, &["sync", "--no-deliver"]);
    let conn = open(&env);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM outbox") - before,
        (users * 2) as i64
    );
    let values = audience_sync::store::state::planned_values(&conn, "tra_1", "user").unwrap();
    assert_eq!(values.len(), users);
    for (entity, value) in values {
        let n: u64 = entity[1..].parse().unwrap();
        assert_eq!(value, (n + 1).to_string(), "{entity}");
    }
    assert_integrity(&env.db_path());
}

#[test]
fn a_dead_letter_while_a_run_reads_makes_the_next_run_diff_again() {
    // u0001's value is planned (pending); a run reads tra_1 (u0002 changed, u0001 not); while it
    // reads, u0001's message dies, which moves planned back to delivered (none). The run must
    // not record tra_1 as planned from the new snapshot, or u0001 would never be sent again.
    let env = env();
    seed(&open(&env), 4);
    ok(&env, &["sync", "--no-deliver"]);
    snapshot(&open(&env), "tra_1", 1_700_003_600, 4, |i| {
        Some(if i == 2 { "20".into() } else { i.to_string() })
    });
    let seq: i64 = open(&env)
        .query_row(
            "SELECT seq FROM outbox WHERE lane = 'u0001' AND type = 'identify'",
            [],
            |r| r.get(0),
        )
        .unwrap();

    let (child, release) = held_sync(&env);
    let mut conn = open(&env);
    let marked = audience_sync::store::outbox::mark_dead(&mut conn, seq, "test").unwrap();
    assert_eq!(marked, audience_sync::store::outbox::Marked::Done);
    finish(child, &release);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM plan_cursors WHERE subject = 'tra_1'"
        ),
        0,
        "the run did not advance tra_1's cursor"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM outbox WHERE lane = 'u0002' AND type = 'track'"
        ),
        1,
        "the run still sent the change it saw"
    );

    let before: i64 = count(&conn, "SELECT max(seq) FROM outbox");
    ok(&env, &["sync", "--no-deliver"]);
    let seq: i64 = conn
        .query_row(
            "SELECT seq FROM outbox WHERE seq > ?1 AND lane = 'u0001' AND type = 'identify'",
            [before],
            |r| r.get(0),
        )
        .unwrap();
    let body = body(&conn, seq);
    assert_eq!(body["traits"]["ltv"], 1, "{body}");
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM plan_cursors WHERE subject = 'tra_1'"
        ),
        1
    );
}
