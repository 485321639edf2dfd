//! The bad-input corpus of `load` / `load-members` (`tests/corpus/load/`): every file refused
//! with exit 2, a message naming the file, the line and (where one is to blame) the field, and
//! the database byte-for-byte unchanged; and the odd-but-valid files (`accepted/`) loaded.

use super::corpus::{self, Case};
use crate::harness::Env;

/// A database holding a user audience, a user trait, an account trait and a membership snapshot.
fn seeded() -> Env {
    let env = Env::new();
    let seeds = [
        (
            "seed_vip.ndjson",
            "{\"user_id\": \"u0\"}\n",
            "vip audience user",
        ),
        (
            "seed_score.ndjson",
            "{\"user_id\": \"u0\", \"value\": 1}\n",
            "score trait user",
        ),
        (
            "seed_tier.ndjson",
            "{\"group_id\": \"g\", \"value\": \"gold\"}\n",
            "tier trait account",
        ),
    ];
    for (file, text, what) in seeds {
        env.write(file, text);
        let what: Vec<&str> = what.split(' ').collect();
        env.run(&[
            "load",
            "--computation",
            what[0],
            "--kind",
            what[1],
            "--scope",
            what[2],
            "--taken-at",
            "2026-01-01T00:00:00Z",
            file,
        ])
        .success();
    }
    env.write(
        "seed_members.ndjson",
        "{\"group_id\": \"g\", \"user_id\": \"u0\"}\n",
    );
    env.run(&[
        "load-members",
        "--taken-at",
        "2026-01-01T00:00:00Z",
        "seed_members.ndjson",
    ])
    .success();
    env
}

/// Writes the corpus file (or generates it) into the environment's directory.
fn place(env: &Env, dir: &std::path::Path, case: &Case) {
    if case.generated {
        let big = "x".repeat(super::corpus::HUGE);
        let text = match case.file.as_str() {
            "huge_line.ndjson" => format!(
                "{{\"user_id\": \"u1\", \"value\": 1}}\n{{\"user_id\": \"u2\", \"value\": \"{big}\"}}\n"
            ),
            "huge_cell.csv" => format!("user_id,value\nu1,1\nu2,{big}\n"),
            other => panic!("no generator for {other}"),
        };
        env.write(&case.file, text);
    } else {
        std::fs::copy(dir.join(&case.file), env.path(&case.file)).unwrap();
    }
}

fn command(case: &Case) -> Vec<&str> {
    let mut args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    args.push(&case.file);
    args
}

#[test]
fn every_bad_load_input_is_refused_naming_file_line_and_field_and_stores_nothing() {
    let dir = corpus::dir("load");
    let cases = corpus::manifest(&dir);
    corpus::check_complete(&dir, &cases);
    assert!(cases.len() >= 30, "the corpus holds {} files", cases.len());
    let env = seeded();
    let before = env.dump();
    let mut failures = Vec::new();
    for case in &cases {
        place(&env, &dir, case);
        let args = command(case);
        let run = env.run(&args);
        let mut problems = Vec::new();
        if run.code != case.exit {
            problems.push(format!("exit {} (expected {})", run.code, case.exit));
        }
        if !run.stderr.contains(&case.file) {
            problems.push("the message does not name the file".to_string());
        }
        if !run.stderr.contains("nothing was stored") {
            problems.push("the message does not say nothing was stored".to_string());
        }
        for needle in &case.needles {
            if !run.stderr.contains(needle.as_str()) {
                problems.push(format!("no {needle:?} in the message"));
            }
        }
        if run.stderr.contains("panicked") {
            problems.push("panicked".to_string());
        }
        if env.dump() != before {
            problems.push("the database changed".to_string());
        }
        corpus::integrity_ok(&env.db_path());
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({}): {}\n    stderr: {}",
                case.file,
                case.args.join(" "),
                problems.join("; "),
                run.stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn odd_but_valid_inputs_load() {
    let dir = corpus::dir("load/accepted");
    let cases = corpus::manifest(&dir);
    corpus::check_complete(&dir, &cases);
    let env = seeded();
    for case in &cases {
        place(&env, &dir, case);
        let run = env.run(&command(case));
        assert_eq!(
            run.code, case.exit,
            "{}: {}{}",
            case.file, run.stdout, run.stderr
        );
        for needle in &case.needles {
            assert!(
                run.stdout.contains(needle.as_str()),
                "{}: no {needle:?} in {}",
                case.file,
                run.stdout
            );
        }
        corpus::integrity_ok(&env.db_path());
    }
    // No BOM, carriage return or untrimmed identifier made it into the database; emails are
    // lower-cased.
    for sql in [
        "SELECT entity_id, coalesce(email, ''), coalesce(value, '') FROM snapshot_rows",
        "SELECT group_id, user_id, coalesce(email, '') FROM membership_rows",
    ] {
        for row in env.query(sql) {
            for cell in &row {
                assert!(
                    !cell.contains(['\r', '\n', '\u{feff}']) && cell.trim() == cell,
                    "{row:?}"
                );
            }
            assert_eq!(row[1], row[1].to_lowercase(), "{row:?}");
        }
    }
    let csv = env.query(
        "SELECT entity_id, coalesce(email, ''), value FROM snapshot_rows WHERE snapshot_id = \
         (SELECT snapshot_id FROM snapshot_rows WHERE email = 'c1@example.com') \
         ORDER BY entity_id",
    );
    assert_eq!(
        csv,
        vec![
            vec!["c1".to_string(), "c1@example.com".into(), "1".into()],
            vec!["c2".to_string(), "".into(), "\"a, b\"".into()],
        ]
    );
    let unicode = env.query(
        "SELECT entity_id, coalesce(email, '') FROM snapshot_rows WHERE entity_id LIKE 'ü%' \
         OR entity_id = '\u{1F600}' ORDER BY entity_id",
    );
    assert_eq!(
        unicode,
        vec![
            vec!["ü-ß-日本".to_string(), "äda@example.com".into()],
            vec!["\u{1F600}".to_string(), "".into()],
        ]
    );
}
