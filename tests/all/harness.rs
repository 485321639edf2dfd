//! The one harness of the integration tests: the binary, a fresh temporary directory with its
//! settings ([`Env`]: a `settings.toml`; [`World`]: `AUDIENCE_SYNC__…` variables and the
//! Intercom sandbox serving on 127.0.0.1:0 in this process), and helpers to run the binary and
//! read the database.

use std::ffi::OsStr;
use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use intercom_sandbox::{Sandbox, SandboxConfig, SandboxHandle, Snapshot};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_audience-sync");
/// The sandbox's token in every [`World`].
pub const TOKEN: &str = "test-token";

/// The binary with `args`, run in `dir`, with no `AUDIENCE_SYNC…` or `RUST_LOG` variable of the
/// test's own environment: a test says every setting it means.
pub fn command<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(dir);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AUDIENCE_SYNC")) {
        command.env_remove(k);
    }
    command.env_remove("RUST_LOG");
    command
}

// ───────────────────────────── Env: a directory with settings.toml ─────────────────────────────

/// A fresh directory whose `settings.toml` puts the database at `state/test.db` and turns the
/// HTTP listener off.
pub struct Env {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("settings.toml"),
            "[database]\npath = \"state/test.db\"\n[http]\nlisten = \"\"\n",
        )
        .unwrap();
        Env { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn db_path(&self) -> PathBuf {
        self.path("state/test.db")
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn command(&self, args: &[&str]) -> Command {
        command(self.dir.path(), args)
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().unwrap())
    }

    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        Run::from(child.wait_with_output().unwrap())
    }

    /// Every row of every table, in a stable order: equal dumps mean an unchanged database.
    pub fn dump(&self) -> String {
        dump(&self.db_path())
    }

    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |row| {
            Ok((0..n)
                .map(|i| render(row.get_ref(i).unwrap()))
                .collect::<Vec<_>>())
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }
}

pub fn dump(db: &Path) -> String {
    if !db.exists() {
        return "<no database>".to_string();
    }
    let conn = rusqlite::Connection::open(db).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = String::new();
    for table in tables {
        out.push_str(&format!("== {table}\n"));
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |row| {
                Ok((0..n)
                    .map(|i| render(row.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        for row in rows {
            out.push_str(&row);
            out.push('\n');
        }
    }
    out
}

fn render(value: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!("{b:?}"),
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn success(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn refused(self, needles: &[&str]) -> Run {
        assert_eq!(
            self.code, 2,
            "expected exit 2\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks {needle:?}:\n{}",
                self.stderr
            );
        }
        self
    }
}

// ───────────────────────────── World: a directory and the sandbox ─────────────────────────────

/// A temporary directory with the database, the Intercom sandbox serving on 127.0.0.1:0 in this
/// process, and the real binary pointed at it by `AUDIENCE_SYNC__…` variables.
pub struct World {
    pub dir: tempfile::TempDir,
    pub sandbox: Option<SandboxHandle>,
    pub runtime: tokio::runtime::Runtime,
    /// `AUDIENCE_SYNC__…` settings for every command.
    pub env: Vec<(String, String)>,
}

impl World {
    /// A sandbox with `config` (its token is replaced) and settings for its budget of
    /// `config.rate_limit` requests per `config.window_secs`.
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

    /// Set `AUDIENCE_SYNC__{key}` for every later command.
    pub fn set(&mut self, key: &str, value: &str) {
        let key = format!("AUDIENCE_SYNC__{key}");
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.to_string()));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut command = command(self.dir.path(), args);
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Run and require success; returns stdout.
    pub fn ok<S: AsRef<OsStr> + Debug>(&self, args: &[S]) -> String {
        self.ok_timed(args).0
    }

    /// Run and require success; returns stdout and how long it took.
    pub fn ok_timed<S: AsRef<OsStr> + Debug>(&self, args: &[S]) -> (String, Duration) {
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

    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Start `args`, SIGKILL it after `after`; true when it was still running (a real kill).
    pub fn kill_after<S: AsRef<OsStr>>(&self, args: &[S], after: Duration) -> bool {
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

    /// Write `lines` as NDJSON to `name` in the directory.
    pub fn write(&self, name: &str, lines: &[Value]) -> PathBuf {
        let path = self.path(name);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
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

    /// `PRAGMA integrity_check` answers `ok` and no foreign key dangles.
    pub fn assert_integrity(&self) {
        assert_integrity(&self.path("sync.db"));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            self.runtime.block_on(sandbox.shutdown());
        }
    }
}

/// What `PRAGMA integrity_check` says of the database at `db` (`ok` when it is sound).
pub fn integrity_check(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// The database at `db` passes `PRAGMA integrity_check` and `PRAGMA foreign_key_check`.
#[track_caller]
pub fn assert_integrity(db: &Path) {
    assert_eq!(
        integrity_check(db),
        "ok",
        "PRAGMA integrity_check of {}",
        db.display()
    );
    let conn = rusqlite::Connection::open(db).unwrap();
    let dangling: Option<String> = conn
        .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
        .ok();
    assert_eq!(
        dangling,
        None,
        "PRAGMA foreign_key_check of {}",
        db.display()
    );
}

/// Owned arguments from string slices.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub fn file_arg(path: &Path) -> String {
    path.display().to_string()
}
