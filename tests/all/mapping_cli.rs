//! `audience-sync send --dry-run`, run as the real binary in a fresh temporary directory.

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::{Value, json};

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/mapping/messages.ndjson"
);

fn run(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = crate::harness::command(dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect()
}

#[test]
fn dry_run_prints_one_request_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.ndjson");
    std::fs::write(
        &file,
        concat!(
            r#"{"type":"identify","userId":"su3r73","traits":{"name":"Iñigo Montoya","email":"avenger@example.com","vip":true,"company":{"id":"123","name":"Iñigo & Friends"},"createdAt":"Mon Mar 26 2018 17:44:51 GMT+0000 (UTC)"}}"#,
            "\n\n",
            r#"{"type":"track","userId":"su3r73","event":"Product Purchased","timestamp":"2024-05-01T00:00:00Z","properties":{"revenue":99.95,"currency":"EUR"}}"#,
            "\n",
            r#"{"type":"identify","userId":"u2","traits":{"vip":false}}"#,
            "\n",
        ),
    )
    .unwrap();
    let output = run(dir.path(), &["send", "--dry-run", "messages.ndjson"], None);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        lines(&output),
        vec![
            json!({"method": "POST", "path": "/data_attributes",
                   "body": {"name": "vip", "model": "contact", "data_type": "boolean"}}),
            json!({"method": "POST", "path": "/contacts/search",
                   "body": {"query": {"field": "external_id", "operator": "=", "value": "su3r73"}}}),
            // A contact new to Intercom is created with every value: no PUT follows.
            json!({"method": "POST", "path": "/contacts",
                   "body": {"role": "user", "external_id": "su3r73", "email": "avenger@example.com",
                            "name": "Iñigo Montoya", "signed_up_at": 1_522_086_291,
                            "custom_attributes": {"vip": true}}}),
            json!({"method": "POST", "path": "/companies",
                   "body": {"company_id": "123", "name": "Iñigo & Friends"}}),
            json!({"method": "POST", "path": "/contacts/{contact_id}/companies",
                   "body": {"id": "{company_id}"}}),
            json!({"method": "POST", "path": "/events",
                   "body": {"event_name": "Product Purchased", "created_at": 1_714_521_600,
                            "user_id": "su3r73",
                            "metadata": {"price": {"amount": 9995, "currency": "EUR"}}}}),
            json!({"method": "POST", "path": "/contacts/search",
                   "body": {"query": {"field": "external_id", "operator": "=", "value": "u2"}}}),
            // An exit creates no contact: the update an existing one gets.
            json!({"method": "PUT", "path": "/contacts/{contact_id}",
                   "body": {"external_id": "u2", "custom_attributes": {"vip": false}}}),
        ]
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn unmappable_lines_are_named_and_the_rest_still_printed_then_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(DATA).unwrap();
    let output = run(dir.path(), &["send", "--dry-run", "-"], Some(&text));
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert!(
        stderr.contains("line 13: Intercom needs a user id or an email"),
        "{stderr}"
    );
    assert!(stderr.contains("line 14: message type `page`"), "{stderr}");
    assert!(
        stderr.contains("2 of 14 messages cannot be mapped"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 6: warning: `address` is an object"),
        "{stderr}"
    );
    let printed = lines(&output);
    // Everything before and after the bad lines is printed: the last group's upsert is there.
    assert!(
        printed.contains(&json!({"method": "POST", "path": "/companies",
        "body": {"company_id": "acme", "custom_attributes": {"account_high_value": true}}}))
    );
    // Each data attribute is created once for the whole file.
    let creates = printed
        .iter()
        .filter(|l| l["path"] == "/data_attributes" && l["body"]["name"] == "high_value")
        .count();
    assert_eq!(creates, 1);
}

#[test]
fn the_121st_event_name_in_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..121)
        .map(|i| format!("{{\"type\":\"track\",\"userId\":\"u1\",\"event\":\"Event {i}\"}}\n"))
        .chain(["{\"type\":\"track\",\"userId\":\"u1\",\"event\":\"EVENT 3\"}\n".to_string()])
        .collect();
    let output = run(dir.path(), &["send", "--dry-run", "-"], Some(&text));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert!(
        stderr.contains("line 121: event name `Event 120` is new"),
        "{stderr}"
    );
    assert_eq!(
        lines(&output).len(),
        121,
        "the 120 names and the known one are printed"
    );
}

#[test]
fn without_dry_run_send_needs_a_token_and_a_missing_file_is_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.ndjson"), "").unwrap();
    let output = run(dir.path(), &["send", "m.ndjson"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("intercom.access_token is empty"));
    let output = run(dir.path(), &["send", "--dry-run", "absent.ndjson"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("absent.ndjson"));
}
