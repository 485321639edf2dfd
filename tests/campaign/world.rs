//! A world for one campaign run: a temporary directory with the database, the Intercom sandbox
//! serving on 127.0.0.1:0 in this process, and the real binary pointed at it. (Adapted from
//! `tests/delivery/world.rs`; copied, not shared, so the two suites evolve independently.)

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use intercom_sandbox::{Sandbox, SandboxConfig, SandboxHandle, Snapshot};

pub const BIN: &str = env!("CARGO_BIN_EXE_audience-sync");
pub const TOKEN: &str = "campaign-token";

pub struct World {
    pub dir: tempfile::TempDir,
    pub sandbox: Option<SandboxHandle>,
    pub runtime: tokio::runtime::Runtime,
    /// `AUDIENCE_SYNC__…` settings for every command.
    pub env: Vec<(String, String)>,
}

impl World {
    /// A sandbox with `config` (its token is replaced); the product is told a budget of
    /// `rate_limit` requests per `window_secs` (which may differ from the sandbox's own).
    pub fn new(mut config: SandboxConfig, rate_limit: u32, window_secs: u64) -> World {
        config.token = TOKEN.to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sandbox = runtime.block_on(Sandbox::start(config)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let env = vec![
            (
                "DATABASE__PATH",
                dir.path().join("sync.db").display().to_string(),
            ),
            ("INTERCOM__BASE_URL", sandbox.base_url().to_string()),
            ("INTERCOM__ACCESS_TOKEN", TOKEN.to_string()),
            ("INTERCOM__RATE_LIMIT", rate_limit.to_string()),
            ("INTERCOM__RATE_LIMIT_WINDOW_SECS", window_secs.to_string()),
            ("INTERCOM__MAX_ATTEMPTS", "30".to_string()),
            ("INTERCOM__REQUEST_TIMEOUT_SECS", "1".to_string()),
            ("HTTP__LISTEN", String::new()),
            ("LOG__FORMAT", "text".to_string()),
            ("LOG__LEVEL", "error".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("AUDIENCE_SYNC__{k}"), v))
        .collect();
        World {
            dir,
            sandbox: Some(sandbox),
            runtime,
            env,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self, args: &[String]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(self.dir.path());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AUDIENCE_SYNC")) {
            command.env_remove(k);
        }
        command.env_remove("RUST_LOG");
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    pub fn run(&self, args: &[String]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Run and require success; returns stdout and how long it took.
    pub fn ok(&self, args: &[String]) -> (String, Duration) {
        let started = Instant::now();
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{args:?} failed ({:?}):\n{}\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            started.elapsed(),
        )
    }

    pub fn spawn(&self, args: &[String]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Start `args`, SIGKILL it after `after`; true when it was still running (a real kill).
    pub fn kill_after(&self, args: &[String], after: Duration) -> bool {
        let mut child = self.spawn(args);
        let deadline = Instant::now() + after;
        loop {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
        }
        let killed = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        killed
    }

    pub fn state(&self) -> Snapshot {
        self.sandbox.as_ref().unwrap().snapshot()
    }

    pub fn db(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self.path("sync.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Entities whose planned value is not the delivered one.
    pub fn undelivered(&self) -> i64 {
        audience_sync::store::state::undelivered_count(&self.db()).unwrap() as i64
    }

    /// `PRAGMA integrity_check` answers `ok`.
    pub fn assert_integrity(&self) {
        let db = self.db();
        let result: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(result, "ok", "PRAGMA integrity_check");
        let fk: Option<String> = db
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .ok();
        assert_eq!(fk, None, "PRAGMA foreign_key_check");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            self.runtime.block_on(sandbox.shutdown());
        }
    }
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}
