//! Benchmark of a computation defined in SQL (issue 17, SPEC section 11): a trait of U users
//! computed from an events table of E rows by `audience-sync compute`, against the same query
//! alone in the `sqlite3` CLI on the same file, measured in the same run.
//!
//! cargo build --release && cargo build --release --example bench_compute
//! BENCH_DIR=/tmp/bench-compute target/release/examples/bench_compute 1000000 10000000
//!
//! The database has the product's schema (`audience_sync::store::open`) and, beside it, the
//! product's own table `events(user_id TEXT, name TEXT, ts INTEGER, amount REAL)`: E rows in time
//! order over the 90 days before `NOW` (a rowid table appended to, as an event log is), each with
//! a pseudo-random user, event name and amount, except the newest U rows, which hold every user
//! once in a shuffled order, so every user has an event in the last 30 days and a row in the
//! result. An index `events (user_id, ts, amount)` covers the query: SQLite reads it in user
//! order and aggregates as it goes, without sorting the window's rows. The computation:
//!
//! SELECT user_id, sum(amount) AS value FROM events WHERE ts > :now - 30*86400 GROUP BY user_id
//!
//! Each run, in this order, on the same file (the page cache warmed first by reading the file
//! whole and by one untimed `sqlite3` run of the query):
//! - `sqlite3 FILE "<the query with :now replaced by its value>;" > /dev/null` — the limit;
//! - `sqlite3 FILE "SELECT count(*), sum(value) FROM (<the query>);"`: the same without printing
//!   a million rows (how much of the limit is the CLI's output);
//! - the same query in this process through rusqlite on a read-only connection, every cell read
//!   (no process start, no output formatting): what `compute`'s query costs inside it;
//! - the same, its rows made into records and checked as `compute` does (`Query`,
//!   `load::snapshot_row`), no duplicate check, nothing stored;
//! - `audience-sync compute --computation K --dry-run --now T`: the query, every row checked
//!   (and its entity id kept for duplicates), nothing stored;
//! - `audience-sync compute --computation K --now T`: the same, stored as a new U-row snapshot in
//!   one transaction.
//!
//! T grows by one second a run, so each compute's snapshot is the newest. Between runs (untimed)
//! every snapshot of the computation but the newest is deleted and the WAL checkpointed
//! (TRUNCATE): each compute but the first starts with one previous U-row snapshot, an empty WAL,
//! and the freed pages of the one before to reuse, as a daily compute with retention would.
//!
//! Wall time of each process; its CPU (user + system) and peak RSS from `/usr/bin/time -v`
//! when present (else not reported). BENCH_DIR (default: the temp directory), BENCH_RUNS
//! (default 3), BENCH_REUSE=1 (copy the database an earlier run generated), BENCH_SQLITE3 (default
//! `sqlite3`). Exits non-zero when a compute does not store U rows.

mod common;
use common::{db_size, mb, median, remove_db};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use rusqlite::Connection;

const KEY: &str = "revenue_30d";
const SQL: &str =
    "SELECT user_id, sum(amount) AS value FROM events WHERE ts > :now - 30*86400 GROUP BY user_id";
/// The end of the generated events (2026-12-01T00:00:00Z); the first run's `:now`.
const NOW: i64 = 1_796_083_200;
const DAY: i64 = 86_400;
const EVENT_NAMES: [&str; 5] = [
    "Order Completed",
    "Product Viewed",
    "Cart Updated",
    "Signed In",
    "Subscription Renewed",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let users: u64 = args.first().map_or(Ok(1_000_000), |a| a.parse())?;
    let events: u64 = args.get(1).map_or(Ok(10_000_000), |a| a.parse())?;
    anyhow::ensure!(
        users > 0 && events >= users,
        "usage: bench_compute USERS EVENTS (EVENTS ≥ USERS > 0)"
    );
    let runs: usize = std::env::var("BENCH_RUNS").map_or(Ok(3), |v| v.parse())?;
    let sqlite3 = std::env::var("BENCH_SQLITE3").unwrap_or_else(|_| "sqlite3".to_string());
    let dir = std::env::var("BENCH_DIR").map_or_else(|_| std::env::temp_dir(), PathBuf::from);
    std::fs::create_dir_all(&dir)?;
    let bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("audience-sync"))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("build the release binary first: cargo build --release"))?;
    let db = dir.join(format!("bench-compute-{users}x{events}.db"));
    let template = PathBuf::from(format!("{}.template", db.display()));
    let settings = dir.join("bench-compute.toml");
    std::fs::write(
        &settings,
        format!(
            "[database]\npath = {:?}\n\n[compute]\ntimeout_secs = 3600\n\n[[computations]]\n\
             key = {KEY:?}\nname = \"Revenue, last 30 days\"\nkind = \"trait\"\nscope = \"user\"\n\
             sql = {SQL:?}\n",
            db.display().to_string()
        ),
    )?;
    println!(
        "database {}, binary {}, {} ({})",
        db.display(),
        bin.display(),
        sqlite3,
        output(Command::new(&sqlite3).arg("--version"))?.trim()
    );
    println!("nproc {}", std::thread::available_parallelism()?.get());

    remove_db(&db);
    let t = Instant::now();
    if std::env::var("BENCH_REUSE").is_ok_and(|v| v == "1") && template.exists() {
        std::fs::copy(&template, &db)?;
        println!(
            "copied {} in {:.1} s",
            template.display(),
            t.elapsed().as_secs_f64()
        );
    } else {
        generate(&db, users, events)?;
        std::fs::copy(&db, &template)?;
        std::fs::File::open(&template)?.sync_all()?;
        println!("generated in {:.1} s", t.elapsed().as_secs_f64());
    }
    // Written back, then read whole into the page cache: every measurement starts alike.
    std::fs::File::open(&db)?.sync_all()?;
    std::io::copy(&mut std::fs::File::open(&db)?, &mut std::io::sink())?;
    println!(
        "database {:.1} MB; plan of the query: {}",
        mb(db_size(&db)),
        query_plan(&db)?
    );
    let warm = timed(query_alone(&sqlite3, &db, NOW))?;
    println!("warm-up: sqlite3 {:.2} s (untimed)", warm.secs);

    let mut results: Vec<Run> = Vec::new();
    for run in 0..runs {
        let now = NOW + run as i64;
        let at = chrono::DateTime::from_timestamp(now, 0)
            .expect("a valid time")
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        println!("run {} of {runs} (:now = {now}, {at})", run + 1);
        let query = timed(query_alone(&sqlite3, &db, now))?;
        println!("  sqlite3: {}", query.line());
        let counted = timed(query_counted(&sqlite3, &db, now))?;
        println!(
            "  sqlite3, rows counted and summed (no output): {}",
            counted.line()
        );
        let t = Instant::now();
        let in_process_rows = in_process(&db, now)?;
        let in_process = t.elapsed().as_secs_f64();
        println!("  in-process query (rusqlite): {in_process:.2} s, {in_process_rows} rows");
        let t = Instant::now();
        let checked_rows = in_process_checked(&db, now)?;
        let checked = t.elapsed().as_secs_f64();
        println!("  in-process query + checks: {checked:.2} s, {checked_rows} rows");
        let compute_args = ["compute", "--computation", KEY, "--now", &at];
        let mut dry_args = compute_args.to_vec();
        dry_args.push("--dry-run");
        let dry = timed(product(&bin, &settings, &db, &dry_args))?;
        println!("  compute --dry-run: {}", dry.line());
        let compute = timed(product(&bin, &settings, &db, &compute_args))?;
        let stored = stored_rows(&db)?;
        println!(
            "  compute: {}, stored {stored} rows, database {:.1} MB",
            compute.line(),
            mb(db_size(&db))
        );
        if stored != users || in_process_rows != users || checked_rows != users {
            anyhow::bail!(
                "expected {users} rows: the query returned {in_process_rows} ({checked_rows} \
                 checked), compute stored {stored}"
            );
        }
        results.push(Run {
            query,
            counted,
            in_process,
            checked,
            dry,
            compute,
            stored,
        });
        keep_newest_snapshot(&db)?;
    }

    let med = |f: &dyn Fn(&Run) -> f64| median(results.iter().map(f).collect());
    let peak = |f: &dyn Fn(&Run) -> Option<u64>| {
        results
            .iter()
            .filter_map(f)
            .max()
            .map_or("?".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
    };
    let (query, counted, in_proc, checked, dry, compute) = (
        med(&|r| r.query.secs),
        med(&|r| r.counted.secs),
        med(&|r| r.in_process),
        med(&|r| r.checked),
        med(&|r| r.dry.secs),
        med(&|r| r.compute.secs),
    );
    let cpu =
        |f: &dyn Fn(&Run) -> Option<f64>| median(results.iter().filter_map(f).collect::<Vec<_>>());
    println!(
        "per-run ratios compute ÷ sqlite3: {}",
        results
            .iter()
            .map(|r| format!("{:.2}", r.compute.secs / r.query.secs))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "RESULT users={users} events={events} runs={runs} rows={} sqlite3_s={query:.2} \
         sqlite3_cpu_s={:.2} sqlite3_rss_mib={} sqlite3_counted_s={counted:.2} in_process_s={in_proc:.2} checked_s={checked:.2} dry_run_s={dry:.2} \
         dry_run_cpu_s={:.2} dry_run_rss_mib={} compute_s={compute:.2} compute_cpu_s={:.2} \
         compute_rss_mib={} dry_run_ratio={:.2} compute_ratio={:.2}",
        results.last().map_or(0, |r| r.stored),
        cpu(&|r| r.query.cpu),
        peak(&|r| r.query.rss_kib),
        cpu(&|r| r.dry.cpu),
        peak(&|r| r.dry.rss_kib),
        cpu(&|r| r.compute.cpu),
        peak(&|r| r.compute.rss_kib),
        dry / query,
        compute / query,
    );
    Ok(())
}

struct Run {
    query: Timed,
    counted: Timed,
    in_process: f64,
    checked: f64,
    dry: Timed,
    compute: Timed,
    stored: u64,
}

// ─── Generating ─────────────────────────────────────────────────────────────────────────────

/// splitmix64: a deterministic pseudo-random sequence without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn user_id(u: u64) -> String {
    format!("user{u:07}")
}

/// The product's schema (as the binary creates it), then `events` with its index. The setup
/// alone runs without a journal and without syncs; the file is back in WAL mode at the end.
fn generate(db: &Path, users: u64, events: u64) -> anyhow::Result<()> {
    drop(audience_sync::store::open(db)?);
    let conn = Connection::open(db)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = OFF", [], |r| r.get(0))?;
    anyhow::ensure!(mode == "off", "journal_mode {mode}");
    conn.execute_batch(
        "PRAGMA synchronous = OFF; PRAGMA cache_size = -400000;
         CREATE TABLE events (user_id TEXT, name TEXT, ts INTEGER, amount REAL);
         BEGIN;",
    )?;
    let t = Instant::now();
    let mut rng = Rng(17);
    let start = NOW - 90 * DAY;
    let span = (90 * DAY) as u64;
    // Multiplying by a number prime to `users` permutes 0..users: the newest `users` rows.
    let step = (1..)
        .map(|k| users / 2 + 7919 * k)
        .find(|k| gcd(*k, users) == 1)
        .expect("a number prime to users");
    {
        let mut insert =
            conn.prepare("INSERT INTO events (user_id, name, ts, amount) VALUES (?1, ?2, ?3, ?4)")?;
        for i in 0..events {
            let r = rng.next();
            let recent = i >= events - users;
            let user = if recent {
                ((i - (events - users)) * step) % users
            } else {
                r % users
            };
            // In time order, as an event log is appended to.
            let ts = start + (i * span / events) as i64;
            let name = EVENT_NAMES[((r >> 32) % EVENT_NAMES.len() as u64) as usize];
            let amount = ((r >> 40) % 20_000) as f64 / 100.0;
            insert.execute(rusqlite::params![user_id(user), name, ts, amount])?;
            if (i + 1) % 2_000_000 == 0 {
                eprintln!(
                    "  {} events inserted ({:.1} s)",
                    i + 1,
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    conn.execute_batch("COMMIT;")?;
    let t = Instant::now();
    conn.execute_batch("CREATE INDEX events_by_user ON events (user_id, ts, amount); ANALYZE;")?;
    eprintln!("  index and ANALYZE: {:.1} s", t.elapsed().as_secs_f64());
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode == "wal", "journal_mode {mode}");
    Ok(())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

// ─── Measuring ──────────────────────────────────────────────────────────────────────────────

/// `sqlite3 FILE "<the query, :now replaced by its value>;"`.
fn query_alone(sqlite3: &str, db: &Path, now: i64) -> Command {
    let mut cmd = Command::new(sqlite3);
    cmd.arg(db)
        .arg(format!("{};", SQL.replace(":now", &now.to_string())));
    cmd
}

fn query_plan(db: &Path) -> anyhow::Result<String> {
    let conn = audience_sync::store::open_reader(db)?;
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {SQL}"))?;
    let details: Vec<String> = stmt
        .query_map([NOW], |r| r.get::<_, String>(3))?
        .collect::<Result<_, _>>()?;
    Ok(details.join("; "))
}

/// The query through rusqlite on the connection `compute` queries with (read-only,
/// `query_only`), every cell read; the number of rows.
fn in_process(db: &Path, now: i64) -> anyhow::Result<u64> {
    let conn = audience_sync::store::compute::open_query_connection(db)?;
    let mut stmt = conn.prepare(SQL)?;
    let mut rows = stmt.query(rusqlite::named_params! {":now": now})?;
    let (mut n, mut bytes) = (0u64, 0usize);
    while let Some(row) = rows.next()? {
        n += 1;
        bytes += row.get_ref(0)?.as_str()?.len();
        let _: f64 = row.get(1)?;
    }
    std::hint::black_box(bytes);
    Ok(n)
}

/// `sqlite3 FILE "SELECT count(*), sum(value) FROM (<the query>);"`: the query without
/// printing its rows.
fn query_counted(sqlite3: &str, db: &Path, now: i64) -> Command {
    let mut cmd = Command::new(sqlite3);
    cmd.arg(db).arg(format!(
        "SELECT count(*), sum(value) FROM ({});",
        SQL.replace(":now", &now.to_string())
    ));
    cmd
}

/// The query as `compute` runs it in-process: its rows as records (`Query`), each checked by
/// `load::snapshot_row`; no duplicate check, nothing stored. The number of rows.
fn in_process_checked(db: &Path, now: i64) -> anyhow::Result<u64> {
    use audience_sync::load::{self, Kind, Scope};
    let conn = audience_sync::store::compute::open_query_connection(db)?;
    let mut query = audience_sync::store::compute::Query::prepare(
        &conn,
        SQL,
        load::snapshot_columns(Scope::User),
    )?;
    let mut n = 0u64;
    for record in query.run(now, std::time::Duration::from_secs(3600))? {
        let row = load::snapshot_row(KEY, &record?, Kind::Trait, Scope::User)?;
        std::hint::black_box(&row);
        n += 1;
    }
    Ok(n)
}

fn product(bin: &Path, settings: &Path, db: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    // Run beside the database so a ./settings.toml of the caller is not picked up.
    cmd.arg("--config")
        .arg(settings)
        .args(args)
        .current_dir(db.parent().unwrap_or(Path::new("/")))
        .env("AUDIENCE_SYNC__DATABASE__PATH", db)
        .env("AUDIENCE_SYNC__HTTP__LISTEN", "")
        .env("AUDIENCE_SYNC__LOG__LEVEL", "warn");
    cmd
}

/// One process measured.
struct Timed {
    secs: f64,
    cpu: Option<f64>,
    rss_kib: Option<u64>,
}

impl Timed {
    fn line(&self) -> String {
        format!(
            "{:.2} s, CPU {}, peak RSS {}",
            self.secs,
            self.cpu.map_or("?".to_string(), |c| format!("{c:.2} s")),
            self.rss_kib
                .map_or("?".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        )
    }
}

/// Run `cmd` (its output discarded) under `/usr/bin/time -v` when present: wall seconds, CPU
/// (user + system) and peak RSS.
fn timed(cmd: Command) -> anyhow::Result<Timed> {
    let time = Path::new("/usr/bin/time");
    let mut run = if time.exists() {
        let mut c = Command::new(time);
        c.arg("-v").arg(cmd.get_program()).args(cmd.get_args());
        if let Some(dir) = cmd.get_current_dir() {
            c.current_dir(dir);
        }
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    } else {
        cmd
    };
    run.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = run.output()?;
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        anyhow::bail!("{:?} failed: {stderr}", run.get_args().collect::<Vec<_>>());
    }
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
    };
    Ok(Timed {
        secs,
        cpu: field("User time (seconds): ")
            .zip(field("System time (seconds): "))
            .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?)),
        rss_kib: field("Maximum resident set size (kbytes): ").and_then(|v| v.parse().ok()),
    })
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&cmd.output()?.stdout).into_owned())
}

/// Rows of the computation's newest complete snapshot.
fn stored_rows(db: &Path) -> anyhow::Result<u64> {
    let conn = audience_sync::store::open_reader(db)?;
    let rows: i64 = conn.query_row(
        "SELECT s.row_count FROM snapshots s JOIN computations c ON c.id = s.computation_id
         WHERE c.key = ?1 AND s.complete = 1 ORDER BY s.taken_at DESC LIMIT 1",
        [KEY],
        |r| r.get(0),
    )?;
    Ok(rows as u64)
}

/// Every snapshot of the computation but the newest deleted, and the WAL emptied (untimed).
fn keep_newest_snapshot(db: &Path) -> anyhow::Result<()> {
    let conn = audience_sync::store::open(db)?;
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         CREATE TEMP TABLE old AS SELECT s.id FROM snapshots s JOIN computations c
           ON c.id = s.computation_id WHERE c.key = '{KEY}' AND s.id < (SELECT max(s2.id)
           FROM snapshots s2 WHERE s2.computation_id = c.id);
         DELETE FROM snapshot_rows WHERE snapshot_id IN (SELECT id FROM old);
         DELETE FROM snapshots WHERE id IN (SELECT id FROM old);
         COMMIT;
         PRAGMA wal_checkpoint(TRUNCATE);"
    ))?;
    Ok(())
}
