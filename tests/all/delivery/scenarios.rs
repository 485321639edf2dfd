//! The scenarios: an initial sync and incremental syncs with entries, exits, trait changes and
//! membership changes, clean, under faults, and killed at random moments.

use std::time::{Duration, Instant};

use intercom_sandbox::{FaultPoint, Faults, Outage, OutageKind, SandboxConfig, SlowResponses};
use serde_json::{Value, json};

use super::oracle::{self, Kind, Load, Scope, Step};
use crate::harness::{World, file_arg};

fn users(names: &[&str]) -> Vec<(String, Value)> {
    names.iter().map(|u| (u.to_string(), json!(true))).collect()
}

fn values(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn members(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(
        pairs
            .iter()
            .map(|(g, u)| (g.to_string(), u.to_string()))
            .collect(),
    )
}

fn bulk(range: impl Iterator<Item = usize>) -> Vec<(String, Value)> {
    range.map(|i| (format!("b{i:04}"), json!(true))).collect()
}

/// Three runs: the initial sync, then two incremental ones. `extra` users in a bulk audience
/// make delivery last (for the kill test).
pub fn steps(extra: usize) -> Vec<Step> {
    let audience = |key, rows| Load {
        key,
        kind: Kind::Audience,
        scope: Scope::User,
        rows,
    };
    let user_trait = |key, rows| Load {
        key,
        kind: Kind::Trait,
        scope: Scope::User,
        rows,
    };
    let account_audience = |key, rows| Load {
        key,
        kind: Kind::Audience,
        scope: Scope::Account,
        rows,
    };
    let account_trait = |key, rows| Load {
        key,
        kind: Kind::Trait,
        scope: Scope::Account,
        rows,
    };
    let mut a = vec![
        audience(
            "vip",
            users(&["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"]),
        ),
        user_trait(
            "score",
            values(&[
                ("u1", json!(10)),
                ("u2", json!(20)),
                ("u3", json!(30)),
                ("u4", json!(40)),
                ("u5", json!(50)),
            ]),
        ),
        account_audience("enterprise", users(&["acme", "globex"])),
        account_trait(
            "arr",
            values(&[
                ("acme", json!(1000)),
                ("globex", json!(500)),
                ("initech", json!(50)),
            ]),
        ),
    ];
    let mut b = vec![
        audience(
            "vip",
            users(&["u1", "u3", "u4", "u5", "u6", "u7", "u8", "u10"]),
        ),
        user_trait(
            "score",
            values(&[
                ("u1", json!(15)),
                ("u2", json!(20)),
                ("u4", json!(40)),
                ("u5", json!(50)),
                ("u6", json!(60)),
            ]),
        ),
    ];
    let mut c = vec![
        account_audience("enterprise", users(&["acme"])),
        account_trait(
            "arr",
            values(&[("acme", json!(1200.5)), ("globex", json!(500))]),
        ),
        audience(
            "vip",
            users(&["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u10"]),
        ),
    ];
    if extra > 0 {
        a.push(audience("newsletter", bulk(0..extra)));
        b.push(audience(
            "newsletter",
            bulk((0..extra).filter(|i| i % 3 != 0)),
        ));
        c.push(audience(
            "newsletter",
            bulk((0..extra + extra / 4).filter(|i| i % 3 != 1)),
        ));
    }
    vec![
        Step {
            taken_at: "2026-01-01T00:00:00Z",
            loads: a,
            members: members(&[
                ("acme", "u1"),
                ("acme", "u2"),
                ("globex", "u3"),
                ("initech", "u9"),
            ]),
        },
        Step {
            taken_at: "2026-01-01T01:00:00Z",
            loads: b,
            members: members(&[
                ("acme", "u1"),
                ("globex", "u3"),
                ("globex", "u4"),
                ("initech", "u9"),
            ]),
        },
        Step {
            taken_at: "2026-01-01T02:00:00Z",
            loads: c,
            members: None,
        },
    ]
}

fn clean(rate_limit: u32) -> SandboxConfig {
    let mut config = SandboxConfig::new("");
    config.rate_limit = rate_limit;
    config.window_secs = 1;
    config
}

#[test]
fn initial_and_incremental_syncs_leave_intercom_as_the_snapshots_say() {
    let world = World::new(clean(400));
    let steps = steps(0);
    for (i, step) in steps.iter().enumerate() {
        oracle::load_step(&world, i, step);
        let out = world.ok(&["sync"]);
        assert!(out.contains("Delivered"), "{out}");
        assert_eq!(
            world.count("SELECT count(*) FROM outbox WHERE status <> 'delivered'"),
            0
        );
        oracle::check(&world.state(), &oracle::expected(&steps[..=i]));
    }
    // Delivered state is the snapshot state: another sync sends nothing.
    let before = world.state().counters.total_requests;
    let out = world.ok(&["sync"]);
    assert!(out.contains("Delivered 0 messages"), "{out}");
    assert_eq!(world.state().counters.total_requests, before);
    assert_eq!(world.undelivered(), 0);
    let state = world.state();
    assert_eq!(state.counters.rate_limited, 0);
    assert_eq!(
        state.counters.intercom_versions.keys().collect::<Vec<_>>(),
        ["2.14"]
    );
    // Every id learned is cached: one contact id per contact.
    assert_eq!(
        world.count("SELECT count(*) FROM intercom_contacts") as usize,
        state.contacts.len()
    );
    let dead = world.ok(&["dead-letters", "list"]);
    assert!(dead.contains("No dead letters"), "{dead}");
    assert_eq!(
        world.count("SELECT count(*) FROM runs WHERE status <> 'finished' OR finished_at IS NULL"),
        0
    );
}

#[test]
fn faults_timeouts_and_search_lag_change_nothing() {
    let mut config = clean(400);
    config.faults = Faults {
        error_rate: 0.06,
        drop_rate: 0.04,
        point: FaultPoint::Either,
        seed: 42,
    };
    config.slow = SlowResponses {
        rate: 0.03,
        delay: Duration::from_millis(2500),
    };
    config.search_lag = Duration::from_secs(3);
    let world = World::new(config);
    let steps = steps(20);
    for (i, step) in steps.iter().enumerate() {
        oracle::load_step(&world, i, step);
        world.ok(&["sync"]);
        assert_eq!(
            world.count("SELECT count(*) FROM outbox WHERE status <> 'delivered'"),
            0
        );
    }
    let state = world.state();
    oracle::check(&state, &oracle::expected(&steps));
    let c = &state.counters;
    assert!(
        c.faults_injected > 0 && c.connections_dropped > 0 && c.lost_responses > 0,
        "{c:?}"
    );
    assert!(
        c.requests
            .values()
            .flat_map(|a| a.keys())
            .any(|k| k == "dropped"),
        "{c:?}"
    );
    assert_eq!(c.rate_limited, 0, "{c:?}");
}

/// Probes at most this far apart in the outage tests (`intercom.outage_probe_secs`): short, so
/// an outage of many probe intervals takes seconds.
const PROBE_SECS: f64 = 0.25;

#[test]
fn an_outage_during_the_initial_and_an_incremental_sync_is_waited_out() {
    let mut world = World::new(clean(400));
    world.set("INTERCOM__OUTAGE_PROBE_SECS", &PROBE_SECS.to_string());
    world.set("LOG__LEVEL", "info");
    let outage = Duration::from_secs(4);
    let steps = steps(60);
    // The initial sync (no events), then an incremental run (events): Intercom goes down after
    // this many requests of each, for 16 probe intervals.
    for (i, after) in [(0usize, 60u64), (1, 15)] {
        oracle::load_step(&world, i, &steps[i]);
        let before = world.state().counters;
        let sandbox = world.sandbox.as_ref().unwrap();
        let (output, status) = std::thread::scope(|scope| {
            let sync = scope.spawn(|| world.run(&["sync"]));
            let deadline = Instant::now() + Duration::from_secs(60);
            while world.state().counters.total_requests < before.total_requests + after {
                assert!(
                    !sync.is_finished(),
                    "the sync ended before the outage began"
                );
                assert!(
                    Instant::now() < deadline,
                    "the sync never sent {after} requests"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            sandbox.begin_outage(Outage::lasting(OutageKind::Mixed, outage));
            // `status` says so once the breaker has opened (well within the outage).
            let deadline = Instant::now() + outage;
            let status = loop {
                let status = world.ok(&["status"]);
                if status.contains("Intercom: unreachable since") || Instant::now() > deadline {
                    break status;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            (sync.join().unwrap(), status)
        });
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "run {i}: {stdout}\n{stderr}");
        assert!(
            status.contains("Intercom: unreachable since"),
            "run {i}: status during the outage:\n{status}"
        );
        assert!(
            stdout.contains("while Intercom was unreachable"),
            "{stdout}"
        );
        // The log says it once when it starts and once when it ends.
        assert_eq!(
            stderr.matches("Intercom is unreachable").count(),
            1,
            "{stderr}"
        );
        assert_eq!(
            stderr.matches("Intercom answers again").count(),
            1,
            "{stderr}"
        );
        assert_eq!(
            world.count("SELECT count(*) FROM outbox WHERE status <> 'delivered'"),
            0
        );
        assert_eq!(world.count("SELECT count(*) FROM intercom_outage"), 0);

        // While Intercom was down: the requests in flight when it went, then one probe per
        // interval, never closer together than the interval.
        let counters = world.state().counters.outage;
        assert!(!counters.active);
        let refused = &counters.refused_at_ms[before.outage.refused as usize..];
        let (early, late): (Vec<u64>, Vec<u64>) = refused.iter().partition(|ms| **ms < 500);
        assert!(early.len() <= 8 + 5 + 2, "run {i}: {refused:?}");
        let probe_ms = (PROBE_SECS * 1000.0) as u64;
        assert!(
            late.len() as u64 <= (outage.as_millis() as u64 - 500) / probe_ms + 2,
            "run {i}: {refused:?}"
        );
        assert!(
            late.len() >= 8,
            "run {i}: the probes kept going: {refused:?}"
        );
        for pair in late.windows(2) {
            assert!(
                pair[1] - pair[0] >= probe_ms - 50,
                "run {i}: probes {pair:?} ms closer than {probe_ms} ms: {refused:?}"
            );
        }
        // Intercom ends exactly as the snapshots say, with no event beyond the undisturbed
        // runs' (the oracle counts every event).
        oracle::check(&world.state(), &oracle::expected(&steps[..=i]));
    }
}

#[test]
fn a_message_dead_lettered_for_a_real_reason_in_an_initial_sync_replans_without_events() {
    let world = World::new(clean(400));
    let sandbox = world.sandbox.as_ref().unwrap();
    // `vip` is already a company attribute in this workspace: Intercom keeps one name on one
    // model, so a user's `vip` cannot be written. u1 is already a contact.
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let response = world
            .runtime
            .block_on(
                client
                    .post(format!("{}{path}", sandbox.base_url()))
                    .bearer_auth(crate::harness::TOKEN)
                    .header("Accept", "application/json")
                    .json(&body)
                    .send(),
            )
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    };
    post(
        "/data_attributes",
        json!({"name": "vip", "model": "company", "data_type": "boolean"}),
    );
    post("/contacts", json!({"role": "user", "external_id": "u1"}));
    let steps = steps(0);
    oracle::load_step(&world, 0, &steps[0]);
    let first = world.run(&["sync"]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("dead-lettered during this sync"),
        "{stderr}"
    );
    assert!(
        stderr.contains("audience-sync dead-letters list"),
        "{stderr}"
    );
    let dead = world.count("SELECT count(*) FROM outbox WHERE status = 'dead'");
    assert!(dead >= 8, "every vip member's identify: {dead}");

    // Re-planned by the next sync (the cause is still there: dead again), and retried by hand:
    // an initial sync's change never turns into Audience Entered or Trait Computed.
    let again = world.run(&["sync"]);
    assert_eq!(again.status.code(), Some(1));
    world.ok(&["dead-letters", "retry", "--all"]);
    let after_retry = world.run(&["sync"]);
    assert_eq!(after_retry.status.code(), Some(1));
    let state = world.state();
    let events: Vec<_> = state
        .contacts
        .iter()
        .flat_map(|c| {
            c.events
                .iter()
                .map(move |e| (c.external_id.clone(), e.event_name.clone()))
        })
        .collect();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(
        world.count("SELECT count(*) FROM outbox WHERE type = 'track'"),
        0
    );
}

#[test]
fn killed_at_random_moments_and_restarted_reaches_the_same_state() {
    // 30 requests a second and ~300 messages a run: each delivery takes several seconds.
    let world = World::new(clean(30));
    let steps = steps(150);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move |range: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % range
    };
    let delivered = || world.count("SELECT count(*) FROM outbox WHERE status = 'delivered'");
    let undelivered = || world.count("SELECT count(*) FROM outbox WHERE status <> 'delivered'");
    let mut kills = 0;
    // Kills that landed mid-delivery: the killed process had delivered some of its messages
    // and left others undelivered.
    let mut mid_delivery = 0;
    for (i, step) in steps.iter().enumerate() {
        oracle::load_step(&world, i, step);
        for _ in 0..3 {
            let before = delivered();
            let mut child = world.spawn(&["sync"]);
            std::thread::sleep(Duration::from_millis(300 + random(2500)));
            let killed = child.try_wait().unwrap().is_none();
            if killed {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            }
            child.wait().unwrap();
            if killed && delivered() > before && undelivered() > 0 {
                mid_delivery += 1;
            }
        }
        let started = Instant::now();
        world.ok(&["sync"]);
        assert!(started.elapsed() < Duration::from_secs(120));
        assert_eq!(
            world.count("SELECT count(*) FROM outbox WHERE status <> 'delivered'"),
            0
        );
    }
    eprintln!("{kills} syncs killed, {mid_delivery} of them mid-delivery");
    assert!(kills >= 3, "only {kills} syncs were killed mid-run");
    assert!(
        mid_delivery >= 3,
        "only {mid_delivery} of {kills} kills landed with messages delivered and others not"
    );
    oracle::check(&world.state(), &oracle::expected(&steps));
}

#[test]
fn a_refused_token_stops_delivery_and_leaves_the_queue() {
    let mut world = World::new(clean(400));
    oracle::load_step(&world, 0, &steps(0)[0]);
    world.set("INTERCOM__ACCESS_TOKEN", "wrong");
    let output = world.run(&["sync"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the token is wrong"), "{stderr}");
    assert!(
        !stderr.contains("wrong\""),
        "the token is never printed: {stderr}"
    );
    assert!(world.count("SELECT count(*) FROM outbox WHERE status = 'pending'") > 0);
    assert_eq!(
        world.count("SELECT count(*) FROM outbox WHERE status = 'dead'"),
        0
    );
    world.set("INTERCOM__ACCESS_TOKEN", crate::harness::TOKEN);
    world.ok(&["sync"]);
    oracle::check(&world.state(), &oracle::expected(&steps(0)[..1]));
}

#[test]
fn send_delivers_a_file_and_dead_letters_can_be_listed_retried_and_discarded() {
    let world = World::new(clean(400));
    let messages = [
        json!({"type": "identify", "userId": "s1", "messageId": "m1",
               "traits": {"email": "s1@example.com", "level": "pro", "seats": 3,
                          "company": {"id": "c1", "name": "C One", "tier": "gold"}}}),
        json!({"type": "track", "userId": "s1", "messageId": "m2", "event": "Order Completed",
               "timestamp": "2026-01-01T00:00:00Z", "properties": {"revenue": 12.5, "sku": "x"}}),
        json!({"type": "group", "userId": "s1", "groupId": "c2", "messageId": "m3",
               "traits": {"name": "C Two"}}),
        json!({"type": "identify", "traits": {"nothing": 1}}),
    ];
    let path = world.write("messages.ndjson", &messages);
    let output = world.run(&["send", &file_arg(&path)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 4:"), "{stderr}");
    let state = world.state();
    let s1 = state.contact_by_external_id("s1").expect("s1 created");
    assert_eq!(s1.custom_attributes["level"], json!("pro"));
    assert_eq!(s1.events.len(), 1);
    assert_eq!(
        s1.events[0].metadata["price"],
        json!({"amount": 1250, "currency": "usd"})
    );
    assert_eq!(s1.companies.len(), 2);

    // `seats` is contact data now: a company cannot have it (one name, one model).
    let account = [json!({"type": "group", "groupId": "c3", "messageId": "m4",
                          "traits": {"plan_name": "x", "seats": 1}})];
    let path = world.write("account.ndjson", &account);
    let out = world.ok(&["send", &file_arg(&path)]);
    assert!(out.contains("1 dead letters"), "{out}");
    let listed = world.ok(&["dead-letters", "list", "--json"]);
    let dead: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(dead.len(), 1, "{listed}");
    assert_eq!(dead[0]["type"], "group");
    assert_eq!(dead[0]["user"], "account:c3");
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("seats"),
        "{listed}"
    );
    let seq = dead[0]["seq"].as_i64().unwrap().to_string();
    let text = world.ok(&["dead-letters"]);
    assert!(
        text.contains("account:c3") && text.contains("seats"),
        "{text}"
    );

    let retried = world.ok(&["dead-letters", "retry", &seq]);
    assert!(retried.contains("1 dead letters queued again"), "{retried}");
    assert_eq!(
        world.count("SELECT count(*) FROM outbox WHERE status = 'pending'"),
        1
    );
    // Delivered again, dead again: the cause is still there.
    let output = world.run(&["send", &file_arg(&world.write("none.ndjson", &[]))]);
    assert!(output.status.success());
    assert_eq!(
        world.count("SELECT count(*) FROM outbox WHERE status = 'dead'"),
        1
    );
    let discarded = world.ok(&["dead-letters", "discard", "--all"]);
    assert!(
        discarded.contains("1 dead letters discarded"),
        "{discarded}"
    );
    assert!(
        world
            .ok(&["dead-letters", "list"])
            .contains("No dead letters")
    );
    let usage = world.run(&["dead-letters", "retry"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn ctrl_c_stops_after_the_requests_in_flight_and_leaves_the_rest_queued() {
    // About 450 requests at 60 a second (a user now costs about one request): the sync is
    // still delivering when Ctrl-C comes, once Intercom has seen its first 60 requests.
    let mut world = World::new(clean(60));
    // At most this many requests in flight: what may still reach Intercom after Ctrl-C.
    const IN_FLIGHT: u64 = 4;
    world.set("INTERCOM__MAX_CONCURRENCY", &IN_FLIGHT.to_string());
    let steps = steps(400);
    oracle::load_step(&world, 0, &steps[0]);
    let before = world.state().counters.total_requests;
    let mut child = world
        .command(&["sync"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while world.state().counters.total_requests < before + 60 {
        assert!(child.try_wait().unwrap().is_none(), "the sync ended first");
        assert!(Instant::now() < deadline, "the sync never delivered");
        std::thread::sleep(Duration::from_millis(10));
    }
    let at_interrupt = world.state().counters.total_requests;
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    // Stopped after the requests in flight (counted, not timed): at most one per slot, and
    // one more per slot for a request started between the count and the signal.
    let after = world.state().counters.total_requests - at_interrupt;
    assert!(
        after <= 2 * IN_FLIGHT,
        "{after} requests after Ctrl-C with {IN_FLIGHT} in flight"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let delivered = world.count("SELECT count(*) FROM outbox WHERE status = 'delivered'");
    let pending = world.count("SELECT count(*) FROM outbox WHERE status = 'pending'");
    assert!(
        delivered > 0 && pending > 0,
        "{delivered} delivered, {pending} pending"
    );
    assert_eq!(
        world.count("SELECT count(*) FROM outbox WHERE attempts > 0"),
        0
    );
    world.ok(&["sync"]);
    oracle::check(&world.state(), &oracle::expected(&steps[..1]));
}

#[test]
fn sync_delivers_while_it_plans_and_the_outbox_stays_within_its_bound() {
    // 2,000 users in the initial sync, planned in chunks of ~300 staged rows, at most 200
    // messages ahead of delivery (300 requests a second): delivery starts with the first chunk,
    // and the outbox never holds more than the bound plus one chunk.
    let mut world = World::new(clean(300));
    world.set("PLAN__MAX_PENDING_MESSAGES", "200");
    let steps = steps(2_000);
    for (i, step) in steps.iter().enumerate() {
        oracle::load_step(&world, i, step);
        let mut child = world
            .command(&["sync"])
            .env(audience_sync::plan::CHUNK_ROWS_HOOK, "300")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let conn = world.db();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let (mut most_pending, mut delivered_while_planning, mut chunks_seen) = (0i64, false, 0i64);
        while child.try_wait().unwrap().is_none() {
            let (pending, delivered, unfinished, chunks): (i64, i64, i64, i64) = conn
                .query_row(
                    "SELECT (SELECT count(*) FROM outbox WHERE status = 'pending'), \
                       (SELECT count(*) FROM outbox WHERE status = 'delivered'), \
                       (SELECT count(*) FROM run_progress), \
                       (SELECT coalesce(max(chunks), 0) FROM run_progress)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .unwrap();
            most_pending = most_pending.max(pending);
            chunks_seen = chunks_seen.max(chunks);
            if i == 0 && unfinished == 1 && delivered > 0 {
                delivered_while_planning = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The bound, plus the chunk that was being planned when it was reached (at most one
        // message per staged row).
        assert!(most_pending <= 200 + 300, "{most_pending} pending at once");
        if i == 0 {
            assert!(
                chunks_seen >= 3,
                "only {chunks_seen} chunks committed mid-run"
            );
            assert!(
                delivered_while_planning,
                "nothing was delivered before the run's last chunk"
            );
        }
        assert_eq!(world.count("SELECT count(*) FROM run_progress"), 0);
        assert_eq!(
            world.count("SELECT count(*) FROM outbox WHERE status <> 'delivered'"),
            0
        );
        oracle::check(&world.state(), &oracle::expected(&steps[..=i]));
    }
}

/// A stored message that is not one Intercom can take (here a `page` call, which an upstream
/// writer or an older version might leave in the outbox) is parsed once when delivery reads it,
/// and dead-lettered without a request; the messages behind it in other lanes go on.
#[test]
fn a_stored_message_that_does_not_parse_is_dead_lettered_without_a_request() {
    let world = World::new(clean(400));
    world.ok(&["status"]); // creates the database
    let db = world.db();
    for (lane, body) in [
        ("u1", r#"{"type":"page","userId":"u1","name":"Home"}"#),
        (
            "u2",
            r#"{"type":"identify","userId":"u2","traits":{"email":"u2@example.com"}}"#,
        ),
    ] {
        db.execute(
            "INSERT INTO outbox (lane, message_id, type, body, effects, enqueued_at) \
             VALUES (?1, ?2, 'identify', ?3, '[]', 0)",
            rusqlite::params![lane, format!("m-{lane}"), body],
        )
        .unwrap();
    }
    drop(db);
    let before = world.state().counters.total_requests;
    world.run(&["sync"]);
    let dead: String = world
        .db()
        .query_row(
            "SELECT last_error FROM outbox WHERE lane = 'u1' AND status = 'dead'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        dead.contains("not a message Intercom can take") && dead.contains("page"),
        "{dead}"
    );
    let state = world.state();
    assert!(state.contact_by_external_id("u1").is_none());
    assert!(
        state.contact_by_external_id("u2").is_some(),
        "the other lane was delivered"
    );
    assert!(state.counters.total_requests > before);
}
