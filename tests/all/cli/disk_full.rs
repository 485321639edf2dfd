//! A full disk (SQLite's `SQLITE_FULL`) during `load`, `sync --no-deliver` and `prune`, on a
//! small tmpfs mounted for the test: the step fails with exit 1 and says that the disk holding the
//! database is full and where; nothing already stored or queued is lost (SQLite rolls the
//! transaction back, the database passes `PRAGMA integrity_check`); once there is room again the
//! same step succeeds.
//!
//! Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted each test says so and
//! returns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Env, Run, dump};

/// A tmpfs of a few MB on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount one, or say why not.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process of a failed test): detach it now, it goes when free.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A settings file whose database lives on a small tmpfs.
struct Small {
    env: Env,
    fs: Tmpfs,
    db: PathBuf,
}

impl Small {
    /// `None` (after saying why) where mounting is not permitted.
    fn new(test: &str, size: &str, settings: &str) -> Option<Small> {
        let fs = match Tmpfs::mount(size) {
            Ok(fs) => fs,
            Err(reason) => {
                eprintln!("{test}: skipped, a small file system cannot be mounted here: {reason}");
                return None;
            }
        };
        let env = Env::new();
        let db = fs.path().join("state/test.db");
        env.write(
            "small.toml",
            format!(
                "[database]\npath = \"{}\"\n[http]\nlisten = \"\"\n{settings}",
                db.display()
            ),
        );
        Some(Small { env, fs, db })
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["--config", "small.toml"];
        all.extend_from_slice(args);
        self.env.run(&all)
    }

    fn load(&self, name: &str, from: usize, to: usize) -> Run {
        let file = self.env.write(name, members(from, to));
        self.run(&[
            "load",
            "--computation",
            "vip",
            "--kind",
            "audience",
            "--scope",
            "user",
            file.to_str().unwrap(),
        ])
    }

    fn one(&self, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn integrity(&self) -> String {
        crate::harness::integrity_check(&self.db)
    }

    /// Every complete snapshot has all its rows.
    fn complete_snapshots_are_whole(&self) {
        assert_eq!(
            self.one(
                "SELECT count(*) FROM snapshots s WHERE complete = 1 AND row_count <> \
                 (SELECT count(*) FROM snapshot_rows r WHERE r.snapshot_id = s.id)"
            ),
            0
        );
    }

    /// Fill the file system until it is full, then give `slack` bytes back.
    fn fill(&self, slack: u64) -> PathBuf {
        let path = self.fs.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("writing the filler: {e}"),
            }
        }
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(slack)).unwrap();
        path
    }

    /// Exit 1, and one explanation naming the database and its file system.
    #[track_caller]
    fn assert_disk_full(&self, run: &Run) {
        assert_eq!(
            run.code, 1,
            "expected exit 1\nstdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        let expected = format!(
            "error: the disk holding {} (the file system mounted at {}) is full (SQLite: \
             database or disk is full): free space, then run it again; nothing already stored \
             was lost\n",
            self.db.display(),
            self.fs.path().display()
        );
        assert!(
            run.stderr.starts_with(&expected),
            "stderr:\n{}\nexpected it to start with:\n{expected}",
            run.stderr
        );
        assert_eq!(
            run.stderr.matches("database or disk is full").count(),
            1,
            "explained once: {}",
            run.stderr
        );
    }
}

/// The members u{from}..u{to} (exclusive), with an email each.
fn members(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| format!("{{\"user_id\": \"u{i}\", \"email\": \"user{i}@example.com\"}}\n"))
        .collect()
}

#[test]
fn a_load_that_does_not_fit_fails_and_keeps_every_snapshot_before_it() {
    let Some(small) = Small::new("disk_full::load", "4m", "") else {
        return;
    };
    small.load("s1.ndjson", 0, 2_000).success();
    let before = dump(&small.db);

    let run = small.load("s2.ndjson", 0, 100_000);
    small.assert_disk_full(&run);
    assert!(
        run.stderr
            .contains("caused by: the load failed; nothing was stored"),
        "{}",
        run.stderr
    );
    assert_eq!(small.integrity(), "ok");
    assert_eq!(
        dump(&small.db),
        before,
        "the failed load changed the database"
    );
    assert_eq!(small.one("SELECT count(*) FROM snapshots"), 1);
    assert_eq!(
        small.one("SELECT count(*) FROM snapshot_rows WHERE snapshot_id = 1"),
        2_000
    );
    small.complete_snapshots_are_whole();

    // Nothing is wedged: a load that fits goes in.
    small.load("s3.ndjson", 0, 1_000).success();
    assert_eq!(small.integrity(), "ok");
    assert_eq!(
        small.one("SELECT count(*) FROM snapshots WHERE complete = 1"),
        2
    );
    small.complete_snapshots_are_whole();
}

#[test]
fn a_run_whose_outbox_does_not_fit_enqueues_nothing_and_succeeds_once_there_is_room() {
    let Some(small) = Small::new("disk_full::sync", "16m", "") else {
        return;
    };
    small.load("s1.ndjson", 0, 1_000).success();
    small.run(&["sync", "--no-deliver"]).success();
    assert_eq!(small.one("SELECT count(*) FROM outbox"), 1_000);
    small.load("s2.ndjson", 0, 5_000).success();
    let before = dump(&small.db);

    let filler = small.fill(256 * 1024);
    let run = small.run(&["sync", "--no-deliver"]);
    small.assert_disk_full(&run);
    assert_eq!(small.integrity(), "ok");
    // The run's messages (4,000 users entered: an identify and an "Audience Entered" track
    // each) are one transaction: none of them is queued, planned state has not moved, the first
    // run's messages are as they were.
    assert_eq!(
        dump(&small.db),
        before,
        "the failed run changed the database"
    );

    std::fs::remove_file(filler).unwrap();
    small.run(&["sync", "--no-deliver"]).success();
    assert_eq!(small.integrity(), "ok");
    assert_eq!(small.one("SELECT count(*) FROM outbox"), 1_000 + 2 * 4_000);
    assert_eq!(
        small.one("SELECT count(DISTINCT message_id) FROM outbox"),
        9_000,
        "nothing twice"
    );
    assert_eq!(
        small.one("SELECT snapshot_id FROM planned_bases"),
        small.one("SELECT max(id) FROM snapshots")
    );
}

#[test]
fn a_prune_on_a_full_disk_fails_keeps_what_it_keeps_and_succeeds_once_there_is_room() {
    let Some(small) = Small::new(
        "disk_full::prune",
        "8m",
        "[retention]\nsnapshots_per_computation = 1\n",
    ) else {
        return;
    };
    // Two large snapshots that retention removes (no run has planned any), and the newest.
    small.load("s1.ndjson", 0, 20_000).success();
    small.load("s2.ndjson", 0, 20_000).success();
    small.load("s3.ndjson", 0, 100).success();
    let newest = small.one("SELECT max(id) FROM snapshots");

    // Deleting rows writes pages to the write-ahead log: room for the log's index (32 KiB) and
    // a few pages, not for a batch of deletions.
    let filler = small.fill(64 * 1024);
    let run = small.run(&["prune"]);
    small.assert_disk_full(&run);
    assert_eq!(small.integrity(), "ok");
    small.complete_snapshots_are_whole();
    assert_eq!(
        small.one(&format!(
            "SELECT count(*) FROM snapshot_rows WHERE snapshot_id = {newest}"
        )),
        100
    );
    assert_eq!(
        small.one(&format!(
            "SELECT complete FROM snapshots WHERE id = {newest}"
        )),
        1
    );
    let status: serde_json::Value =
        serde_json::from_str(&small.run(&["status", "--json"]).success().stdout).unwrap();
    let error = status["last_prune"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("the failed prune is recorded: {}", status["last_prune"]));
    assert!(error.contains("database or disk is full"), "{error}");

    std::fs::remove_file(filler).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&small.run(&["prune", "--json"]).success().stdout).unwrap();
    assert_eq!(report["snapshots"].as_array().unwrap().len(), 2, "{report}");
    assert!(report["space"]["bytes_returned"].as_u64().unwrap() > 0);
    assert_eq!(small.integrity(), "ok");
    assert_eq!(small.one("SELECT count(*) FROM snapshots"), 1);
    assert_eq!(small.one("SELECT count(*) FROM snapshot_rows"), 100);
    let status: serde_json::Value =
        serde_json::from_str(&small.run(&["status", "--json"]).success().stdout).unwrap();
    assert!(status["last_prune"]["error"].is_null(), "{status}");
    assert_eq!(status["last_prune"]["snapshots"], 2);
}

/// `/healthz` (status, body) of the daemon on `port`, once it answers.
async fn healthz(client: &reqwest::Client, port: u16) -> Option<(u16, String)> {
    let response = client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The daemon's planning task hits a full disk: `/healthz` answers 503 with the reason and
/// `audience_sync_planning_failed` is 1; the daemon keeps going, and the next run after space is
/// freed plans, its messages and the ones queued before are delivered, and `/healthz` is well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reports_a_run_failed_by_a_full_disk_and_the_next_run_plans() {
    use std::time::{Duration, Instant};

    use intercom_sandbox::{Sandbox, SandboxConfig};

    const TOKEN: &str = "disk-full-token";
    let sandbox = Sandbox::start(SandboxConfig::new(TOKEN)).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(small) = Small::new(
        "disk_full::daemon",
        "16m",
        &format!(
            "[schedule]\ncron = \"* * * * * *\"\nrun_on_start = true\n\
             [intercom]\nbase_url = \"{}\"\naccess_token = \"{TOKEN}\"\nrate_limit = 1000\n",
            sandbox.base_url()
        ),
    ) else {
        sandbox.shutdown().await;
        return;
    };
    // `[http] listen` comes after the settings above in the file: give the daemon its port.
    let settings = std::fs::read_to_string(small.env.path("small.toml"))
        .unwrap()
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    small.env.write("small.toml", settings);

    // Queued before the disk fills: the messages of an earlier run, left for the daemon.
    small.load("s1.ndjson", 0, 20).success();
    small.run(&["sync", "--no-deliver"]).success();
    small.load("s2.ndjson", 0, 1_000).success();
    let filler = small.fill(256 * 1024);

    let log = small.env.path("daemon.log");
    let mut daemon = Daemon(
        small
            .env
            .command(&["--config", "small.toml", "run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log).unwrap_or_default();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        if let Some((503, body)) = healthz(&client, port).await {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never reported the failed run: {:?}",
            healthz(&client, port).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reason.starts_with(&format!(
            "unhealthy: the last run failed: the disk holding {} (the file system mounted at {}) \
             is full",
            small.db.display(),
            small.fs.path().display()
        )),
        "{reason}"
    );
    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\naudience_sync_planning_failed 1\n"),
        "{metrics}"
    );
    assert_eq!(small.one("SELECT count(*) FROM runs"), 1, "no run planned");
    // Delivery keeps trying meanwhile, but on a disk this full its confirmations cannot be
    // written either: the queued messages stay queued (none is lost) until there is room.
    assert_eq!(
        small.one("SELECT count(*) FROM outbox WHERE status = 'dead'"),
        0,
        "{}",
        log()
    );

    // Room again: the next tick plans the run (980 users entered: an identify and a track
    // each, after the 20 queued before), and /healthz is well again.
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = healthz(&client, port).await
            && small.one("SELECT count(*) FROM outbox") == 20 + 2 * 980
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not plan again: {:?}\n{}",
            healthz(&client, port).await,
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\naudience_sync_planning_failed 0\n"),
        "{metrics}"
    );
    assert_eq!(
        small.one("SELECT count(*) FROM outbox WHERE status = 'dead'"),
        0
    );
    assert_eq!(small.integrity(), "ok");
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sandbox.shutdown().await;
}

/// A daemon process, killed if the test ends before it stopped (so the tmpfs can be unmounted).
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
