//! `audience-sync demo`: the README's first command runs end to end and its own check passes.

use crate::harness::Env;

#[test]
fn the_demo_runs_and_intercom_matches_the_snapshots() {
    let env = Env::new();
    // Exit code 0 also means the demo's own check (its oracle, from the example files and the
    // orders alone) found Intercom holding exactly what they say, the SQL audience included.
    let run = env.run(&["demo"]).success();
    for needle in [
        "1. Load the initial snapshots",
        "2. Initial sync",
        "4. Incremental sync",
        "Audience Entered",
        "Yes: every user's attributes, companies and events match the snapshots.",
        // The SQL audience (SPEC section 11), computed by the product from the `orders` table
        // the demo writes: its query, who is in and why, the initial sync's members (no events),
        // and, 31 days later, two exits and one entry with their events in Intercom.
        "order_completed_last_30days user audience defined in SQL",
        "SELECT user_id, email FROM orders WHERE completed_at > :now - 30*86400 GROUP BY user_id, email",
        "Computed with :now = 2026-11-18T11:06:40Z: 3 rows",
        "u011  last order 2026-10-04 (45 days before :now)  not a member  no order in the last 30 days",
        "order_completed_last_30days full        entered   3  exited   0",
        "u002  order_completed_last_30days = true   no event: an initial sync sends none",
        "Computed with :now = 2026-12-19T11:06:40Z: 2 rows",
        "u006  last order 2026-11-06 (43 days before :now)  exits         no order in the last 30 days",
        "u007  last order 2026-12-08 (11 days before :now)  enters        an order in the last 30 days",
        "order_completed_last_30days incremental entered   1  exited   2",
        "u002  order_completed_last_30days = false  Audience Exited at 2026-12-19T11:06:40Z",
        "u005  order_completed_last_30days = true   no event: still a member",
        "u006  order_completed_last_30days = false  Audience Exited at 2026-12-19T11:06:40Z",
        "u007  order_completed_last_30days = true   Audience Entered at 2026-12-19T11:06:40Z",
        "And the SQL audience matches the orders alone",
    ] {
        assert!(
            run.stdout.contains(needle),
            "demo output lacks {needle:?}:\n{}",
            run.stdout
        );
    }
    assert!(
        !env.path("audience-sync.db").exists(),
        "the demo leaves no database behind"
    );
}

/// `examples/sql-audience/` does what its README says: its `orders.sql` and its settings compute
/// alice and bob on 2026-01-15, and bob and carol on 2026-02-20 (alice's order is then too old).
#[test]
fn the_sql_audience_example_computes_what_its_readme_says() {
    let env = Env::new();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sql-audience");
    let settings = example.join("settings.toml");
    let settings = settings.to_str().unwrap();
    let database = env.path("example.db");
    let members = |now: &str| {
        let run = env
            .command(&["--config", settings, "compute", "--now", now])
            .env("AUDIENCE_SYNC__DATABASE__PATH", &database)
            .output()
            .unwrap();
        let run = crate::harness::Run::from(run).success();
        assert!(
            run.stdout.contains(&format!("taken at {now}")),
            "{}",
            run.stdout
        );
        let conn = rusqlite::Connection::open(&database).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT entity_id FROM snapshot_rows WHERE snapshot_id = \
                 (SELECT max(id) FROM snapshots) ORDER BY entity_id",
            )
            .unwrap();
        stmt.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    };
    let conn = rusqlite::Connection::open(&database).unwrap();
    conn.execute_batch(&std::fs::read_to_string(example.join("orders.sql")).unwrap())
        .unwrap();
    drop(conn);
    assert_eq!(members("2026-01-15T00:00:00Z"), ["alice", "bob"]);
    assert_eq!(members("2026-02-20T00:00:00Z"), ["bob", "carol"]);
}
