//! Snapshot loading: streaming NDJSON / CSV rows into typed rows, refused with file, line, field and reason.
//!
//! Reading is row by row (a 5-million-row file is never held in memory); storing is one
//! transaction in `store::snapshots`, so a bad row anywhere stores nothing.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub use crate::domain::{Kind, Scope};
pub use audience_sync_core::json::{json_reason, strict_json};

/// The longest input line (NDJSON) or CSV record accepted: a longer one is refused rather than
/// held in memory, since no row of a snapshot comes near it.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The UTF-8 byte order mark some exporters (Excel, PowerShell) put at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A reader that drops a leading UTF-8 byte order mark.
fn skip_bom(mut reader: Box<dyn Read>) -> io::Result<Box<dyn Read>> {
    let mut head = [0u8; 3];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if &head[..filled] == BOM {
        Ok(reader)
    } else {
        Ok(Box::new(
            io::Cursor::new(head[..filled].to_vec()).chain(reader),
        ))
    }
}

/// A reader that turns every CRLF into LF (a lone CR is kept).
struct CrlfToLf {
    inner: Box<dyn Read>,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
}

impl CrlfToLf {
    fn new(inner: Box<dyn Read>) -> CrlfToLf {
        CrlfToLf {
            inner,
            buf: vec![0; 1 << 16].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
        }
    }
}

impl Read for CrlfToLf {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // Keep at least two bytes buffered (unless at the end), so a CR always sees what follows.
        while self.len - self.pos < 2 && !self.eof {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
            match self.inner.read(&mut self.buf[self.len..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut written = 0;
        while written < out.len() && self.pos < self.len {
            let byte = self.buf[self.pos];
            if byte == b'\r' {
                if self.pos + 1 < self.len {
                    if self.buf[self.pos + 1] == b'\n' {
                        self.pos += 1;
                        continue;
                    }
                } else if !self.eof {
                    break;
                }
            }
            out[written] = byte;
            written += 1;
            self.pos += 1;
        }
        Ok(written)
    }
}

/// The input format, decided by the file's extension (`-` is NDJSON on standard input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

/// Where rows come from: a named file or standard input.
#[derive(Debug, Clone)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    pub fn from_arg(path: &Path) -> Input {
        if path.as_os_str() == "-" {
            Input::Stdin
        } else {
            Input::File(path.to_path_buf())
        }
    }

    /// The name used in error messages.
    pub fn display_name(&self) -> String {
        match self {
            Input::Stdin => "<stdin>".to_string(),
            Input::File(path) => path.display().to_string(),
        }
    }

    pub fn format(&self) -> Result<Format, LoadError> {
        match self {
            Input::Stdin => Ok(Format::Ndjson),
            Input::File(path) => {
                let ext = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase);
                match ext.as_deref() {
                    Some("ndjson" | "jsonl") => Ok(Format::Ndjson),
                    Some("csv") => Ok(Format::Csv),
                    _ => Err(LoadError::Input {
                        file: self.display_name(),
                        reason: "unknown file type: use .ndjson or .jsonl (NDJSON), .csv (CSV \
                                 with a header), or - for NDJSON on standard input"
                            .to_string(),
                    }),
                }
            }
        }
    }

    fn open(&self) -> Result<Box<dyn Read>, LoadError> {
        match self {
            Input::Stdin => Ok(Box::new(io::stdin().lock())),
            Input::File(path) => File::open(path)
                .map(|f| Box::new(f) as Box<dyn Read>)
                .map_err(|e| LoadError::Input {
                    file: self.display_name(),
                    reason: e.to_string(),
                }),
        }
    }
}

/// Why a load stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// One row is wrong: names the file, the line, the field (when one is to blame) and why.
    #[error("{file}:{line}: {}{reason}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Row {
        file: String,
        line: u64,
        field: Option<String>,
        reason: String,
    },
    /// The input as a whole cannot be read.
    #[error("{file}: {reason}")]
    Input { file: String, reason: String },
    /// The command's arguments do not fit the stored computation.
    #[error("{0}")]
    Usage(String),
    /// The database failed while the rows were stored (`store` converts its errors into
    /// this; `load` itself knows no database).
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LoadError {
    fn row(file: &str, line: u64, field: Option<&str>, reason: impl fmt::Display) -> LoadError {
        LoadError::Row {
            file: file.to_string(),
            line,
            field: field.map(str::to_string),
            reason: reason.to_string(),
        }
    }

    /// Bad input or bad usage (exit 2) rather than a runtime failure (exit 1).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, LoadError::Database(_))
    }
}

/// One input row as named fields, before it is checked against what the snapshot expects.
/// CSV cells that are empty are left out, so they read as absent.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub line: u64,
    pub fields: Map<String, Value>,
}

/// A row of a computation snapshot, ready for `snapshot_rows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub line: u64,
    pub entity_id: String,
    pub email: Option<String>,
    /// JSON text; `None` when the row carries no value (a trait row with `null`).
    pub value: Option<String>,
}

/// A row of an account membership snapshot, ready for `membership_rows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipRow {
    pub line: u64,
    pub group_id: String,
    /// The user's entity id: its user_id, or its lower-cased email when it has none.
    pub user_id: String,
    pub email: Option<String>,
}

/// Streams [`Record`]s out of an input, one at a time.
pub struct Records {
    file: String,
    inner: RecordsInner,
}

enum RecordsInner {
    Ndjson {
        reader: BufReader<Box<dyn Read>>,
        line: u64,
        buf: Vec<u8>,
    },
    Csv {
        reader: csv::Reader<Box<dyn Read>>,
        headers: Vec<String>,
        record: csv::ByteRecord,
    },
}

impl Records {
    /// Open `input` and, for CSV, read and check its header against `columns`.
    pub fn open(input: &Input, columns: &[&str]) -> Result<Records, LoadError> {
        let format = input.format()?;
        let reader = input.open()?;
        Records::from_reader(input.display_name(), format, reader, columns)
    }

    /// Read records of `format` from any reader; `file` names it in errors. A leading UTF-8
    /// byte order mark is skipped; CRLF line endings are accepted.
    pub fn from_reader(
        file: String,
        format: Format,
        reader: Box<dyn Read>,
        columns: &[&str],
    ) -> Result<Records, LoadError> {
        let inner = match format {
            Format::Ndjson => RecordsInner::Ndjson {
                reader: BufReader::with_capacity(
                    1 << 16,
                    skip_bom(reader).map_err(|e| LoadError::Input {
                        file: file.clone(),
                        reason: e.to_string(),
                    })?,
                ),
                line: 0,
                buf: Vec::new(),
            },
            Format::Csv => {
                // The csv crate skips a leading byte order mark itself; CRLF line endings are
                // turned into LF first, as the crate counts a record after a CRLF one line early.
                let reader: Box<dyn Read> = Box::new(CrlfToLf::new(reader));
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(true)
                    .from_reader(reader);
                let raw = reader
                    .byte_headers()
                    .map_err(|e| csv_error(&file, e))?
                    .clone();
                let mut headers = Vec::with_capacity(raw.len());
                for cell in raw.iter() {
                    let name = std::str::from_utf8(cell)
                        .map_err(|_| {
                            LoadError::row(&file, 1, None, "the header is not valid UTF-8")
                        })?
                        .trim()
                        .to_string();
                    if !columns.contains(&name.as_str()) {
                        return Err(LoadError::row(
                            &file,
                            1,
                            Some(&name),
                            format!("unknown column; expected {}", columns.join(", ")),
                        ));
                    }
                    if headers.contains(&name) {
                        return Err(LoadError::row(
                            &file,
                            1,
                            Some(&name),
                            "column appears twice",
                        ));
                    }
                    headers.push(name);
                }
                if headers.is_empty() || (headers.len() == 1 && headers[0].is_empty()) {
                    return Err(LoadError::row(&file, 1, None, "the CSV header is missing"));
                }
                RecordsInner::Csv {
                    reader,
                    headers,
                    record: csv::ByteRecord::new(),
                }
            }
        };
        Ok(Records { file, inner })
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// The next record, or `None` at the end of the input.
    pub fn next_record(&mut self, columns: &[&str]) -> Option<Result<Record, LoadError>> {
        let file = self.file.as_str();
        match &mut self.inner {
            RecordsInner::Ndjson { reader, line, buf } => loop {
                buf.clear();
                let limit = MAX_LINE_BYTES as u64 + 1;
                match (&mut *reader).take(limit).read_until(b'\n', buf) {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(e) => {
                        return Some(Err(LoadError::Input {
                            file: file.into(),
                            reason: e.to_string(),
                        }));
                    }
                }
                *line += 1;
                if buf.strip_suffix(b"\n").unwrap_or(buf).len() > MAX_LINE_BYTES {
                    // Skip the rest of the line so that a caller going on counts lines right.
                    let _ = reader.skip_until(b'\n');
                    return Some(Err(too_long(file, *line)));
                }
                let Ok(text) = std::str::from_utf8(buf) else {
                    return Some(Err(LoadError::row(file, *line, None, "invalid UTF-8")));
                };
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                return Some(parse_ndjson_line(file, *line, text, columns));
            },
            RecordsInner::Csv {
                reader,
                headers,
                record,
            } => match reader.read_byte_record(record) {
                Ok(false) => None,
                Ok(true) => {
                    let line = record.position().map(|p| p.line()).unwrap_or(0);
                    if record.as_slice().len() > MAX_LINE_BYTES {
                        return Some(Err(too_long(file, line)));
                    }
                    let mut fields = Map::new();
                    for (name, cell) in headers.iter().zip(record.iter()) {
                        let Ok(cell) = std::str::from_utf8(cell) else {
                            return Some(Err(LoadError::row(
                                file,
                                line,
                                Some(name),
                                "invalid UTF-8",
                            )));
                        };
                        if cell.trim().is_empty() {
                            continue;
                        }
                        if cell.contains(['\n', '\r']) {
                            return Some(Err(LoadError::row(
                                file,
                                line,
                                Some(name),
                                "a line break inside a quoted cell (is a closing quote \
                                 missing?); cells may not span lines",
                            )));
                        }
                        let value = if name == "value" {
                            csv_value(cell)
                        } else {
                            Value::String(cell.to_string())
                        };
                        fields.insert(name.clone(), value);
                    }
                    Some(Ok(Record { line, fields }))
                }
                Err(e) => Some(Err(csv_error(file, e))),
            },
        }
    }
}

fn too_long(file: &str, line: u64) -> LoadError {
    LoadError::row(
        file,
        line,
        None,
        format!("the line is longer than {MAX_LINE_BYTES} bytes; no snapshot row is that long"),
    )
}

fn csv_error(file: &str, error: csv::Error) -> LoadError {
    let line = error.position().map(|p| p.line()).unwrap_or(0);
    let reason = match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("malformed CSV: {len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".to_string(),
        _ => format!("malformed CSV: {error}"),
    };
    if line == 0 {
        LoadError::Input {
            file: file.to_string(),
            reason,
        }
    } else {
        LoadError::row(file, line, None, reason)
    }
}

/// SPEC section 4: a CSV value that parses as a JSON number, boolean or null is taken as that,
/// otherwise as a string.
fn csv_value(cell: &str) -> Value {
    match serde_json::from_str::<Value>(cell.trim()) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => v,
        _ => Value::String(cell.to_string()),
    }
}

fn parse_ndjson_line(
    file: &str,
    line: u64,
    text: &str,
    columns: &[&str],
) -> Result<Record, LoadError> {
    let value = strict_json::from_str(text).map_err(|e| match e {
        strict_json::Error::Syntax(e) => LoadError::row(
            file,
            line,
            None,
            format!("malformed JSON: {}", json_reason(&e)),
        ),
        strict_json::Error::DuplicateKey { key, error } => LoadError::row(
            file,
            line,
            Some(&key),
            format!("malformed JSON: {}", json_reason(&error)),
        ),
    })?;
    let Value::Object(fields) = value else {
        return Err(LoadError::row(
            file,
            line,
            None,
            "a row must be a JSON object",
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| !columns.contains(&k.as_str())) {
        return Err(LoadError::row(
            file,
            line,
            Some(unknown),
            format!("unknown column; expected {}", columns.join(", ")),
        ));
    }
    Ok(Record { line, fields })
}

/// The columns a snapshot of this scope may have.
pub fn snapshot_columns(scope: Scope) -> &'static [&'static str] {
    match scope {
        Scope::User => &["user_id", "email", "value"],
        Scope::Account => &["group_id", "value"],
    }
}

pub const MEMBERSHIP_COLUMNS: &[&str] = &["group_id", "user_id", "email"];

/// An identifier field: a string (trimmed) or an integer (as its decimal text); `None` when absent.
fn identifier(file: &str, record: &Record, field: &str) -> Result<Option<String>, LoadError> {
    let text = match record.fields.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(other) => {
            return Err(LoadError::row(
                file,
                record.line,
                Some(field),
                format!("must be a string, not {}", json_type(other)),
            ));
        }
    };
    if text.is_empty() {
        return Err(LoadError::row(
            file,
            record.line,
            Some(field),
            "empty identifier",
        ));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(LoadError::row(
            file,
            record.line,
            Some(field),
            format!("an identifier may not hold control characters (found {c:?})"),
        ));
    }
    Ok(Some(text))
}

fn email(file: &str, record: &Record) -> Result<Option<String>, LoadError> {
    let Some(email) = identifier(file, record, "email")? else {
        return Ok(None);
    };
    if !email.contains('@') || email.chars().any(char::is_whitespace) {
        return Err(LoadError::row(
            file,
            record.line,
            Some("email"),
            format!("{email:?} is not an email address"),
        ));
    }
    Ok(Some(email.to_lowercase()))
}

/// A user's entity id and email: the user_id, or the lower-cased email when there is none.
fn user_entity(file: &str, record: &Record) -> Result<(String, Option<String>), LoadError> {
    let user_id = identifier(file, record, "user_id")?;
    let email = email(file, record)?;
    match (user_id, email) {
        (Some(id), email) => Ok((id, email)),
        (None, Some(email)) => Ok((email.clone(), Some(email))),
        (None, None) => Err(LoadError::row(
            file,
            record.line,
            None,
            "row has no identifier: it needs user_id or email",
        )),
    }
}

/// Check a record against a computation's kind and scope.
pub fn snapshot_row(
    file: &str,
    record: &Record,
    kind: Kind,
    scope: Scope,
) -> Result<SnapshotRow, LoadError> {
    let (entity_id, email) = match scope {
        Scope::User => user_entity(file, record)?,
        Scope::Account => match identifier(file, record, "group_id")? {
            Some(group) => (group, None),
            None => {
                return Err(LoadError::row(
                    file,
                    record.line,
                    None,
                    "row has no identifier: it needs group_id",
                ));
            }
        },
    };
    let value = match (kind, record.fields.get("value")) {
        (Kind::Audience, None | Some(Value::Bool(true))) => Some("true".to_string()),
        (Kind::Audience, Some(other)) => {
            return Err(LoadError::row(
                file,
                record.line,
                Some("value"),
                format!("an audience row's value must be true when present, not {other}"),
            ));
        }
        (Kind::Trait, None | Some(Value::Null)) => None,
        (Kind::Trait, Some(value)) => {
            check_trait_value(value)
                .map_err(|reason| LoadError::row(file, record.line, Some("value"), reason))?;
            Some(value.to_string())
        }
    };
    Ok(SnapshotRow {
        line: record.line,
        entity_id,
        email,
        value,
    })
}

/// A trait value is a JSON scalar or an array of scalars.
fn check_trait_value(value: &Value) -> Result<(), String> {
    match value {
        Value::Object(_) => {
            Err("a JSON object is not allowed (use a scalar or an array of scalars)".into())
        }
        Value::Array(items) => match items.iter().find(|v| v.is_object() || v.is_array()) {
            Some(inner) => Err(format!(
                "an array may hold only scalars, not {}",
                json_type(inner)
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Check a record of a membership snapshot.
pub fn membership_row(file: &str, record: &Record) -> Result<MembershipRow, LoadError> {
    let group_id = identifier(file, record, "group_id")?.ok_or_else(|| {
        LoadError::row(
            file,
            record.line,
            Some("group_id"),
            "missing: every membership row needs a group_id",
        )
    })?;
    let (user_id, email) = user_entity(file, record)?;
    Ok(MembershipRow {
        line: record.line,
        group_id,
        user_id,
        email,
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A computation key is snake_case: lower-case ASCII letters and digits in words joined by single
/// underscores. Explicit keys such as `order_completed_last_30days` pass.
pub fn check_key(key: &str) -> Result<(), String> {
    use heck::ToSnakeCase;
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !key.starts_with('_')
        && !key.ends_with('_')
        && !key.contains("__");
    if valid {
        Ok(())
    } else {
        let suggestion = key.to_snake_case();
        if suggestion.is_empty() || suggestion == key {
            Err(format!(
                "computation key {key:?} is not snake_case (a-z, 0-9 and single underscores)"
            ))
        } else {
            Err(format!(
                "computation key {key:?} is not snake_case; did you mean {suggestion:?}?"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> Record {
        let Value::Object(fields) = value else {
            panic!()
        };
        Record { line: 7, fields }
    }

    #[test]
    fn keys() {
        assert!(check_key("order_completed_last_30days").is_ok());
        assert!(check_key("high_value").is_ok());
        let err = check_key("High Value").unwrap_err();
        assert!(err.contains("\"high_value\""), "{err}");
        assert!(check_key("").is_err());
        assert!(check_key("a__b").is_err());
        assert!(check_key("_a").is_err());
    }

    #[test]
    fn user_rows() {
        let row = snapshot_row(
            "f",
            &record(json!({"user_id": " u1 ", "email": "A@Example.com"})),
            Kind::Audience,
            Scope::User,
        )
        .unwrap();
        assert_eq!(
            row,
            SnapshotRow {
                line: 7,
                entity_id: "u1".into(),
                email: Some("a@example.com".into()),
                value: Some("true".into())
            }
        );
        let row = snapshot_row(
            "f",
            &record(json!({"email": "A@Example.com", "value": 4.5})),
            Kind::Trait,
            Scope::User,
        )
        .unwrap();
        assert_eq!(row.entity_id, "a@example.com");
        assert_eq!(row.value.as_deref(), Some("4.5"));
        let row = snapshot_row(
            "f",
            &record(json!({"user_id": 12, "value": ["a", 1, true]})),
            Kind::Trait,
            Scope::User,
        )
        .unwrap();
        assert_eq!(row.entity_id, "12");
        assert_eq!(row.value.as_deref(), Some("[\"a\",1,true]"));
        let row = snapshot_row(
            "f",
            &record(json!({"user_id": "u", "value": null})),
            Kind::Trait,
            Scope::User,
        )
        .unwrap();
        assert_eq!(row.value, None);
    }

    #[test]
    fn rejections_name_line_and_field() {
        let cases = [
            (
                json!({"email": null}),
                Kind::Audience,
                Scope::User,
                "no identifier",
            ),
            (
                json!({"user_id": "  "}),
                Kind::Audience,
                Scope::User,
                "field `user_id`: empty identifier",
            ),
            (
                json!({"user_id": "u", "value": false}),
                Kind::Audience,
                Scope::User,
                "field `value`",
            ),
            (
                json!({"user_id": "u", "value": {"a": 1}}),
                Kind::Trait,
                Scope::User,
                "object is not allowed",
            ),
            (
                json!({"user_id": "u", "value": [[1]]}),
                Kind::Trait,
                Scope::User,
                "only scalars",
            ),
            (
                json!({"user_id": "u", "value": [{"a": 1}]}),
                Kind::Trait,
                Scope::User,
                "only scalars",
            ),
            (
                json!({"user_id": true}),
                Kind::Trait,
                Scope::User,
                "must be a string",
            ),
            (
                json!({"user_id": "u", "email": "nope"}),
                Kind::Trait,
                Scope::User,
                "not an email",
            ),
            (
                json!({"value": 1}),
                Kind::Trait,
                Scope::Account,
                "needs group_id",
            ),
        ];
        for (input, kind, scope, expected) in cases {
            let err = snapshot_row("data.ndjson", &record(input.clone()), kind, scope)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("data.ndjson:7: "), "{input}: {err}");
            assert!(err.contains(expected), "{input}: {err}");
        }
    }

    #[test]
    fn csv_values() {
        assert_eq!(csv_value("42"), json!(42));
        assert_eq!(csv_value("true"), json!(true));
        assert_eq!(csv_value("null"), Value::Null);
        assert_eq!(csv_value("Enterprise"), json!("Enterprise"));
        assert_eq!(csv_value("[1,2]"), json!("[1,2]"));
        assert_eq!(csv_value("\"quoted\""), json!("\"quoted\""));
    }
}
