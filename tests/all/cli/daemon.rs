//! `audience-sync run`: the daemon picks up new snapshots on its schedule, delivers them, serves
//! Prometheus metrics that agree with the sandbox, and stops cleanly on SIGTERM.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use intercom_sandbox::{Outage, OutageKind, Sandbox, SandboxConfig, SandboxHandle};

use crate::harness::Env;

const TOKEN: &str = "daemon-test-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Settings for a daemon against `sandbox`, syncing every 2 seconds.
fn configure(env: &Env, sandbox: &SandboxHandle, metrics_port: u16, run_on_start: bool) {
    env.write(
        "daemon.toml",
        format!(
            "[database]\npath = \"state/test.db\"\n\
             [schedule]\ncron = \"*/2 * * * * *\"\nrun_on_start = {run_on_start}\n\
             [intercom]\nbase_url = \"{}\"\naccess_token = \"{TOKEN}\"\nrate_limit = 1000\nrequest_timeout_secs = 5\noutage_probe_secs = 0.3\n\
             [http]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            sandbox.base_url()
        ),
    );
}

fn start(env: &Env) -> Child {
    env.command(&["--config", "daemon.toml", "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn terminate(child: &mut Child) -> (Option<i32>, Duration) {
    let started = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), started.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn load(env: &Env, file: &str, contents: &str) {
    env.write(file, contents);
    env.run(&[
        "--config",
        "daemon.toml",
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

/// Parse Prometheus text exposition: every sample line is `name{labels} value` with a TYPE
/// declared before it. Returns (name, labels) → value.
fn parse_prometheus(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(
                ["counter", "gauge", "untyped"].contains(&kind),
                "bad TYPE line {line:?}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let mut labels = BTreeMap::new();
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name {name:?}"
        );
        assert!(
            typed.contains(&name),
            "{name} has no TYPE line before its samples"
        );
        samples.insert((name, labels), value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_syncs_on_schedule_and_its_metrics_match_the_sandbox() {
    let sandbox = Sandbox::start(SandboxConfig::new(TOKEN)).await.unwrap();
    let env = Env::new();
    let port = free_port();
    configure(&env, &sandbox, port, true);
    let mut daemon = start(&env);
    let client = reqwest::Client::new();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");

    // Ready: /healthz answers once the database is open.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon's /healthz never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A snapshot loaded while the daemon runs is picked up by the next tick and delivered.
    load(
        &env,
        "vip.ndjson",
        "{\"user_id\": \"u1\"}\n{\"user_id\": \"u2\", \"email\": \"u2@example.com\"}\n",
    );
    wait_for(
        "the first snapshot in Intercom",
        Duration::from_secs(30),
        || {
            let state = sandbox.snapshot();
            ["u1", "u2"].iter().all(|u| {
                state.contact_by_external_id(u).is_some_and(|c| {
                    c.custom_attributes.get("vip") == Some(&serde_json::json!(true))
                })
            })
        },
    )
    .await;
    // Beside the daemon: a second daemon is refused; a manual `sync` plans and leaves delivery
    // to the daemon.
    let second = env.run(&["--config", "daemon.toml", "run"]);
    assert_eq!(second.code, 1, "{}", second.stderr);
    assert!(
        second.stderr.contains("delivering the outbox of"),
        "{}",
        second.stderr
    );
    let manual = env.run(&["--config", "daemon.toml", "sync"]).success();
    assert!(
        manual.stdout.contains("is delivering from"),
        "{}",
        manual.stdout
    );

    load(
        &env,
        "vip2.ndjson",
        "{\"user_id\": \"u2\"}\n{\"user_id\": \"u3\"}\n",
    );
    wait_for(
        "the second snapshot in Intercom",
        Duration::from_secs(30),
        || {
            let state = sandbox.snapshot();
            let vip = |u: &str| {
                state
                    .contact_by_external_id(u)
                    .and_then(|c| c.custom_attributes.get("vip").cloned())
            };
            vip("u1") == Some(serde_json::json!(false))
                && vip("u3") == Some(serde_json::json!(true))
                && state
                    .contact_by_external_id("u3")
                    .is_some_and(|c| c.events.len() == 1)
        },
    )
    .await;
    // Let delivery record its last confirmation, then compare counters.
    wait_for("the outbox to drain", Duration::from_secs(10), || {
        let rows = env.query("SELECT count(*) FROM outbox WHERE status = 'pending'");
        rows[0][0] == "0"
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let text = client
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let parsed = parse_prometheus(&text);
        let sent: f64 = parsed
            .iter()
            .filter(|((name, _), _)| name == "audience_sync_intercom_requests_total")
            .map(|(_, v)| *v)
            .sum();
        if sent as u64 == sandbox.snapshot().counters.total_requests || Instant::now() > deadline {
            break parsed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let state = sandbox.snapshot();
    let mut ours: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for ((name, labels), value) in &metrics {
        if name == "audience_sync_intercom_requests_total" {
            ours.entry(labels["endpoint"].clone())
                .or_default()
                .insert(labels["status"].clone(), *value as u64);
        }
    }
    assert_eq!(
        ours, state.counters.requests,
        "requests by endpoint and status, ours vs the sandbox's"
    );
    let delivered: f64 = metrics
        .iter()
        .filter(|((name, _), _)| name == "audience_sync_messages_delivered_total")
        .map(|(_, v)| *v)
        .sum();
    let confirmed = env.query("SELECT count(*) FROM outbox WHERE status = 'delivered'");
    assert_eq!(delivered as u64, confirmed[0][0].parse::<u64>().unwrap());
    let pending = &metrics[&(
        "audience_sync_outbox_messages".to_string(),
        BTreeMap::from([("status".to_string(), "pending".to_string())]),
    )];
    assert_eq!(*pending, 0.0);
    assert_eq!(
        metrics[&(
            "audience_sync_computation_rows".to_string(),
            BTreeMap::from([("computation".to_string(), "vip".to_string())])
        )],
        2.0
    );
    assert_eq!(
        metrics
            .get(&(
                "audience_sync_intercom_rate_limited_total".to_string(),
                BTreeMap::new()
            ))
            .copied()
            .unwrap_or(0.0) as u64,
        state.counters.rate_limited
    );
    // The outbox's bound beside its depth, the database's size, and the prune after each run.
    let gauge = |name: &str, labels: &[(&str, &str)]| {
        let key = (
            name.to_string(),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        *metrics
            .get(&key)
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    assert_eq!(gauge("audience_sync_outbox_pending_limit", &[]), 100_000.0);
    assert!(gauge("audience_sync_database_bytes", &[("file", "main")]) > 0.0);
    gauge("audience_sync_database_bytes", &[("file", "wal")]);
    gauge("audience_sync_database_free_bytes", &[]);
    let pruned = gauge("audience_sync_last_prune_timestamp_seconds", &[]);
    let records = env.query(&format!(
        "SELECT count(*) FROM prunes WHERE origin = 'daemon' AND started_at = {pruned}"
    ));
    assert_ne!(records[0][0], "0", "no prune record at {pruned}");
    let records = env.query("SELECT count(*) FROM prunes WHERE origin = 'daemon'");
    assert!(
        records[0][0].parse::<u64>().unwrap() >= 2,
        "a prune after each run"
    );
    assert_eq!(gauge("audience_sync_last_prune_failed", &[]), 0.0);
    gauge(
        "audience_sync_last_prune_removed",
        &[("what", "delivered_messages")],
    );
    assert_eq!(
        metrics
            .get(&("audience_sync_planning_failed".to_string(), BTreeMap::new()))
            .copied()
            .unwrap_or(0.0),
        0.0
    );

    let (code, took) = terminate(&mut daemon);
    assert_eq!(code, Some(0), "SIGTERM exits 0");
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_delivery_exits_0_and_a_restart_finishes_the_work() {
    let mut config = SandboxConfig::new(TOKEN);
    // Slow Intercom: every request takes 150 ms, so 120 users take a while to deliver.
    config.latency = Duration::from_millis(150);
    let sandbox = Sandbox::start(config).await.unwrap();
    let env = Env::new();
    let port = free_port();
    configure(&env, &sandbox, port, true);
    let members: String = (0..120)
        .map(|i| format!("{{\"user_id\": \"user{i:03}\"}}\n"))
        .collect();
    load(&env, "vip.ndjson", &members);

    // At most this many requests in flight: what may still reach Intercom after SIGTERM.
    const IN_FLIGHT: u64 = 4;
    let text = std::fs::read_to_string(env.path("daemon.toml")).unwrap();
    env.write(
        "daemon.toml",
        text.replace(
            "[intercom]\n",
            &format!("[intercom]\nmax_concurrency = {IN_FLIGHT}\n"),
        ),
    );
    let mut daemon = start(&env);
    wait_for("delivery to start", Duration::from_secs(30), || {
        env.query("SELECT count(*) FROM outbox WHERE status = 'delivered'")[0][0] != "0"
    })
    .await;
    let at_signal = sandbox.snapshot().counters.total_requests;
    let (code, _) = terminate(&mut daemon);
    assert_eq!(code, Some(0), "SIGTERM during delivery exits 0");
    // Only the requests in flight finish (counted, not timed): at most one per slot, and one
    // more per slot for a request started between the count and the signal.
    let after = sandbox.snapshot().counters.total_requests - at_signal;
    assert!(
        after <= 2 * IN_FLIGHT,
        "{after} requests after SIGTERM with {IN_FLIGHT} in flight"
    );
    let left: u64 = env.query("SELECT count(*) FROM outbox WHERE status = 'pending'")[0][0]
        .parse()
        .unwrap();
    assert!(left > 0, "the rest of the outbox stays queued");
    let attempts =
        env.query("SELECT count(*) FROM outbox WHERE status = 'pending' AND attempts > 0");
    assert_eq!(attempts[0][0], "0", "a stop counts no failed attempt");

    let mut daemon = start(&env);
    wait_for(
        "the restarted daemon to finish",
        Duration::from_secs(60),
        || env.query("SELECT count(*) FROM outbox WHERE status = 'pending'")[0][0] == "0",
    )
    .await;
    let (code, _) = terminate(&mut daemon);
    assert_eq!(code, Some(0));
    let state = sandbox.snapshot();
    for i in 0..120 {
        let user = format!("user{i:03}");
        let contact = state
            .contact_by_external_id(&user)
            .unwrap_or_else(|| panic!("{user} missing"));
        assert_eq!(
            contact.custom_attributes.get("vip"),
            Some(&serde_json::json!(true)),
            "{user}"
        );
    }
    assert_eq!(state.contacts.len(), 120, "no duplicate contacts");
    assert_eq!(
        env.query("SELECT count(*) FROM outbox WHERE status = 'dead'")[0][0],
        "0"
    );
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_schedule() {
    let sandbox = Sandbox::start(SandboxConfig::new(TOKEN)).await.unwrap();
    let env = Env::new();
    let port = free_port();
    configure(&env, &sandbox, port, false);
    // Start with a schedule that would not fire during the test.
    let text = std::fs::read_to_string(env.path("daemon.toml")).unwrap();
    env.write("daemon.toml", text.replace("*/2 * * * * *", "0 0 0 1 1 *"));
    load(&env, "vip.ndjson", "{\"user_id\": \"u1\"}\n");
    let mut daemon = start(&env);
    // The daemon says when it runs next: on New Year's day, not within the next minute, so
    // nothing need be waited out to see that nothing runs.
    let client = reqwest::Client::new();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let next = next_run(&client, &metrics_url).await;
    let now = chrono::Utc::now().timestamp();
    assert!(next > now + 60, "next run at {next}, now {now}");
    assert!(
        sandbox.snapshot().contacts.is_empty(),
        "nothing runs before the reload"
    );

    env.write("daemon.toml", text);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The reloaded schedule (every 2 s) is what the daemon says it runs on.
    let deadline = Instant::now() + Duration::from_secs(20);
    while next_run(&client, &metrics_url).await > chrono::Utc::now().timestamp() + 3 {
        assert!(Instant::now() < deadline, "the schedule was not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(
        "a run on the reloaded schedule",
        Duration::from_secs(20),
        || sandbox.snapshot().contact_by_external_id("u1").is_some(),
    )
    .await;
    let (code, _) = terminate(&mut daemon);
    assert_eq!(code, Some(0));
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_appears_in_output_or_logs() {
    let secret = "tok-SECRET-5f3a9c";
    let sandbox = Sandbox::start(SandboxConfig::new(secret)).await.unwrap();
    let env = Env::new();
    configure(&env, &sandbox, free_port(), false);
    let text = std::fs::read_to_string(env.path("daemon.toml")).unwrap();
    env.write("daemon.toml", text.replace(TOKEN, secret));
    load(&env, "vip.ndjson", "{\"user_id\": \"u1\"}\n");
    for level in ["trace", "debug"] {
        for format in ["text", "json"] {
            let out = env
                .command(&["--config", "daemon.toml", "sync", "--full"])
                .env("RUST_LOG", level)
                .env("AUDIENCE_SYNC__LOG__FORMAT", format)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !all.contains(secret),
                "the token leaked at {level}/{format}"
            );
            assert!(!all.is_empty());
        }
    }
    // A refused token is reported without being shown.
    env.write("daemon.toml", text.replace(TOKEN, "tok-WRONG-77d1"));
    env.write("vip2.ndjson", "{\"user_id\": \"u2\"}\n");
    env.run(&[
        "--config",
        "daemon.toml",
        "load",
        "--computation",
        "vip",
        "--kind",
        "audience",
        "--scope",
        "user",
        "vip2.ndjson",
    ])
    .success();
    let out = env
        .command(&["--config", "daemon.toml", "sync"])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("token"), "{all}");
    assert!(!all.contains("tok-WRONG-77d1"), "the refused token leaked");
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_tells_systemd_it_is_ready_and_pings_the_watchdog() {
    let sandbox = Sandbox::start(SandboxConfig::new(TOKEN)).await.unwrap();
    let env = Env::new();
    configure(&env, &sandbox, free_port(), false);
    let socket_path = env.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut daemon = env
        .command(&["--config", "daemon.toml", "run"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        let n = socket.recv(&mut buf).expect("a notification within 20 s");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = seen.iter().position(|m| m.contains("READY=1")).unwrap();
    assert!(
        seen[..ready].iter().all(|m| !m.contains("WATCHDOG")),
        "READY=1 comes first: {seen:?}"
    );
    let (code, _) = terminate(&mut daemon);
    assert_eq!(code, Some(0));
    let mut rest = Vec::new();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while let Ok(n) = socket.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        rest.iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 on SIGTERM: {rest:?}"
    );
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_pauses_delivery_healthz_says_so_and_delivery_resumes_by_itself() {
    let sandbox = Sandbox::start(SandboxConfig::new(TOKEN)).await.unwrap();
    // Intercom is down from the start.
    sandbox.begin_outage(Outage::until_ended(OutageKind::Errors));
    let env = Env::new();
    let port = free_port();
    configure(&env, &sandbox, port, true);
    let members: String = (0..40)
        .map(|i| format!("{{\"user_id\": \"user{i:02}\"}}\n"))
        .collect();
    load(&env, "vip.ndjson", &members);
    let mut daemon = start(&env);
    let client = reqwest::Client::new();
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let unreachable = |text: &str| {
        parse_prometheus(text)
            .get(&(
                "audience_sync_intercom_unreachable".to_string(),
                BTreeMap::new(),
            ))
            .copied()
    };

    // Paused: /healthz 503 naming the outage, the metric, and `status` in another process.
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Ok(r) = client.get(&healthz).send().await
            && r.status() == 503
        {
            let body = r.text().await.unwrap();
            if body.contains("Intercom unreachable since") {
                break body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never reported the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("502") || body.contains("503") || body.contains("504"),
        "{body}"
    );
    let text = get_text(&client, &metrics_url).await;
    assert_eq!(unreachable(&text), Some(1.0), "{text}");
    let status = env.run(&["--config", "daemon.toml", "status"]).success();
    assert!(
        status.stdout.contains("Intercom: unreachable since"),
        "{}",
        status.stdout
    );

    // Down until it has refused four probes after its first second: one probe at a time, at
    // least 0.3 s apart once paused (waited for, not slept).
    wait_for(
        "four probes during the outage",
        Duration::from_secs(30),
        || {
            let refused = sandbox.snapshot().counters.outage.refused_at_ms;
            refused.iter().filter(|ms| **ms >= 1000).count() >= 4
        },
    )
    .await;
    sandbox.end_outage();
    let counters = sandbox.snapshot().counters.outage;
    let late: Vec<u64> = counters
        .refused_at_ms
        .iter()
        .copied()
        .filter(|ms| *ms >= 1000)
        .collect();
    assert!(late.len() >= 4, "{:?}", counters.refused_at_ms);
    for pair in late.windows(2) {
        assert!(
            pair[1] - pair[0] >= 250,
            "probes too close: {:?}",
            counters.refused_at_ms
        );
    }

    // Intercom answers again: everything is delivered without anyone stepping in.
    wait_for("delivery after the outage", Duration::from_secs(30), || {
        let state = sandbox.snapshot();
        (0..40).all(|i| {
            state
                .contact_by_external_id(&format!("user{i:02}"))
                .is_some_and(|c| c.custom_attributes.get("vip") == Some(&serde_json::json!(true)))
        })
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(&healthz).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still {}",
            r.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = get_text(&client, &metrics_url).await;
    assert_eq!(unreachable(&text), Some(0.0), "{text}");
    assert_eq!(
        env.query("SELECT count(*) FROM outbox WHERE status = 'dead'")[0][0],
        "0"
    );
    let status = env.run(&["--config", "daemon.toml", "status"]).success();
    assert!(!status.stdout.contains("unreachable"), "{}", status.stdout);
    let (code, _) = terminate(&mut daemon);
    assert_eq!(code, Some(0));
    sandbox.shutdown().await;
}

async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// `audience_sync_next_run_timestamp_seconds` from /metrics, once the daemon serves it and its
/// scheduler has said (non-zero).
async fn next_run(client: &reqwest::Client, url: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(answer) = client.get(url).send().await {
            let metrics = parse_prometheus(&answer.text().await.unwrap_or_default());
            let at = sample(&metrics, "audience_sync_next_run_timestamp_seconds", &[]);
            if let Some(at) = at.filter(|at| *at > 0.0) {
                return at as i64;
            }
        }
        assert!(Instant::now() < deadline, "no next run in {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_plans_within_its_outbox_bound_and_resumes_a_run_killed_mid_way() {
    // 600 users, chunks of ~40 staged rows, at most 50 undelivered messages ahead of a slow
    // Intercom: the daemon's run waits at the bound while its delivery drains; SIGKILLed then,
    // the restarted daemon resumes the run and every user ends up in Intercom once.
    let mut config = SandboxConfig::new(TOKEN);
    config.latency = Duration::from_millis(30);
    let sandbox = Sandbox::start(config).await.unwrap();
    let env = Env::new();
    let port = free_port();
    configure(&env, &sandbox, port, true);
    let users = 600;
    let members: String = (0..users)
        .map(|i| format!("{{\"user_id\": \"user{i:03}\"}}\n"))
        .collect();
    load(&env, "vip.ndjson", &members);
    let daemon = || {
        env.command(&["--config", "daemon.toml", "run"])
            .env("AUDIENCE_SYNC__PLAN__MAX_PENDING_MESSAGES", "50")
            .env(audience_sync::plan::CHUNK_ROWS_HOOK, "40")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let count = |sql: &str| -> u64 { env.query(sql)[0][0].parse().unwrap() };
    let most_pending = std::cell::Cell::new(0u64);
    let sample = || {
        let pending = count("SELECT count(*) FROM outbox WHERE status = 'pending'");
        most_pending.set(most_pending.get().max(pending));
    };

    let mut first = daemon();
    wait_for(
        "the run to wait at its bound with messages delivered",
        Duration::from_secs(60),
        || {
            sample();
            count("SELECT count(*) FROM run_progress") == 1
                && count("SELECT count(*) FROM outbox WHERE status = 'delivered'") > 0
        },
    )
    .await;
    first.kill().unwrap(); // SIGKILL, mid-run
    first.wait().unwrap();
    assert_eq!(
        count("SELECT count(*) FROM run_progress"),
        1,
        "left unfinished"
    );
    let queued = count("SELECT count(*) FROM outbox");
    assert!(
        queued < users,
        "{queued} of {users} planned before the kill"
    );

    let mut second = daemon();
    wait_for(
        "the restarted daemon to finish the run and deliver it",
        Duration::from_secs(90),
        || {
            sample();
            count("SELECT count(*) FROM run_progress") == 0
                && count("SELECT count(*) FROM outbox WHERE status = 'pending'") == 0
                && count("SELECT count(*) FROM outbox WHERE status = 'delivered'") >= users
        },
    )
    .await;
    let (code, _) = terminate(&mut second);
    assert_eq!(code, Some(0));
    // The bound, plus the chunk being planned when it was reached.
    assert!(
        most_pending.get() <= 50 + 40,
        "{} undelivered at once",
        most_pending.get()
    );
    assert_eq!(
        count("SELECT count(DISTINCT message_id) FROM outbox"),
        users,
        "every user's identify once"
    );
    assert_eq!(
        count("SELECT count(*) FROM outbox WHERE status = 'dead'"),
        0
    );
    let state = sandbox.snapshot();
    assert_eq!(
        state.contacts.len(),
        users as usize,
        "no duplicate contacts"
    );
    for i in 0..users {
        let user = format!("user{i:03}");
        let contact = state
            .contact_by_external_id(&user)
            .unwrap_or_else(|| panic!("{user} missing"));
        assert_eq!(
            contact.custom_attributes.get("vip"),
            Some(&serde_json::json!(true)),
            "{user}"
        );
    }
    sandbox.shutdown().await;
}

/// The metric `name` with exactly `labels`, if /metrics has it.
fn sample(
    metrics: &BTreeMap<(String, BTreeMap<String, String>), f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    metrics.get(&(name.to_string(), labels)).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_computes_before_its_run_and_a_broken_query_keeps_its_previous_snapshot() {
    let sandbox = Sandbox::start(SandboxConfig::new(TOKEN)).await.unwrap();
    let env = Env::new();
    let port = free_port();
    configure(&env, &sandbox, port, true);
    // Only run_on_start runs: the schedule does not fire during the test.
    let base = std::fs::read_to_string(env.path("daemon.toml"))
        .unwrap()
        .replace("*/2 * * * * *", "0 0 0 1 1 *");
    let define = |trial_sql: &str| {
        env.write(
            "daemon.toml",
            format!(
                "{base}\
                 [[computations]]\nkey = \"paying\"\nkind = \"audience\"\nscope = \"user\"\n\
                 sql = \"SELECT user_id, email FROM customers WHERE plan = 'pro'\"\n\
                 [[computations]]\nkey = \"trial\"\nkind = \"audience\"\nscope = \"user\"\n\
                 sql = \"{trial_sql}\"\n"
            ),
        );
    };
    define("SELECT user_id, email FROM customers WHERE plan = 'trial'");
    env.run(&["--config", "daemon.toml", "status"]).success();
    let upstream = |sql: &str| {
        rusqlite::Connection::open(env.db_path())
            .unwrap()
            .execute_batch(sql)
            .unwrap()
    };
    upstream(
        "CREATE TABLE customers (user_id TEXT, email TEXT, plan TEXT);
         INSERT INTO customers VALUES ('p1', 'p1@example.com', 'pro'), ('p2', NULL, 'pro'),
           ('t1', 't1@example.com', 'trial'), ('t2', NULL, 'trial');",
    );
    env.run(&["--config", "daemon.toml", "compute"]).success();

    // First life: both computations reach Intercom.
    let mut daemon = start(&env);
    wait_for(
        "both computations in Intercom",
        Duration::from_secs(60),
        || {
            let state = sandbox.snapshot();
            let has = |user: &str, key: &str| {
                state
                    .contact_by_external_id(user)
                    .is_some_and(|c| c.custom_attributes.get(key) == Some(&serde_json::json!(true)))
            };
            has("p1", "paying") && has("p2", "paying") && has("t1", "trial") && has("t2", "trial")
        },
    )
    .await;
    wait_for("the outbox to drain", Duration::from_secs(30), || {
        env.query("SELECT count(*) FROM outbox WHERE status = 'pending'")[0][0] == "0"
    })
    .await;
    let (code, _) = terminate(&mut daemon);
    assert_eq!(code, Some(0));
    let newest_trial = || {
        env.query(
            "SELECT s.id, s.row_count FROM snapshots s JOIN computations c \
             ON c.id = s.computation_id WHERE c.key = 'trial' AND s.complete = 1 \
             ORDER BY s.taken_at DESC, s.id DESC LIMIT 1",
        )
    };
    let trial_before = newest_trial();
    assert_eq!(trial_before[0][1], "2");

    // Second life: the trial query breaks, and a new paying customer arrives.
    define("SELECT user_id, email FROM trial_signups");
    upstream("INSERT INTO customers VALUES ('p3', 'p3@example.com', 'pro');");
    let mut daemon = start(&env);
    wait_for(
        "the new paying customer in Intercom",
        Duration::from_secs(60),
        || {
            sandbox
                .snapshot()
                .contact_by_external_id("p3")
                .is_some_and(|c| {
                    c.custom_attributes.get("paying") == Some(&serde_json::json!(true))
                        && c.events.iter().any(|e| e.event_name == "Audience Entered")
                })
        },
    )
    .await;
    wait_for("the outbox to drain", Duration::from_secs(30), || {
        env.query("SELECT count(*) FROM outbox WHERE status = 'pending'")[0][0] == "0"
    })
    .await;
    let client = reqwest::Client::new();
    let metrics = parse_prometheus(
        &client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let (code, _) = terminate(&mut daemon);
    assert_eq!(code, Some(0));

    let failed = sample(
        &metrics,
        "audience_sync_computes_total",
        &[("computation", "trial"), ("outcome", "failed")],
    );
    assert!(failed.is_some_and(|n| n >= 1.0), "{failed:?}");
    assert_eq!(
        sample(
            &metrics,
            "audience_sync_compute_failed",
            &[("computation", "trial")]
        ),
        Some(1.0)
    );
    let stored = sample(
        &metrics,
        "audience_sync_computes_total",
        &[("computation", "paying"), ("outcome", "stored")],
    );
    assert!(stored.is_some_and(|n| n >= 1.0), "{stored:?}");
    assert_eq!(
        sample(
            &metrics,
            "audience_sync_compute_failed",
            &[("computation", "paying")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "audience_sync_compute_rows",
            &[("computation", "paying")]
        ),
        Some(3.0)
    );
    assert!(
        sample(
            &metrics,
            "audience_sync_compute_duration_seconds",
            &[("computation", "trial")]
        )
        .is_some()
    );

    // The broken computation's previous snapshot stayed, and the run planned from it: its
    // members are still in the audience in Intercom, and nobody exited.
    assert_eq!(newest_trial(), trial_before);
    let record = env.query(
        "SELECT origin, snapshot_id IS NULL, error FROM computes WHERE computation = 'trial' \
         ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(record[0][..2], ["daemon".to_string(), "1".to_string()]);
    assert!(
        record[0][2].contains("no such table: trial_signups"),
        "{record:?}"
    );
    let state = sandbox.snapshot();
    for user in ["t1", "t2"] {
        let contact = state.contact_by_external_id(user).unwrap();
        assert_eq!(
            contact.custom_attributes.get("trial"),
            Some(&serde_json::json!(true)),
            "{user}"
        );
        assert!(contact.events.is_empty(), "{user}: {:?}", contact.events);
    }
    assert_eq!(
        env.query("SELECT count(*) FROM runs")[0][0],
        "2",
        "both lives planned a run"
    );
    sandbox.shutdown().await;
}
