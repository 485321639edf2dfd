//! Property-based fuzzing of the snapshot loaders (issue 8, "Proof"): arbitrary bytes and
//! near-valid rows through the NDJSON and CSV readers (`load::Records`) and the row checks
//! (`snapshot_row`, `membership_row`). They never panic; every input is either accepted or
//! refused with a `LoadError::Row` naming a line >= 1 (or `LoadError::Input` for the input as a
//! whole); every accepted row keeps the invariants the store relies on. Failing cases proptest
//! has found are kept below as named regression tests.
//!
//! `PROPTEST_CASES=20000 cargo test --release --test all fuzz_loaders::` runs a longer campaign.

use std::io::Cursor;

use audience_sync::load::{
    Format, Kind, LoadError, MEMBERSHIP_COLUMNS, MembershipRow, Record, Records, Scope,
    SnapshotRow, membership_row, snapshot_columns, snapshot_row,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const FILE: &str = "fuzz.input";

/// What reading every record of `bytes` and checking each as `target` gave.
#[derive(Debug, Default)]
struct Outcome {
    snapshot_rows: Vec<SnapshotRow>,
    membership_rows: Vec<MembershipRow>,
    /// The first refusal, where reading stops (as `load` does).
    error: Option<LoadError>,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Snapshot(Kind, Scope),
    Membership,
}

const TARGETS: [Target; 5] = [
    Target::Snapshot(Kind::Audience, Scope::User),
    Target::Snapshot(Kind::Trait, Scope::User),
    Target::Snapshot(Kind::Audience, Scope::Account),
    Target::Snapshot(Kind::Trait, Scope::Account),
    Target::Membership,
];

fn columns(target: Target) -> &'static [&'static str] {
    match target {
        Target::Snapshot(_, scope) => snapshot_columns(scope),
        Target::Membership => MEMBERSHIP_COLUMNS,
    }
}

fn read_all(bytes: &[u8], format: Format, target: Target) -> Outcome {
    let columns = columns(target);
    let mut outcome = Outcome::default();
    let reader = Box::new(Cursor::new(bytes.to_vec()));
    let mut records = match Records::from_reader(FILE.to_string(), format, reader, columns) {
        Ok(records) => records,
        Err(e) => {
            outcome.error = Some(e);
            return outcome;
        }
    };
    while let Some(record) = records.next_record(columns) {
        let checked = record.and_then(|record| {
            check_record(&record, columns);
            match target {
                Target::Snapshot(kind, scope) => {
                    snapshot_row(FILE, &record, kind, scope).map(|r| outcome.snapshot_rows.push(r))
                }
                Target::Membership => {
                    membership_row(FILE, &record).map(|r| outcome.membership_rows.push(r))
                }
            }
        });
        if let Err(e) = checked {
            outcome.error = Some(e);
            break;
        }
    }
    check_outcome(&outcome, target);
    outcome
}

/// A record only holds known columns and is numbered from line 1.
fn check_record(record: &Record, columns: &[&str]) {
    assert!(record.line >= 1, "record at line {}", record.line);
    for key in record.fields.keys() {
        assert!(
            columns.contains(&key.as_str()),
            "unknown column {key:?} accepted"
        );
    }
}

fn check_outcome(outcome: &Outcome, target: Target) {
    match &outcome.error {
        None => {}
        Some(LoadError::Row { file, line, .. }) => {
            assert_eq!(file, FILE);
            assert!(*line >= 1, "a refusal at line {line}");
            let text = outcome.error.as_ref().unwrap().to_string();
            assert!(text.starts_with(&format!("{FILE}:{line}: ")), "{text}");
        }
        Some(LoadError::Input { file, .. }) => assert_eq!(file, FILE),
        Some(other) => panic!("unexpected error kind: {other:?}"),
    }
    for row in &outcome.snapshot_rows {
        check_identifier(&row.entity_id);
        check_email(row.email.as_deref());
        let Target::Snapshot(kind, scope) = target else {
            unreachable!()
        };
        if scope == Scope::Account {
            assert_eq!(row.email, None);
        }
        match (kind, &row.value) {
            (Kind::Audience, value) => assert_eq!(value.as_deref(), Some("true")),
            (Kind::Trait, None) => {}
            (Kind::Trait, Some(text)) => {
                let value: Value = serde_json::from_str(text).expect("value parses back");
                assert!(!value.is_null(), "null is stored as no value");
                assert!(!value.is_object(), "{text}");
                if let Value::Array(items) = &value {
                    assert!(
                        items.iter().all(|v| !v.is_array() && !v.is_object()),
                        "{text}"
                    );
                }
                assert_eq!(value.to_string(), *text, "stored as canonical JSON");
            }
        }
    }
    for row in &outcome.membership_rows {
        check_identifier(&row.group_id);
        check_identifier(&row.user_id);
        check_email(row.email.as_deref());
    }
}

fn check_identifier(id: &str) {
    assert!(!id.is_empty(), "empty identifier accepted");
    assert_eq!(id, id.trim(), "untrimmed identifier {id:?}");
    assert!(
        !id.chars().any(char::is_control),
        "control character in {id:?}"
    );
}

fn check_email(email: Option<&str>) {
    if let Some(email) = email {
        check_identifier(email);
        assert_eq!(email, email.to_lowercase(), "email not lower-cased");
        assert!(email.contains('@'), "{email}");
    }
}

// ---- strategies -------------------------------------------------------------------------------

/// Strings rich in what breaks parsers: quotes, separators, whitespace, control characters,
/// BOMs, non-ASCII, `@`.
fn nasty_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => "[a-zA-Z0-9_.-]{1,6}",
            1 => Just("@".to_string()),
            1 => Just("\"".to_string()),
            1 => Just(",".to_string()),
            1 => Just(" ".to_string()),
            1 => Just("\t".to_string()),
            1 => Just("\n".to_string()),
            1 => Just("\r".to_string()),
            1 => Just("\u{0}".to_string()),
            1 => Just("\u{feff}".to_string()),
            1 => Just("ß日本\u{1F600}".to_string()),
            1 => Just("\\".to_string()),
        ],
        0..6,
    )
    .prop_map(|parts| parts.concat())
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        nasty_string().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const KEYS: [&str; 6] = ["user_id", "email", "value", "group_id", "extra", "User_Id"];

/// A near-valid row: mostly the right keys, sometimes a wrong one, with nasty values.
fn row_object() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::vec(
        (
            prop_oneof![8 => prop::sample::select(&KEYS[..4]), 1 => prop::sample::select(&KEYS[4..])],
            prop_oneof![
                4 => nasty_string().prop_map(Value::String),
                2 => "[a-z]{1,5}@[A-Z]{1,5}\\.com".prop_map(Value::String),
                2 => scalar(),
                1 => json_value(),
            ],
        )
            .prop_map(|(k, v)| (k.to_string(), v)),
        0..5,
    )
}

/// NDJSON text of `rows`: each row an object (duplicate keys kept as written), LF or CRLF line
/// endings, blank lines, optionally a BOM.
fn ndjson(rows: &[Vec<(String, Value)>], crlf: bool, bom: bool, blank_every: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if bom {
        out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    for (i, row) in rows.iter().enumerate() {
        let fields: Vec<String> = row
            .iter()
            .map(|(k, v)| format!("{}: {v}", Value::String(k.clone())))
            .collect();
        out.extend_from_slice(format!("{{{}}}", fields.join(", ")).as_bytes());
        out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        if blank_every > 0 && i % blank_every == 0 {
            out.extend_from_slice(if crlf { b"  \r\n" } else { b"\n" });
        }
    }
    out
}

/// CSV text of `rows` under `header` (cells quoted by the csv writer as needed).
fn csv_text(header: &[&str], rows: &[Vec<(String, Value)>], crlf: bool) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(if crlf {
            csv::Terminator::CRLF
        } else {
            csv::Terminator::Any(b'\n')
        })
        .from_writer(Vec::new());
    writer.write_record(header).unwrap();
    for row in rows {
        let cells: Vec<String> = header
            .iter()
            .map(|column| {
                row.iter()
                    .find(|(k, _)| k == column)
                    .map(|(_, v)| match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default()
            })
            .collect();
        writer.write_record(&cells).unwrap();
    }
    writer.into_inner().unwrap()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for target in TARGETS {
            read_all(&bytes, Format::Ndjson, target);
            read_all(&bytes, Format::Csv, target);
        }
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_start_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        prefix in prop::sample::select(vec![
            &b"user_id,email,value\n"[..],
            b"group_id,user_id,email\r\n",
            b"\xEF\xBB\xBFgroup_id,value\n",
            b"{\"user_id\": \"",
            b"{\"group_id\": \"g\", \"user_id\": ",
            b"{\"user_id\": \"u\", \"value\": [",
        ]),
    ) {
        let input = [prefix, &bytes[..]].concat();
        for target in TARGETS {
            read_all(&input, Format::Ndjson, target);
            read_all(&input, Format::Csv, target);
        }
    }

    #[test]
    fn near_valid_ndjson_rows_are_accepted_or_refused_by_line(
        rows in prop::collection::vec(row_object(), 1..12),
        crlf in any::<bool>(),
        bom in any::<bool>(),
    ) {
        let input = ndjson(&rows, crlf, bom, 0);
        for target in TARGETS {
            let outcome = read_all(&input, Format::Ndjson, target);
            // One row a line, no blank lines: a refusal names the row's own line, and every row
            // before it was accepted.
            if let Some(LoadError::Row { line, .. }) = &outcome.error {
                let accepted = outcome.snapshot_rows.len() + outcome.membership_rows.len();
                prop_assert_eq!(*line as usize, accepted + 1);
            } else {
                prop_assert!(outcome.error.is_none());
                prop_assert_eq!(outcome.snapshot_rows.len() + outcome.membership_rows.len(), rows.len());
            }
        }
    }

    #[test]
    fn near_valid_csv_rows_are_accepted_or_refused_by_line(
        rows in prop::collection::vec(row_object(), 1..12),
        crlf in any::<bool>(),
    ) {
        for target in TARGETS {
            let header = columns(target);
            let input = csv_text(header, &rows, crlf);
            let outcome = read_all(&input, Format::Csv, target);
            if let Some(LoadError::Row { line, .. }) = &outcome.error {
                prop_assert!(*line >= 2, "a data row refused at line {}", line);
            }
            // Cells holding line breaks span lines: only without them is row N on line N + 1.
            let multiline = rows.iter().flatten().any(|(_, v)| v.to_string().contains("\\n") || v.to_string().contains("\\r"));
            if !multiline
                && let Some(LoadError::Row { line, .. }) = &outcome.error
            {
                let accepted = outcome.snapshot_rows.len() + outcome.membership_rows.len();
                prop_assert_eq!(*line as usize, accepted + 2);
            }
        }
    }

    #[test]
    fn ndjson_line_numbers_count_blank_lines(
        good in 0usize..30,
        blank_every in 1usize..4,
        crlf in any::<bool>(),
    ) {
        let mut rows: Vec<Vec<(String, Value)>> = (0..good)
            .map(|i| vec![("user_id".to_string(), json!(format!("u{i}")))])
            .collect();
        rows.push(vec![("user_id".to_string(), json!("bad")), ("value".to_string(), json!({"a": 1}))]);
        let input = ndjson(&rows, crlf, false, blank_every);
        let outcome = read_all(&input, Format::Ndjson, Target::Snapshot(Kind::Trait, Scope::User));
        let blanks = (0..good).filter(|i| i % blank_every == 0).count();
        match outcome.error {
            Some(LoadError::Row { line, field, .. }) => {
                prop_assert_eq!(line as usize, good + blanks + 1);
                prop_assert_eq!(field.as_deref(), Some("value"));
            }
            other => prop_assert!(false, "expected a refusal, got {:?}", other),
        }
    }
}

// ---- regressions: cases the fuzzing found, kept by name ----------------------------------------

fn snapshot_outcome(input: &[u8], format: Format, kind: Kind) -> Outcome {
    read_all(input, format, Target::Snapshot(kind, Scope::User))
}

/// The csv crate numbers a record that follows a CRLF-terminated one a line early (the LF is
/// read as part of the next record): every refusal in a CRLF file named the line above.
#[test]
fn regression_crlf_csv_names_the_right_line() {
    let outcome = snapshot_outcome(
        b"user_id,value\r\nu1,1\r\nu2,2\r\nu3,{}\r\nu4\r\n",
        Format::Csv,
        Kind::Trait,
    );
    assert_eq!(outcome.snapshot_rows.len(), 3);
    assert!(
        matches!(outcome.error, Some(LoadError::Row { line: 5, .. })),
        "{:?}",
        outcome.error
    );
    // A CR alone is no line ending for the reader, but it is kept.
    let outcome = snapshot_outcome(b"user_id,value\nu1,a\rb\n", Format::Csv, Kind::Trait);
    assert_eq!(outcome.snapshot_rows.len(), 1, "{:?}", outcome.error);
}

/// serde_json keeps the last of two equal keys: `{"user_id":"a","user_id":"b"}` loaded as "b".
#[test]
fn regression_duplicate_keys_are_refused() {
    let outcome = snapshot_outcome(
        b"{\"user_id\": \"a\", \"user_id\": \"b\"}\n",
        Format::Ndjson,
        Kind::Audience,
    );
    assert!(outcome.snapshot_rows.is_empty());
    let Some(LoadError::Row { line, field, .. }) = outcome.error else {
        panic!("accepted")
    };
    assert_eq!((line, field.as_deref()), (1, Some("user_id")));
}

/// A leading BOM made the first NDJSON row malformed JSON.
#[test]
fn regression_bom_and_crlf_are_accepted() {
    let outcome = snapshot_outcome(
        b"\xEF\xBB\xBF{\"user_id\": \"a\"}\r\n{\"user_id\": \"b\"}\r\n",
        Format::Ndjson,
        Kind::Audience,
    );
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.snapshot_rows.len(), 2);
}

/// An unterminated quote made the csv crate read the rest of the file into one cell, silently.
#[test]
fn regression_unterminated_csv_quote_is_refused() {
    let outcome = snapshot_outcome(
        b"user_id,value\nu1,\"1\nu2,2\nu3,3\n",
        Format::Csv,
        Kind::Trait,
    );
    assert!(outcome.snapshot_rows.is_empty());
    assert!(
        matches!(&outcome.error, Some(LoadError::Row { line: 2, field: Some(f), .. }) if f == "value"),
        "{:?}",
        outcome.error
    );
}

/// A NUL (or any control character) inside an identifier was stored as it was.
#[test]
fn regression_control_characters_in_identifiers_are_refused() {
    for input in [
        &b"{\"user_id\": \"a\\u0000\"}\n"[..],
        b"user_id\na\x00b\n",
        b"user_id\n\"a\tb\"\n",
    ] {
        let format = if input.starts_with(b"{") {
            Format::Ndjson
        } else {
            Format::Csv
        };
        let outcome = snapshot_outcome(input, format, Kind::Audience);
        assert!(
            matches!(&outcome.error, Some(LoadError::Row { field: Some(f), .. }) if f == "user_id"),
            "{:?}",
            outcome.error
        );
    }
}

/// A line longer than `MAX_LINE_BYTES` is refused rather than read into memory, and reading
/// goes on at the next line.
#[test]
fn regression_huge_lines_are_refused() {
    let huge = format!(
        "{{\"user_id\": \"{}\"}}\n{{\"user_id\": \"b\"}}\n",
        "x".repeat(audience_sync::load::MAX_LINE_BYTES)
    );
    let columns = snapshot_columns(Scope::User);
    let mut records = Records::from_reader(
        FILE.to_string(),
        Format::Ndjson,
        Box::new(Cursor::new(huge.into_bytes())),
        columns,
    )
    .unwrap();
    assert!(matches!(
        records.next_record(columns),
        Some(Err(LoadError::Row { line: 1, .. }))
    ));
    let next = records.next_record(columns).unwrap().unwrap();
    assert_eq!(next.line, 2);
}

/// Found by `near_valid_csv_rows_are_accepted_or_refused_by_line`: without serde_json's
/// `float_roundtrip`, `-1.4078015252826461e-53` was read one unit in the last place off and
/// stored as `-1.407801525282646e-53`, another number than the file's.
#[test]
fn regression_floats_are_read_exactly() {
    for format in [Format::Csv, Format::Ndjson] {
        let input: &[u8] = match format {
            Format::Csv => b"user_id,value\nu1,-1.4078015252826461e-53\n",
            Format::Ndjson => b"{\"user_id\": \"u1\", \"value\": -1.4078015252826461e-53}\n",
        };
        let outcome = snapshot_outcome(input, format, Kind::Trait);
        assert_eq!(
            outcome.snapshot_rows[0].value.as_deref(),
            Some("-1.4078015252826461e-53")
        );
    }
}
