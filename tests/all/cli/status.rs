//! `status`: computations with their newest snapshot, membership, outbox and runs, as text and JSON.

use crate::harness::Env;

#[test]
fn status_reports_newest_snapshots_as_text_and_json() {
    let env = Env::new();
    let run = env.run(&["status"]).success();
    assert!(run.stdout.contains("No computations yet"), "{}", run.stdout);

    env.write("a.ndjson", "{\"user_id\": \"a\"}\n{\"user_id\": \"b\"}\n");
    env.write("b.ndjson", "{\"user_id\": \"a\"}\n");
    env.write("m.ndjson", "{\"group_id\": \"g\", \"user_id\": \"a\"}\n");
    for (file, at) in [
        ("a.ndjson", "2026-05-01T10:00:00Z"),
        ("b.ndjson", "2026-05-02T10:00:00Z"),
    ] {
        env.run(&[
            "load",
            "--computation",
            "vip",
            "--kind",
            "audience",
            "--scope",
            "user",
            "--taken-at",
            at,
            file,
        ])
        .success();
    }
    env.run(&[
        "load-members",
        "--taken-at",
        "2026-05-03T00:00:00Z",
        "m.ndjson",
    ])
    .success();

    let text = env.run(&["status"]).success().stdout;
    assert!(text.contains("vip"), "{text}");
    assert!(text.contains("2026-05-02T10:00:00Z"), "{text}");
    assert!(
        text.contains("Account membership: 1 rows, taken at 2026-05-03T00:00:00Z"),
        "{text}"
    );
    assert!(text.contains("Outbox: 0 pending"), "{text}");
    assert!(
        text.contains("  0 undelivered of at most 100,000 (plan.max_pending_messages)\n"),
        "{text}"
    );
    assert!(text.contains(" on disk ("), "{text}");
    assert!(text.contains(" write-ahead log); "), "{text}");
    assert!(text.contains("Last prune: none yet"), "{text}");

    let json: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).success().stdout).unwrap();
    let vip = &json["computations"][0];
    assert_eq!(vip["key"], "vip");
    assert_eq!(vip["kind"], "audience");
    assert_eq!(vip["scope"], "user");
    assert_eq!(vip["snapshot"]["rows"], 1);
    assert_eq!(vip["snapshot"]["taken_at"], "2026-05-02T10:00:00Z");
    assert_eq!(json["membership"]["rows"], 1);
    assert_eq!(json["outbox"]["pending"], 0);
    assert_eq!(json["outbox"]["undelivered"], 0);
    assert_eq!(json["outbox"]["pending_limit"], 100_000);
    assert!(json["runs"].as_array().unwrap().is_empty());
    let size = &json["database_size"];
    assert_eq!(
        size["file_bytes"],
        std::fs::metadata(env.db_path()).unwrap().len(),
        "{size}"
    );
    assert_eq!(
        size["free_bytes"].as_u64().unwrap(),
        size["free_pages"].as_u64().unwrap() * size["page_size"].as_u64().unwrap()
    );
    assert!(json["last_prune"].is_null());

    // The last prune: when, by whom, what went (the older of two snapshots) and the space.
    env.write(
        "keep-one.toml",
        "[database]\npath = \"state/test.db\"\n[http]\nlisten = \"\"\n\
         [plan]\nmax_pending_messages = 5000\n[retention]\nsnapshots_per_computation = 1\n",
    );
    let pruned: serde_json::Value = serde_json::from_str(
        &env.run(&["--config", "keep-one.toml", "prune", "--json"])
            .success()
            .stdout,
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(
        &env.run(&["--config", "keep-one.toml", "status", "--json"])
            .success()
            .stdout,
    )
    .unwrap();
    assert_eq!(json["outbox"]["pending_limit"], 5000);
    let last = &json["last_prune"];
    assert_eq!(last["origin"], "command");
    assert_eq!(last["snapshots"], 1);
    assert_eq!(last["snapshot_rows"], 2);
    assert_eq!(last["membership_snapshots"], 0);
    assert_eq!(last["bytes_returned"], pruned["space"]["bytes_returned"]);
    assert!(last["error"].is_null());
    assert!(last["at"].as_str().unwrap().ends_with('Z'), "{last}");
    let text = env
        .run(&["--config", "keep-one.toml", "status"])
        .success()
        .stdout;
    assert!(
        text.contains("by audience-sync prune, removed 0 delivered messages, 0 runs, 1 snapshot (2 rows), 0 membership snapshots (0 rows); returned "),
        "{text}"
    );
    assert!(text.contains("of at most 5,000"), "{text}");
}

#[test]
fn a_snapshot_written_with_plain_sql_counts_only_once_complete() {
    let env = Env::new();
    env.write("a.ndjson", "{\"user_id\": \"a\"}\n");
    env.run(&[
        "load",
        "--computation",
        "vip",
        "--kind",
        "audience",
        "--scope",
        "user",
        "--taken-at",
        "2026-05-01T00:00:00Z",
        "a.ndjson",
    ])
    .success();
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    let id: String = conn
        .query_row("SELECT id FROM computations", [], |r| r.get(0))
        .unwrap();
    conn.execute("INSERT INTO snapshots (id, computation_id, taken_at, complete) VALUES (100, ?1, 1893456000, 0)", [&id])
        .unwrap();
    conn.execute(
        "INSERT INTO snapshot_rows VALUES (100, 'x', NULL, 'true'), (100, 'y', NULL, 'true')",
        [],
    )
    .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).success().stdout).unwrap();
    assert_eq!(
        json["computations"][0]["snapshot"]["id"], 1,
        "an incomplete snapshot is invisible"
    );
    conn.execute("UPDATE snapshots SET complete = 1 WHERE id = 100", [])
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).success().stdout).unwrap();
    assert_eq!(json["computations"][0]["snapshot"]["id"], 100);
    assert_eq!(
        json["computations"][0]["snapshot"]["rows"], 2,
        "rows counted when row_count is not set"
    );
}
