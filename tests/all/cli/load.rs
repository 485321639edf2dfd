//! `load` and `load-members`: every accepted shape, and every rejection leaving the database as it was.

use crate::harness::Env;

fn load(env: &Env, key: &str, kind: &str, scope: &str, file: &str) -> crate::harness::Run {
    env.run(&[
        "load",
        "--computation",
        key,
        "--kind",
        kind,
        "--scope",
        scope,
        file,
    ])
}

fn rows(env: &Env, key: &str) -> Vec<Vec<String>> {
    env.query(&format!(
        "SELECT r.entity_id, coalesce(r.email, ''), coalesce(r.value, 'NULL') FROM snapshot_rows r \
         JOIN snapshots s ON s.id = r.snapshot_id JOIN computations c ON c.id = s.computation_id \
         WHERE c.key = '{key}' AND s.id = (SELECT max(id) FROM snapshots WHERE computation_id = c.id) \
         ORDER BY r.entity_id"
    ))
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

#[test]
fn user_audience_ndjson_with_user_ids_emails_or_both() {
    let env = Env::new();
    env.write(
        "members.ndjson",
        "{\"user_id\": \"u1\", \"email\": \"Ada@Example.com\"}\n\
         {\"user_id\": \" u2 \"}\n\
         \n\
         {\"email\": \" Bob@Example.COM \", \"value\": true}\n",
    );
    let run = load(&env, "high_value", "audience", "user", "members.ndjson").success();
    assert!(run.stdout.contains("Loaded 3 rows"), "{}", run.stdout);
    assert_eq!(
        rows(&env, "high_value"),
        vec![
            row(&["bob@example.com", "bob@example.com", "true"]),
            row(&["u1", "ada@example.com", "true"]),
            row(&["u2", "", "true"]),
        ]
    );
    let computation = env.query("SELECT id, key, name, kind, scope, enabled FROM computations");
    assert_eq!(computation.len(), 1);
    assert!(
        computation[0][0].starts_with("aud_"),
        "{:?}",
        computation[0]
    );
    assert_eq!(computation[0][0].len(), 4 + 27);
    assert_eq!(
        &computation[0][1..],
        &row(&["high_value", "high_value", "audience", "user", "1"])[..]
    );
    let snapshot = env.query("SELECT complete, row_count FROM snapshots");
    assert_eq!(snapshot, vec![row(&["1", "3"])]);
}

#[test]
fn user_trait_ndjson_keeps_json_values() {
    let env = Env::new();
    env.write(
        "scores.jsonl",
        "{\"user_id\": \"a\", \"value\": 42}\n\
         {\"user_id\": \"b\", \"value\": 7.5}\n\
         {\"user_id\": \"c\", \"value\": \"Gold\"}\n\
         {\"user_id\": \"d\", \"value\": false}\n\
         {\"user_id\": \"e\", \"value\": [\"x\", 1, true, null]}\n\
         {\"user_id\": \"f\", \"value\": null}\n\
         {\"user_id\": \"g\"}\n\
         {\"user_id\": 1234, \"value\": 1}\n",
    );
    load(&env, "lifetime_value", "trait", "user", "scores.jsonl").success();
    assert_eq!(
        rows(&env, "lifetime_value"),
        vec![
            row(&["1234", "", "1"]),
            row(&["a", "", "42"]),
            row(&["b", "", "7.5"]),
            row(&["c", "", "\"Gold\""]),
            row(&["d", "", "false"]),
            row(&["e", "", "[\"x\",1,true,null]"]),
            row(&["f", "", "NULL"]),
            row(&["g", "", "NULL"]),
        ]
    );
    let id = &env.query("SELECT id FROM computations")[0][0];
    assert!(id.starts_with("tra_"), "{id}");
}

#[test]
fn account_scope_ndjson() {
    let env = Env::new();
    env.write(
        "accounts.ndjson",
        "{\"group_id\": \"acme\", \"value\": \"Enterprise\"}\n{\"group_id\": \"globex\"}\n",
    );
    load(&env, "account_tier", "trait", "account", "accounts.ndjson").success();
    assert_eq!(
        rows(&env, "account_tier"),
        vec![
            row(&["acme", "", "\"Enterprise\""]),
            row(&["globex", "", "NULL"])
        ]
    );
    env.write("big.ndjson", "{\"group_id\": \"acme\"}\n");
    load(&env, "big_accounts", "audience", "account", "big.ndjson").success();
    assert_eq!(rows(&env, "big_accounts"), vec![row(&["acme", "", "true"])]);
}

#[test]
fn csv_with_header_parses_values_like_json_scalars() {
    let env = Env::new();
    env.write(
        "traits.csv",
        "user_id,email,value\n\
         u1,U1@Example.com,42\n\
         u2,,true\n\
         ,only@example.com,Gold Plan\n\
         u4,,null\n\
         u5,,\"quoted, with comma\"\n\
         u6,,\n",
    );
    load(&env, "plan_name", "trait", "user", "traits.csv").success();
    assert_eq!(
        rows(&env, "plan_name"),
        vec![
            row(&["only@example.com", "only@example.com", "\"Gold Plan\""]),
            row(&["u1", "u1@example.com", "42"]),
            row(&["u2", "", "true"]),
            row(&["u4", "", "NULL"]),
            row(&["u5", "", "\"quoted, with comma\""]),
            row(&["u6", "", "NULL"]),
        ]
    );
    env.write(
        "audience.csv",
        "email,user_id\na@example.com,u1\nb@example.com,\n",
    );
    load(&env, "newsletter", "audience", "user", "audience.csv").success();
    assert_eq!(
        rows(&env, "newsletter"),
        vec![
            row(&["b@example.com", "b@example.com", "true"]),
            row(&["u1", "a@example.com", "true"])
        ]
    );
}

#[test]
fn standard_input_is_ndjson() {
    let env = Env::new();
    env.run_with_stdin(
        &[
            "load",
            "--computation",
            "churn_risk",
            "--kind",
            "trait",
            "--scope",
            "user",
            "-",
        ],
        b"{\"user_id\": \"u1\", \"value\": 0.9}\n",
    )
    .success();
    assert_eq!(rows(&env, "churn_risk"), vec![row(&["u1", "", "0.9"])]);
}

#[test]
fn a_second_load_keeps_the_computation_id_and_becomes_newest() {
    let env = Env::new();
    env.write("a.ndjson", "{\"user_id\": \"u1\"}\n");
    env.write("b.ndjson", "{\"user_id\": \"u2\"}\n{\"user_id\": \"u3\"}\n");
    env.run(&[
        "load",
        "--computation",
        "order_completed_last_30days",
        "--name",
        "Order Completed Last 30 Days",
        "--kind",
        "audience",
        "--scope",
        "user",
        "--taken-at",
        "2026-01-01T00:00:00Z",
        "a.ndjson",
    ])
    .success();
    let first = env.query("SELECT id, name FROM computations");
    assert_eq!(first[0][1], "Order Completed Last 30 Days");
    env.run(&[
        "load",
        "--computation",
        "order_completed_last_30days",
        "--kind",
        "audience",
        "--scope",
        "user",
        "--taken-at",
        "2026-01-02T00:00:00+01:00",
        "b.ndjson",
    ])
    .success();
    assert_eq!(env.query("SELECT id, name FROM computations"), first);
    assert_eq!(
        rows(&env, "order_completed_last_30days"),
        vec![row(&["u2", "", "true"]), row(&["u3", "", "true"])]
    );
    assert_eq!(
        env.query("SELECT taken_at, complete FROM snapshots ORDER BY id"),
        vec![row(&["1767225600", "1"]), row(&["1767308400", "1"])]
    );
}

#[test]
fn load_members_ndjson_and_csv() {
    let env = Env::new();
    env.write(
        "members.ndjson",
        "{\"group_id\": \"acme\", \"user_id\": \"u1\", \"email\": \"U1@example.com\"}\n\
         {\"group_id\": \"acme\", \"email\": \"Lead@Example.com\"}\n\
         {\"group_id\": \"globex\", \"user_id\": \"u1\"}\n",
    );
    let run = env
        .run(&[
            "load-members",
            "--taken-at",
            "2026-03-01T00:00:00Z",
            "members.ndjson",
        ])
        .success();
    assert!(
        run.stdout.contains("Loaded 3 account memberships"),
        "{}",
        run.stdout
    );
    assert_eq!(
        env.query(
            "SELECT group_id, user_id, coalesce(email, '') FROM membership_rows ORDER BY 1, 2"
        ),
        vec![
            row(&["acme", "lead@example.com", "lead@example.com"]),
            row(&["acme", "u1", "u1@example.com"]),
            row(&["globex", "u1", ""]),
        ]
    );
    env.write("members.csv", "group_id,user_id\nacme,u9\n");
    env.run(&["load-members", "members.csv"]).success();
    assert_eq!(
        env.query("SELECT taken_at = 1772323200, taken_at > 1772323200, complete FROM membership_snapshots ORDER BY id"),
        vec![row(&["1", "0", "1"]), row(&["0", "1", "1"])]
    );
}

/// Runs a refused load and checks the message and that the database did not change.
fn refused(env: &Env, args: &[&str], needles: &[&str]) {
    let before = env.dump();
    env.run(args).refused(needles);
    assert_eq!(
        env.dump(),
        before,
        "the database changed after a refused load: {args:?}"
    );
}

fn seeded() -> Env {
    let env = Env::new();
    env.write("seed.ndjson", "{\"user_id\": \"u0\"}\n");
    load(&env, "vip", "audience", "user", "seed.ndjson").success();
    env.write("seed_trait.ndjson", "{\"user_id\": \"u0\", \"value\": 1}\n");
    load(&env, "score", "trait", "user", "seed_trait.ndjson").success();
    env.write(
        "seed_members.ndjson",
        "{\"group_id\": \"g\", \"user_id\": \"u0\"}\n",
    );
    env.run(&["load-members", "seed_members.ndjson"]).success();
    env
}

#[test]
fn rejected_rows_name_file_line_field_and_reason_and_store_nothing() {
    let env = seeded();
    let good = "{\"user_id\": \"ok1\", \"value\": 1}\n{\"user_id\": \"ok2\", \"value\": 2}\n";
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "no_id.ndjson",
            "{\"value\": 3}\n",
            &["no_id.ndjson:3:", "no identifier"],
        ),
        (
            "null_ids.ndjson",
            "{\"user_id\": null, \"email\": null, \"value\": 3}\n",
            &["null_ids.ndjson:3:", "no identifier"],
        ),
        (
            "empty_id.ndjson",
            "{\"user_id\": \"  \", \"value\": 3}\n",
            &["empty_id.ndjson:3:", "`user_id`", "empty identifier"],
        ),
        (
            "empty_email.ndjson",
            "{\"email\": \"\", \"value\": 3}\n",
            &["empty_email.ndjson:3:", "`email`", "empty identifier"],
        ),
        (
            "dup.ndjson",
            "{\"user_id\": \"ok1\", \"value\": 3}\n",
            &["dup.ndjson:3:", "`user_id`", "appears twice"],
        ),
        (
            "object.ndjson",
            "{\"user_id\": \"x\", \"value\": {\"a\": 1}}\n",
            &["object.ndjson:3:", "`value`", "object"],
        ),
        (
            "nested.ndjson",
            "{\"user_id\": \"x\", \"value\": [1, [2]]}\n",
            &["nested.ndjson:3:", "`value`", "only scalars"],
        ),
        (
            "array_obj.ndjson",
            "{\"user_id\": \"x\", \"value\": [{\"a\": 1}]}\n",
            &["array_obj.ndjson:3:", "`value`", "only scalars"],
        ),
        (
            "malformed.ndjson",
            "{\"user_id\": \"x\", \"value\": }\n",
            &["malformed.ndjson:3:", "malformed JSON"],
        ),
        (
            "not_object.ndjson",
            "[\"x\", 1]\n",
            &["not_object.ndjson:3:", "JSON object"],
        ),
        (
            "unknown.ndjson",
            "{\"user_id\": \"x\", \"score\": 1}\n",
            &["unknown.ndjson:3:", "`score`", "unknown column"],
        ),
        (
            "bad_email.ndjson",
            "{\"email\": \"not-an-email\"}\n",
            &["bad_email.ndjson:3:", "`email`"],
        ),
        (
            "bool_id.ndjson",
            "{\"user_id\": true}\n",
            &["bool_id.ndjson:3:", "`user_id`", "must be a string"],
        ),
    ];
    for (name, bad, needles) in cases {
        env.write(name, format!("{good}{bad}"));
        let mut expected = vec!["nothing was stored"];
        expected.extend_from_slice(needles);
        refused(
            &env,
            &[
                "load",
                "--computation",
                "score",
                "--kind",
                "trait",
                "--scope",
                "user",
                name,
            ],
            &expected,
        );
    }
}

#[test]
fn invalid_utf8_is_refused_in_ndjson_and_csv() {
    let env = seeded();
    env.write(
        "bad.ndjson",
        b"{\"user_id\": \"a\"}\n{\"user_id\": \"b\xff\"}\n".as_slice(),
    );
    refused(
        &env,
        &[
            "load",
            "--computation",
            "vip",
            "--kind",
            "audience",
            "--scope",
            "user",
            "bad.ndjson",
        ],
        &["bad.ndjson:2:", "invalid UTF-8"],
    );
    env.write("bad.csv", b"user_id\na\nb\xfe\n".as_slice());
    refused(
        &env,
        &[
            "load",
            "--computation",
            "vip",
            "--kind",
            "audience",
            "--scope",
            "user",
            "bad.csv",
        ],
        &["bad.csv:3:", "invalid UTF-8"],
    );
}

#[test]
fn audience_values_must_be_true() {
    let env = seeded();
    for (i, value) in ["false", "1", "\"yes\"", "null"].iter().enumerate() {
        let name = format!("aud{i}.ndjson");
        env.write(
            &name,
            format!("{{\"user_id\": \"a\"}}\n{{\"user_id\": \"b\", \"value\": {value}}}\n"),
        );
        refused(
            &env,
            &[
                "load",
                "--computation",
                "vip",
                "--kind",
                "audience",
                "--scope",
                "user",
                &name,
            ],
            &[&format!("{name}:2:"), "`value`", "must be true"],
        );
    }
}

#[test]
fn malformed_csv_is_refused() {
    let env = seeded();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "short.csv",
            "user_id,value\na,1\nb\n",
            &["short.csv:3:", "1 fields where the header has 2"],
        ),
        (
            "long.csv",
            "user_id,value\na,1,2\n",
            &["long.csv:2:", "3 fields where the header has 2"],
        ),
        (
            "unknown.csv",
            "user_id,score\na,1\n",
            &["unknown.csv:1:", "`score`", "unknown column"],
        ),
        (
            "twice.csv",
            "user_id,user_id\na,b\n",
            &["twice.csv:1:", "`user_id`", "twice"],
        ),
        (
            "dup.csv",
            "user_id,value\na,1\nb,2\na,3\n",
            &["dup.csv:4:", "appears twice"],
        ),
        (
            "noid.csv",
            "user_id,email,value\n,,1\n",
            &["noid.csv:2:", "no identifier"],
        ),
        (
            "group.csv",
            "group_id,value\nacme,1\n",
            &["group.csv:1:", "`group_id`", "unknown column"],
        ),
    ];
    for (name, text, needles) in cases {
        env.write(name, text);
        refused(
            &env,
            &[
                "load",
                "--computation",
                "score",
                "--kind",
                "trait",
                "--scope",
                "user",
                name,
            ],
            needles,
        );
    }
}

#[test]
fn account_rows_need_a_group_id_and_take_no_email() {
    let env = seeded();
    env.write(
        "acc.ndjson",
        "{\"group_id\": \"a\"}\n{\"user_id\": \"u\"}\n",
    );
    refused(
        &env,
        &[
            "load",
            "--computation",
            "tier",
            "--kind",
            "trait",
            "--scope",
            "account",
            "acc.ndjson",
        ],
        &["acc.ndjson:2:", "`user_id`", "unknown column"],
    );
    env.write(
        "acc2.ndjson",
        "{\"group_id\": \"a\", \"email\": \"x@y.z\"}\n",
    );
    refused(
        &env,
        &[
            "load",
            "--computation",
            "tier",
            "--kind",
            "trait",
            "--scope",
            "account",
            "acc2.ndjson",
        ],
        &["acc2.ndjson:1:", "`email`"],
    );
    env.write("acc3.ndjson", "{\"value\": 1}\n");
    refused(
        &env,
        &[
            "load",
            "--computation",
            "tier",
            "--kind",
            "trait",
            "--scope",
            "account",
            "acc3.ndjson",
        ],
        &["acc3.ndjson:1:", "needs group_id"],
    );
}

#[test]
fn computation_arguments_are_checked() {
    let env = seeded();
    env.write("one.ndjson", "{\"user_id\": \"a\"}\n");
    refused(
        &env,
        &[
            "load",
            "--computation",
            "vip",
            "--kind",
            "trait",
            "--scope",
            "user",
            "one.ndjson",
        ],
        &[
            "\"vip\" is a user audience",
            "cannot be loaded as a user trait",
        ],
    );
    refused(
        &env,
        &[
            "load",
            "--computation",
            "vip",
            "--kind",
            "audience",
            "--scope",
            "account",
            "one.ndjson",
        ],
        &["cannot be loaded as a account audience"],
    );
    refused(
        &env,
        &[
            "load",
            "--computation",
            "High Value",
            "--kind",
            "audience",
            "--scope",
            "user",
            "one.ndjson",
        ],
        &["not snake_case", "\"high_value\""],
    );
    refused(
        &env,
        &[
            "load",
            "--computation",
            "vip",
            "--kind",
            "audience",
            "--scope",
            "user",
            "--taken-at",
            "yesterday",
            "one.ndjson",
        ],
        &["--taken-at", "RFC 3339"],
    );
    refused(
        &env,
        &[
            "load",
            "--computation",
            "vip",
            "--kind",
            "audience",
            "--scope",
            "user",
            "--taken-at",
            "2000-01-01T00:00:00Z",
            "one.ndjson",
        ],
        &["older than the newest snapshot"],
    );
    env.write("one.json", "{\"user_id\": \"a\"}\n");
    refused(
        &env,
        &[
            "load",
            "--computation",
            "vip",
            "--kind",
            "audience",
            "--scope",
            "user",
            "one.json",
        ],
        &["one.json", "unknown file type"],
    );
    refused(
        &env,
        &[
            "load",
            "--computation",
            "vip",
            "--kind",
            "audience",
            "--scope",
            "user",
            "missing.ndjson",
        ],
        &["missing.ndjson"],
    );
    refused(
        &env,
        &[
            "load",
            "--computation",
            "vip",
            "--kind",
            "segment",
            "--scope",
            "user",
            "one.ndjson",
        ],
        &["--kind"],
    );
}

#[test]
fn membership_rejections_store_nothing() {
    let env = seeded();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "m1.ndjson",
            "{\"group_id\": \"g\", \"user_id\": \"a\"}\n{\"user_id\": \"b\"}\n",
            &["m1.ndjson:2:", "`group_id`", "missing"],
        ),
        (
            "m2.ndjson",
            "{\"group_id\": \"g\", \"user_id\": \"a\"}\n{\"group_id\": \"g\"}\n",
            &["m2.ndjson:2:", "no identifier"],
        ),
        (
            "m3.ndjson",
            "{\"group_id\": \"g\", \"user_id\": \"a\"}\n{\"group_id\": \"g\", \"user_id\": \"a\"}\n",
            &["m3.ndjson:2:", "appears twice"],
        ),
        (
            "m4.ndjson",
            "{\"group_id\": \"g\", \"user_id\": \"a\", \"role\": \"admin\"}\n",
            &["m4.ndjson:1:", "`role`", "unknown column"],
        ),
        ("m5.csv", "group_id,user_id\ng,a\n\"g,b\n", &["m5.csv"]),
        (
            "m6.ndjson",
            "{\"group_id\": \"\", \"user_id\": \"a\"}\n",
            &["m6.ndjson:1:", "`group_id`", "empty identifier"],
        ),
    ];
    for (name, text, needles) in cases {
        env.write(name, text);
        refused(&env, &["load-members", name], needles);
    }
}

#[test]
fn a_bad_row_at_the_end_of_a_large_file_stores_nothing() {
    let env = seeded();
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&format!("{{\"user_id\": \"user{i}\", \"value\": {i}}}\n"));
    }
    text.push_str("{\"user_id\": \"last\", \"value\": {\"nested\": true}}\n");
    env.write("large.ndjson", text);
    refused(
        &env,
        &[
            "load",
            "--computation",
            "score",
            "--kind",
            "trait",
            "--scope",
            "user",
            "large.ndjson",
        ],
        &["large.ndjson:20001:", "`value`"],
    );
}
