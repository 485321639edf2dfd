//! An upstream job writes a new snapshot with plain SQL (SPEC section 3: the snapshot row with
//! `complete = 0`, its rows in several commits, `complete = 1` last) while `sync --no-deliver`
//! plans a run over a large snapshot. The run sees the old snapshot or the new one, never a
//! partial one, and the upstream writer never fails (it waits at most its busy timeout).

use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::harness::Env;

/// Members of the old snapshot: u0 .. u{OLD-1}. (200,000 works as well; the run then takes
/// about 20 s in a debug build, a tenth of that in release.)
const OLD: usize = 40_000;
/// Members of the new one: u{NEW_FROM} .. u{NEW_FROM + NEW - 1} (half overlapping the old).
const NEW_FROM: usize = 20_000;
const NEW: usize = 30_000;
const BATCH: usize = 2_000;
/// The upstream writer's own busy timeout: how long it accepts to wait for a run's write lock.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

struct RunRecord {
    snapshot_id: i64,
    entered: i64,
    exited: i64,
    identify: i64,
    track: i64,
    outbox: i64,
}

fn run_record(env: &Env, run: i64) -> RunRecord {
    let row = &env.query(&format!(
        "SELECT rc.snapshot_id, rc.entered, rc.exited, \
         (SELECT count(*) FROM outbox WHERE run_id = {run} AND type = 'identify'), \
         (SELECT count(*) FROM outbox WHERE run_id = {run} AND type = 'track'), \
         (SELECT count(*) FROM outbox WHERE run_id = {run}) \
         FROM run_computations rc WHERE rc.run_id = {run}"
    ))[0];
    let n = |i: usize| row[i].parse::<i64>().unwrap();
    RunRecord {
        snapshot_id: n(0),
        entered: n(1),
        exited: n(2),
        identify: n(3),
        track: n(4),
        outbox: n(5),
    }
}

#[test]
fn a_run_sees_the_old_or_the_new_snapshot_never_a_partial_one() {
    let env = Env::new();
    let mut text = String::with_capacity(OLD * 20);
    for i in 0..OLD {
        text.push_str(&format!("{{\"user_id\": \"u{i}\"}}\n"));
    }
    env.write("old.ndjson", text);
    env.run(&[
        "load",
        "--computation",
        "vip",
        "--kind",
        "audience",
        "--scope",
        "user",
        "--taken-at",
        "2026-01-01T00:00:00Z",
        "old.ndjson",
    ])
    .success();
    let old_id: i64 = env.query("SELECT max(id) FROM snapshots")[0][0]
        .parse()
        .unwrap();
    let computation = env.query("SELECT id FROM computations")[0][0].clone();

    let started = Instant::now();
    let run = env
        .command(&["sync", "--no-deliver"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // The upstream writer, in this process, as SPEC section 3 describes it.
    let db = env.db_path();
    let writer = std::thread::spawn(move || -> rusqlite::Result<(i64, Duration, Duration)> {
        let mut conn = Connection::open(db)?;
        conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;
        conn.execute(
            "INSERT INTO snapshots (computation_id, taken_at, complete) VALUES (?1, ?2, 0)",
            params![computation, 1_767_312_000i64],
        )?;
        let id = conn.last_insert_rowid();
        let first_commit = started.elapsed();
        // Batches committed one by one: the incomplete snapshot is visible in the database for
        // most of the run.
        for batch in 0..NEW / BATCH {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO snapshot_rows (snapshot_id, entity_id, value) VALUES (?1, ?2, 'true')",
                )?;
                for i in 0..BATCH {
                    insert.execute(params![id, format!("u{}", NEW_FROM + batch * BATCH + i)])?;
                }
            }
            tx.commit()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        conn.execute(
            "UPDATE snapshots SET complete = 1, row_count = ?1 WHERE id = ?2",
            params![NEW as i64, id],
        )?;
        Ok((id, first_commit, started.elapsed()))
    });

    let output = run.wait_with_output().unwrap();
    let run_ended = started.elapsed();
    let (new_id, first_commit, writer_done) = writer
        .join()
        .unwrap()
        .expect("the upstream writer failed while a run was planning");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "run ended after {run_ended:?}; the writer committed its snapshot row at \
         {first_commit:?} and set complete = 1 at {writer_done:?}"
    );
    assert!(
        first_commit < run_ended,
        "the writer did not overlap the run: make the snapshot larger"
    );

    // The run planned either the old snapshot (everyone in it entered) or the complete new one.
    let first = run_record(&env, 1);
    let expected_entered = if first.snapshot_id == old_id {
        OLD
    } else {
        assert_eq!(
            first.snapshot_id, new_id,
            "the run recorded an unknown snapshot"
        );
        NEW
    } as i64;
    assert_eq!(
        first.entered, expected_entered,
        "a partial snapshot was seen"
    );
    assert_eq!(first.exited, 0);
    // The computation's first run is a full one: one identify per member, no track events.
    assert_eq!(first.identify, expected_entered);
    assert_eq!(first.track, 0);
    assert_eq!(first.outbox, first.identify);
    eprintln!(
        "the run planned the {} snapshot",
        if first.snapshot_id == old_id {
            "old"
        } else {
            "new"
        }
    );

    // The next run plans the new snapshot, whose rows are all there.
    env.run(&["sync", "--no-deliver"]).success();
    let runs = env.query("SELECT count(*) FROM run_computations WHERE run_id = 2");
    if runs[0][0] == "1" {
        let second = run_record(&env, 2);
        assert_eq!(second.snapshot_id, new_id);
        assert_eq!(second.entered, (NEW_FROM + NEW - OLD) as i64);
        assert_eq!(second.exited, NEW_FROM as i64);
        // Incremental: an identify and an Audience Entered / Exited event per change.
        let changes = second.entered + second.exited;
        assert_eq!((second.identify, second.track), (changes, changes));
        assert_eq!(second.outbox, 2 * changes);
    } else {
        assert_eq!(first.snapshot_id, new_id, "the second run planned nothing");
    }
    super::corpus::integrity_ok(&env.db_path());
}
