//! Reading a corpus manifest: `FILE | ARGS | EXIT | NEEDLE ...`, `#` comments.

use std::path::{Path, PathBuf};

pub struct Case {
    pub file: String,
    /// Written by the test rather than kept in the repository.
    pub generated: bool,
    pub args: Vec<String>,
    pub exit: i32,
    pub needles: Vec<String>,
}

pub fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name)
}

pub fn manifest(dir: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(dir.join("manifest.txt")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let parts: Vec<&str> = line.split(" | ").map(str::trim).collect();
            assert!(parts.len() >= 3, "bad manifest line: {line}");
            let (file, generated) = match parts[0].strip_prefix("generated:") {
                Some(name) => (name.to_string(), true),
                None => (parts[0].to_string(), false),
            };
            Case {
                file,
                generated,
                args: parts[1].split_whitespace().map(str::to_string).collect(),
                exit: parts[2].parse().unwrap(),
                needles: parts[3..].iter().map(|s| s.to_string()).collect(),
            }
        })
        .collect()
}

/// Every file in the corpus directory is named by the manifest, and the other way round.
pub fn check_complete(dir: &Path, cases: &[Case]) {
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "manifest.txt")
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = cases
        .iter()
        .filter(|c| !c.generated)
        .map(|c| c.file.clone())
        .collect();
    listed.sort();
    assert_eq!(
        on_disk,
        listed,
        "{}: files and manifest differ",
        dir.display()
    );
}

/// The database, if there is one, passes the integrity checks.
pub fn integrity_ok(db: &Path) {
    if db.exists() {
        crate::harness::assert_integrity(db);
    }
}

/// Longer than `audience_sync::load::MAX_LINE_BYTES`.
pub const HUGE: usize = audience_sync::load::MAX_LINE_BYTES + 10;
