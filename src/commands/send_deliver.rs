//! `audience-sync send FILE` (without `--dry-run`): queue the file's Segment messages in the
//! outbox (run id NULL, no planned state), then drain the outbox through the delivery engine.
//!
//! Going through the outbox keeps one engine and one order: a user's messages from the file are
//! delivered after that user's messages already queued by a run, strictly in order, within the
//! same rate limit, with the same retries and dead letters. The drain delivers everything
//! pending, not only the file.
//!
//! A line that is not a message Intercom can take (bad JSON, no `userId` nor email, …) is
//! reported with its line number and not queued; the others are queued and delivered, and the
//! command then exits 2.
//!
//! A `track` with neither `timestamp` nor `originalTimestamp` is queued with the time it was
//! queued as its `originalTimestamp` (SPEC section 6: `created_at` is fixed then), so every
//! attempt to deliver it sends the same `created_at` and Intercom de-duplicates a retry.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::error::CliError;
use super::output::stdout_lossy;
use crate::cli::SendArgs;
use crate::domain::Lane;
use crate::intercom::executor::contact_key;
use crate::intercom::mapping::{KnownIds, MapOptions, map_message};
use crate::segment::{Message, NdjsonLines, parse_json_line};
use crate::settings::Settings;
use crate::store;
use crate::store::outbox::{self, NewMessage};

pub fn send(settings: &Settings, args: SendArgs) -> anyhow::Result<()> {
    // Checked before anything is queued: without a token nothing could be delivered.
    crate::intercom::drain::require_token(&settings.intercom)?;
    let input: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(&args.file)
            .map_err(|e| CliError::usage(format!("cannot open {}: {e}", args.file.display())))?;
        Box::new(BufReader::new(file))
    };
    let mut conn = store::open(&settings.database.path)?;
    let options = crate::intercom::map_options(&settings.intercom, chrono::Utc::now().timestamp());
    let now = store::now_unix();
    let tx = conn.transaction()?;
    let (mut messages, mut queued, mut refused) = (0usize, 0usize, 0usize);
    for read in NdjsonLines::new(input) {
        let (number, line) = read.context("cannot read the input")?;
        if line.as_deref().is_ok_and(|l| l.trim().is_empty()) {
            continue;
        }
        messages += 1;
        match line
            .map_err(|e| e.to_string())
            .and_then(|line| queueable(&line, &options, now).map(|queued| (line, queued)))
        {
            Err(reason) => {
                refused += 1;
                eprintln!("line {number}: {reason}");
            }
            Ok((line, (message, body))) => {
                let lane = lane(&message);
                let message_id = message
                    .common()
                    .message_id
                    .clone()
                    .unwrap_or_else(|| format!("send_{:x}", Sha256::digest(line.as_bytes())));
                let new = NewMessage {
                    lane: &lane,
                    message_id: &message_id,
                    kind: message.kind(),
                    body: &body,
                    effects: "[]",
                };
                if outbox::enqueue(&tx, None, &new, now)? {
                    queued += 1;
                } else {
                    eprintln!(
                        "line {number}: message {message_id} is already queued; not queued twice"
                    );
                }
            }
        }
    }
    tx.commit()?;
    let pending = crate::store::outbox::pending_count(&conn)?;
    drop(conn);
    writeln!(stdout_lossy(), "Queued {queued} of {messages} messages.")?;
    // Nothing to deliver (every line refused, and nothing queued before): Intercom is not
    // called and the database is left as it was.
    if pending > 0 {
        super::deliver::deliver_outbox(settings)?;
    }
    if refused > 0 {
        return Err(CliError::usage(format!(
            "{refused} of {messages} messages cannot be delivered to Intercom (see the lines above)"
        ))
        .into());
    }
    Ok(())
}

/// The message and the JSON text to queue (a track without a time gets `now`, the time it is
/// queued, as its `originalTimestamp`), or why Intercom cannot take it.
fn queueable(line: &str, options: &MapOptions, now: i64) -> Result<(Message, String), String> {
    let mut value = parse_json_line(line).map_err(|e| e.to_string())?;
    let mut message = Message::from_value(&value).map_err(|e| e.to_string())?;
    if let Message::Track(track) = &mut message
        && track.common.event_time().is_none()
        && let Some(queued_at) = chrono::DateTime::from_timestamp(now, 0)
        && let Some(object) = value.as_object_mut()
    {
        object.insert(
            "originalTimestamp".into(),
            queued_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .into(),
        );
        track.common.original_timestamp = Some(queued_at);
    }
    map_message(&message, options, &KnownIds::nothing()).map_err(|e| e.to_string())?;
    Ok((message, value.to_string()))
}

/// The outbox lane: the user's entity id, else the account (`account:<groupId>`).
fn lane(message: &Message) -> Lane {
    match (contact_key(message), message) {
        (Some(key), _) => Lane::user(&key),
        (None, Message::Group(group)) => Lane::account(&group.group_id),
        (None, _) => Lane::user(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::LongStrings;
    use serde_json::{Value, json};

    fn options() -> MapOptions {
        MapOptions {
            long_strings: LongStrings::Truncate,
            company_attribute_prefix: "account_".into(),
            now: 1,
        }
    }

    fn queued(line: &str, now: i64) -> Value {
        let (_, body) = queueable(line, &options(), now).unwrap();
        serde_json::from_str(&body).unwrap()
    }

    #[test]
    fn a_track_without_a_time_is_queued_with_the_time_it_was_queued() {
        let body = queued(
            r#"{"type":"track","userId":"u1","event":"E"}"#,
            1_714_521_600,
        );
        assert_eq!(body["originalTimestamp"], json!("2024-05-01T00:00:00Z"));
        // Delivered later (a retry, another process), it still has that created_at.
        let message = Message::from_value(&body).unwrap();
        let later = MapOptions {
            now: 1_800_000_000,
            ..options()
        };
        let plan = map_message(&message, &later, &KnownIds::nothing()).unwrap();
        assert_eq!(
            plan.steps[0].request.body.as_ref().unwrap()["created_at"],
            json!(1_714_521_600)
        );
    }

    #[test]
    fn a_message_with_a_time_or_not_a_track_is_queued_as_it_is() {
        for line in [
            r#"{"type":"track","userId":"u1","event":"E","timestamp":"2024-05-01T00:00:00Z"}"#,
            r#"{"type":"track","userId":"u1","event":"E","originalTimestamp":"2024-05-01T00:00:00Z"}"#,
            r#"{"type":"identify","userId":"u1","traits":{"vip":true}}"#,
            r#"{"type":"group","userId":"u1","groupId":"acme"}"#,
        ] {
            let expected: Value = serde_json::from_str(line).unwrap();
            assert_eq!(queued(line, 1_714_521_600), expected, "{line}");
        }
    }
}
