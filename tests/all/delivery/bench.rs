//! The delivery benchmark (BENCHMARKS.md, "Delivery") against the sandbox with 20 ms latency:
//! (a) requests per identify in steady state, (b) share of the announced budget used while
//! draining a large outbox, with no 429, (c) what happens when the budget is not announced;
//! and (d) at Intercom's own budget (1,666 per 10 s, `intercom.rate_limit = "auto"`) with 50,
//! 150 and 300 ms latency: the share of the budget used and the 429s.
//!
//! By default a short version runs as a test and checks the targets, except the shares of the
//! budget used in (b), (c) and (d): wall-clock thresholds, which only the benchmark holds. With
//! `AUDIENCE_SYNC_BENCH=1` it runs at full size (1,000 users, 100 requests per 2 s window: a
//! 30-window drain, the 5-minute equivalent of Intercom's 10 s windows; for (d) 13,500 users
//! per latency, about 8 windows of 10 s each) and prints the numbers:
//! `AUDIENCE_SYNC_BENCH=1 cargo test --release --test all delivery::bench -- --nocapture`.

use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use intercom_sandbox::{RateLimitHeaders, SandboxConfig};
use serde_json::json;

use crate::harness::{World, file_arg};

struct Size {
    users: usize,
    limit: u32,
    window_secs: u64,
}

/// The benchmark (`AUDIENCE_SYNC_BENCH` set), not the default test run.
fn bench() -> bool {
    std::env::var_os("AUDIENCE_SYNC_BENCH").is_some()
}

fn size() -> Size {
    if bench() {
        Size {
            users: 1000,
            limit: 100,
            window_secs: 2,
        }
    } else {
        Size {
            users: 150,
            limit: 100,
            window_secs: 1,
        }
    }
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Sleep until `offset` past the next window boundary.
fn sleep_past_boundary(window_secs: u64, offset: Duration) -> u64 {
    let window = Duration::from_secs(window_secs);
    let now = now();
    let index = now.as_secs() / window_secs + 1;
    let boundary = Duration::from_secs(index * window_secs);
    thread::sleep(boundary - now + offset);
    let _ = window;
    index
}

/// Requests (and 429s) that arrived in each window while `args` ran, read just after every
/// boundary: the sandbox counts a request when it answers (20 ms later), and the client waits a
/// margin past each reset, so a reading 40 ms past a boundary holds exactly the earlier windows.
struct Drain {
    windows: Vec<(u64, u64)>,
    stdout: String,
}

fn drain(world: &World, args: &[&str], window_secs: u64) -> Drain {
    drain_reading(world, args, window_secs, Duration::from_millis(40))
}

/// [`drain`], reading the counters `read_after` past every boundary: the sandbox counts a
/// request in `total_requests` when it answers, a latency after it arrived (and was counted
/// against its window), so the reading comes after the last answers of the window that ended
/// (the latency and a little) and, mostly, before the first answers of the next (the client
/// opens a window a margin past its start: 25 ms for 1 s windows, 250 ms for 10 s). A request
/// read on the wrong side moves between two neighbouring windows, which the sum over the full
/// windows does not see (only the boundary before the last, partial, window counts).
fn drain_reading(world: &World, args: &[&str], window_secs: u64, read_after: Duration) -> Drain {
    sleep_past_boundary(window_secs, Duration::from_millis(5));
    let child = world
        .command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = world.state().counters;
    let mut last = (start.total_requests, start.rate_limited);
    let mut windows = Vec::new();
    let child = std::sync::Arc::new(std::sync::Mutex::new(child));
    loop {
        sleep_past_boundary(window_secs, read_after);
        let c = world.state().counters;
        windows.push((c.total_requests - last.0, c.rate_limited - last.1));
        last = (c.total_requests, c.rate_limited);
        if child.lock().unwrap().try_wait().unwrap().is_some() {
            break;
        }
    }
    let output = std::sync::Arc::try_unwrap(child)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap()
        .wait_with_output()
        .unwrap();
    assert!(output.status.success());
    // The process ended within the last window read: trailing empty windows are not the drain's.
    while windows.last().is_some_and(|w| w.0 == 0) {
        windows.pop();
    }
    Drain {
        windows,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

/// Messages and requests from the summary line "Delivered N messages in T s (R requests…".
fn delivered(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Delivered"))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let messages = words[1].parse().unwrap();
    let requests = words
        .iter()
        .position(|w| w.starts_with("requests"))
        .map(|i| words[i - 1].trim_start_matches('(').parse().unwrap())
        .unwrap();
    (messages, requests)
}

fn config(size: &Size, headers: RateLimitHeaders) -> SandboxConfig {
    let mut config = SandboxConfig::new("");
    config.rate_limit = size.limit;
    config.window_secs = size.window_secs;
    config.latency = Duration::from_millis(20);
    config.rate_limit_headers = headers;
    config
}

fn load_users(world: &World, size: &Size, taken_at: &str, value: impl Fn(usize) -> i64) {
    load_n_users(world, size.users, taken_at, value);
}

fn load_n_users(world: &World, users: usize, taken_at: &str, value: impl Fn(usize) -> i64) {
    let rows: Vec<_> = (0..users)
        .map(|i| json!({"user_id": format!("p{i:05}"), "email": format!("p{i:05}@example.com"), "value": value(i)}))
        .collect();
    let path = world.write(&format!("points-{taken_at}.ndjson"), &rows);
    world.ok(&[
        "load",
        "--computation",
        "points",
        "--kind",
        "trait",
        "--scope",
        "user",
        "--taken-at",
        taken_at,
        &file_arg(&path),
    ]);
}

/// The full windows of a drain (the last is partial): share of the budget they used.
fn share(d: &Drain, limit: u32) -> f64 {
    let full = &d.windows[..d.windows.len().saturating_sub(1)];
    let used: u64 = full.iter().map(|w| w.0 - w.1).sum();
    used as f64 / (f64::from(limit) * full.len().max(1) as f64)
}

#[test]
fn bench_budget_use_and_requests_per_identify() {
    let size = size();
    let world = World::new(config(&size, RateLimitHeaders::Announce));
    load_users(&world, &size, "2026-01-01T00:00:00Z", |i| i as i64);
    // (b) The initial sync: a large outbox (search + create + write per user).
    let initial = drain(&world, &["sync"], size.window_secs);
    let initial_share = share(&initial, size.limit);
    let initial_429: u64 = initial.windows.iter().map(|w| w.1).sum();
    let (messages, requests) = delivered(&initial.stdout);
    assert_eq!(messages as usize, size.users);

    // (a) Steady state: every contact id cached, a full resync is one PUT per identify (plus
    // the attribute list, once per process).
    let full = drain(&world, &["sync", "--full"], size.window_secs);
    let (full_messages, full_requests) = delivered(&full.stdout);
    let per_identify = full_requests as f64 / full_messages as f64;
    // And an incremental run changing every value: one identify + one track per user.
    load_users(&world, &size, "2026-01-02T00:00:00Z", |i| i as i64 + 1);
    let changed = drain(&world, &["sync"], size.window_secs);
    let (changed_messages, changed_requests) = delivered(&changed.stdout);
    let state = world.state();

    println!(
        "delivery bench: {} users, budget {} per {} s, 20 ms latency",
        size.users, size.limit, size.window_secs
    );
    println!(
        "(b) initial sync: {messages} messages, {requests} requests in {} windows; \
         budget used in full windows {:.1}%, 429s {initial_429}, max in a window {}; per window {:?}",
        initial.windows.len(),
        initial_share * 100.0,
        state.counters.max_requests_in_window,
        initial.windows.iter().map(|w| w.0).collect::<Vec<_>>()
    );
    println!(
        "(a) steady state: sync --full {full_messages} identifies, {full_requests} requests: \
         {per_identify:.3} requests per identify; incremental {changed_messages} messages \
         (identify + track), {changed_requests} requests"
    );
    assert_eq!(
        state.counters.rate_limited, 0,
        "no 429 when the budget is announced"
    );
    assert!(state.counters.max_requests_in_window <= u64::from(size.limit));
    assert!(per_identify <= 1.02, "{per_identify}");
    // A share of the budget depends on the machine's clock and load: the benchmark's target.
    if bench() {
        assert!(initial_share >= 0.95, "{initial_share}");
    }
    // One request a message: the new process reads no attribute list (it is in the database).
    assert_eq!(changed_requests, changed_messages);
}

#[test]
fn bench_unannounced_budget_is_learned_from_the_first_429() {
    let size = size();
    let world_config = config(&size, RateLimitHeaders::Hide);
    let mut world = World::new(world_config);
    // The settings promise half again what the server allows, and the server does not say.
    world.set("INTERCOM__RATE_LIMIT", &(size.limit * 3 / 2).to_string());
    load_users(&world, &size, "2026-01-01T00:00:00Z", |i| i as i64);
    let d = drain(&world, &["sync"], size.window_secs);
    let limit = u64::from(size.limit);
    let first_429 = d.windows.iter().position(|w| w.1 > 0);
    let windows_with_429 = d.windows.iter().filter(|w| w.1 > 0).count();
    let total_429: u64 = d.windows.iter().map(|w| w.1).sum();
    // A window is lost when it accepted less than the budget while work remained (the last
    // window is where work ran out).
    let lost = first_429.map_or(0, |first| {
        d.windows[first..d.windows.len() - 1]
            .iter()
            .filter(|w| w.0 - w.1 < limit * 9 / 10)
            .count()
    });
    println!(
        "(c) unannounced budget {} per {} s, settings {}: first 429 in window {:?}, 429s {total_429} \
         in {windows_with_429} windows, windows lost after it {lost}, budget used in full windows \
         {:.1}%; per window (all, 429) {:?}",
        size.limit,
        size.window_secs,
        size.limit * 3 / 2,
        first_429,
        share(&d, size.limit) * 100.0,
        d.windows
    );
    assert_eq!(windows_with_429, 1, "{:?}", d.windows);
    // Whether a window used 90% of the budget is a wall-clock measure (a loaded machine sends
    // less): only the benchmark judges it.
    if bench() {
        assert_eq!(lost, 0, "{:?}", d.windows);
    }
}

/// (d) The size of the latency benchmark.
struct AtLatency {
    users: usize,
    limit: u32,
    window_secs: u64,
    latencies_ms: Vec<u64>,
    /// Least share of the budget the judged windows must use (`None`: not judged, the default
    /// test run; a share is a wall-clock measure).
    target: Option<f64>,
    /// Least number of judged windows: a drain too short to measure fails.
    min_windows: usize,
    /// Judge the windows after the first only (the process start and its first message, which
    /// lists the data attributes before anything else goes, weigh a lot in a 2 s window).
    skip_first: bool,
}

fn at_latency_size() -> AtLatency {
    if bench() {
        // Intercom's per-app budget (10,000 a minute) and window. About one request a user (a
        // create carrying every value; contacts are looked up 150 at a time): 13,500 users fill
        // 8 windows. AUDIENCE_SYNC_BENCH_USERS and AUDIENCE_SYNC_BENCH_LATENCIES (milliseconds,
        // comma-separated) change them;
        // AUDIENCE_SYNC_BENCH_MAX_CONCURRENCY sets intercom.max_concurrency (8 was the fixed
        // concurrency before it adapted to the latency: a comparison, which misses the target).
        let users = std::env::var("AUDIENCE_SYNC_BENCH_USERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(13_500);
        AtLatency {
            users,
            limit: intercom_sandbox::INTERCOM_RATE_LIMIT_PER_WINDOW,
            window_secs: 10,
            latencies_ms: std::env::var("AUDIENCE_SYNC_BENCH_LATENCIES")
                .ok()
                .map(|v| {
                    v.split(',')
                        .filter_map(|ms| ms.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_else(|| vec![50, 150, 300]),
            target: Some(0.97),
            min_windows: 5,
            skip_first: false,
        }
    } else {
        // A few seconds: 150 per second at 150 ms needs ~23 requests in flight (a fixed 8 would
        // spend a third of it).
        AtLatency {
            users: 800,
            limit: 300,
            window_secs: 2,
            latencies_ms: vec![150],
            target: None,
            min_windows: 1,
            skip_first: true,
        }
    }
}

#[test]
fn bench_budget_use_at_latency() {
    let size = at_latency_size();
    let mut missed = Vec::new();
    for &ms in &size.latencies_ms {
        let latency = Duration::from_millis(ms);
        let mut config = SandboxConfig::new("");
        config.rate_limit = size.limit;
        config.window_secs = size.window_secs;
        config.latency = latency;
        let mut world = World::new(config);
        // The defaults: Intercom's announced budget, max_concurrency an upper bound (64).
        world.set("INTERCOM__RATE_LIMIT", "auto");
        world.set("INTERCOM__REQUEST_TIMEOUT_SECS", "10");
        if let Ok(max) = std::env::var("AUDIENCE_SYNC_BENCH_MAX_CONCURRENCY") {
            world.set("INTERCOM__MAX_CONCURRENCY", &max);
        }
        load_n_users(&world, size.users, "2026-01-01T00:00:00Z", |i| i as i64);
        let started = std::time::Instant::now();
        let d = drain_reading(
            &world,
            &["sync"],
            size.window_secs,
            latency + Duration::from_millis(40),
        );
        let elapsed = started.elapsed();
        let (messages, requests) = delivered(&d.stdout);
        let state = world.state();
        let limit = u64::from(size.limit);
        // The full windows: all but the last (where work ran out), and in the short version not
        // the first.
        let end = d.windows.len().saturating_sub(1);
        let judged = &d.windows[usize::from(size.skip_first).min(end)..end];
        let used: u64 = judged.iter().map(|w| w.0 - w.1).sum();
        let share = used as f64 / (limit * judged.len().max(1) as u64) as f64;
        let steady = &d.windows[1.min(end)..end];
        let steady_share = steady.iter().map(|w| w.0 - w.1).sum::<u64>() as f64
            / (limit * steady.len().max(1) as u64) as f64;
        let rate_limited: u64 = d.windows.iter().map(|w| w.1).sum();
        println!(
            "(d) {ms} ms latency, budget {} per {} s (settings \"auto\", max_concurrency {}): \
             {messages} messages, {requests} requests in {:.1} s; budget used in {} full windows \
             {:.1}% (after the first window {:.1}%), 429s {rate_limited}, max in a window {}; \
             per window {:?}",
            size.limit,
            size.window_secs,
            std::env::var("AUDIENCE_SYNC_BENCH_MAX_CONCURRENCY").unwrap_or_else(|_| "64".into()),
            elapsed.as_secs_f64(),
            judged.len(),
            share * 100.0,
            steady_share * 100.0,
            state.counters.max_requests_in_window,
            d.windows.iter().map(|w| w.0).collect::<Vec<_>>()
        );
        assert_eq!(messages as usize, size.users);
        assert!(state.counters.max_requests_in_window <= limit);
        if judged.len() < size.min_windows {
            missed.push(format!(
                "{ms} ms: only {} full windows (need {}): more users",
                judged.len(),
                size.min_windows
            ));
        }
        let target = size.target.unwrap_or(0.0);
        if share < target || rate_limited > 0 || state.counters.rate_limited > 0 {
            missed.push(format!(
                "{ms} ms: {:.1}% of the budget (target {:.0}%), {rate_limited} 429s",
                share * 100.0,
                target * 100.0
            ));
        }
    }
    assert!(missed.is_empty(), "targets missed: {missed:?}");
}
