//! The request floor (BENCHMARKS.md, "Requests per change"): how many Intercom requests a sync
//! makes against the fewest it could, counted by the sandbox, for the runs users make.
//!
//! The floor is computed here from the workspace this file generates, independently of the
//! product (SPEC section 6, "Request floor"): one write per contact that is new or changes, one
//! upsert per company that is new or changes, one request per attach, detach, event and data
//! attribute created. Lookups of unknown ids are not in the floor: they count against it.
//!
//! By default a small workspace runs as a test and checks the targets (≤ 1.05× the floor, ≤
//! 1.15× under injected faults; `plan` within 5% of the run). `AUDIENCE_SYNC_BENCH=1` runs it at
//! 100,000 users and prints the table: `AUDIENCE_SYNC_BENCH=1 cargo test --release --test all
//! delivery::floor -- --nocapture --test-threads 1` (`AUDIENCE_SYNC_BENCH_USERS=N` for another
//! size).

use std::collections::BTreeMap;

use intercom_sandbox::{FaultPoint, Faults, SandboxConfig};
use serde_json::{Value, json};

use crate::harness::{TOKEN, World, file_arg};

/// Users in the workspace; accounts are a tenth of them.
fn users() -> usize {
    if let Some(n) = std::env::var("AUDIENCE_SYNC_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if std::env::var_os("AUDIENCE_SYNC_BENCH").is_some() {
        100_000
    } else {
        2_000
    }
}

/// The data attributes the workspace's values need: five on contacts, two on companies.
const ATTRIBUTES: u64 = 7;

/// The workspace at one moment: per user, (vip, active, score, account); per account, (enterprise,
/// arr).
#[derive(Clone)]
struct Workspace {
    users: Vec<(bool, bool, i64, usize)>,
    accounts: Vec<(bool, i64)>,
}

impl Workspace {
    fn new(n: usize) -> Workspace {
        let accounts = (n / 10).max(1);
        Workspace {
            users: (0..n)
                .map(|i| (i % 3 == 0, i % 2 == 0, (i % 100) as i64, i % accounts))
                .collect(),
            accounts: (0..accounts).map(|a| (a % 2 == 0, a as i64 * 10)).collect(),
        }
    }

    /// The values a user has in Intercom: its own and the ones derived from its account.
    fn values(&self, i: usize) -> BTreeMap<&'static str, Value> {
        let (vip, active, score, account) = self.users[i];
        let (enterprise, arr) = self.accounts[account];
        let mut v = BTreeMap::new();
        v.insert("vip", json!(vip));
        v.insert("active", json!(active));
        v.insert("score", json!(score));
        v.insert("enterprise", json!(enterprise));
        v.insert("arr", json!(arr));
        v
    }

    fn load(&self, world: &World, step: usize, taken_at: &str) {
        let user = |i: usize| format!("u{i:06}");
        let email = |i: usize| format!("u{i:06}@example.com");
        let write =
            |name: &str, lines: Vec<Value>| world.write(&format!("{name}-{step}.ndjson"), &lines);
        let vip = write(
            "vip",
            (0..self.users.len())
                .filter(|i| self.users[*i].0)
                .map(|i| json!({"user_id": user(i), "email": email(i)}))
                .collect(),
        );
        let active = write(
            "active",
            (0..self.users.len())
                .filter(|i| self.users[*i].1)
                .map(|i| json!({"user_id": user(i), "email": email(i)}))
                .collect(),
        );
        let score = write(
            "score",
            (0..self.users.len())
                .map(|i| json!({"user_id": user(i), "email": email(i), "value": self.users[i].2}))
                .collect(),
        );
        let enterprise = write(
            "enterprise",
            (0..self.accounts.len())
                .filter(|a| self.accounts[*a].0)
                .map(|a| json!({"group_id": format!("a{a:05}")}))
                .collect(),
        );
        let arr = write(
            "arr",
            (0..self.accounts.len())
                .map(|a| json!({"group_id": format!("a{a:05}"), "value": self.accounts[a].1}))
                .collect(),
        );
        let members = write(
            "members",
            (0..self.users.len())
                .map(|i| {
                    json!({"group_id": format!("a{:05}", self.users[i].3), "user_id": user(i), "email": email(i)})
                })
                .collect(),
        );
        for (key, kind, scope, path) in [
            ("vip", "audience", "user", &vip),
            ("active", "audience", "user", &active),
            ("score", "trait", "user", &score),
            ("enterprise", "audience", "account", &enterprise),
            ("arr", "trait", "account", &arr),
        ] {
            world.ok(&[
                "load",
                "--computation",
                key,
                "--kind",
                kind,
                "--scope",
                scope,
                "--taken-at",
                taken_at,
                &file_arg(path),
            ]);
        }
        world.ok(&["load-members", "--taken-at", taken_at, &file_arg(&members)]);
    }
}

/// The fewest requests that take Intercom from `before` (None: nothing there) to `after`.
fn floor(before: Option<&Workspace>, after: &Workspace, full: bool) -> u64 {
    let mut requests = 0u64;
    for i in 0..after.users.len() {
        let new = after.values(i);
        let old = before.map(|b| b.values(i));
        let changes = old.as_ref().map_or(new.len(), |old| {
            new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).count()
        });
        let moved = before.is_some_and(|b| b.users[i].3 != after.users[i].3);
        // One contact write when anything it holds changes (or, for `--full`, always).
        if changes > 0 || full {
            requests += 1;
        }
        if before.is_some() && !full {
            // One event per computation change: Audience Entered / Exited, Trait Computed.
            requests += changes as u64;
        }
        match before {
            None => requests += 1,             // attach
            Some(_) if moved => requests += 2, // detach + attach
            Some(_) => {}
        }
    }
    for a in 0..after.accounts.len() {
        let changed = before.is_none_or(|b| b.accounts[a] != after.accounts[a]);
        if changed || full {
            requests += 1;
        }
    }
    if before.is_none() {
        requests += ATTRIBUTES;
    }
    requests
}

struct Measured {
    name: &'static str,
    requests: u64,
    floor: u64,
    predicted: u64,
    lookups: u64,
}

impl Measured {
    fn ratio(&self) -> f64 {
        self.requests as f64 / self.floor as f64
    }
}

/// `plan --json`'s predicted requests, then `sync`'s actual ones (the sandbox's count).
fn sync(world: &World, name: &'static str, floor: u64, args: &[&str]) -> Measured {
    let mut plan_args = vec!["plan", "--json"];
    plan_args.extend(args.iter().filter(|a| **a == "--full"));
    let plan: Value = serde_json::from_str(&world.ok(&plan_args)).unwrap();
    let predicted = plan["requests"]["total"]
        .as_u64()
        .unwrap_or_else(|| panic!("{plan}"));
    let before = world.state().counters;
    let mut sync_args = vec!["sync"];
    sync_args.extend(args);
    world.ok(&sync_args);
    let after = world.state().counters;
    let searches = |c: &intercom_sandbox::Counters| -> u64 {
        c.requests
            .get("POST /contacts/search")
            .map_or(0, |by| by.values().sum())
    };
    assert_eq!(
        world.count("SELECT count(*) FROM outbox WHERE status = 'dead'"),
        0
    );
    Measured {
        name,
        requests: after.total_requests - before.total_requests,
        floor,
        predicted,
        lookups: searches(&after) - searches(&before),
    }
}

fn report(rows: &[Measured]) {
    println!("| run | requests | floor | requests ÷ floor | plan predicted | lookups |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for m in rows {
        println!(
            "| {} | {} | {} | {:.3} | {} | {} |",
            m.name,
            m.requests,
            m.floor,
            m.ratio(),
            m.predicted,
            m.lookups
        );
    }
}

fn config(faults: bool) -> SandboxConfig {
    let mut config = SandboxConfig::new("");
    // Enough budget that the count, not the clock, is measured.
    config.rate_limit = 20_000;
    config.window_secs = 1;
    if faults {
        config.faults = Faults {
            error_rate: 0.02,
            drop_rate: 0.01,
            point: FaultPoint::Either,
            seed: 7,
        };
    }
    config
}

fn world(faults: bool) -> World {
    let mut world = World::new(config(faults));
    world.set("INTERCOM__RATE_LIMIT", "20000");
    world.set("INTERCOM__RATE_LIMIT_WINDOW_SECS", "1");
    world.set("INTERCOM__MAX_CONCURRENCY", "16");
    world
}

/// Create contacts for `users` (by external id and email, no values) as another integration
/// would have, so the sync has to find them.
fn precreate(world: &World, users: impl Iterator<Item = usize>) {
    let base = world.sandbox.as_ref().unwrap().base_url().to_string();
    let users: Vec<usize> = users.collect();
    world.runtime.block_on(async move {
        let client = reqwest::Client::new();
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in users.chunks(users.len().div_ceil(16).max(1)) {
            let chunk = chunk.to_vec();
            let client = client.clone();
            let base = base.clone();
            tasks.spawn(async move {
                for i in chunk {
                    let response = client
                        .post(format!("{base}/contacts"))
                        .bearer_auth(TOKEN)
                        .header("Accept", "application/json")
                        .json(&json!({"role": "user", "external_id": format!("u{i:06}"), "email": format!("u{i:06}@example.com")}))
                        .send()
                        .await
                        .unwrap();
                    assert!(response.status().is_success(), "{}", response.status());
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
}

fn check(rows: &[Measured], target: f64) {
    report(rows);
    for m in rows {
        assert!(
            m.ratio() <= target,
            "{}: {} requests for a floor of {} ({:.3}×, target {target}×)",
            m.name,
            m.requests,
            m.floor,
            m.ratio()
        );
    }
}

#[test]
fn floor_of_initial_incremental_membership_and_full_syncs() {
    let n = users();
    let world = world(false);
    let mut rows = Vec::new();
    let a = Workspace::new(n);
    a.load(&world, 0, "2026-01-01T00:00:00Z");
    rows.push(sync(
        &world,
        "initial sync, no contact in Intercom",
        floor(None, &a, false),
        &[],
    ));

    // 1% and 5% churn: audiences and traits of that share of users change.
    let mut b = a.clone();
    for i in (0..n).step_by(100) {
        b.users[i].0 = !b.users[i].0;
        b.users[i].2 += 1;
    }
    b.load(&world, 1, "2026-01-01T01:00:00Z");
    rows.push(sync(
        &world,
        "incremental, 1% churn",
        floor(Some(&a), &b, false),
        &[],
    ));
    let mut c = b.clone();
    for i in (0..n).step_by(20) {
        c.users[i].1 = !c.users[i].1;
    }
    c.accounts[0].1 += 5;
    c.load(&world, 2, "2026-01-01T02:00:00Z");
    rows.push(sync(
        &world,
        "incremental, 5% churn",
        floor(Some(&b), &c, false),
        &[],
    ));

    // Membership moves: 1% of users join another account.
    let mut d = c.clone();
    let accounts = d.accounts.len();
    for i in (7..n).step_by(100) {
        d.users[i].3 = (d.users[i].3 + 1) % accounts;
    }
    d.load(&world, 3, "2026-01-01T03:00:00Z");
    rows.push(sync(
        &world,
        "membership moves (1% of users)",
        floor(Some(&c), &d, false),
        &[],
    ));

    rows.push(sync(
        &world,
        "sync --full",
        floor(Some(&d), &d, true),
        &["--full"],
    ));
    check(&rows, 1.05);
    for m in &rows {
        let off = (m.predicted as f64 - m.requests as f64).abs() / m.requests as f64;
        assert!(
            off <= 0.05,
            "{}: plan predicted {} requests, the run made {}",
            m.name,
            m.predicted,
            m.requests
        );
    }
}

#[test]
fn floor_of_an_initial_sync_where_most_users_exist_with_unknown_ids() {
    let n = users();
    let world = world(false);
    precreate(&world, (0..n).filter(|i| i % 5 != 0));
    let a = Workspace::new(n);
    a.load(&world, 0, "2026-01-01T00:00:00Z");
    let m = sync(
        &world,
        "initial sync, 80% already contacts (ids unknown)",
        floor(None, &a, false),
        &[],
    );
    let state = world.state();
    assert_eq!(state.contacts.len(), n, "no duplicate contacts");
    check(&[m], 1.05);
}

#[test]
fn floor_of_an_initial_sync_under_injected_faults() {
    let n = users();
    let world = world(true);
    let a = Workspace::new(n);
    a.load(&world, 0, "2026-01-01T00:00:00Z");
    let m = sync(
        &world,
        "initial sync under faults (2% 5xx, 1% dropped)",
        floor(None, &a, false),
        &[],
    );
    assert_eq!(world.state().contacts.len(), n, "no duplicate contacts");
    check(&[m], 1.15);
}

/// Requests the sandbox counted for an endpoint and status since `before`.
fn count_of(
    world: &World,
    before: &intercom_sandbox::Counters,
    endpoint: &str,
    status: &str,
) -> u64 {
    let now = world.state().counters;
    let get = |c: &intercom_sandbox::Counters| {
        c.requests
            .get(endpoint)
            .and_then(|by| by.get(status))
            .copied()
            .unwrap_or(0)
    };
    get(&now) - get(before)
}

/// One user audience of `n` users, synced.
fn vip_users(world: &World, n: usize, step: usize, taken_at: &str) {
    let lines: Vec<Value> = (0..n)
        .map(|i| json!({"user_id": format!("u{i:06}"), "email": format!("u{i:06}@example.com")}))
        .collect();
    let path = world.write(&format!("vip-{step}.ndjson"), &lines);
    world.ok(&[
        "load",
        "--computation",
        "vip",
        "--kind",
        "audience",
        "--scope",
        "user",
        "--taken-at",
        taken_at,
        &file_arg(&path),
    ]);
}

#[test]
fn contacts_created_elsewhere_that_search_cannot_see_yet_get_a_409_and_one_update() {
    // Another integration created 30 of the 50 users moments ago: Intercom's search does not
    // show them yet, so the bulk lookup misses them and each create meets a 409.
    let mut config = config(false);
    config.search_lag = std::time::Duration::from_secs(600);
    let mut world = World::new(config);
    world.set("INTERCOM__RATE_LIMIT", "20000");
    world.set("INTERCOM__RATE_LIMIT_WINDOW_SECS", "1");
    precreate(&world, 0..30);
    let before = world.state().counters;
    vip_users(&world, 50, 0, "2026-01-01T00:00:00Z");
    world.ok(&["sync"]);
    let state = world.state();
    assert_eq!(state.contacts.len(), 50, "no duplicates");
    for i in 0..50 {
        let c = state.contact_by_external_id(&format!("u{i:06}")).unwrap();
        assert_eq!(
            c.custom_attributes.get("vip"),
            Some(&json!(true)),
            "u{i:06}"
        );
    }
    assert_eq!(count_of(&world, &before, "POST /contacts/search", "200"), 1);
    assert_eq!(count_of(&world, &before, "POST /contacts", "409"), 30);
    assert_eq!(count_of(&world, &before, "POST /contacts", "200"), 20);
    assert_eq!(count_of(&world, &before, "PUT /contacts/{id}", "200"), 30);
    // Every id learned, from a create or a 409, is cached: the next run looks nothing up.
    assert_eq!(world.count("SELECT count(*) FROM intercom_contacts"), 50);
    let before = world.state().counters;
    vip_users(&world, 40, 1, "2026-01-01T01:00:00Z");
    world.ok(&["sync"]);
    assert_eq!(count_of(&world, &before, "POST /contacts/search", "200"), 0);
    assert_eq!(
        count_of(&world, &before, "PUT /contacts/{id}", "200"),
        10,
        "ten exits"
    );
}

#[test]
fn a_lookup_intercom_refuses_is_asked_again_in_smaller_batches() {
    let mut config = config(false);
    config.in_values_limit = Some(40);
    let mut world = World::new(config);
    world.set("INTERCOM__RATE_LIMIT", "20000");
    world.set("INTERCOM__RATE_LIMIT_WINDOW_SECS", "1");
    precreate(&world, 0..100);
    let before = world.state().counters;
    vip_users(&world, 100, 0, "2026-01-01T00:00:00Z");
    world.ok(&["sync"]);
    // 100 users in one batch: refused; 50 + 50: refused; four batches of 25 go through.
    assert_eq!(count_of(&world, &before, "POST /contacts/search", "400"), 3);
    assert_eq!(count_of(&world, &before, "POST /contacts/search", "200"), 4);
    assert_eq!(
        count_of(&world, &before, "POST /contacts", "200"),
        0,
        "every user was found"
    );
    assert_eq!(count_of(&world, &before, "PUT /contacts/{id}", "200"), 100);
    assert_eq!(world.state().contacts.len(), 100);
}

#[test]
fn a_restart_reads_no_attribute_list() {
    let world = world(false);
    vip_users(&world, 20, 0, "2026-01-01T00:00:00Z");
    let before = world.state().counters;
    world.ok(&["sync"]);
    assert_eq!(
        count_of(&world, &before, "GET /data_attributes", "200"),
        2,
        "contacts and companies, once"
    );
    // A new process: the list is in the database.
    let before = world.state().counters;
    vip_users(&world, 25, 1, "2026-01-01T01:00:00Z");
    world.ok(&["sync"]);
    assert_eq!(count_of(&world, &before, "GET /data_attributes", "200"), 0);
    assert_eq!(world.state().contacts.len(), 25);
}
