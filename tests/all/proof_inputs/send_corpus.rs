//! The bad-input corpus of `send` (`tests/corpus/send/`): every file refused with exit 2 and a
//! message naming each bad line and its reason, the database byte-for-byte unchanged, and not
//! one request made to Intercom (an in-process sandbox counts them). And a file mixing good and
//! bad lines: the good ones are delivered, the bad ones named, exit 2 (README, "Sending").

use intercom_sandbox::{Sandbox, SandboxConfig, SandboxHandle};

use super::corpus;
use crate::harness::{Env, Run};

const TOKEN: &str = "proof-token";

struct World {
    env: Env,
    sandbox: SandboxHandle,
    _runtime: tokio::runtime::Runtime,
}

impl World {
    fn new() -> World {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sandbox = runtime
            .block_on(Sandbox::start(SandboxConfig::new(TOKEN)))
            .unwrap();
        World {
            env: Env::new(),
            sandbox,
            _runtime: runtime,
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        let output = self
            .env
            .command(args)
            .env("AUDIENCE_SYNC__INTERCOM__BASE_URL", self.sandbox.base_url())
            .env("AUDIENCE_SYNC__INTERCOM__ACCESS_TOKEN", TOKEN)
            .env("AUDIENCE_SYNC__INTERCOM__REQUEST_TIMEOUT_SECS", "5")
            .output()
            .unwrap();
        Run::from(output)
    }

    fn requests(&self) -> u64 {
        self.sandbox.snapshot().counters.total_requests
    }
}

#[test]
fn every_bad_send_input_is_refused_by_line_and_nothing_is_sent_or_stored() {
    let dir = corpus::dir("send");
    let cases = corpus::manifest(&dir);
    corpus::check_complete(&dir, &cases);
    assert!(cases.len() >= 20, "the corpus holds {} files", cases.len());
    let world = World::new();
    // A database that already exists (as it does in production): a refused file leaves it as
    // it was.
    world.env.write("seed.ndjson", "{\"user_id\": \"u0\"}\n");
    world
        .run(&[
            "load",
            "--computation",
            "vip",
            "--kind",
            "audience",
            "--scope",
            "user",
            "seed.ndjson",
        ])
        .success();
    let before = world.env.dump();
    let mut failures = Vec::new();
    for case in &cases {
        std::fs::copy(dir.join(&case.file), world.env.path(&case.file)).unwrap();
        let mut args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        args.push(&case.file);
        let run = world.run(&args);
        let mut problems = Vec::new();
        if run.code != case.exit {
            problems.push(format!("exit {} (expected {})", run.code, case.exit));
        }
        for needle in &case.needles {
            if !run.stderr.contains(needle.as_str()) {
                problems.push(format!("no {needle:?} in the message"));
            }
        }
        if run.stderr.contains("panicked") {
            problems.push("panicked".to_string());
        }
        if world.env.dump() != before {
            problems.push("the database changed".to_string());
        }
        corpus::integrity_ok(&world.env.db_path());
        if world.requests() != 0 {
            problems.push(format!("{} requests reached Intercom", world.requests()));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n    stderr: {}",
                case.file,
                problems.join("; "),
                run.stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_mixed_file_delivers_its_good_lines_names_the_bad_ones_and_exits_2() {
    let world = World::new();
    // A BOM and CRLF line endings are accepted, as by `load`.
    let text = "\u{feff}{\"type\": \"identify\", \"userId\": \"m1\", \"traits\": {\"level\": \"pro\"}}\r\n\
                {\"type\": \"identify\", \"traits\": {\"level\": \"pro\"}}\r\n\
                \r\n\
                {\"type\": \"track\", \"userId\": \"m1\", \"event\": \"Signed Up\"}\r\n\
                {\"type\": \"identify\", \"userId\": \"m2\", \"userId\": \"m3\"}\r\n";
    world.env.write("mixed.ndjson", text);
    let run = world.run(&["send", "mixed.ndjson"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("line 2:"), "{}", run.stderr);
    assert!(run.stderr.contains("line 5:"), "{}", run.stderr);
    assert!(run.stderr.contains("2 of 4 messages"), "{}", run.stderr);
    assert!(!run.stderr.contains("line 1:"), "{}", run.stderr);
    assert!(!run.stderr.contains("line 4:"), "{}", run.stderr);
    let state = world.sandbox.snapshot();
    let m1 = state
        .contact_by_external_id("m1")
        .unwrap_or_else(|| panic!("m1 not delivered: {}{}", run.stdout, run.stderr));
    assert_eq!(m1.custom_attributes["level"], "pro");
    assert_eq!(m1.events.len(), 1);
    assert!(state.contact_by_external_id("m2").is_none());
    assert!(state.contact_by_external_id("m3").is_none());
    assert_eq!(
        world
            .env
            .query("SELECT count(*) FROM outbox WHERE status = 'delivered'"),
        vec![vec!["2".to_string()]]
    );
}
