//! A reader that goes away (`audience-sync status | head -1`): Rust ignores SIGPIPE, so the
//! next write to standard output fails with a broken pipe. A command that only reports then ends
//! quietly with success, as ripgrep does: exit 0, nothing on standard error, no panic. A command
//! that changes state loses its output, not its work nor its exit code.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::harness::{Env, Run};

const SETTINGS: &str = "[database]\npath = \"state/test.db\"\n[http]\nlisten = \"\"\n\
     [[computations]]\nkey = \"computed\"\nkind = \"audience\"\nscope = \"user\"\n\
     sql = \"SELECT 'u1' AS user_id\"\n";

/// Run `args` with standard output a pipe whose read end is closed before the command can write
/// anything: its first write fails.
fn closed_at_once(env: &Env, args: &[&str]) -> Run {
    let mut child = env
        .command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    Run::from(child.wait_with_output().unwrap())
}

/// Run `args`, read the first line of its output, then close the pipe (`| head -1`).
fn after_one_line(env: &Env, args: &[&str]) -> (String, Run) {
    let mut child = env
        .command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    drop(reader);
    (line, Run::from(child.wait_with_output().unwrap()))
}

#[track_caller]
fn quietly_successful(run: Run, what: &str) {
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (0, ""),
        "{what}: expected exit 0 and nothing on standard error"
    );
}

/// `count` users in the audience `vip` and with the trait `plan`.
fn users(env: &Env, count: usize) {
    let audience: String = (0..count)
        .map(|i| {
            format!("{{\"user_id\": \"user-{i:05}\", \"email\": \"user-{i:05}@example.com\"}}\n")
        })
        .collect();
    let traits: String = (0..count)
        .map(|i| format!("{{\"user_id\": \"user-{i:05}\", \"value\": \"plan number {i}\"}}\n"))
        .collect();
    env.write("vip.ndjson", audience);
    env.write("plan.ndjson", traits);
    for (key, kind, file) in [
        ("vip", "audience", "vip.ndjson"),
        ("plan", "trait", "plan.ndjson"),
    ] {
        env.run(&[
            "load",
            "--computation",
            key,
            "--kind",
            kind,
            "--scope",
            "user",
            file,
        ])
        .success();
    }
}

/// Exit 0 with no error (a run logs its INFO lines on standard error).
#[track_caller]
fn successful(run: Run, what: &str) {
    assert_eq!(run.code, 0, "{what}: {}", run.stderr);
    assert!(
        !run.stderr.contains("error") && !run.stderr.contains("panicked"),
        "{what}: {}",
        run.stderr
    );
}

#[test]
fn sync_dry_run_stops_at_a_closed_pipe_and_changes_nothing() {
    let env = Env::new();
    users(&env, 5_000);
    // Far more than a pipe holds (64 KiB): the command is still writing when the reader goes.
    let full = env.run(&["sync", "--dry-run"]).success();
    assert!(full.stdout.len() > 1 << 20, "{} bytes", full.stdout.len());
    let before = env.dump();
    let (first, run) = after_one_line(&env, &["sync", "--dry-run"]);
    assert!(
        first.starts_with("{\"") && first.contains("\"identify\""),
        "{first}"
    );
    quietly_successful(run, "sync --dry-run | head -1");
    assert_eq!(
        env.dump(),
        before,
        "a dry run stopped early changes nothing"
    );
    // And the next run is the same as it would have been.
    assert_eq!(
        env.run(&["sync", "--dry-run"]).success().stdout,
        full.stdout
    );
}

#[test]
fn every_reporting_command_ends_quietly_when_its_reader_has_gone() {
    let env = Env::new();
    env.write("settings.toml", SETTINGS);
    users(&env, 3);
    env.write(
        "messages.ndjson",
        "{\"type\": \"identify\", \"userId\": \"u1\", \"traits\": {\"vip\": true}}\n",
    );
    // Every failing command is named, not only the first.
    let mut failed = Vec::new();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["plan"],
        &["plan", "--json"],
        &["sync", "--dry-run"],
        &["dead-letters"],
        &["dead-letters", "list"],
        &["dead-letters", "list", "--json"],
        &["compute", "--dry-run"],
        &["send", "--dry-run", "messages.ndjson"],
        &["prune", "--dry-run"],
        &["prune", "--dry-run", "--json"],
    ] {
        let before = env.dump();
        let run = closed_at_once(&env, args);
        if (run.code, run.stderr.as_str()) != (0, "") {
            failed.push(format!(
                "{}: exit {}: {}",
                args.join(" "),
                run.code,
                run.stderr
            ));
        }
        assert_eq!(env.dump(), before, "{}", args.join(" "));
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_command_that_changes_state_finishes_and_exits_as_its_outcome_says() {
    let env = Env::new();
    env.write("settings.toml", SETTINGS);
    env.write("more.ndjson", "{\"user_id\": \"u9\"}\n");
    // The output is lost, not the work.
    successful(
        closed_at_once(
            &env,
            &[
                "load",
                "--computation",
                "more",
                "--kind",
                "audience",
                "--scope",
                "user",
                "more.ndjson",
            ],
        ),
        "load",
    );
    successful(closed_at_once(&env, &["compute"]), "compute");
    successful(
        closed_at_once(&env, &["sync", "--no-deliver"]),
        "sync --no-deliver",
    );
    assert_eq!(
        env.query("SELECT count(*) FROM snapshots")[0][0],
        "2",
        "both snapshots were stored"
    );
    assert_eq!(
        env.query("SELECT count(*) FROM outbox")[0][0],
        "2",
        "the run was enqueued"
    );

    // Nor its outcome: a failure after (or beside) the first line still fails, as it would with
    // someone reading. `sync` plans and prints its report while delivery finds no token.
    closed_at_once(&env, &["sync"]).refused(&["intercom.access_token is empty"]);
    env.write(
        "settings.toml",
        format!(
            "{SETTINGS}[[computations]]\nkey = \"broken\"\nkind = \"audience\"\n\
             scope = \"user\"\nsql = \"SELECT user_id FROM no_such_table\"\n"
        ),
    );
    closed_at_once(&env, &["compute"]).refused(&["1 of 2 computations failed"]);
    assert_eq!(env.query("SELECT count(*) FROM snapshots")[0][0], "3");
}

#[test]
fn the_demo_read_to_its_first_line_ends_without_a_panic() {
    let env = Env::new();
    let (first, run) = after_one_line(&env, &["demo"]);
    assert_eq!(first, "audience-sync demo\n");
    // The demo starts its sandbox before it prints, which logs an INFO line on standard error.
    successful(run, "demo | head -1");
}
