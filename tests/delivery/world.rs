//! A world for one test: a temporary directory with the database, the Intercom sandbox serving
//! on 127.0.0.1:0 in this process, and the real binary pointed at it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use intercom_sandbox::{Sandbox, SandboxConfig, SandboxHandle, Snapshot};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_audience-sync");
pub const TOKEN: &str = "test-token";

pub struct World {
    pub dir: tempfile::TempDir,
    pub sandbox: Option<SandboxHandle>,
    pub runtime: tokio::runtime::Runtime,
    /// `AUDIENCE_SYNC__…` settings for every command.
    pub env: Vec<(String, String)>,
}

impl World {
    /// A sandbox with `config` (its token is replaced) and settings for a budget of `rate_limit`
    /// requests per `window_secs`.
    pub fn new(mut config: SandboxConfig) -> World {
        config.token = TOKEN.to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let window = config.window_secs;
        let limit = config.rate_limit;
        let sandbox = runtime.block_on(Sandbox::start(config)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let env = vec![
            (
                "DATABASE__PATH",
                dir.path().join("sync.db").display().to_string(),
            ),
            ("INTERCOM__BASE_URL", sandbox.base_url().to_string()),
            ("INTERCOM__ACCESS_TOKEN", TOKEN.to_string()),
            ("INTERCOM__RATE_LIMIT", limit.to_string()),
            ("INTERCOM__RATE_LIMIT_WINDOW_SECS", window.to_string()),
            ("INTERCOM__MAX_ATTEMPTS", "25".to_string()),
            ("INTERCOM__REQUEST_TIMEOUT_SECS", "2".to_string()),
            ("HTTP__LISTEN", String::new()),
            ("LOG__FORMAT", "text".to_string()),
            ("LOG__LEVEL", "warn".to_string()),
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

    pub fn set(&mut self, key: &str, value: &str) {
        let key = format!("AUDIENCE_SYNC__{key}");
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.to_string()));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(self.dir.path());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AUDIENCE_SYNC")) {
            command.env_remove(k);
        }
        command.env_remove("RUST_LOG");
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Run and require success.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{args:?} failed ({:?}):\n{}\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    pub fn state(&self) -> Snapshot {
        self.sandbox.as_ref().unwrap().snapshot()
    }

    pub fn write(&self, name: &str, lines: &[Value]) -> PathBuf {
        let path = self.path(name);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path("sync.db")).unwrap()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Entities whose planned value is not the delivered one.
    pub fn undelivered(&self) -> i64 {
        audience_sync::store::state::undelivered_count(&self.db()).unwrap() as i64
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            self.runtime.block_on(sandbox.shutdown());
        }
    }
}

pub fn file_arg(path: &Path) -> String {
    path.display().to_string()
}
