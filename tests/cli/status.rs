//! `status`: computations with their newest snapshot, membership, outbox and runs, as text and JSON.

use super::harness::Env;

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
    assert!(json["runs"].as_array().unwrap().is_empty());
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
