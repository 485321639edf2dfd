//! `audience-sync prune`: after several synced snapshots against the sandbox and rows aged with
//! SQL, `--dry-run` reports and changes nothing, `prune` removes exactly what retention says
//! (old delivered messages, runs beyond the newest N, snapshots beyond the newest N except the
//! planned base, old membership snapshots), the file shrinks, and the next `sync` sends nothing.

use audience_sync::store::{Lock, RunLock};
use intercom_sandbox::{Sandbox, SandboxConfig};
use serde_json::Value;

use crate::harness::Env;

const TOKEN: &str = "prune-test-token";
const DAY: i64 = 86_400;

/// The members u{from}..u{to} (exclusive), with an email each.
fn members(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| format!("{{\"user_id\": \"u{i}\", \"email\": \"user{i}@example.com\"}}\n"))
        .collect()
}

fn load(env: &Env, file: &str, contents: &str) {
    env.write(file, contents);
    env.run(&[
        "--config",
        "prune.toml",
        "load",
        "--computation",
        "vip",
        "--kind",
        "audience",
        "--scope",
        "user",
        file,
    ])
    .success();
}

fn load_members(env: &Env, file: &str, contents: &str) {
    env.write(file, contents);
    env.run(&["--config", "prune.toml", "load-members", file])
        .success();
}

fn one(env: &Env, sql: &str) -> i64 {
    env.query(sql)[0][0].parse().unwrap()
}

fn ids(env: &Env, sql: &str) -> Vec<i64> {
    env.query(sql)
        .into_iter()
        .map(|row| row[0].parse().unwrap())
        .collect()
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn snapshot_ids(report: &Value, key: &str) -> Vec<i64> {
    report[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_what_retention_says_and_the_next_sync_sends_nothing_new() {
    let sandbox = Sandbox::start(SandboxConfig::new(TOKEN)).await.unwrap();
    let env = Env::new();
    env.write(
        "prune.toml",
        format!(
            "[database]\npath = \"state/test.db\"\n\
             [intercom]\nbase_url = \"{}\"\naccess_token = \"{TOKEN}\"\nrate_limit = 1000\n\
             [http]\nlisten = \"\"\n\
             [retention]\nruns = 2\nsnapshots_per_computation = 1\n",
            sandbox.base_url()
        ),
    );
    let sync = || {
        env.run(&["--config", "prune.toml", "sync"]).success();
    };

    // Three synced snapshots (and two membership snapshots), then a fourth with the same members
    // as the third, loaded but not yet planned: the planned base is the third.
    load(&env, "s1.ndjson", &members(0, 150));
    load_members(
        &env,
        "m1.ndjson",
        "{\"group_id\": \"g1\", \"user_id\": \"u0\"}\n",
    );
    sync();
    load(&env, "s2.ndjson", &members(0, 140));
    load_members(
        &env,
        "m2.ndjson",
        "{\"group_id\": \"g1\", \"user_id\": \"u0\"}\n{\"group_id\": \"g1\", \"user_id\": \"u1\"}\n",
    );
    sync();
    load(&env, "s3.ndjson", &members(0, 145));
    sync();
    load(&env, "s4.ndjson", &members(0, 145));
    let snapshots = ids(&env, "SELECT id FROM snapshots ORDER BY id");
    assert_eq!(snapshots.len(), 4);
    let memberships = ids(&env, "SELECT id FROM membership_snapshots ORDER BY id");
    assert_eq!(memberships.len(), 2);
    let runs = ids(&env, "SELECT id FROM runs ORDER BY id");
    assert_eq!(runs.len(), 3);
    assert_eq!(
        one(&env, "SELECT snapshot_id FROM planned_bases"),
        snapshots[2]
    );
    assert_eq!(
        one(
            &env,
            "SELECT count(*) FROM outbox WHERE status <> 'delivered'"
        ),
        0
    );

    // The first two runs were delivered eight days ago; the third's messages are recent.
    env.query(&format!(
        "UPDATE outbox SET enqueued_at = enqueued_at - {d}, finished_at = finished_at - {d} \
         WHERE run_id IN ({}, {}) RETURNING seq",
        runs[0],
        runs[1],
        d = 8 * DAY
    ));
    let old_messages = one(
        &env,
        &format!(
            "SELECT count(*) FROM outbox WHERE run_id IN ({}, {})",
            runs[0], runs[1]
        ),
    );
    let recent_messages = one(
        &env,
        &format!("SELECT count(*) FROM outbox WHERE run_id = {}", runs[2]),
    );
    assert!(old_messages > 150 && recent_messages > 0);
    let requests = sandbox.snapshot().counters.total_requests;

    // A dry run reports and changes nothing.
    let before = env.dump();
    let pages_before = one(&env, "PRAGMA page_count");
    let would = json(
        &env.run(&["--config", "prune.toml", "prune", "--dry-run", "--json"])
            .success()
            .stdout,
    );
    assert_eq!(env.dump(), before, "prune --dry-run changed the database");
    assert_eq!(would["dry_run"], true);
    let text = env
        .run(&["--config", "prune.toml", "prune", "--dry-run"])
        .success()
        .stdout;
    assert!(text.contains("Would prune"), "{text}");
    assert_eq!(env.dump(), before);

    // Not while a run plans.
    {
        let _planning = RunLock::try_acquire(&env.db_path(), Lock::Plan).unwrap();
        let refused = env.run(&["--config", "prune.toml", "prune"]);
        assert_eq!(refused.code, 1, "{}", refused.stderr);
        assert!(
            refused.stderr.contains("planning a run on"),
            "{}",
            refused.stderr
        );
        assert_eq!(env.dump(), before);
    }
    // Bad usage exits 2.
    assert_eq!(
        env.run(&["--config", "prune.toml", "prune", "--older-than", "3"])
            .code,
        2
    );

    let report = json(
        &env.run(&["--config", "prune.toml", "prune", "--json"])
            .success()
            .stdout,
    );
    assert_eq!(report["dry_run"], false);
    for key in ["delivered_messages", "runs", "run_computations", "kept"] {
        assert_eq!(report[key], would[key], "{key}: dry run and prune disagree");
    }
    assert_eq!(report["snapshots"], would["snapshots"]);
    assert_eq!(
        report["membership_snapshots"],
        would["membership_snapshots"]
    );

    // Delivered messages of the aged runs went; the recent ones stay.
    assert_eq!(report["delivered_messages"], old_messages);
    assert_eq!(one(&env, "SELECT count(*) FROM outbox"), recent_messages);
    assert_eq!(
        ids(&env, "SELECT DISTINCT run_id FROM outbox"),
        vec![runs[2]]
    );
    // Runs beyond the newest two, with their computation records.
    assert_eq!(report["runs"], 1);
    assert_eq!(report["run_computations"], 1);
    assert_eq!(ids(&env, "SELECT id FROM runs ORDER BY id"), runs[1..]);
    assert_eq!(
        one(
            &env,
            "SELECT count(*) FROM run_computations WHERE run_id NOT IN (SELECT id FROM runs)"
        ),
        0
    );
    // Snapshots beyond the newest one, except the planned base (the third).
    assert_eq!(snapshot_ids(&report, "snapshots"), snapshots[..2]);
    assert_eq!(report["snapshots"][0]["rows"], 150);
    assert_eq!(report["snapshots"][1]["rows"], 140);
    assert_eq!(report["kept"]["planned_snapshots"], 1);
    assert_eq!(
        ids(&env, "SELECT id FROM snapshots ORDER BY id"),
        snapshots[2..]
    );
    assert_eq!(
        ids(
            &env,
            "SELECT DISTINCT snapshot_id FROM snapshot_rows ORDER BY 1"
        ),
        snapshots[2..]
    );
    // The older membership snapshot; the one membership state reflects stays.
    assert_eq!(
        snapshot_ids(&report, "membership_snapshots"),
        memberships[..1]
    );
    assert_eq!(
        ids(&env, "SELECT id FROM membership_snapshots"),
        memberships[1..]
    );
    assert_eq!(
        ids(&env, "SELECT DISTINCT snapshot_id FROM membership_rows"),
        memberships[1..]
    );

    // The space went back to the file system.
    let pages_after = one(&env, "PRAGMA page_count");
    assert!(
        pages_after < pages_before,
        "{pages_before} -> {pages_after} pages"
    );
    assert_eq!(one(&env, "PRAGMA freelist_count"), 0);
    assert_eq!(report["space"]["pages_before"], pages_before);
    assert_eq!(report["space"]["pages_after"], pages_after);
    assert_eq!(report["space"]["auto_vacuum"], "incremental");
    assert_eq!(
        report["space"]["bytes_returned"],
        (pages_before - pages_after) * one(&env, "PRAGMA page_size")
    );
    assert_eq!(
        sandbox.snapshot().counters.total_requests,
        requests,
        "prune talks to nobody"
    );

    // A second prune finds nothing; the text report says so.
    let text = env
        .run(&["--config", "prune.toml", "prune"])
        .success()
        .stdout;
    assert!(text.starts_with("Pruned "), "{text}");
    for what in [
        "delivered messages",
        "runs",
        "snapshots",
        "membership snapshots",
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{what} ")))
            .unwrap_or_else(|| panic!("no {what} line: {text}"));
        assert_eq!(
            line.trim_start()[what.len()..].split_whitespace().next(),
            Some("0"),
            "{text}"
        );
    }

    // Planned state is intact: the next sync diffs the fourth snapshot (the third's members)
    // against the kept base and sends nothing.
    let messages = one(&env, "SELECT count(*) FROM outbox");
    env.run(&["--config", "prune.toml", "sync"]).success();
    assert_eq!(one(&env, "SELECT count(*) FROM outbox"), messages);
    assert_eq!(sandbox.snapshot().counters.total_requests, requests);
    assert_eq!(
        one(&env, "SELECT snapshot_id FROM planned_bases"),
        snapshots[3]
    );
    sandbox.shutdown().await;
}
