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

use std::fs::File;
use std::io::{self, BufRead, BufReader};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::cli::SendArgs;
use crate::error::CliError;
use crate::intercom::executor::contact_key;
use crate::intercom::mapping::{KnownIds, MapOptions, map_message};
use crate::segment::{Message, NdjsonLines, parse_json_line};
use crate::settings::Settings;
use crate::store;
use crate::store::outbox::{self, NewMessage};

pub fn send(settings: &Settings, args: SendArgs) -> anyhow::Result<()> {
    // Checked before anything is queued: without a token nothing could be delivered.
    crate::intercom::delivery::require_token(&settings.intercom)?;
    let input: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(&args.file)
            .map_err(|e| CliError::usage(format!("cannot open {}: {e}", args.file.display())))?;
        Box::new(BufReader::new(file))
    };
    let mut conn = store::open(&settings.database.path)?;
    let options = MapOptions::from_settings(&settings.intercom, chrono::Utc::now().timestamp());
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
            .and_then(|line| queueable(&line, &options).map(|queued| (line, queued)))
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
    let pending = crate::store::delivery::pending_count(&conn)?;
    drop(conn);
    println!("Queued {queued} of {messages} messages.");
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

/// The message and its JSON text, or why Intercom cannot take it.
fn queueable(line: &str, options: &MapOptions) -> Result<(Message, String), String> {
    let value = parse_json_line(line).map_err(|e| e.to_string())?;
    let message = Message::from_value(&value).map_err(|e| e.to_string())?;
    map_message(&message, options, &KnownIds::nothing()).map_err(|e| e.to_string())?;
    Ok((message, value.to_string()))
}

/// The outbox lane: the user's entity id, else the account (`account:<groupId>`).
fn lane(message: &Message) -> String {
    match (contact_key(message), message) {
        (Some(key), _) => key,
        (None, Message::Group(group)) => format!("account:{}", group.group_id),
        (None, _) => String::new(),
    }
}
