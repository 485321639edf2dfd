//! Benchmark of the diff and enqueue: `plan` and `sync --no-deliver` of the real release binary
//! over C computations × N users with 1% churn, against a plain full scan of the same snapshot
//! rows; and the initial full sync of N users × C computations (coalescing).
//!
//! cargo build --release && cargo run --release --example bench_plan -- churn 20 500000
//! cargo run --release --example bench_plan -- initial 5 1000000
//!
//! Peak RSS comes from `/usr/bin/time -v` when it exists (else it is not reported).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rusqlite::Connection;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("churn");
    let comps: usize = args.get(1).map_or(Ok(20), |a| a.parse())?;
    let users: usize = args.get(2).map_or(Ok(500_000), |a| a.parse())?;
    let dir = std::env::var("BENCH_DIR").map_or_else(|_| std::env::temp_dir(), PathBuf::from);
    let db = dir.join(format!("bench-{mode}-{comps}x{users}.db"));
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("audience-sync"))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("build the release binary first: cargo build --release"))?;
    println!("database {}, binary {}", db.display(), bin.display());

    let t = Instant::now();
    let conn = audience_sync::store::open(&db)?;
    conn.execute_batch("PRAGMA cache_size = -200000")?;
    match mode {
        "churn" => generate_churn(&conn, comps, users)?,
        "initial" => generate_initial(&conn, comps, users)?,
        other => anyhow::bail!("unknown mode {other:?}: churn or initial"),
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")?;
    drop(conn);
    println!("generated in {:.1} s", t.elapsed().as_secs_f64());

    // The baseline: read every column of the newest snapshots' rows, in-process and with sqlite3.
    let conn = audience_sync::store::open(&db)?;
    let newest: Vec<i64> = conn
        .prepare("SELECT max(id) FROM snapshots WHERE complete = 1 GROUP BY computation_id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    let mut rows = 0u64;
    let mut bytes = 0usize;
    for id in &newest {
        let mut stmt = conn
            .prepare("SELECT entity_id, email, value FROM snapshot_rows WHERE snapshot_id = ?1")?;
        let mut q = stmt.query([id])?;
        while let Some(r) = q.next()? {
            rows += 1;
            for c in 0..3 {
                if let rusqlite::types::ValueRef::Text(t) = r.get_ref(c)? {
                    bytes += t.len();
                }
            }
        }
    }
    let scan = t.elapsed().as_secs_f64();
    drop(conn);
    println!("baseline rusqlite scan of {rows} snapshot rows ({bytes} bytes): {scan:.2} s");
    let ids = newest
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if Path::new("/usr/bin/sqlite3").exists() || which("sqlite3") {
        let t = Instant::now();
        let out = Command::new("sqlite3")
            .arg(&db)
            .arg(format!(
                "SELECT count(*), sum(length(entity_id) + length(email) + length(value)) \
                 FROM snapshot_rows WHERE snapshot_id IN ({ids});"
            ))
            .output()?;
        println!(
            "baseline sqlite3 scan: {:.2} s ({})",
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }

    let plan = timed(&bin, &db, &["plan", "--json"])?;
    let sync = timed(&bin, &db, &["sync", "--no-deliver"])?;
    let conn = Connection::open(&db)?;
    let (identify, track, group): (i64, i64, i64) = conn.query_row(
        "SELECT messages_identify, messages_track, messages_group FROM runs ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    println!("enqueued: {identify} identify, {track} track, {group} group");
    println!(
        "RESULT mode={mode} computations={comps} users={users} snapshot_rows={rows} scan_s={scan:.2} \
         plan_s={:.2} plan_ratio={:.2} plan_rss_mb={} sync_s={:.2} sync_ratio={:.2} sync_rss_mb={} \
         identify={identify} track={track} group={group}",
        plan.0,
        plan.0 / scan,
        plan.1.map_or("?".into(), |k| (k / 1024).to_string()),
        sync.0,
        sync.0 / scan,
        sync.1.map_or("?".into(), |k| (k / 1024).to_string()),
    );
    Ok(())
}

fn which(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run the binary; wall seconds and peak RSS in KiB (from /usr/bin/time -v when present).
fn timed(bin: &Path, db: &Path, args: &[&str]) -> anyhow::Result<(f64, Option<u64>)> {
    let time = Path::new("/usr/bin/time");
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.arg("-v").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    // Run beside the database so a ./settings.toml of the caller is not picked up.
    cmd.args(args)
        .current_dir(db.parent().unwrap_or(Path::new("/")))
        .env("AUDIENCE_SYNC__DATABASE__PATH", db)
        .env("AUDIENCE_SYNC__LOG__LEVEL", "warn");
    let t = Instant::now();
    let out = cmd.output()?;
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        anyhow::bail!("{args:?} failed: {stderr}");
    }
    let rss = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok());
    println!(
        "{args:?}: {secs:.2} s, peak RSS {}",
        rss.map_or("?".into(), |k: u64| format!("{} MiB", k / 1024))
    );
    Ok((secs, rss))
}

/// C computations (half audiences, half traits) over N users, already planned from a first
/// snapshot (planned state written directly, as a committed run would leave it), and a second
/// snapshot with 1% churn: audiences lose 0.5% of members and gain 0.5%, traits change 1%.
fn generate_churn(conn: &Connection, comps: usize, users: usize) -> anyhow::Result<()> {
    conn.execute_batch("BEGIN")?;
    conn.execute(
        "INSERT INTO runs (mode, started_at, planned_at, status) VALUES ('full', 0, 0, 'finished')",
        [],
    )?;
    for c in 0..comps {
        let audience = c % 2 == 0;
        let id = format!("{}_{c:02}", if audience { "aud" } else { "tra" });
        conn.execute(
            "INSERT INTO computations (id, key, name, kind, scope, created_at) VALUES (?1, ?2, ?2, ?3, 'user', 0)",
            rusqlite::params![id, format!("c{c:02}"), if audience { "audience" } else { "trait" }],
        )?;
        // Snapshot 1: audiences hold the users with i % 2 = 0 (half), traits everyone.
        let value1 = if audience {
            "'true'"
        } else {
            "CAST(i % 1000 AS TEXT)"
        };
        let where1 = if audience { "i % 2 = 0" } else { "1" };
        conn.execute(
            "INSERT INTO snapshots (computation_id, taken_at, complete) VALUES (?1, 1700000000, 1)",
            [&id],
        )?;
        let s1 = conn.last_insert_rowid();
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {users})
             INSERT INTO snapshot_rows (snapshot_id, entity_id, email, value)
             SELECT {s1}, printf('user%08d', i), printf('user%08d@example.com', i), {value1} FROM n WHERE {where1};
             INSERT INTO entity_state (computation_id, subject, entity_id, email, planned, delivered)
             SELECT '{id}', 'user', entity_id, email, value, value FROM snapshot_rows WHERE snapshot_id = {s1};
             INSERT INTO run_computations (run_id, computation_id, snapshot_id, mode) VALUES (1, '{id}', {s1}, 'full');
             INSERT INTO plan_cursors (subject, snapshot_id) VALUES ('{id}', {s1});"
        ))?;
        // Snapshot 2: 1% churn, spread over the users (i % 200 picks 0.5%; i % 100 picks 1%).
        conn.execute(
            "INSERT INTO snapshots (computation_id, taken_at, complete) VALUES (?1, 1700003600, 1)",
            [&id],
        )?;
        let s2 = conn.last_insert_rowid();
        let (value2, where2) = if audience {
            ("'true'", "(i % 2 = 0 AND i % 200 <> 0) OR i % 200 = 1")
        } else {
            (
                "CAST(CASE WHEN i % 100 = 7 THEN i % 1000 + 1 ELSE i % 1000 END AS TEXT)",
                "1",
            )
        };
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {users})
             INSERT INTO snapshot_rows (snapshot_id, entity_id, email, value)
             SELECT {s2}, printf('user%08d', i), printf('user%08d@example.com', i), {value2} FROM n WHERE {where2};"
        ))?;
        eprintln!("  computation {c}: snapshots {s1}, {s2}");
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// C user-trait computations over the same N users, never synced: the initial full sync.
fn generate_initial(conn: &Connection, comps: usize, users: usize) -> anyhow::Result<()> {
    conn.execute_batch("BEGIN")?;
    for c in 0..comps {
        let id = format!("tra_{c:02}");
        conn.execute(
            "INSERT INTO computations (id, key, name, kind, scope, created_at) VALUES (?1, ?2, ?2, 'trait', 'user', 0)",
            rusqlite::params![id, format!("c{c:02}")],
        )?;
        conn.execute(
            "INSERT INTO snapshots (computation_id, taken_at, complete) VALUES (?1, 1700000000, 1)",
            [&id],
        )?;
        let s = conn.last_insert_rowid();
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {users})
             INSERT INTO snapshot_rows (snapshot_id, entity_id, email, value)
             SELECT {s}, printf('user%08d', i), printf('user%08d@example.com', i), CAST(i % 1000 AS TEXT) FROM n;"
        ))?;
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}
