//! `audience-sync sandbox`: the real binary prints its URL first and enforces what it was told.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::harness::Env;

#[tokio::test]
async fn the_sandbox_command_serves_intercom_with_its_budget() {
    let env = Env::new();
    let mut child = env
        .command(&[
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--token",
            "t0k",
            "--rate-limit",
            "2",
            "--window-secs",
            "3600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first.trim().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "first line is the base URL: {first:?}"
    );

    let client = reqwest::Client::new();
    let search = || {
        client
            .post(format!("{url}/contacts/search"))
            .bearer_auth("t0k")
            .header("Accept", "application/json")
            .json(&serde_json::json!({"query": {"field": "external_id", "operator": "=", "value": "u1"}}))
            .send()
    };
    let unauthorized = client
        .post(format!("{url}/contacts/search"))
        .bearer_auth("wrong")
        .header("Accept", "application/json")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let statuses = [
        search().await.unwrap(),
        search().await.unwrap(),
        search().await.unwrap(),
    ];
    let codes: Vec<u16> = statuses.iter().map(|r| r.status().as_u16()).collect();
    // One-hour windows: three requests in a row fall in one window, so the third is over budget.
    assert_eq!(codes, vec![200, 200, 429]);
    assert_eq!(statuses[2].headers()["X-RateLimit-Limit"], "2");
    assert_eq!(statuses[2].headers()["X-RateLimit-Remaining"], "0");

    let state: serde_json::Value = client
        .get(format!("{url}/_sandbox/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["counters"]["rate_limited"], 1, "{state}");
    child.kill().unwrap();
    child.wait().unwrap();
}
