//! The SQLite storage layer: opening the database with the right pragmas, applying
//! `schema.sql` and its migrations, and the run lock. SQL lives here and in its submodules.

pub mod budget;
pub mod cache;
pub mod compute;
pub mod connection;
pub mod examples;
pub mod outage;
pub mod outbox;
pub mod retention;
pub mod snapshots;
pub mod state;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// The database connection the layers above hold, and the error and result of a store call:
/// SQLite's today. Outside `store` nothing names the engine, only these
/// (`tidy::the_database_engine_is_named_only_in_src_store`), so a second backend (PostgreSQL,
/// SPEC section 10) makes them types over both engines and changes nothing above the store.
pub use rusqlite::{Connection, Error};
/// The result of a store call.
pub type Result<T> = rusqlite::Result<T>;

/// The whole current schema ([`SCHEMA_VERSION`]), applied to a new database.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// Migrations of older databases, in order: `MIGRATIONS[0]` takes a database from version 1 to
/// 2. Each runs in one transaction together with the `user_version` bump; a new database gets
/// [`SCHEMA`] and none of them.
pub const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0002_planned_overrides.sql"),
    include_str!("../../migrations/0003_outages_and_replans.sql"),
    include_str!("../../migrations/0004_runs_of_any_size.sql"),
    include_str!("../../migrations/0005_sql_computations.sql"),
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = 1 + MIGRATIONS.len() as i64;

/// How long a statement waits for another connection's lock (an upstream writer, the daemon).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Open (creating if needed) the database at `path`, set the pragmas every connection needs and
/// bring the schema up to date.
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    if let Some(parent) = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        std::fs::create_dir_all(parent).with_context(|| {
            format!("cannot create the database directory {}", parent.display())
        })?;
    }
    let mut conn = Connection::open(path)
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    configure(&conn)
        .with_context(|| format!("cannot configure the database {}", path.display()))?;
    migrate(&mut conn).with_context(|| format!("cannot apply the schema to {}", path.display()))?;
    Ok(conn)
}

/// Open an in-memory database with the full schema (for unit tests of the layers above).
pub fn open_in_memory() -> anyhow::Result<Connection> {
    let mut conn = Connection::open_in_memory()?;
    configure(&conn)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// A read-only connection to a database another connection already opened (and migrated), for
/// a run's diff workers (`plan`): no schema work, the busy timeout, nothing else.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Pragmas set on every connection: WAL so an upstream writer and the daemon work at once, a busy
/// timeout, foreign keys, and NORMAL synchronous (durable across process crashes in WAL mode).
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // journal_mode returns a row, so it needs the _and_check variant.
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
    if mode != "wal" && mode != "memory" {
        return Err(rusqlite::Error::InvalidQuery);
    }
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

/// Bring the schema to [`SCHEMA_VERSION`]: version 0 gets `schema.sql`, later versions their
/// migrations. A database newer than this binary is refused rather than touched.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        anyhow::bail!(
            "the database has schema version {version} but this binary knows only up to \
             {SCHEMA_VERSION}: upgrade audience-sync"
        );
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version == 0 {
        retention::choose_incremental_vacuum(conn)?;
    }
    let tx = conn.transaction()?;
    if version == 0 {
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        return Ok(());
    }
    for (index, migration) in MIGRATIONS.iter().enumerate() {
        let target = index as i64 + 2;
        if version < target {
            tx.execute_batch(migration)
                .with_context(|| format!("migration to schema version {target} failed"))?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Which of the two locks beside a database. Planning (a run's diff and enqueue, dead-letter
/// changes) and delivering (draining the outbox) each happen in one process at a time, but one
/// process may plan while another delivers: the daemon delivers for its whole life, and a manual
/// `sync --no-deliver` beside it plans a run the daemon then delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    Plan,
    Deliver,
}

impl Lock {
    fn suffix(self) -> &'static str {
        match self {
            Lock::Plan => "plan.lock",
            Lock::Deliver => "deliver.lock",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Lock::Plan => "planning a run on",
            Lock::Deliver => "delivering the outbox of",
        }
    }
}

/// An exclusive lock beside the database file. Held for as long as the value lives; the OS
/// releases it if the process dies.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Why a [`RunLock`] was not taken. Every case is a runtime failure (exit 1), not bad input.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock ([`RunLock::try_acquire`]).
    #[error(
        "another audience-sync process is {} {} (lock {} is held); runs never overlap, try again \
         when it has finished",
        .lock.what(),
        .database.display(),
        .lock_file.display()
    )]
    Held {
        lock: Lock,
        database: PathBuf,
        lock_file: PathBuf,
    },
    #[error("cannot create the database directory {}", .dir.display())]
    CreateDirectory {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the lock file {}", .lock_file.display())]
    Open {
        lock_file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {}", .lock_file.display())]
    Lock {
        lock_file: PathBuf,
        source: std::io::Error,
    },
}

impl RunLock {
    /// Take the lock, or fail at once ([`LockError::Held`]) naming the database and the lock
    /// file.
    pub fn try_acquire(database: &Path, lock: Lock) -> anyhow::Result<RunLock> {
        match RunLock::acquire_if_free(database, lock)? {
            Some(held) => Ok(held),
            None => Err(LockError::Held {
                lock,
                database: database.to_path_buf(),
                lock_file: lock_path(database, lock),
            }
            .into()),
        }
    }

    /// Take the lock if no other process holds it; `None` when one does. Fails with a
    /// [`LockError`] when the lock file cannot be made, opened or locked.
    pub fn acquire_if_free(database: &Path, lock: Lock) -> anyhow::Result<Option<RunLock>> {
        let path = lock_path(database, lock);
        if let Some(parent) = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && !p.exists())
        {
            std::fs::create_dir_all(parent).map_err(|source| LockError::CreateDirectory {
                dir: parent.to_path_buf(),
                source,
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| LockError::Open {
                lock_file: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(RunLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(source)) => Err(LockError::Lock {
                lock_file: path,
                source,
            }
            .into()),
        }
    }
}

fn lock_path(database: &Path, lock: Lock) -> PathBuf {
    let mut name = database
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".");
    name.push(lock.suffix());
    database.with_file_name(name)
}

/// A write that failed because the file system holding the database is full (SQLite's
/// `SQLITE_FULL`, or an `ENOSPC` from a file of ours). SQLite rolled the transaction back, so
/// nothing already stored or queued was lost; the step can simply be run again once there is
/// room. Its text is the one explanation the command line prints (`commands::main` leaves out the
/// causes that only repeat SQLite's message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFull {
    /// The database whose disk is full.
    pub database: PathBuf,
    /// Where the file system holding it is mounted, when that can be found.
    pub mount_point: Option<PathBuf>,
    /// What SQLite (or the OS) said.
    pub cause: String,
}

impl std::fmt::Display for DiskFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the disk holding {} ", self.database.display())?;
        if let Some(mount) = &self.mount_point {
            write!(f, "(the file system mounted at {}) ", mount.display())?;
        }
        write!(
            f,
            "is full (SQLite: {}): free space, then run it again; nothing already stored was lost",
            self.cause
        )
    }
}

impl std::error::Error for DiskFull {}

/// SQLite's text for `SQLITE_FULL`, also found where an error crossed a thread as text.
pub const DISK_FULL_TEXT: &str = "database or disk is full";

/// The disk-full failure in `error`'s chain, if there is one: SQLite's `SQLITE_FULL` (typed, or
/// as SQLite's own text), or an IO error `StorageFull`. Returns what it said.
pub fn disk_full_cause(error: &anyhow::Error) -> Option<String> {
    let typed = error.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<rusqlite::Error>() {
            match e {
                rusqlite::Error::SqliteFailure(f, message)
                    if f.code == rusqlite::ErrorCode::DiskFull =>
                {
                    Some(
                        message
                            .clone()
                            .unwrap_or_else(|| DISK_FULL_TEXT.to_string()),
                    )
                }
                _ => None,
            }
        } else if let Some(e) = cause.downcast_ref::<rusqlite::ffi::Error>() {
            (e.code == rusqlite::ErrorCode::DiskFull).then(|| DISK_FULL_TEXT.to_string())
        } else if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            (e.kind() == std::io::ErrorKind::StorageFull).then(|| e.to_string())
        } else {
            None
        }
    });
    // An error a worker thread handed over as text keeps SQLite's wording: the innermost such.
    typed.or_else(|| {
        error
            .chain()
            .map(|cause| cause.to_string())
            .filter(|text| text.contains(DISK_FULL_TEXT))
            .last()
    })
}

/// When `error` is a full disk under the database at `database`, the explanation to give in its
/// place (see [`DiskFull`]); `None` otherwise.
pub fn disk_full_context(error: &anyhow::Error, database: &Path) -> Option<DiskFull> {
    if error.downcast_ref::<DiskFull>().is_some() {
        return None;
    }
    let cause = disk_full_cause(error)?;
    Some(DiskFull {
        database: database.to_path_buf(),
        mount_point: mount_point(database),
        cause,
    })
}

/// `error`, explained as a [`DiskFull`] of `database` when that is what it is.
pub fn explain_disk_full(error: anyhow::Error, database: &Path) -> anyhow::Error {
    match disk_full_context(&error, database) {
        Some(full) => error.context(full),
        None => error,
    }
}

/// `error` as one line: a [`DiskFull`] in its chain alone (it already says what SQLite said),
/// otherwise every cause (`{:#}`).
pub fn error_text(error: &anyhow::Error) -> String {
    match error.downcast_ref::<DiskFull>() {
        Some(full) => full.to_string(),
        None => format!("{error:#}"),
    }
}

/// The mount point of the file system holding `path` (or, while it does not exist, its nearest
/// existing ancestor): the highest ancestor on the same device.
fn mount_point(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let absolute = std::path::absolute(path).ok()?;
    let mut existing = absolute.as_path();
    let device = loop {
        match std::fs::metadata(existing) {
            Ok(meta) => break meta.dev(),
            Err(_) => existing = existing.parent()?,
        }
    };
    let mut mount = existing;
    while let Some(parent) = mount.parent() {
        match std::fs::metadata(parent) {
            Ok(meta) if meta.dev() == device => mount = parent,
            _ => break,
        }
    }
    Some(mount.to_path_buf())
}

/// Sizes of a database on disk: the main file and its write-ahead log, and the free pages
/// inside the file (reused by new rows; prune's incremental vacuum returns them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DatabaseSize {
    pub file_bytes: u64,
    pub wal_bytes: u64,
    pub page_size: u64,
    pub free_pages: u64,
    /// `free_pages × page_size`.
    pub free_bytes: u64,
}

/// The sizes of the database at `path` open on `conn` (files that do not exist count 0).
pub fn database_size(conn: &Connection, path: &Path) -> rusqlite::Result<DatabaseSize> {
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_os_string();
    wal.push("-wal");
    let page_size = conn.pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0))? as u64;
    let free_pages =
        conn.pragma_query_value(None, "freelist_count", |r| r.get::<_, i64>(0))? as u64;
    Ok(DatabaseSize {
        file_bytes: len(path),
        wal_bytes: len(Path::new(&wal)),
        page_size,
        free_pages,
        free_bytes: free_pages * page_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pragmas_are_set_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("t.db")).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let timeout: i64 = conn
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .unwrap();
        assert_eq!(timeout, BUSY_TIMEOUT.as_millis() as i64);
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn applying_the_schema_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open(&path).unwrap();
        conn.execute(
            "INSERT INTO computations (id, key, name, kind, scope, created_at) \
             VALUES ('aud_1', 'k', 'K', 'audience', 'user', 0)",
            [],
        )
        .unwrap();
        drop(conn);
        let mut conn = open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        migrate(&mut conn).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM computations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_version_1_database_keeps_its_planned_and_delivered_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../../tests/fixtures/schema_v1.sql"))
            .unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO computations (id, key, name, kind, scope, created_at)
               VALUES ('aud_1', 'vip', 'VIP', 'audience', 'user', 0);
             INSERT INTO snapshots (id, computation_id, taken_at, complete) VALUES (1, 'aud_1', 0, 1);
             INSERT INTO snapshot_rows (snapshot_id, entity_id, value) VALUES (1, 'u1', 'true');
             INSERT INTO entity_state (computation_id, subject, entity_id, email, planned, delivered)
               VALUES ('aud_1', 'user', 'u1', 'u1@example.com', 'true', 'true'),
                      ('aud_1', 'user', 'u2', 'u2@example.com', 'false', 'true'),
                      ('aud_1', 'user', 'u3', NULL, 'true', NULL);",
        )
        .unwrap();
        drop(conn);
        let conn = open(&path).unwrap();
        let planned = |e: &str| state::planned_row(&conn, "aud_1", "user", e).unwrap();
        assert_eq!(
            planned("u2"),
            (Some("u2@example.com".into()), Some("false".into()))
        );
        assert_eq!(planned("u3"), (None, Some("true".into())));
        assert_eq!(planned("u4"), (None, None));
        let delivered = |e: &str| state::delivered_value(&conn, "aud_1", "user", e).unwrap();
        assert_eq!(delivered("u2").as_deref(), Some("true"));
        assert_eq!(delivered("u3"), None);
        assert_eq!(
            state::planned_values(&conn, "aud_1", "user").unwrap().len(),
            3
        );
        let old: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'entity_state'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0);
    }

    /// Every table and column, and every index and trigger name, of a database.
    fn shape(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare(
                "SELECT m.type, m.name, coalesce(p.name || ' ' || p.type || ' ' || p.\"notnull\" || ' ' || \
                 coalesce(p.dflt_value, '') || ' ' || p.pk, '') \
                 FROM sqlite_schema m LEFT JOIN pragma_table_info(m.name) p ON m.type = 'table' \
                 WHERE m.name NOT LIKE 'sqlite_%' ORDER BY 1, 2, 3",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok(format!(
                "{} {} {}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?
            ))
        })
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn a_migrated_database_has_the_shape_of_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.db");
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch(include_str!("../../tests/fixtures/schema_v1.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let migrated = open(&old).unwrap();
        let new = open(&dir.path().join("new.db")).unwrap();
        assert_eq!(shape(&migrated), shape(&new));
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = open(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("upgrade audience-sync"),
            "{err:#}"
        );
    }

    #[test]
    fn locks_are_exclusive_per_kind() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let plan = RunLock::try_acquire(&db, Lock::Plan).unwrap();
        let err = RunLock::try_acquire(&db, Lock::Plan).unwrap_err();
        assert!(format!("{err:#}").contains("planning a run on"), "{err:#}");
        let deliver = RunLock::acquire_if_free(&db, Lock::Deliver).unwrap();
        assert!(
            deliver.is_some(),
            "planning and delivering are separate locks"
        );
        assert!(
            RunLock::acquire_if_free(&db, Lock::Deliver)
                .unwrap()
                .is_none()
        );
        drop(plan);
        RunLock::try_acquire(&db, Lock::Plan).unwrap();
    }

    #[test]
    fn a_full_disk_is_explained_with_the_database_and_its_file_system() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let error = anyhow::Error::new(full).context("the load failed; nothing was stored");
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state/t.db");
        let explained = explain_disk_full(error, &db);
        let text = explained.to_string();
        assert!(
            text.starts_with(&format!("the disk holding {} ", db.display())),
            "{text}"
        );
        assert!(
            text.contains(
                "is full (SQLite: database or disk is full): free space, then run it \
                           again; nothing already stored was lost"
            ),
            "{text}"
        );
        assert!(text.contains("(the file system mounted at /"), "{text}");
        // Explained once, however often it passes an edge.
        let again = explain_disk_full(explained, &db);
        assert!(again.downcast_ref::<DiskFull>().is_some());
        assert_eq!(
            again.chain().count(),
            4,
            "once, over the three it explains: {again:#}"
        );

        // As text (a worker thread's error), and as an IO error.
        let text_only = anyhow::anyhow!("diff worker: database or disk is full");
        assert!(disk_full_context(&text_only, &db).is_some());
        let io = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(disk_full_context(&io, &db).is_some());
        // Anything else is left alone.
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(disk_full_context(&anyhow::Error::new(busy), &db).is_none());
    }

    #[test]
    fn database_size_counts_the_file_the_wal_and_free_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE filler (x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
             INSERT INTO filler SELECT zeroblob(4000) FROM n;",
        )
        .unwrap();
        let size = database_size(&conn, &path).unwrap();
        assert!(size.wal_bytes > 50 * 4000, "{size:?}");
        assert_eq!(size.free_pages, 0);
        conn.execute_batch("DELETE FROM filler; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        let size = database_size(&conn, &path).unwrap();
        assert!(size.free_pages >= 50, "{size:?}");
        assert_eq!(size.free_bytes, size.free_pages * size.page_size);
        assert_eq!(size.wal_bytes, 0);
        assert!(size.file_bytes >= size.free_bytes, "{size:?}");
    }
}
