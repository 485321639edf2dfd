//! Settings through the real binary: file, environment, and refusals that name the key.

use crate::harness::Env;

#[test]
fn environment_overrides_the_database_path() {
    let env = Env::new();
    env.write("a.ndjson", "{\"user_id\": \"a\"}\n");
    let run = env
        .command(&[
            "load",
            "--computation",
            "vip",
            "--kind",
            "audience",
            "--scope",
            "user",
            "a.ndjson",
        ])
        .env("AUDIENCE_SYNC__DATABASE__PATH", "elsewhere.db")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(env.path("elsewhere.db").exists());
    assert!(!env.db_path().exists());
}

#[test]
fn unknown_keys_and_wrong_types_exit_2_naming_the_key() {
    let env = Env::new();
    env.write("bad.toml", "[intercom]\nrate_limits = 5\n");
    let run = env.run(&["--config", "bad.toml", "status"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("rate_limits"), "{}", run.stderr);

    env.write("bad2.toml", "[intercom]\nmax_concurrency = \"many\"\n");
    let run = env.run(&["--config", "bad2.toml", "status"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("max_concurrency"), "{}", run.stderr);

    let run = env
        .command(&["status"])
        .env("AUDIENCE_SYNC__HTTP__LISTEN", "nowhere")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("http.listen"));
}

#[test]
fn rate_limit_is_auto_or_a_number_and_nothing_else() {
    let env = Env::new();
    for value in ["\"auto\"", "83", "1666", "\"40\""] {
        env.write("rate.toml", format!("[intercom]\nrate_limit = {value}\n"));
        let run = env.run(&["--config", "rate.toml", "status"]);
        assert_eq!(run.code, 0, "rate_limit = {value}: {}", run.stderr);
    }
    for value in ["auto", "120"] {
        let run = env
            .command(&["status"])
            .env("AUDIENCE_SYNC__INTERCOM__RATE_LIMIT", value)
            .output()
            .unwrap();
        assert_eq!(
            run.status.code(),
            Some(0),
            "{value}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    for value in ["\"lots\"", "\"automatic\"", "0", "-3", "2.5", "true"] {
        env.write("rate.toml", format!("[intercom]\nrate_limit = {value}\n"));
        let run = env.run(&["--config", "rate.toml", "status"]);
        assert_eq!(run.code, 2, "rate_limit = {value}: {}", run.stderr);
        assert!(
            run.stderr.contains("intercom.rate_limit"),
            "rate_limit = {value}: {}",
            run.stderr
        );
    }
    let run = env
        .command(&["status"])
        .env("AUDIENCE_SYNC__INTERCOM__RATE_LIMIT", "unlimited")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("intercom.rate_limit"), "{stderr}");
    assert!(stderr.contains("unlimited"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_refused() {
    let env = Env::new();
    let run = env.run(&["--config", "nope.toml", "status"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("nope.toml"), "{}", run.stderr);
}

#[test]
fn every_command_has_help() {
    let env = Env::new();
    for command in [
        "run",
        "sync",
        "plan",
        "load",
        "load-members",
        "send",
        "status",
        "dead-letters",
        "demo",
        "sandbox",
    ] {
        let run = env.run(&[command, "--help"]).success();
        assert!(
            run.stdout.contains("Usage: audience-sync"),
            "{command}: {}",
            run.stdout
        );
    }
    let run = env.run(&["--help"]).success();
    for command in [
        "run",
        "sync",
        "plan",
        "load",
        "load-members",
        "send",
        "status",
        "dead-letters",
        "demo",
        "sandbox",
    ] {
        assert!(
            run.stdout.contains(&format!("  {command} ")),
            "{command} missing from --help"
        );
    }
    assert_eq!(env.run(&["no-such-command"]).code, 2);
}
