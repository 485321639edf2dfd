//! `compute`: computations defined in SQL (SPEC section 11) through the real binary. Every rule
//! and rejection of `load` applies to a query's rows; a failing, writing or endless query stores
//! nothing for its computation and leaves its previous snapshot; `:now` moves members out of a
//! lookback audience with no new data.

use serde_json::{Value, json};

use crate::harness::{Env, Run};

const BASE: &str = "[database]\npath = \"state/test.db\"\n[http]\nlisten = \"\"\n";

/// 2025-06-01T00:00:00Z and 31 days later.
const T1: &str = "2025-06-01T00:00:00Z";
const T1_UNIX: i64 = 1_748_736_000;
const T2: &str = "2025-07-02T00:00:00Z";
const T2_UNIX_STR: &str = "1751414400";
const DAY: i64 = 86_400;

/// One `[[computations]]` entry.
fn computation(key: &str, kind: &str, scope: &str, sql: &str) -> String {
    format!(
        "[[computations]]\nkey = \"{key}\"\nkind = \"{kind}\"\nscope = \"{scope}\"\nsql = '''{sql}'''\n"
    )
}

fn settings(env: &Env, sections: &str) {
    env.write("settings.toml", format!("{BASE}{sections}"));
}

/// Create the product's own tables (and rows) beside audience-sync's, in the same database.
fn upstream(env: &Env, sql: &str) {
    if !env.db_path().exists() {
        env.run(&["status"]).success();
    }
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn compute(env: &Env, args: &[&str]) -> Run {
    let mut all = vec!["compute"];
    all.extend_from_slice(args);
    env.run(&all)
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// The newest complete snapshot's rows of `key`: entity, email ('' for none), value ('NULL').
fn rows(env: &Env, key: &str) -> Vec<Vec<String>> {
    env.query(&format!(
        "SELECT r.entity_id, coalesce(r.email, ''), coalesce(r.value, 'NULL') FROM snapshot_rows r \
         JOIN snapshots s ON s.id = r.snapshot_id JOIN computations c ON c.id = s.computation_id \
         WHERE c.key = '{key}' AND s.id = (SELECT max(id) FROM snapshots WHERE computation_id = c.id \
         AND complete = 1) ORDER BY r.entity_id"
    ))
}

/// The newest complete snapshot of `key`: (id, taken_at, row_count).
fn newest(env: &Env, key: &str) -> Option<(String, String, String)> {
    env.query(&format!(
        "SELECT s.id, s.taken_at, s.row_count FROM snapshots s JOIN computations c \
         ON c.id = s.computation_id WHERE c.key = '{key}' AND s.complete = 1 \
         ORDER BY s.id DESC LIMIT 1"
    ))
    .into_iter()
    .next()
    .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
}

/// Every table but `computes` (the history of computes, which records failures too).
fn dump_without_computes(env: &Env) -> String {
    let dump = env.dump();
    let mut out = String::new();
    let mut skipping = false;
    for line in dump.lines() {
        if let Some(table) = line.strip_prefix("== ") {
            skipping = table == "computes";
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        dump.contains("== computes\n"),
        "the schema has a computes table"
    );
    out
}

/// `computes` in order: origin, computation ('[membership]' for the membership), now,
/// snapshot_id ('NULL' on failure), rows, error.
fn computes(env: &Env) -> Vec<Vec<String>> {
    env.query(
        "SELECT origin, coalesce(computation, '[membership]'), now, coalesce(snapshot_id, 'NULL'), \
         coalesce(rows, 'NULL'), coalesce(error, 'NULL') FROM computes ORDER BY id",
    )
}

/// A compute that is refused (exit 2) with `needles` on stderr, stores nothing at all, and
/// leaves one new `computes` record of `key` saying why.
#[track_caller]
fn refused_storing_nothing(env: &Env, args: &[&str], key: &str, needles: &[&str]) -> Run {
    let before = dump_without_computes(env);
    let records = computes(env).len();
    let run = compute(env, args).refused(needles);
    assert!(
        run.stderr.contains("nothing was stored for it"),
        "{}",
        run.stderr
    );
    assert_eq!(
        dump_without_computes(env),
        before,
        "the database changed after a refused compute: {args:?}\n{}",
        run.stderr
    );
    let after = computes(env);
    assert_eq!(after.len(), records + 1, "one compute recorded: {after:?}");
    let last = after.last().unwrap();
    assert_eq!(last[0], "command");
    assert_eq!(last[1], key);
    assert_eq!((last[3].as_str(), last[4].as_str()), ("NULL", "NULL"));
    assert_ne!(last[5], "NULL", "the record says why");
    run
}

/// A user trait `score` and a user audience `vip`, each with one good snapshot.
fn seeded() -> Env {
    let env = Env::new();
    settings(
        &env,
        &format!(
            "{}{}",
            computation(
                "score",
                "trait",
                "user",
                "SELECT 'seed' AS user_id, 1 AS value"
            ),
            computation("vip", "audience", "user", "SELECT 'seed' AS user_id")
        ),
    );
    compute(&env, &["--now", T1]).success();
    assert_eq!(rows(&env, "score"), vec![row(&["seed", "", "1"])]);
    assert_eq!(rows(&env, "vip"), vec![row(&["seed", "", "true"])]);
    env
}

/// Settings defining `score` and `vip` by these queries.
fn define(env: &Env, score_sql: &str, vip_sql: &str) {
    settings(
        env,
        &format!(
            "{}{}",
            computation("score", "trait", "user", score_sql),
            computation("vip", "audience", "user", vip_sql)
        ),
    );
}

/// Two good rows, then `bad` (a `(user_id, email, value)` tuple) as row 3.
fn with_bad_row(bad: &str) -> String {
    format!(
        "SELECT column1 AS user_id, column2 AS email, column3 AS value FROM \
         (VALUES ('ok1', NULL, 1), ('ok2', NULL, 2), {bad})"
    )
}

#[test]
fn every_rejection_of_load_applies_to_query_rows_and_stores_nothing() {
    let env = seeded();
    let good_vip = "SELECT 'seed' AS user_id";
    let trait_cases: &[(&str, &[&str])] = &[
        ("(NULL, NULL, 3)", &["row 3: ", "no identifier"]),
        (
            "('   ', NULL, 3)",
            &["row 3: field `user_id`: empty identifier"],
        ),
        (
            "(NULL, ' ', 3)",
            &["row 3: field `email`: empty identifier"],
        ),
        (
            "('a' || char(10) || 'b', NULL, 3)",
            &["row 3: field `user_id`: ", "control characters"],
        ),
        (
            "('x', 'x' || char(7) || '@example.com', 3)",
            &["row 3: field `email`: ", "control characters"],
        ),
        (
            "('x', 'not-an-email', 3)",
            &["row 3: field `email`: ", "is not an email address"],
        ),
        (
            "('x', 'a b@example.com', 3)",
            &["row 3: field `email`: ", "is not an email address"],
        ),
        (
            "('ok1', NULL, 3)",
            &["row 3: field `user_id`: ", "\"ok1\" appears twice"],
        ),
        (
            "(' ok1 ', NULL, 3)",
            &["row 3: field `user_id`: ", "\"ok1\" appears twice"],
        ),
        (
            "('x', NULL, json_object('a', 1))",
            &["row 3: field `value`: ", "object is not allowed"],
        ),
        (
            "('x', NULL, json_array(1, json_array(2)))",
            &["row 3: field `value`: ", "only scalars"],
        ),
        (
            "('x', NULL, json_array(json_object('a', 1)))",
            &["row 3: field `value`: ", "only scalars"],
        ),
        (
            "(1.5, NULL, 3)",
            &["row 3: field `user_id`: ", "must be a string, not a number"],
        ),
        (
            "(2.0, NULL, 3)",
            &["row 3: field `user_id`: ", "must be a string, not a number"],
        ),
        ("('x', NULL, x'00')", &["row 3: field `value`: ", "BLOB"]),
        (
            "('x', NULL, 1e999)",
            &["row 3: field `value`: ", "not a finite number"],
        ),
    ];
    for (bad, needles) in trait_cases {
        define(&env, &with_bad_row(bad), good_vip);
        let mut expected = vec!["error: computation \"score\": "];
        expected.extend_from_slice(needles);
        refused_storing_nothing(&env, &["--computation", "score"], "score", &expected);
    }

    // Users known only by email are one entity per lower-cased, trimmed email.
    define(
        &env,
        "SELECT column1 AS email, column2 AS value FROM (VALUES ('Ada@Example.com', 1), \
         ('bob@example.com', 2), (' ADA@example.COM ', 3))",
        good_vip,
    );
    refused_storing_nothing(
        &env,
        &["--computation", "score"],
        "score",
        &[
            "error: computation \"score\": row 3: field `user_id`: ",
            "\"ada@example.com\" appears twice",
        ],
    );

    // A column a snapshot does not have is refused before any row.
    define(
        &env,
        "SELECT column1 AS user_id, column2 AS score FROM (VALUES ('ok1', 1))",
        good_vip,
    );
    refused_storing_nothing(
        &env,
        &["--computation", "score"],
        "score",
        &[
            "error: computation \"score\": ",
            "the column `score`",
            "expected user_id, email, value",
        ],
    );

    // A bad row after 20,000 good ones stores none of them.
    define(
        &env,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20001) \
         SELECT 'user' || i AS user_id, CASE WHEN i = 20001 THEN json_object('a', i) ELSE i END \
         AS value FROM n",
        good_vip,
    );
    refused_storing_nothing(
        &env,
        &["--computation", "score"],
        "score",
        &["computation \"score\": row 20001: field `value`: "],
    );

    // An audience's value, when present, is true (SQLite's 1 or the text 'true').
    let score_ok = "SELECT 'seed' AS user_id, 1 AS value";
    for bad in ["0", "2", "'x'", "'false'", "1.5", "json_array(1)"] {
        define(
            &env,
            score_ok,
            &format!(
                "SELECT column1 AS user_id, column2 AS value FROM (VALUES ('a', 1), ('b', 'true'), \
                 ('c', {bad}))"
            ),
        );
        refused_storing_nothing(
            &env,
            &["--computation", "vip"],
            "vip",
            &[
                "error: computation \"vip\": row 3: field `value`: ",
                "must be true",
            ],
        );
    }

    // Account scope: a group_id, and no email.
    let accounts = |sql: &str| {
        settings(&env, &computation("tier", "trait", "account", sql));
    };
    accounts("SELECT 'acme' AS group_id, 'a@example.com' AS email");
    refused_storing_nothing(
        &env,
        &[],
        "tier",
        &["computation \"tier\": ", "the column `email`"],
    );
    accounts(
        "SELECT column1 AS group_id, column2 AS value FROM (VALUES ('acme', 'Gold'), (NULL, 'Pro'))",
    );
    refused_storing_nothing(
        &env,
        &[],
        "tier",
        &["computation \"tier\": row 2: ", "needs group_id"],
    );
    accounts("SELECT 'acme' AS user_id");
    refused_storing_nothing(
        &env,
        &[],
        "tier",
        &["computation \"tier\": ", "the column `user_id`"],
    );

    // Throughout, the previous snapshots stayed what they were.
    assert_eq!(rows(&env, "score"), vec![row(&["seed", "", "1"])]);
    assert_eq!(rows(&env, "vip"), vec![row(&["seed", "", "true"])]);
    assert!(
        env.query("SELECT count(*) FROM computations WHERE key = 'tier'")[0][0] == "0",
        "a refused first compute creates no computation"
    );
}

#[test]
fn accepted_shapes_are_stored_as_load_stores_them() {
    let env = Env::new();
    upstream(
        &env,
        "CREATE TABLE people (n INTEGER PRIMARY KEY, user_id, email, score);
         INSERT INTO people (user_id, email, score) VALUES
           (' u1 ', 'Ada@Example.COM', 42),
           (1234, NULL, 7.5),
           (NULL, ' Bob@Example.com ', 'Gold'),
           ('u4', NULL, NULL),
           ('u5', NULL, 'true'),
           ('u6', NULL, '[\"x\", 1, null]'),
           ('u7', NULL, '02134'),
           ('u8', 'u8@example.com', 0);",
    );
    settings(
        &env,
        &format!(
            "[[computations]]\nname = \"Lifetime Value\"\nkind = \"trait\"\nscope = \"user\"\n\
             sql = \"SELECT user_id, email, score AS value FROM people ORDER BY n\"\n{}",
            computation(
                "engaged",
                "audience",
                "user",
                "SELECT user_id, email, CASE WHEN score IS NULL THEN NULL ELSE 1 END AS value \
                 FROM people WHERE n <= 4 ORDER BY n"
            )
        ),
    );
    let run = compute(&env, &["--now", T1]).success();
    assert!(
        run.stdout
            .contains("Computed 8 rows into user trait computation \"lifetime_value\" (tra_")
            && run.stdout.contains("created), snapshot ")
            && run.stdout.contains(&format!("taken at {T1}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Computed 4 rows into user audience computation \"engaged\" (aud_"),
        "{}",
        run.stdout
    );
    assert_eq!(
        rows(&env, "lifetime_value"),
        vec![
            row(&["1234", "", "7.5"]),
            row(&["bob@example.com", "bob@example.com", "\"Gold\""]),
            row(&["u1", "ada@example.com", "42"]),
            row(&["u4", "", "NULL"]),
            row(&["u5", "", "true"]),
            row(&["u6", "", "[\"x\",1,null]"]),
            row(&["u7", "", "\"02134\""]),
            row(&["u8", "u8@example.com", "0"]),
        ]
    );
    // An audience row's NULL value is no value (a member); 1 is true.
    assert_eq!(
        rows(&env, "engaged"),
        vec![
            row(&["1234", "", "true"]),
            row(&["bob@example.com", "bob@example.com", "true"]),
            row(&["u1", "ada@example.com", "true"]),
            row(&["u4", "", "true"]),
        ]
    );
    // The key comes from the name; the computations are SQL-defined, taken at --now.
    assert_eq!(
        env.query(
            "SELECT c.key, c.name, c.kind, c.scope, s.taken_at, s.row_count FROM computations c \
             JOIN sql_computations q ON q.computation_id = c.id \
             JOIN snapshots s ON s.computation_id = c.id ORDER BY c.key"
        ),
        vec![
            row(&[
                "engaged",
                "engaged",
                "audience",
                "user",
                &T1_UNIX.to_string(),
                "4"
            ]),
            row(&[
                "lifetime_value",
                "Lifetime Value",
                "trait",
                "user",
                &T1_UNIX.to_string(),
                "8"
            ]),
        ]
    );
    let history = computes(&env);
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(
        &history[0][..3],
        &row(&["command", "lifetime_value", &T1_UNIX.to_string()])[..]
    );
    assert_eq!(
        (history[0][4].as_str(), history[0][5].as_str()),
        ("8", "NULL")
    );

    // Account scope: an integer group_id is its decimal text.
    settings(
        &env,
        &computation(
            "tier",
            "trait",
            "account",
            "SELECT column1 AS group_id, column2 AS value FROM (VALUES (' acme ', 'Gold'), (42, NULL))",
        ),
    );
    compute(&env, &[]).success();
    assert_eq!(
        rows(&env, "tier"),
        vec![row(&["42", "", "NULL"]), row(&["acme", "", "\"Gold\""])]
    );
}

/// The orders table of the lookback test: u_old's last order is 5 days before T1; u_recent
/// ordered the day before T1 and again 10 days after it.
fn orders(env: &Env) {
    let day = |offset: i64| T1_UNIX + offset * DAY;
    upstream(
        env,
        &format!(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id TEXT, email TEXT, total REAL, \
             completed_at INTEGER);
             INSERT INTO orders (user_id, email, total, completed_at) VALUES
               ('u_old', 'Old@Example.com', 20, {}),
               ('u_old', 'Old@Example.com', 15, {}),
               ('u_recent', 'recent@example.com', 30, {}),
               ('u_recent', 'recent@example.com', 12, {});",
            day(-40),
            day(-5),
            day(-1),
            day(10)
        ),
    );
}

const LAST_30_DAYS: &str = "SELECT DISTINCT user_id, email FROM orders \
                            WHERE completed_at > :now - 30*86400";

#[test]
fn now_moves_members_out_of_a_lookback_audience_with_no_new_data() {
    let env = Env::new();
    orders(&env);
    settings(
        &env,
        &computation(
            "order_completed_last_30days",
            "audience",
            "user",
            LAST_30_DAYS,
        ),
    );
    compute(&env, &["--now", T1]).success();
    let key = "order_completed_last_30days";
    assert_eq!(
        rows(&env, key),
        vec![
            row(&["u_old", "old@example.com", "true"]),
            row(&["u_recent", "recent@example.com", "true"]),
        ]
    );
    // The initial sync: planned and enqueued (no Intercom here).
    let initial = env.run(&["sync", "--no-deliver"]).success();
    assert!(initial.stdout.contains("2 identify"), "{}", initial.stdout);
    let before_orders = env.query("SELECT * FROM orders ORDER BY id");

    // 31 days later, with not one new order: u_old's last order left the window.
    compute(&env, &["--now", T2]).success();
    assert_eq!(env.query("SELECT * FROM orders ORDER BY id"), before_orders);
    assert_eq!(
        rows(&env, key),
        vec![row(&["u_recent", "recent@example.com", "true"])]
    );
    let before = env.dump();
    let dry = env.run(&["sync", "--dry-run"]).success();
    assert_eq!(env.dump(), before, "sync --dry-run changes nothing");
    let mut messages: Vec<Value> = dry
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(messages.len(), 2, "{}", dry.stdout);
    let id = &env.query(&format!("SELECT id FROM computations WHERE key = '{key}'"))[0][0];
    assert!(id.starts_with("aud_"), "{id}");
    for message in &mut messages {
        let message_id = message
            .as_object_mut()
            .unwrap()
            .remove("messageId")
            .unwrap();
        assert!(
            message_id.as_str().unwrap().starts_with("personas_"),
            "{message_id}"
        );
    }
    let personas = json!({
        "computation_class": "audience",
        "computation_id": id,
        "computation_key": key,
        "namespace": "spa_local",
        "space_id": "local",
    });
    assert_eq!(
        messages[0],
        json!({
            "type": "identify",
            "timestamp": T2,
            "userId": "u_old",
            "traits": {"email": "old@example.com", key: false},
            "integrations": {"All": false, "Intercom": true},
            "context": {"personas": personas},
        })
    );
    assert_eq!(
        messages[1],
        json!({
            "type": "track",
            "timestamp": T2,
            "userId": "u_old",
            "event": "Audience Exited",
            "properties": {"audience_key": key, key: false},
            "integrations": {"All": false, "Intercom": true},
            "context": {"traits": {"email": "old@example.com"}, "personas": personas},
        })
    );
    assert!(
        !dry.stdout.contains("u_recent"),
        "nothing for the user with a recent order: {}",
        dry.stdout
    );
}

#[test]
fn a_failing_query_leaves_its_previous_snapshot_and_the_others_go() {
    let env = Env::new();
    orders(&env);
    let good = computation("buyers", "audience", "user", LAST_30_DAYS);
    let spend = "SELECT user_id, sum(total) AS value FROM orders WHERE completed_at <= :now \
                 GROUP BY user_id";
    settings(
        &env,
        &format!("{good}{}", computation("spend", "trait", "user", spend)),
    );
    compute(&env, &["--now", T1]).success();
    let spend_before = newest(&env, "spend").unwrap();
    let spend_rows = rows(&env, "spend");
    assert_eq!(
        spend_rows,
        vec![row(&["u_old", "", "35.0"]), row(&["u_recent", "", "30.0"])]
    );
    let buyers_before = newest(&env, "buyers").unwrap();

    for (broken, why) in [
        (
            "SELECT user_id, sum(total) AS value FROM no_such_table GROUP BY user_id",
            "no such table: no_such_table",
        ),
        ("SELEC user_id FROM orders", "syntax error"),
        (
            "SELECT user_id, sum(total) AS value FROM orders GROUP BY",
            "incomplete input",
        ),
        (
            "SELECT user_id, sum(nope) AS value FROM orders GROUP BY user_id",
            "no such column: nope",
        ),
    ] {
        settings(
            &env,
            &format!("{good}{}", computation("spend", "trait", "user", broken)),
        );
        let run = compute(&env, &["--now", T2]).refused(&[
            "error: computation \"spend\": the query failed: ",
            "nothing was stored for it (its previous snapshot stays)",
            "1 of 2 computations failed",
            why,
        ]);
        assert!(!run.stderr.contains("\"buyers\""), "{}", run.stderr);
        assert!(
            run.stdout
                .contains("Computed 1 rows into user audience computation \"buyers\""),
            "{}",
            run.stdout
        );
        // The good one got a new snapshot at T2; the broken one's newest is the one from T1.
        let buyers = newest(&env, "buyers").unwrap();
        assert_ne!(buyers.0, buyers_before.0);
        assert_eq!((buyers.1.as_str(), buyers.2.as_str()), (T2_UNIX_STR, "1"));
        assert_eq!(newest(&env, "spend").unwrap(), spend_before);
        assert_eq!(rows(&env, "spend"), spend_rows);
        let last = computes(&env).pop().unwrap();
        assert_eq!(last[1], "spend");
        assert!(last[5].contains("the query failed"), "{last:?}");
    }
    // `status` says which failed, and that its previous snapshot stays.
    let text = env.run(&["status"]).success().stdout;
    assert!(
        text.contains("SQL computations (audience-sync compute):")
            && text.contains("  buyers: 1 rows at ")
            && text.contains("  spend: FAILED at ")
            && text.contains("no such column: nope")
            && text.contains("; its previous snapshot stays"),
        "{text}"
    );
    let json: Value =
        serde_json::from_str(&env.run(&["status", "--json"]).success().stdout).unwrap();
    let spend = json["computes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["computation"] == "spend")
        .unwrap_or_else(|| panic!("{json:#}"));
    assert_eq!(spend["in_settings"], true);
    assert_eq!(spend["last"]["snapshot_id"], Value::Null);
    assert_eq!(spend["last"]["now"], T2);
    assert!(
        spend["last"]["error"]
            .as_str()
            .unwrap()
            .contains("no such column: nope"),
        "{spend}"
    );
}

#[test]
fn a_query_that_would_write_is_refused_and_writes_nothing() {
    let env = Env::new();
    orders(&env);
    settings(
        &env,
        &computation("buyers", "audience", "user", LAST_30_DAYS),
    );
    compute(&env, &["--now", T1]).success();
    let before_orders = env.query("SELECT * FROM orders ORDER BY id");
    let cases: &[(&str, &str)] = &[
        ("DELETE FROM orders", "would write"),
        (
            "INSERT INTO orders (user_id) VALUES ('intruder') RETURNING user_id",
            "would write",
        ),
        (
            "UPDATE orders SET user_id = 'intruder' RETURNING user_id",
            "would write",
        ),
        ("DELETE FROM orders RETURNING user_id", "would write"),
        (
            "WITH gone AS (SELECT 1) DELETE FROM orders RETURNING user_id",
            "would write",
        ),
        (
            "SELECT DISTINCT user_id FROM orders; DELETE FROM orders",
            "more than one statement",
        ),
        ("DROP TABLE orders", "would write"),
        ("CREATE TABLE stolen AS SELECT * FROM orders", "would write"),
        ("CREATE TEMP TABLE stolen (user_id)", "would write"),
        ("VACUUM INTO 'copy.db'", "would write"),
    ];
    for (sql, needle) in cases {
        settings(&env, &computation("buyers", "audience", "user", sql));
        refused_storing_nothing(
            &env,
            &["--now", T2],
            "buyers",
            &["error: computation \"buyers\": ", needle],
        );
        assert_eq!(
            env.query("SELECT * FROM orders ORDER BY id"),
            before_orders,
            "{sql} changed the orders"
        );
    }
    assert!(!env.path("copy.db").exists(), "VACUUM INTO wrote a file");
    assert_eq!(
        env.query("SELECT count(*) FROM sqlite_master WHERE name = 'stolen'")[0][0],
        "0"
    );
    // Parameters other than :now are refused too.
    settings(
        &env,
        &computation(
            "buyers",
            "audience",
            "user",
            "SELECT user_id FROM orders WHERE completed_at > :since",
        ),
    );
    refused_storing_nothing(&env, &[], "buyers", &[":since", "only :now"]);
}

#[test]
fn a_query_running_past_the_timeout_is_stopped_and_stores_nothing() {
    let env = Env::new();
    settings(
        &env,
        &computation("endless", "audience", "user", "SELECT 'u1' AS user_id"),
    );
    compute(&env, &["--now", T1]).success();
    let before = newest(&env, "endless").unwrap();
    settings(
        &env,
        &format!(
            "[compute]\ntimeout_secs = 1\n{}",
            computation(
                "endless",
                "audience",
                "user",
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) \
                 SELECT 'u' || max(i) AS user_id FROM n"
            )
        ),
    );
    refused_storing_nothing(
        &env,
        &["--now", T2],
        "endless",
        &[
            "error: computation \"endless\": ",
            "compute.timeout_secs (1 s)",
        ],
    );
    assert_eq!(newest(&env, "endless").unwrap(), before);
    assert_eq!(rows(&env, "endless"), vec![row(&["u1", "", "true"])]);
}

#[test]
fn settings_and_load_may_not_share_a_key() {
    let env = Env::new();
    settings(
        &env,
        &computation("vip", "audience", "user", "SELECT 'u1' AS user_id"),
    );
    env.write("vip.ndjson", "{\"user_id\": \"u2\"}\n");
    let load = |key: &str| {
        env.run(&[
            "load",
            "--computation",
            key,
            "--kind",
            "audience",
            "--scope",
            "user",
            "vip.ndjson",
        ])
    };
    // Defined in settings, never computed yet: load is refused.
    let before = env.dump();
    load("vip").refused(&["\"vip\" is defined in settings"]);
    assert_eq!(env.dump(), before);
    // Computed, then dropped from settings: still refused (the database remembers).
    compute(&env, &[]).success();
    settings(&env, "");
    let before = env.dump();
    load("vip").refused(&["\"vip\"", "cannot also be loaded"]);
    assert_eq!(env.dump(), before);
    assert_eq!(rows(&env, "vip"), vec![row(&["u1", "", "true"])]);

    // Created by load, then defined in settings: compute is refused naming it.
    load("newsletter").success();
    settings(
        &env,
        &format!(
            "{}{}",
            computation("newsletter", "audience", "user", "SELECT 'u9' AS user_id"),
            computation("vip", "audience", "user", "SELECT 'u1' AS user_id")
        ),
    );
    let before_newsletter = newest(&env, "newsletter").unwrap();
    let run = compute(&env, &[]).refused(&[
        "error: computation \"newsletter\": ",
        "created by `load`",
        "1 of 2 computations failed",
    ]);
    assert!(run.stdout.contains("\"vip\""), "{}", run.stdout);
    assert_eq!(newest(&env, "newsletter").unwrap(), before_newsletter);
    assert_eq!(rows(&env, "newsletter"), vec![row(&["u2", "", "true"])]);
    // A dry run says the same.
    let before = env.dump();
    compute(&env, &["--dry-run", "--computation", "newsletter"])
        .refused(&["\"newsletter\"", "created by `load`"]);
    assert_eq!(env.dump(), before);
    // Kind and scope never change either.
    settings(
        &env,
        &computation("vip", "trait", "user", "SELECT 'u1' AS user_id, 5 AS value"),
    );
    refused_storing_nothing(
        &env,
        &[],
        "vip",
        &["\"vip\" is a user audience computation", "trait"],
    );
}

#[test]
fn dry_run_only_one_and_unknown_or_missing_computations() {
    let env = Env::new();
    upstream(
        &env,
        "CREATE TABLE users (id TEXT, email TEXT, plan TEXT);
         INSERT INTO users VALUES ('u1', 'U1@example.com', 'pro'), ('u2', NULL, 'free'),
           ('u3', NULL, 'pro'), ('u4', NULL, 'pro'), ('u5', NULL, 'pro'), ('u6', NULL, 'pro'),
           ('u7', NULL, 'pro');",
    );
    settings(
        &env,
        &format!(
            "{}{}",
            computation(
                "pro",
                "audience",
                "user",
                "SELECT id AS user_id, email FROM users WHERE plan = 'pro' ORDER BY id"
            ),
            computation(
                "plan",
                "trait",
                "user",
                "SELECT id AS user_id, plan AS value FROM users ORDER BY id"
            )
        ),
    );
    let before = env.dump();
    let run = compute(&env, &["--dry-run", "--now", T1]).success();
    assert_eq!(
        env.dump(),
        before,
        "a dry run changes nothing, computes included"
    );
    let out = &run.stdout;
    assert!(
        out.contains(&format!(
            "user audience computation \"pro\": 6 rows; would be stored as its newest snapshot \
             taken at {T1} (dry run: nothing stored):"
        )),
        "{out}"
    );
    assert!(
        out.contains("  {\"user_id\":\"u1\",\"email\":\"u1@example.com\",\"value\":true}\n"),
        "{out}"
    );
    assert!(
        out.contains("  {\"user_id\":\"u6\",\"email\":null,\"value\":true}\n  … 1 more\n"),
        "{out}"
    );
    assert!(!out.contains("\"u7\""), "five rows shown: {out}");
    assert!(
        out.contains("user trait computation \"plan\": 7 rows;")
            && out.contains("  {\"user_id\":\"u2\",\"email\":null,\"value\":\"free\"}\n  {\"user_id\":\"u3\",\"email\":null,\"value\":\"pro\"}\n"),
        "{out}"
    );
    // A dry run checks the rows too.
    settings(
        &env,
        &computation(
            "pro",
            "audience",
            "user",
            "SELECT id AS user_id, 0 AS value FROM users",
        ),
    );
    compute(&env, &["--dry-run"]).refused(&["computation \"pro\": row 1: field `value`"]);
    assert_eq!(env.dump(), before);

    settings(
        &env,
        &format!(
            "{}{}",
            computation(
                "pro",
                "audience",
                "user",
                "SELECT id AS user_id FROM users WHERE plan = 'pro'"
            ),
            computation(
                "plan",
                "trait",
                "user",
                "SELECT id AS user_id, plan AS value FROM users"
            )
        ),
    );
    let run = compute(&env, &["--computation", "plan"]).success();
    assert!(run.stdout.contains("Computed 7 rows"), "{}", run.stdout);
    assert!(!run.stdout.contains("\"pro\""), "{}", run.stdout);
    assert_eq!(newest(&env, "plan").unwrap().2, "7");
    assert!(newest(&env, "pro").is_none(), "only --computation plan ran");
    assert_eq!(
        computes(&env)
            .iter()
            .map(|r| r[1].clone())
            .collect::<Vec<_>>(),
        vec!["plan"]
    );

    let before = env.dump();
    compute(&env, &["--computation", "nope"])
        .refused(&["computation \"nope\" is not defined", "defined: pro, plan"]);
    assert_eq!(env.dump(), before);

    settings(&env, "");
    compute(&env, &[]).refused(&["nothing to compute", "[[computations]]"]);
    compute(&env, &["--computation", "plan"]).refused(&["nothing to compute"]);
    assert_eq!(env.dump(), before);

    // --now must be RFC 3339, and not older than the newest snapshot.
    settings(
        &env,
        &computation(
            "plan",
            "trait",
            "user",
            "SELECT id AS user_id, plan AS value FROM users",
        ),
    );
    let run = compute(&env, &["--now", "yesterday"]).refused(&["--now", "RFC 3339"]);
    assert!(!run.stderr.contains("--taken-at"), "{}", run.stderr);
    assert_eq!(env.dump(), before);
    refused_storing_nothing(
        &env,
        &["--now", "2000-01-01T00:00:00Z"],
        "plan",
        &["older than the newest snapshot"],
    );
}

#[test]
fn an_emptied_result_is_stored_with_a_warning() {
    let env = Env::new();
    orders(&env);
    settings(
        &env,
        &computation("buyers", "audience", "user", LAST_30_DAYS),
    );
    let first = compute(&env, &["--now", T1]).success();
    assert!(!first.stderr.contains("warning"), "{}", first.stderr);
    upstream(&env, "DELETE FROM orders;");
    let run = compute(&env, &["--now", T2]).success();
    assert!(
        run.stderr.contains(
            "warning: computation \"buyers\" returned no rows (its newest snapshot had 2)"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("Computed 0 rows"), "{}", run.stdout);
    let (_, taken_at, count) = newest(&env, "buyers").unwrap();
    assert_eq!((taken_at.as_str(), count.as_str()), (T2_UNIX_STR, "0"));
    assert!(rows(&env, "buyers").is_empty());
    // Empty again: no warning (it had no rows).
    let run = compute(&env, &[]).success();
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
}

#[test]
fn the_membership_query_is_stored_as_the_membership_snapshot() {
    let env = Env::new();
    upstream(
        &env,
        "CREATE TABLE account_users (group_id, user_id, email);
         INSERT INTO account_users VALUES ('acme', 'u1', 'U1@Example.com'),
           ('acme', NULL, ' Lead@Example.com '), ('globex', 'u1', NULL), (42, 7, NULL);",
    );
    let membership = "[membership]\nsql = \"SELECT group_id, user_id, email FROM account_users\"\n";
    settings(&env, membership);
    let run = compute(&env, &["--now", T1]).success();
    assert!(
        run.stdout
            .contains("Computed 4 rows into the account membership, snapshot"),
        "{}",
        run.stdout
    );
    let members = || {
        env.query(
            "SELECT group_id, user_id, coalesce(email, '') FROM membership_rows \
             WHERE snapshot_id = (SELECT max(id) FROM membership_snapshots WHERE complete = 1) \
             ORDER BY 1, 2",
        )
    };
    let stored = vec![
        row(&["42", "7", ""]),
        row(&["acme", "lead@example.com", "lead@example.com"]),
        row(&["acme", "u1", "u1@example.com"]),
        row(&["globex", "u1", ""]),
    ];
    assert_eq!(members(), stored);
    assert_eq!(
        env.query("SELECT taken_at, complete, (SELECT count(*) FROM membership_rows) FROM membership_snapshots"),
        vec![row(&[&T1_UNIX.to_string(), "1", "4"])]
    );
    assert_eq!(
        computes(&env)[0][..2],
        row(&["command", "[membership]"])[..]
    );

    // The same user twice in one account (here: the same email, cased differently).
    upstream(
        &env,
        "INSERT INTO account_users VALUES ('acme', NULL, 'LEAD@example.com');",
    );
    let run = refused_storing_nothing(
        &env,
        &["--now", T2],
        "[membership]",
        &[
            "error: the account membership ([membership] sql): row 5: field `user_id`: ",
            "appears twice",
        ],
    );
    assert!(
        run.stderr.contains("\"lead@example.com\""),
        "{}",
        run.stderr
    );
    let before = env.dump();
    compute(&env, &["--dry-run", "--now", T2])
        .refused(&["row 5: field `user_id`", "appears twice"]);
    assert_eq!(env.dump(), before);
    upstream(
        &env,
        "DELETE FROM account_users WHERE email = 'LEAD@example.com';",
    );

    // A row without a group, and a column a membership does not have.
    upstream(&env, "INSERT INTO account_users VALUES (NULL, 'u9', NULL);");
    refused_storing_nothing(
        &env,
        &["--now", T2],
        "[membership]",
        &[
            "the account membership",
            "row 5: field `group_id`: ",
            "missing",
        ],
    );
    settings(
        &env,
        "[membership]\nsql = \"SELECT group_id, user_id, 'admin' AS role FROM account_users\"\n",
    );
    refused_storing_nothing(
        &env,
        &["--now", T2],
        "[membership]",
        &["the account membership", "the column `role`"],
    );
    assert_eq!(members(), stored, "the previous membership stays");
}

#[test]
fn computation_settings_are_checked_naming_the_entry() {
    let env = Env::new();
    let cases: &[(&str, &[&str])] = &[
        (
            "[[computations]]\nkey = \"vip\"\nkind = \"audience\"\nscope = \"user\"\nsql = \"SELECT 'a' AS user_id\"\n\
             [[computations]]\nname = \"VIP\"\nkind = \"audience\"\nscope = \"user\"\nsql = \"SELECT 'b' AS user_id\"\n",
            &[
                "computations[1] (\"VIP\")",
                "key \"vip\" is also the key of computations[0]",
            ],
        ),
        (
            "[[computations]]\nkey = \"vip\"\nkind = \"segment\"\nscope = \"user\"\nsql = \"SELECT 'a' AS user_id\"\n",
            &["computations[0] (\"vip\")", "kind", "\"segment\""],
        ),
        (
            "[[computations]]\nkey = \"vip\"\nkind = \"audience\"\nscope = \"team\"\nsql = \"SELECT 'a' AS user_id\"\n",
            &["computations[0] (\"vip\")", "scope", "\"team\""],
        ),
        (
            "[[computations]]\nkey = \"vip\"\nkind = \"audience\"\nscope = \"user\"\nsql = \"  \"\n",
            &["computations[0] (\"vip\")", "sql must not be empty"],
        ),
        (
            "[[computations]]\nkey = \"vip\"\nkind = \"audience\"\nscope = \"user\"\nquery = \"SELECT 'a' AS user_id\"\n",
            &["query"],
        ),
        (
            "[[computations]]\nkey = \"vip\"\nkind = \"audience\"\nscope = \"user\"\nsql = \"SELECT 'a' AS user_id\"\nschedule = \"daily\"\n",
            &["schedule"],
        ),
        (
            "[[computations]]\nkey = \"High Value\"\nkind = \"audience\"\nscope = \"user\"\nsql = \"SELECT 'a' AS user_id\"\n",
            &["computations[0]", "not snake_case", "\"high_value\""],
        ),
        (
            "[[computations]]\nkind = \"audience\"\nscope = \"user\"\nsql = \"SELECT 'a' AS user_id\"\n",
            &["computations[0]", "needs a key"],
        ),
        (
            "[membership]\nsql = \"\"\n",
            &["membership.sql", "must not be empty"],
        ),
        ("[compute]\ntimeout_secs = 0\n", &["compute.timeout_secs"]),
    ];
    for (text, needles) in cases {
        settings(&env, text);
        for args in [&["compute"][..], &["status"][..]] {
            let run = env.run(args).refused(needles);
            assert!(run.stdout.is_empty(), "{text}: {}", run.stdout);
        }
    }
    assert!(
        !env.db_path().exists(),
        "settings refused before the database is touched"
    );
}

#[test]
fn the_database_stays_writable_while_a_query_runs() {
    let env = Env::new();
    orders(&env);
    settings(
        &env,
        &format!(
            "[compute]\ntimeout_secs = 3\n{}",
            computation(
                "endless",
                "audience",
                "user",
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) \
                 SELECT 'u' || max(i) AS user_id FROM n"
            )
        ),
    );
    let mut child = env
        .command(&["compute"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The product keeps writing its own tables while the query runs: each write may wait for
    // a short transaction, never for the query (3 s here; 300 s by default).
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    conn.busy_timeout(std::time::Duration::from_millis(1_000))
        .unwrap();
    let (mut written, mut refused) = (0, Vec::new());
    while child.try_wait().unwrap().is_none() {
        match conn.execute(
            "INSERT INTO orders (user_id, total, completed_at) VALUES ('writer', 1, 0)",
            [],
        ) {
            Ok(_) => written += 1,
            Err(e) => refused.push(e.to_string()),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("compute.timeout_secs (3 s)"), "{stderr}");
    assert!(
        refused.is_empty(),
        "writes refused while the query ran ({written} went through): {refused:?}"
    );
    assert!(written >= 10, "{written} writes during a 3 s query");
}
