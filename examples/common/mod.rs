//! What the benchmark binaries (`examples/bench_*.rs`) share: removing and sizing a database
//! with its companion files, megabytes, medians and numeric environment settings. Each benchmark
//! uses some of them.
#![allow(dead_code)]

use std::path::Path;

/// Remove the database at `db` with its WAL, shared memory and lock files.
pub fn remove_db(db: &Path) {
    for suffix in ["", "-wal", "-shm", ".lock", ".plan.lock", ".deliver.lock"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// The database's size on disk: its file and its WAL.
pub fn db_size(db: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes in (decimal) megabytes.
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The median (the upper one of an even count); NaN of nothing.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The environment variable `name` parsed, or `default` when it is unset or does not parse.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
