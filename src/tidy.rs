//! Tidy checks: rules of ARCHITECTURE.md that hold over the source files themselves, checked by
//! reading them (in the spirit of rust-analyzer's `tidy.rs`).
//!
//! - `sql_lives_only_in_src_store`: outside `src/store/`, the non-test code of `src/` and
//!   `crates/*/src/` holds no SQL statement in a string literal and no call that runs SQL
//!   (`execute_batch(`, `.prepare(`, `query_row(`, `pragma_update(`, ...).
//! - `every_module_starts_with_a_doc_comment`: each `.rs` file there begins with `//!`.
//! - `no_test_is_ignored`: no `#[ignore]` under `src/`, `tests/`, `crates/*/src/` or
//!   `crates/*/tests/`: a test either runs or is gone.
//!
//! A file's test code is everything from its first top-level `#[cfg(test)]` that opens an inline
//! module (`mod tests {`) to its end, and the whole of a file declared as `#[cfg(test)] mod x;`
//! (`plan/tests.rs`, this file): tests may set up data with SQL.

use std::path::{Path, PathBuf};

/// SQL may appear only in files under this directory (relative to the workspace root).
const STORE: &str = "src/store/";

/// Calls that run SQL on a connection, whatever their argument. `.prepare(` keeps its dot so
/// that an associated function of that name (`Query::prepare(`) is not one.
const SQL_CALLS: &[&str] = &[
    "execute_batch(",
    ".prepare(",
    "prepare_cached(",
    "query_row(",
    "query_one(",
    "pragma_update(",
    "pragma_update_and_check(",
    "pragma_query(",
    "pragma_query_value(",
    ".pragma(",
];

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `src/` and every `crates/*/src/`.
fn source_dirs() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut dirs = vec![root.join("src")];
    dirs.extend(crate_dirs(&root).into_iter().map(|c| c.join("src")));
    dirs
}

/// `tests/` and every `crates/*/tests/`.
fn test_dirs() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut dirs = vec![root.join("tests")];
    dirs.extend(crate_dirs(&root).into_iter().map(|c| c.join("tests")));
    dirs
}

fn crate_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `path` relative to the workspace root, with `/` separators.
fn relative(path: &Path) -> String {
    let root = workspace_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// A string literal of a source file: the line it starts on (from 1) and its text as written
/// (escapes not decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Literal {
    line: usize,
    text: String,
}

/// A source file split into its code and its string literals.
#[derive(Debug)]
struct Scanned {
    /// The source with comments and string and character literals blanked out (newlines kept,
    /// so lines and columns still match).
    code: String,
    strings: Vec<Literal>,
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Split Rust source into code and string literals: `//` and nested `/* */` comments, `"…"`
/// (and `b"…"`, `c"…"`) strings with their escapes, raw strings `r#"…"#`, character literals
/// (told from lifetimes).
fn scan(source: &str) -> Scanned {
    let chars: Vec<char> = source.chars().collect();
    let mut code = String::with_capacity(source.len());
    let mut strings = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Blank chars[from..to] into `code`, counting lines; returns their text.
    let blank = |code: &mut String, line: &mut usize, from: usize, to: usize| -> String {
        let mut text = String::new();
        for &c in &chars[from..to] {
            text.push(c);
            if c == '\n' {
                *line += 1;
                code.push('\n');
            } else {
                code.push(' ');
            }
        }
        text
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let after_ident = i > 0 && is_ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            let end = (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len());
            blank(&mut code, &mut line, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let (mut depth, mut j) = (0usize, i);
            while j < chars.len() {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut code, &mut line, i, j.min(chars.len()));
            i = j;
        } else if c == '"' {
            let start_line = line;
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(chars.len());
            let text = blank(&mut code, &mut line, i, end);
            strings.push(Literal {
                line: start_line,
                text: text[1..text.len() - usize::from(end > j)].to_string(),
            });
            i = end;
        } else if (c == 'r' || ((c == 'b' || c == 'c') && next == Some('r'))) && !after_ident {
            // A raw string: r"…", r#"…"#, br"…", cr"…"; otherwise an identifier (r#type too).
            let mut j = i + if c == 'r' { 1 } else { 2 };
            let hashes = (j..chars.len()).take_while(|&k| chars[k] == '#').count();
            j += hashes;
            if chars.get(j) != Some(&'"') {
                code.push(c);
                i += 1;
                continue;
            }
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let body = j + 1;
            let mut k = body;
            while k < chars.len() && !chars[k..].starts_with(&close) {
                k += 1;
            }
            let start_line = line;
            let end = (k + close.len()).min(chars.len());
            let text: String = chars[body..k.min(chars.len())].iter().collect();
            blank(&mut code, &mut line, i, end);
            strings.push(Literal {
                line: start_line,
                text,
            });
            i = end;
        } else if c == '\'' {
            // '\n', '\'', '\u{…}', 'x' are characters; 'a (no closing quote next) a lifetime.
            let end = if next == Some('\\') {
                // The escaped character, then anything up to the closing quote ('\u{…}').
                (i + 3..chars.len())
                    .find(|&j| chars[j] == '\'')
                    .map(|j| j + 1)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            match end {
                Some(end) => {
                    blank(&mut code, &mut line, i, end);
                    i = end;
                }
                None => {
                    code.push(c);
                    i += 1;
                }
            }
        } else {
            if c == '\n' {
                line += 1;
            }
            code.push(c);
            i += 1;
        }
    }
    Scanned { code, strings }
}

/// Whether a string literal is (the start of) a SQL statement: after optional whitespace or an
/// opening parenthesis, a statement's keyword followed by what that statement takes (`DELETE
/// FROM`, `INSERT INTO`, `UPDATE x SET`, `CREATE TABLE`, ...), so that an HTTP method (`"DELETE"`)
/// or a sentence ("Select one") is not one. Keywords in capitals, or the unambiguous pairs in
/// lower case too.
fn sql_statement(literal: &str) -> bool {
    let text = literal.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
    if !text.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return false;
    }
    let words: Vec<&str> = text
        .split(|c: char| !is_ident(c))
        .filter(|w| !w.is_empty())
        .take(4)
        .collect();
    let Some(&first) = words.first() else {
        return false;
    };
    let upper = first.chars().all(|c| c.is_ascii_uppercase());
    let lower = first.chars().all(|c| c.is_ascii_lowercase());
    if !upper && !lower {
        return false;
    }
    let word = |n: usize| words.get(n).map(|w| w.to_ascii_uppercase());
    let next_is = |options: &[&str]| word(1).is_some_and(|w| options.contains(&w.as_str()));
    let alone = words.len() == 1;
    let has_from = text
        .split(|c: char| !is_ident(c))
        .any(|w| w.eq_ignore_ascii_case("from"));
    match first.to_ascii_uppercase().as_str() {
        "SELECT" => word(1).is_some() && (upper || has_from),
        "INSERT" => next_is(&["INTO", "OR"]),
        "REPLACE" => next_is(&["INTO"]),
        "UPDATE" => next_is(&["OR"]) || (2..4).any(|n| word(n).as_deref() == Some("SET")),
        "DELETE" => next_is(&["FROM"]),
        "CREATE" => next_is(&[
            "TABLE",
            "INDEX",
            "UNIQUE",
            "VIEW",
            "TRIGGER",
            "TEMP",
            "TEMPORARY",
            "VIRTUAL",
        ]),
        "DROP" => next_is(&["TABLE", "INDEX", "VIEW", "TRIGGER"]),
        "ALTER" => next_is(&["TABLE"]),
        "PRAGMA" => word(1).is_some(),
        "WITH" => {
            next_is(&["RECURSIVE"])
                || (word(2).as_deref() == Some("AS")
                    && text
                        .split_once(words[2])
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with('(')))
        }
        "BEGIN" => {
            upper && (alone || next_is(&["DEFERRED", "IMMEDIATE", "EXCLUSIVE", "TRANSACTION"]))
        }
        "COMMIT" | "ROLLBACK" => upper && (alone || next_is(&["TRANSACTION", "TO"])),
        "SAVEPOINT" | "RELEASE" => upper && words.len() == 2,
        "VACUUM" | "ANALYZE" | "REINDEX" => upper && words.len() <= 2,
        "ATTACH" | "DETACH" => upper && next_is(&["DATABASE"]),
        "EXPLAIN" => upper && next_is(&["QUERY", "SELECT", "INSERT", "UPDATE", "DELETE"]),
        _ => false,
    }
}

/// The line (from 1) at which a file's test code begins: its first top-level `#[cfg(test)]`
/// whose item is an inline module. `None`: the file has none.
fn test_code_from(code: &str) -> Option<usize> {
    let lines: Vec<&str> = code.lines().collect();
    (0..lines.len())
        .find(|&n| {
            lines[n].trim_end() == "#[cfg(test)]"
                && lines[n + 1..]
                    .iter()
                    .find(|l| !l.trim().is_empty() && !l.starts_with("#["))
                    .is_some_and(|item| {
                        let item = item
                            .trim_start_matches("pub ")
                            .trim_start_matches("pub(crate) ");
                        item.starts_with("mod ") && item.trim_end().ends_with('{')
                    })
        })
        .map(|n| n + 1)
}

/// The files `file` declares as test modules (`#[cfg(test)]` then `mod x;`).
fn test_modules(file: &Path, code: &str) -> Vec<PathBuf> {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let children = if matches!(name, "mod.rs" | "lib.rs" | "main.rs") {
        file.parent().map(Path::to_path_buf)
    } else {
        file.parent()
            .zip(file.file_stem())
            .map(|(dir, stem)| dir.join(stem))
    };
    let Some(children) = children else {
        return Vec::new();
    };
    let lines: Vec<&str> = code.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| {
            let module = w[1].trim_start_matches("pub ").strip_prefix("mod ")?;
            let module = module.strip_suffix(';')?.trim();
            let file = children.join(format!("{module}.rs"));
            Some(if file.exists() {
                file
            } else {
                children.join(module).join("mod.rs")
            })
        })
        .collect()
}

/// The SQL in one file's non-test code: `line: what` for each statement and call.
fn sql_in(source: &str) -> Vec<(usize, String)> {
    let scanned = scan(source);
    let end = test_code_from(&scanned.code).unwrap_or(usize::MAX);
    let mut found: Vec<(usize, String)> = scanned
        .strings
        .iter()
        .filter(|s| s.line < end && sql_statement(&s.text))
        .map(|s| {
            let short: String = s.text.chars().take(60).collect();
            (s.line, format!("SQL statement {short:?}"))
        })
        .collect();
    for (n, text) in scanned.code.lines().enumerate() {
        if n + 1 >= end {
            break;
        }
        for call in SQL_CALLS {
            let hit = text
                .match_indices(call)
                .any(|(at, _)| call.starts_with('.') || !text[..at].ends_with(is_ident));
            if hit {
                found.push((n + 1, format!("call `{call}`")));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn sql_lives_only_in_src_store() {
    let files: Vec<PathBuf> = source_dirs().iter().flat_map(|d| rust_files(d)).collect();
    let mut tests: Vec<PathBuf> = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        tests.extend(test_modules(file, &scan(&source).code));
    }
    let mut offences = Vec::new();
    for file in &files {
        let name = relative(file);
        if name.starts_with(STORE) || tests.contains(file) {
            continue;
        }
        let source = std::fs::read_to_string(file).unwrap();
        for (line, what) in sql_in(&source) {
            offences.push(format!("{name}:{line}: {what}"));
        }
    }
    assert!(
        offences.is_empty(),
        "SQL outside {STORE} (ARCHITECTURE.md: SQL lives in `src/store/`; move it into a store \
         function):\n{}",
        offences.join("\n")
    );
    assert!(files.len() > 50, "found only {} files", files.len());
}

/// Outside `src/store/`, non-test code names the store's types (`store::Connection`,
/// `store::Error`, `store::Result`), never the database engine's crate: a second backend is then
/// an addition to the store (ARCHITECTURE.md).
#[test]
fn the_database_engine_is_named_only_in_src_store() {
    let files: Vec<PathBuf> = source_dirs().iter().flat_map(|d| rust_files(d)).collect();
    let mut tests: Vec<PathBuf> = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        tests.extend(test_modules(file, &scan(&source).code));
    }
    let mut offences = Vec::new();
    for file in &files {
        let name = relative(file);
        if name.starts_with(STORE) || tests.contains(file) || name.ends_with("tidy.rs") {
            continue;
        }
        let code = scan(&std::fs::read_to_string(file).unwrap()).code;
        let end = test_code_from(&code).unwrap_or(usize::MAX);
        for (n, line) in code.lines().enumerate().take_while(|(n, _)| n + 1 < end) {
            let hit = line
                .match_indices("rusqlite")
                .any(|(at, _)| !line[..at].ends_with(is_ident));
            if hit {
                offences.push(format!("{name}:{}", n + 1));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the database engine named outside {STORE} (use store::Connection / Error / Result):\n{}",
        offences.join("\n")
    );
}

/// Nothing is renamed on import (`use a::b as c`): a module, type or function is called by its
/// own name everywhere, so a name says what the thing is. `as _` (a trait brought into scope
/// for its methods) is not a rename.
#[test]
fn nothing_is_renamed_on_import() {
    let mut found = Vec::new();
    for file in source_dirs().iter().flat_map(|d| rust_files(d)) {
        let code = scan(&std::fs::read_to_string(&file).unwrap()).code;
        let mut in_use = false;
        for (n, line) in code.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("use ") || trimmed.starts_with("pub use ") {
                in_use = true;
            }
            if in_use {
                let renamed = line.match_indices(" as ").any(|(at, _)| {
                    let after = &line[at + 4..];
                    !after.starts_with('_') && after.starts_with(is_ident)
                });
                if renamed {
                    found.push(format!("{}:{}", relative(&file), n + 1));
                }
            }
            if in_use && line.contains(';') {
                in_use = false;
            }
        }
    }
    assert!(
        found.is_empty(),
        "renamed on import (call it by its own name):\n{}",
        found.join("\n")
    );
}

/// The core crate stays pure: its `Cargo.toml` depends on no database, HTTP or async crate, so
/// the compiler refuses IO there (ARCHITECTURE.md). The same as `cargo tree -p
/// audience-sync-core -e normal` showing none of them, read from the manifest.
#[test]
fn the_core_crate_depends_on_no_database_network_or_runtime() {
    let manifest =
        std::fs::read_to_string(workspace_root().join("crates/core/Cargo.toml")).unwrap();
    let mut section = String::new();
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section != "[dependencies]" {
            continue;
        }
        let name = line.split(['=', ' ', '.']).next().unwrap_or("");
        for banned in ["rusqlite", "reqwest", "tokio", "hyper", "axum", "postgres"] {
            if name.starts_with(banned) {
                found.push(name.to_string());
            }
        }
    }
    assert!(
        manifest.contains("[dependencies]") && manifest.contains("serde_json"),
        "crates/core/Cargo.toml not read as expected"
    );
    assert!(found.is_empty(), "the core crate depends on {found:?}");
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let missing: Vec<String> = source_dirs()
        .iter()
        .flat_map(|d| rust_files(d))
        .filter(|file| !std::fs::read_to_string(file).unwrap().starts_with("//!"))
        .map(|file| relative(&file))
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a `//!` doc comment on their first line:\n{}",
        missing.join("\n")
    );
}

#[test]
fn no_test_is_ignored() {
    let needle = concat!("#[", "ignore");
    let mut found = Vec::new();
    for file in source_dirs()
        .iter()
        .chain(&test_dirs())
        .flat_map(|d| rust_files(d))
    {
        let code = scan(&std::fs::read_to_string(&file).unwrap()).code;
        for (n, line) in code.lines().enumerate() {
            if line.contains(needle) {
                found.push(format!("{}:{}", relative(&file), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "ignored tests (a test either runs or is gone):\n{}",
        found.join("\n")
    );
}

/// Which top-level module of the main crate names which (`crate::x` in non-test code).
fn module_imports() -> Graph {
    let src = workspace_root().join("src");
    let mut tests: Vec<PathBuf> = Vec::new();
    for file in &rust_files(&src) {
        let source = std::fs::read_to_string(file).unwrap();
        tests.extend(test_modules(file, &scan(&source).code));
    }
    sibling_imports(&src, &src, &tests)
}

/// A circle in `graph`, as the modules around it (first repeated last), if there is one.
fn a_circle(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn walk(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = walk(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = Default::default();
    graph
        .keys()
        .find_map(|node| walk(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_top_level_modules_import_each_other_without_circles() {
    let graph = module_imports();
    assert!(
        graph.contains_key("store") && graph.contains_key("commands"),
        "{graph:?}"
    );
    if let Some(circle) = a_circle(&graph) {
        panic!(
            "the modules import each other in a circle: {} (ARCHITECTURE.md: layers depend \
             downwards only)",
            circle.join(" -> ")
        );
    }
    // The check itself finds a circle where there is one.
    let mut looped = graph.clone();
    looped
        .entry("load".to_string())
        .or_default()
        .insert("commands".to_string());
    assert!(
        a_circle(&looped).is_some(),
        "a planted circle was not found"
    );
}

type Graph = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// Within one module directory `dir` of the crate whose source root is `root`: which sibling
/// module each child module's non-test code names — `super::x` (or `super::super::x` from a
/// file one directory further down), or `crate::<the module's path>::x`.
fn sibling_imports(root: &Path, dir: &Path, tests: &[PathBuf]) -> Graph {
    let prefix: String = dir
        .strip_prefix(root)
        .unwrap()
        .components()
        .map(|c| format!("{}::", c.as_os_str().to_string_lossy()))
        .collect();
    let mut siblings: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let module = if path.is_dir() {
            path.join("mod.rs").exists()
        } else {
            path.extension().is_some_and(|e| e == "rs")
                && !matches!(name.as_str(), "mod" | "lib" | "main" | "tests" | "tidy")
        };
        if module {
            siblings.push((name, path));
        }
    }
    let names: std::collections::BTreeSet<String> =
        siblings.iter().map(|(n, _)| n.clone()).collect();
    let mut graph = Graph::new();
    for (name, path) in &siblings {
        let mut files = if path.is_dir() {
            rust_files(path)
        } else {
            vec![path.clone()]
        };
        let below = path.with_extension("");
        if !path.is_dir() && below.is_dir() {
            files.extend(rust_files(&below));
        }
        let edges = graph.entry(name.clone()).or_default();
        for file in files.iter().filter(|f| !tests.contains(f)) {
            let parent = file.parent().unwrap();
            let mut depth = parent.strip_prefix(dir).unwrap().components().count();
            if depth > 0 && file.file_name().is_some_and(|f| f == "mod.rs") {
                depth -= 1;
            }
            let up = "super::".repeat(depth + 1);
            let code = scan(&std::fs::read_to_string(file).unwrap()).code;
            let end = test_code_from(&code).unwrap_or(usize::MAX);
            for line in code.lines().take(end.saturating_sub(1)) {
                for lead in [up.clone(), format!("crate::{prefix}")] {
                    for (at, _) in line.match_indices(lead.as_str()) {
                        if line[..at].ends_with(is_ident) || line[..at].ends_with("::") {
                            continue;
                        }
                        let rest = &line[at + lead.len()..];
                        // `super::{a, b}` names several.
                        let named: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                            group
                                .split(['}', ','])
                                .map(|n| n.trim().split("::").next().unwrap_or("").to_string())
                                .collect()
                        } else {
                            vec![rest.chars().take_while(|c| is_ident(*c)).collect()]
                        };
                        for other in named {
                            if names.contains(&other) && &other != name {
                                edges.insert(other);
                            }
                        }
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn the_submodules_of_every_module_import_each_other_without_circles() {
    let mut checked = 0;
    let mut circles = Vec::new();
    for root in source_dirs() {
        let files = rust_files(&root);
        let mut tests: Vec<PathBuf> = Vec::new();
        for file in &files {
            let source = std::fs::read_to_string(file).unwrap();
            tests.extend(test_modules(file, &scan(&source).code));
        }
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            let graph = sibling_imports(&root, &dir, &tests);
            checked += graph.len();
            if let Some(circle) = a_circle(&graph) {
                circles.push(format!("{}: {}", relative(&dir), circle.join(" -> ")));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "submodules that import each other in a circle (move what both need into their parent or \
         a third module):\n{}",
        circles.join("\n")
    );
    assert!(checked > 60, "checked only {checked} modules");
    // The check finds a planted circle: `emit` naming `run` while `run` names `emit`.
    let root = workspace_root().join("src");
    let plan = sibling_imports(&root, &root.join("plan"), &[]);
    assert!(plan["run"].contains("emit"), "{plan:?}");
    let mut looped = plan.clone();
    looped.get_mut("emit").unwrap().insert("run".to_string());
    assert!(a_circle(&looped).is_some());
}

#[test]
fn the_scanner_tells_code_strings_comments_and_characters_apart() {
    let source = "let q = '\"'; // \"SELECT 1\"\n/* \"x\" /* nested */ */ let s = \"a\\\"b\";\n\
                  let r = r#\"raw \"quoted\"\"#; fn f<'a>(x: &'a str) -> char { '\\'' }\n\
                  let t = b\"bytes\"; let r#type = 1;";
    let scanned = scan(source);
    let texts: Vec<(usize, &str)> = scanned
        .strings
        .iter()
        .map(|s| (s.line, s.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        vec![(2, "a\\\"b"), (3, "raw \"quoted\""), (4, "bytes")]
    );
    assert_eq!(scanned.code.lines().count(), 4);
    assert!(
        scanned.code.contains("fn f<'a>(x: &'a str)"),
        "{}",
        scanned.code
    );
    assert!(scanned.code.contains("let r#type = 1;"), "{}", scanned.code);
    assert!(!scanned.code.contains("SELECT"), "{}", scanned.code);
}

#[test]
fn sql_statements_are_told_from_other_text() {
    for sql in [
        "SELECT 1",
        "SELECT status, count(*) FROM outbox",
        "  \n  SELECT x",
        "(SELECT id FROM snapshots WHERE complete = 1)",
        "select id from t",
        "INSERT INTO orders (user_id) VALUES (?1)",
        "INSERT OR IGNORE INTO t VALUES (1)",
        "UPDATE outbox SET status = 'dead'",
        "update t set a = 1",
        "DELETE FROM plan_cursors",
        "CREATE TABLE IF NOT EXISTS orders (order_id INTEGER PRIMARY KEY)",
        "CREATE UNIQUE INDEX i ON t (a)",
        "DROP TABLE t",
        "ALTER TABLE t ADD COLUMN c",
        "PRAGMA quick_check",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "WITH RECURSIVE n(i) AS (SELECT 1) SELECT i FROM n",
        "BEGIN DEFERRED",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "VACUUM",
    ] {
        assert!(sql_statement(sql), "{sql:?} is SQL");
    }
    for text in [
        "DELETE",
        "DELETE /contacts/{id}/companies/{company_id}",
        "Select a computation",
        "select one of them",
        "update the settings",
        "the database fails PRAGMA quick_check",
        "with it as a guide",
        "Begin here",
        "commit",
        "",
        "{\"type\":\"track\"}",
        "user",
    ] {
        assert!(!sql_statement(text), "{text:?} is not SQL");
    }
}

#[test]
fn sql_is_found_in_code_but_not_in_tests_or_comments() {
    let source = "//! A module.\n\
                  fn f(conn: &Connection) {\n\
                  \x20   // conn.execute_batch(\"DELETE FROM t\")\n\
                  \x20   let sql = \"DELETE FROM t\";\n\
                  \x20   conn.query_row(sql, [], |r| r.get(0));\n\
                  \x20   let q = Query::prepare(reader, sql);\n\
                  \x20   conn\n\
                  \x20       .prepare(sql);\n\
                  }\n\
                  #[cfg(test)]\n\
                  mod tests {\n\
                  \x20   fn g() { conn.execute_batch(\"CREATE TABLE t (a)\"); }\n\
                  }\n";
    assert_eq!(
        sql_in(source),
        vec![
            (4, "SQL statement \"DELETE FROM t\"".to_string()),
            (5, "call `query_row(`".to_string()),
            (8, "call `.prepare(`".to_string()),
        ]
    );
    let declared = "//! A module.\n#[cfg(test)]\nmod tests;\nfn f() { let s = \"PRAGMA x\"; }\n";
    assert_eq!(test_code_from(&scan(declared).code), None);
    assert_eq!(
        sql_in(declared),
        vec![(4, "SQL statement \"PRAGMA x\"".to_string())]
    );
    let src = workspace_root().join("src");
    let declared_in = |file: &str| {
        let file = src.join(file);
        test_modules(&file, &scan(&std::fs::read_to_string(&file).unwrap()).code)
    };
    assert!(declared_in("lib.rs").contains(&src.join("tidy.rs")));
    assert_eq!(declared_in("plan/mod.rs"), vec![src.join("plan/tests.rs")]);
}
