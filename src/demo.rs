//! `audience-sync demo`: a complete local walk-through against the built-in Intercom sandbox —
//! load example snapshots, compute a SQL audience from an `orders` table, initial sync, change
//! them, incremental sync — printing each step and checking that Intercom ends up holding exactly
//! what the snapshots (and the orders) say.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use intercom_sandbox::{Sandbox, SandboxConfig, Snapshot};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use audience_sync_oracle::{Computation, Load, Step, differences, event_key, expected};

use crate::compute::{self, Options};
use crate::domain::{Kind, Scope};
use crate::intercom::drain::{DeliveryReport, Engine, Quiet};
use crate::load::Input;
use crate::plan::{self, Output, Report, RunMode, RunOptions};
use crate::settings::{Settings, SqlComputation};
use crate::store::compute::Origin;
use crate::store::snapshots::{self, ComputationSpec};
use crate::store::{self, examples};

/// The example snapshots, compiled in so the demo runs from any directory.
struct Example {
    key: &'static str,
    name: &'static str,
    kind: Kind,
    scope: Scope,
    initial: &'static str,
    changed: &'static str,
}

const EXAMPLES: &[Example] = &[
    Example {
        key: "high_value_customers",
        name: "High Value Customers",
        kind: Kind::Audience,
        scope: Scope::User,
        initial: include_str!("../examples/demo/initial/high_value_customers.ndjson"),
        changed: include_str!("../examples/demo/changed/high_value_customers.ndjson"),
    },
    Example {
        key: "trial_users",
        name: "Trial Users",
        kind: Kind::Audience,
        scope: Scope::User,
        initial: include_str!("../examples/demo/initial/trial_users.ndjson"),
        changed: include_str!("../examples/demo/changed/trial_users.ndjson"),
    },
    Example {
        key: "lifetime_value",
        name: "Lifetime Value",
        kind: Kind::Trait,
        scope: Scope::User,
        initial: include_str!("../examples/demo/initial/lifetime_value.ndjson"),
        changed: include_str!("../examples/demo/changed/lifetime_value.ndjson"),
    },
    Example {
        key: "enterprise_accounts",
        name: "Enterprise Accounts",
        kind: Kind::Audience,
        scope: Scope::Account,
        initial: include_str!("../examples/demo/initial/enterprise_accounts.ndjson"),
        changed: include_str!("../examples/demo/changed/enterprise_accounts.ndjson"),
    },
];

const MEMBERS_INITIAL: &str = include_str!("../examples/demo/initial/memberships.ndjson");
const MEMBERS_CHANGED: &str = include_str!("../examples/demo/changed/memberships.ndjson");

/// The demo's snapshot times: the initial snapshots, and the changed ones an hour later.
const INITIAL_AT: i64 = 1_795_000_000;
const CHANGED_AT: i64 = INITIAL_AT + 3600;

/// A computation defined in SQL (SPEC section 11), the seed document's own example (Segment's
/// Personas docs use this key): users with an order completed in the last 30 days, which
/// audience-sync computes itself from the `orders` table the demo writes into its database.
const SQL_KEY: &str = "order_completed_last_30days";
const SQL_NAME: &str = "Order Completed Last 30 Days";
const SQL_QUERY: &str = examples::ORDER_COMPLETED_LAST_30DAYS;
const DAY: i64 = 86_400;
/// The demo clock of the SQL audience (`:now`, and its snapshots' taken_at): the demo's start,
/// then 31 days later, so that an order placed before the start has left the 30-day window.
const SQL_INITIAL_AT: i64 = INITIAL_AT;
const SQL_CHANGED_AT: i64 = INITIAL_AT + 31 * DAY;

/// One order of the demo's `orders` table, completed `day` days after the demo's start.
struct Order {
    user_id: &'static str,
    total: f64,
    day: i64,
}

impl Order {
    fn completed_at(&self) -> i64 {
        INITIAL_AT + self.day * DAY
    }
}

const fn order(user_id: &'static str, total: f64, day: i64) -> Order {
    Order {
        user_id,
        total,
        day,
    }
}

/// The orders completed before the demo's start (written in step 1): u002, u005 and u006 have
/// one in the last 30 days; u011's only order is older.
const ORDERS_INITIAL: &[Order] = &[
    order("u002", 129.00, -25),
    order("u005", 42.50, -40),
    order("u005", 18.90, -2),
    order("u006", 310.00, -12),
    order("u011", 64.00, -45),
];

/// The orders completed in the 31 days after it (written in step 3): u005 orders again, u007
/// orders for the first time; u002 and u006 order nothing more.
const ORDERS_CHANGED: &[Order] = &[order("u007", 75.25, 20), order("u005", 23.10, 28)];

pub fn run(out: &mut dyn Write) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = TempDir::new()?;
    let result = runtime.block_on(demo(&dir.0, out));
    drop(dir);
    result
}

/// A directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("audience-sync-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn demo(dir: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let started = Instant::now();
    let token = "demo-token";
    let sandbox = Sandbox::start(SandboxConfig::new(token))
        .await
        .context("cannot start the Intercom sandbox")?;
    let mut settings = Settings::defaults()?;
    settings.database.path = dir.join("demo.db");
    settings.intercom.base_url = sandbox.base_url().parse().context("sandbox URL")?;
    settings.intercom.access_token = crate::settings::Secret::new(token);
    // Intercom's per-app budget, which the sandbox enforces, instead of the Personas
    // destination's 83 per 10 s: the demo's initial sync then takes seconds, not minutes.
    settings.intercom.rate_limit = intercom_sandbox::INTERCOM_RATE_LIMIT_PER_WINDOW;
    // What a `[[computations]]` entry in settings.toml would define.
    settings.compute.computations.push(SqlComputation {
        key: SQL_KEY.to_string(),
        name: Some(SQL_NAME.to_string()),
        kind: Kind::Audience,
        scope: Scope::User,
        sql: SQL_QUERY.to_string(),
    });

    writeln!(out, "audience-sync demo")?;
    writeln!(out, "==================")?;
    writeln!(
        out,
        "Intercom sandbox: {} (strict like Intercom: attributes must exist, 409s, rate limits {} per {} s)",
        sandbox.base_url(),
        settings.intercom.rate_limit,
        settings.intercom.rate_limit_window.as_secs()
    )?;
    writeln!(
        out,
        "Database: {} (temporary)\n",
        settings.database.path.display()
    )?;

    let mut conn = store::open(&settings.database.path)?;
    writeln!(
        out,
        "1. Load the initial snapshots (taken at {})",
        store::snapshots::rfc3339(INITIAL_AT)
    )?;
    load_all(
        out,
        &mut conn,
        dir,
        "initial",
        INITIAL_AT,
        |e| e.initial,
        MEMBERS_INITIAL,
    )?;
    writeln!(
        out,
        "   {SQL_KEY:<27} user audience defined in SQL ([[computations]] in settings.toml), \
         computed by audience-sync itself:"
    )?;
    writeln!(out, "     {SQL_QUERY}")?;
    write_orders(&conn, ORDERS_INITIAL)?;
    writeln!(
        out,
        "     The demo, as the upstream pipeline, writes {} orders into the database's own \
         `orders` table",
        ORDERS_INITIAL.len()
    )?;
    let first = compute_sql_audience(&settings, SQL_INITIAL_AT)?;
    print_sql_audience(out, &conn, SQL_INITIAL_AT, first, None)?;

    let engine = Engine::open(&settings.database.path, &settings.intercom)?;
    writeln!(
        out,
        "\n2. Initial sync: every member and value as one identify per user; no track events"
    )?;
    let (report, delivery) = sync(&mut conn, &settings, &engine).await?;
    print_report(out, &report, &delivery)?;
    print_examples(out, &conn, report.run_id, 2)?;
    let after_initial = sandbox.snapshot();
    print_intercom(out, &after_initial, None)?;
    print_sql_in_intercom(out, &after_initial, "no event: an initial sync sends none")?;

    writeln!(
        out,
        "\n3. Load changed snapshots (taken an hour later: some users enter, exit, change, move account)"
    )?;
    load_all(
        out,
        &mut conn,
        dir,
        "changed",
        CHANGED_AT,
        |e| e.changed,
        MEMBERS_CHANGED,
    )?;
    writeln!(
        out,
        "   {SQL_KEY:<27} computed again 31 days after step 1; meanwhile {} new orders:",
        ORDERS_CHANGED.len()
    )?;
    for order in ORDERS_CHANGED {
        writeln!(
            out,
            "     {} ordered on {} ({:.2})",
            order.user_id,
            date(order.completed_at()),
            order.total
        )?;
    }
    write_orders(&conn, ORDERS_CHANGED)?;
    let second = compute_sql_audience(&settings, SQL_CHANGED_AT)?;
    print_sql_audience(out, &conn, SQL_CHANGED_AT, second, Some(first))?;

    writeln!(
        out,
        "\n4. Incremental sync: only the differences, with Audience Entered / Exited and Trait Computed events"
    )?;
    let (report, delivery) = sync(&mut conn, &settings, &engine).await?;
    print_report(out, &report, &delivery)?;
    print_examples(out, &conn, report.run_id, 4)?;
    let after_changes = sandbox.snapshot();
    print_intercom(out, &after_changes, Some(&after_initial))?;
    print_sql_in_intercom(out, &after_changes, "no event: still a member")?;

    writeln!(
        out,
        "\n5. Check: does Intercom hold exactly what the snapshots say?"
    )?;
    let mismatches = check(&after_changes);
    if mismatches.is_empty() {
        writeln!(
            out,
            "   Yes: every user's attributes, companies and events match the snapshots."
        )?;
        let (before, after) = sql_members();
        writeln!(
            out,
            "   And the SQL audience matches the orders alone: {SQL_KEY} true for {}, false for \
             {}, with their Audience Exited / Entered events at {}.",
            list(after.iter()),
            list(before.difference(&after)),
            store::snapshots::rfc3339(SQL_CHANGED_AT)
        )?;
    } else {
        for m in mismatches.iter().take(10) {
            writeln!(out, "   MISMATCH {m}")?;
        }
        anyhow::bail!(
            "{} mismatches between Intercom and the snapshots",
            mismatches.len()
        );
    }
    writeln!(
        out,
        "\nDone in {:.1} s. Run `audience-sync --help` to use it with your own data.",
        started.elapsed().as_secs_f64()
    )?;
    sandbox.shutdown().await;
    Ok(())
}

fn load_all(
    out: &mut dyn Write,
    conn: &mut crate::store::Connection,
    dir: &Path,
    step: &str,
    taken_at: i64,
    pick: impl Fn(&Example) -> &'static str,
    members: &str,
) -> anyhow::Result<()> {
    for example in EXAMPLES {
        let path = dir.join(format!("{step}-{}.ndjson", example.key));
        std::fs::write(&path, pick(example))?;
        let spec = ComputationSpec {
            key: example.key,
            name: Some(example.name),
            kind: example.kind,
            scope: example.scope,
            source: crate::store::snapshots::Source::Load,
        };
        let stored =
            snapshots::load_snapshot(conn, &Input::File(path), &spec, taken_at, store::now_unix())?;
        writeln!(
            out,
            "   {:<27} {} {:<8} {:>4} rows",
            example.key,
            example.scope.as_str(),
            example.kind.as_str(),
            stored.rows
        )?;
    }
    let path = dir.join(format!("{step}-memberships.ndjson"));
    std::fs::write(&path, members)?;
    let (_, rows) = snapshots::load_membership(conn, &Input::File(path), taken_at)?;
    writeln!(out, "   {:<27} {rows:>18} rows", "account memberships")?;
    Ok(())
}

/// The upstream pipeline's part, played by the demo: the product's own `orders` table, in the
/// database audience-sync uses (a computation's query may read any table there, read-only). In
/// a real deployment the application or an ETL job writes it; audience-sync never does.
fn write_orders(conn: &crate::store::Connection, orders: &[Order]) -> anyhow::Result<()> {
    let emails: Vec<String> = orders
        .iter()
        .map(|order| format!("{}@example.com", order.user_id))
        .collect();
    examples::write_orders(
        conn,
        orders
            .iter()
            .zip(&emails)
            .map(|(order, email)| examples::Order {
                user_id: order.user_id,
                email,
                total: order.total,
                completed_at: order.completed_at(),
            }),
    )?;
    Ok(())
}

/// Compute the SQL audience as `audience-sync compute --computation KEY --now T` would: its
/// query runs read-only with `:now` = `now`, and the result is stored as its newest snapshot,
/// taken at `now`. Returns that snapshot's id.
fn compute_sql_audience(settings: &Settings, now: i64) -> anyhow::Result<i64> {
    let targets = compute::targets(&settings.compute, Some(SQL_KEY)).map_err(anyhow::Error::msg)?;
    let options = Options {
        now,
        origin: Origin::Command,
        dry_run: false,
    };
    let outcomes = compute::compute(
        &settings.database.path,
        &settings.compute,
        &targets,
        &options,
    )?;
    let outcome = outcomes
        .into_iter()
        .next()
        .context("compute returned no outcome")?;
    match outcome.result {
        Ok(computed) => computed.snapshot_id.context("compute stored no snapshot"),
        Err(e) => anyhow::bail!("{}: {e}", outcome.target.describe()),
    }
}

/// What a compute stored, user by user, and why: each user's last order (from the `orders`
/// table) against the audience's snapshot (what audience-sync stored), and against the previous
/// one when there is one.
fn print_sql_audience(
    out: &mut dyn Write,
    conn: &crate::store::Connection,
    now: i64,
    snapshot_id: i64,
    previous: Option<i64>,
) -> anyhow::Result<()> {
    let members = |snapshot_id: i64| -> anyhow::Result<BTreeSet<String>> {
        Ok(store::snapshots::snapshot_entities(conn, snapshot_id)?
            .into_iter()
            .collect())
    };
    let now_members = members(snapshot_id)?;
    let was_members = previous.map(members).transpose()?;
    writeln!(
        out,
        "     Computed with :now = {}: {} rows, stored as its newest snapshot (taken at :now)",
        store::snapshots::rfc3339(now),
        now_members.len()
    )?;
    for order in examples::last_orders(conn, now)? {
        let (user, last) = (order.user_id, order.completed_at);
        let is = now_members.contains(&user);
        let why = if is {
            "an order in the last 30 days"
        } else {
            "no order in the last 30 days"
        };
        let status = match (was_members.as_ref().map(|m| m.contains(&user)), is) {
            (None, true) => "member",
            (None, false) => "not a member",
            (Some(false), true) => "enters",
            (Some(true), false) => "exits",
            (Some(true), true) => "stays",
            (Some(false), false) => "stays out",
        };
        writeln!(
            out,
            "       {user}  last order {} ({:>2} days before :now)  {status:<13} {why}",
            date(last),
            (now - last) / DAY
        )?;
    }
    Ok(())
}

/// The SQL audience as Intercom holds it: the attribute and the Audience Entered / Exited
/// events, per contact; `no_event` says why a contact has none.
fn print_sql_in_intercom(
    out: &mut dyn Write,
    state: &Snapshot,
    no_event: &str,
) -> anyhow::Result<()> {
    writeln!(out, "   {SQL_KEY} in Intercom now:")?;
    let mut contacts: Vec<_> = state
        .contacts
        .iter()
        .filter(|c| c.custom_attributes.contains_key(SQL_KEY))
        .collect();
    contacts.sort_by(|a, b| a.external_id.cmp(&b.external_id));
    for contact in contacts {
        let events: Vec<String> = contact
            .events
            .iter()
            .filter(|e| e.metadata.get("audience_key").and_then(Value::as_str) == Some(SQL_KEY))
            .map(|e| {
                format!(
                    "{} at {}",
                    e.event_name,
                    store::snapshots::rfc3339(e.created_at)
                )
            })
            .collect();
        writeln!(
            out,
            "     {}  {SQL_KEY} = {:<5}  {}",
            contact.external_id.as_deref().unwrap_or("?"),
            contact.custom_attributes[SQL_KEY].to_string(),
            if events.is_empty() {
                no_event.to_string()
            } else {
                events.join(", ")
            }
        )?;
    }
    Ok(())
}

fn date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| unix.to_string())
}

fn list<'a>(users: impl Iterator<Item = &'a String>) -> String {
    users.map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// The SQL audience's members at each compute, from the orders alone (not by its query): the
/// users with an order completed in the 30 days up to that compute's `:now`.
fn sql_members() -> (BTreeSet<String>, BTreeSet<String>) {
    let members = |orders: &mut dyn Iterator<Item = &Order>, now: i64| -> BTreeSet<String> {
        orders
            .filter(|o| o.completed_at() > now - 30 * DAY && o.completed_at() <= now)
            .map(|o| o.user_id.to_string())
            .collect()
    };
    (
        members(&mut ORDERS_INITIAL.iter(), SQL_INITIAL_AT),
        members(
            &mut ORDERS_INITIAL.iter().chain(ORDERS_CHANGED),
            SQL_CHANGED_AT,
        ),
    )
}

async fn sync(
    conn: &mut crate::store::Connection,
    settings: &Settings,
    engine: &Engine,
) -> anyhow::Result<(Report, DeliveryReport)> {
    let options = RunOptions {
        mode: RunMode::Incremental,
        computation: None,
        now: store::now_unix(),
        company_attribute_prefix: &settings.intercom.company_attribute_prefix,
    };
    let report = plan::run(conn, &settings.personas, &options, Output::Enqueue)?;
    let delivery = engine.drain(&CancellationToken::new(), &Quiet).await?;
    if let Some(reason) = &delivery.stopped {
        anyhow::bail!("delivery stopped: {reason}");
    }
    Ok((report, delivery))
}

fn print_report(
    out: &mut dyn Write,
    report: &Report,
    delivery: &DeliveryReport,
) -> anyhow::Result<()> {
    for c in &report.computations {
        writeln!(
            out,
            "   {:<27} {:<11} entered {:>3}  exited {:>3}  changed {:>3}",
            c.key,
            c.mode.as_str(),
            c.counts.entered,
            c.counts.exited,
            c.counts.changed
        )?;
    }
    if let Some(m) = &report.membership {
        writeln!(
            out,
            "   {:<27} {:<11} attached {:>2}  detached {:>2}",
            "account memberships", "", m.attached, m.detached
        )?;
    }
    let m = &report.messages;
    writeln!(
        out,
        "   Messages: {} identify, {} track, {} group  →  {} Intercom requests, {} delivered, {} dead letters, {:.1} s",
        m.identify,
        m.track,
        m.group(),
        delivery.requests,
        delivery.delivered,
        delivery.dead,
        delivery.elapsed_ms as f64 / 1000.0
    )?;
    Ok(())
}

/// A few of the run's messages, one of each type, as Personas shapes them.
fn print_examples(
    out: &mut dyn Write,
    conn: &crate::store::Connection,
    run_id: Option<i64>,
    step: usize,
) -> anyhow::Result<()> {
    let Some(run_id) = run_id else { return Ok(()) };
    writeln!(out, "   Example messages of step {step}:")?;
    for seq in crate::store::outbox::first_of_each_type(conn, run_id)? {
        let Some(mut value) = crate::store::outbox::body(conn, seq)? else {
            continue;
        };
        // Keep the example short: the context is the same for every message.
        if let Some(object) = value.as_object_mut() {
            object.remove("integrations");
            if let Some(context) = object.get_mut("context").and_then(Value::as_object_mut) {
                context.remove("personas");
            }
        }
        writeln!(out, "     {value}")?;
    }
    Ok(())
}

fn print_intercom(
    out: &mut dyn Write,
    state: &Snapshot,
    before: Option<&Snapshot>,
) -> anyhow::Result<()> {
    let events: usize = state.contacts.iter().map(|c| c.events.len()).sum();
    let mut text = String::new();
    let _ = write!(
        text,
        "   Intercom now: {} contacts, {} companies, {} data attributes, {} events",
        state.contacts.len(),
        state.companies.len(),
        state.data_attributes.len(),
        events
    );
    if let Some(before) = before {
        let delta = state.counters.total_requests - before.counters.total_requests;
        let _ = write!(text, " ({delta} requests in this step)");
    }
    writeln!(out, "{text}")?;
    let c = &state.counters;
    writeln!(
        out,
        "   Sandbox counters: {} requests, {} rate-limited, {} conflicts (409), {} duplicate events dropped, most requests in one window {}",
        c.total_requests,
        c.rate_limited,
        c.conflicts,
        c.duplicate_events_dropped,
        c.max_requests_in_window
    )?;
    if let Some(contact) = state
        .contacts
        .iter()
        .find(|c| c.events.len() > 1)
        .or_else(|| state.contacts.first())
    {
        writeln!(
            out,
            "   For example {}: attributes {}, companies {:?}, events {:?}",
            contact.external_id.as_deref().unwrap_or("?"),
            Value::Object(contact.custom_attributes.clone()),
            contact.companies,
            contact
                .events
                .iter()
                .map(|e| e.event_name.as_str())
                .collect::<Vec<_>>()
        )?;
    }
    Ok(())
}

/// What Intercom must hold after both steps, computed by the project's one oracle
/// (`audience_sync_oracle`, SPEC sections 5 and 6) from the example files and the orders alone
/// (not by the product's own diff or query), compared with the sandbox's state; and that the SQL
/// audience's events carry the time of the compute that changed it. Returns the mismatches.
fn check(state: &Snapshot) -> Vec<String> {
    let lines = |text: &'static str| {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    };
    let id = |v: &Value, field: &str| v.get(field).and_then(Value::as_str).map(String::from);
    // A snapshot file's rows: entity → value (`true` for audience members).
    let rows = |example: &Example, text: &'static str| -> Vec<(String, Value)> {
        let entity = match example.scope {
            Scope::User => "user_id",
            Scope::Account => "group_id",
        };
        lines(text)
            .filter_map(|v| {
                let value = match example.kind {
                    Kind::Audience => Value::Bool(true),
                    Kind::Trait => v.get("value")?.clone(),
                };
                Some((id(&v, entity)?, value))
            })
            .collect()
    };
    let members = |text: &'static str| -> Vec<(String, String)> {
        lines(text)
            .filter_map(|v| Some((id(&v, "group_id")?, id(&v, "user_id")?)))
            .collect()
    };
    let mut comps: Vec<Computation> = EXAMPLES
        .iter()
        .map(|e| Computation {
            key: e.key.to_string(),
            kind: e.kind,
            scope: e.scope,
        })
        .collect();
    comps.push(Computation {
        key: SQL_KEY.to_string(),
        kind: Kind::Audience,
        scope: Scope::User,
    });
    let (sql_before, sql_after) = sql_members();
    let step = |pick: fn(&Example) -> &'static str, sql: &BTreeSet<String>, members_text| {
        let mut loads: Vec<Load> = EXAMPLES
            .iter()
            .enumerate()
            .map(|(comp, e)| Load {
                comp,
                rows: rows(e, pick(e)),
            })
            .collect();
        loads.push(Load {
            comp: EXAMPLES.len(),
            rows: sql.iter().map(|u| (u.clone(), Value::Bool(true))).collect(),
        });
        Step {
            loads,
            members: Some(members(members_text)),
            full: false,
        }
    };
    let steps = [
        step(|e| e.initial, &sql_before, MEMBERS_INITIAL),
        step(|e| e.changed, &sql_after, MEMBERS_CHANGED),
    ];
    // Every example file and the orders give a user's email as `<user_id>@example.com`.
    let emails: BTreeMap<String, String> = EXAMPLES
        .iter()
        .flat_map(|e| [e.initial, e.changed])
        .chain([MEMBERS_INITIAL, MEMBERS_CHANGED])
        .flat_map(lines)
        .filter_map(|v| Some((id(&v, "user_id")?, id(&v, "email")?.to_lowercase())))
        .chain(
            ORDERS_INITIAL
                .iter()
                .chain(ORDERS_CHANGED)
                .map(|o| (o.user_id.to_string(), format!("{}@example.com", o.user_id))),
        )
        .collect();
    let expected = expected(&comps, &steps, |user| emails.get(user).cloned());
    let mut mismatches = differences(state, &expected);
    // The SQL audience's events carry the time of the compute that changed it: its `:now`.
    for contact in &state.contacts {
        let user = contact.external_id.clone().unwrap_or_default();
        for e in &contact.events {
            if event_key(&e.metadata) == SQL_KEY && e.created_at != SQL_CHANGED_AT {
                mismatches.push(format!(
                    "{user}: {} of {SQL_KEY} at {}, the compute's :now was {}",
                    e.event_name,
                    store::snapshots::rfc3339(e.created_at),
                    store::snapshots::rfc3339(SQL_CHANGED_AT)
                ));
            }
        }
    }
    mismatches
}
