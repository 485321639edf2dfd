//! The Personas emitter: one entity's changes, as the merge hands them over, coalesced into
//! messages — for a user one identify carrying every changed value (and every account left),
//! then one group per account joined, then one track per change that tracks; for an account
//! its own values in one group call.
//!
//! Enqueue stages the messages and the planned state they imply (the chunk's write transaction
//! moves them into the outbox and planned state, `chunk.rs`), a dry run prints them, a plan
//! counts them. Each entity is also counted for its chunk (`chunk::ChunkCounts`) and for the
//! request estimate (`estimate.rs`).

use std::io::Write;

use crate::store::Connection;
use anyhow::Context;
use serde_json::Value;

use super::diff::Change;
use super::estimate::Estimator;
use super::message::{self, User};
use super::{Comp, MessageCounts, Output};
use crate::domain::{Lane, Scope};
use crate::segment::{Message, MessageKind};
use crate::settings::PersonasSettings;
use crate::store::outbox::{self, Effect, MembershipEffect};
use crate::store::state::{self, ChangeRow, Counts, SnapshotRef};

pub(super) fn json_value(text: Option<&str>) -> anyhow::Result<Value> {
    match text {
        None => Ok(Value::Null),
        Some(t) => {
            serde_json::from_str(t).with_context(|| format!("snapshot value {t:?} is not JSON"))
        }
    }
}

pub(super) struct Emitter<'a, 'o> {
    pub(super) conn: &'a Connection,
    pub(super) personas: &'a PersonasSettings,
    pub(super) comps: &'a [Comp],
    pub(super) membership: Option<SnapshotRef>,
    /// Enqueue: stage messages and planned state (`store::outbox::create_staging`, `store::state::create_staging`).
    pub(super) stage: bool,
    pub(super) counts: MessageCounts,
    pub(super) estimate: Estimator,
    pub(super) output: &'a mut Output<'o>,
    /// What the current chunk counted, and the rows it staged.
    pub(super) chunk: ChunkCounts,
    pub(super) staged: usize,
}

impl<'a> Emitter<'a, '_> {
    fn comp(&self, row: &ChangeRow) -> &'a Comp {
        &self.comps[row.computation.expect("a computation change") as usize]
    }

    /// The id parts that name a computation change: computation, snapshot (and membership
    /// snapshot for a derived user value), change and value.
    fn change_parts(&self, row: &ChangeRow, derived: bool) -> Vec<String> {
        let comp = self.comp(row);
        let mut parts = vec![
            comp.id.clone(),
            comp.snapshot.map(|s| s.id).unwrap_or_default().to_string(),
        ];
        if derived {
            parts.push(self.membership.map(|m| m.id).unwrap_or(-1).to_string());
        }
        // The change's code, as message ids have always been derived from it.
        parts.push(row.change.code().to_string());
        parts.push(row.value.clone().unwrap_or_else(|| "null".into()));
        parts
    }

    pub(super) fn entity(&mut self, rows: &mut [ChangeRow]) -> anyhow::Result<()> {
        self.chunk.count(self.comps, rows);
        self.estimate.entity(self.conn, rows)?;
        if matches!(self.output, Output::Plan) {
            return self.count_only(rows);
        }
        if rows[0].lane == Scope::Account {
            self.account(rows)
        } else {
            self.user(rows)
        }
    }

    /// `plan`: count the messages `account` / `user` would build, without building them (an
    /// initial sync of a million users would otherwise build a million bodies to count them).
    fn count_only(&mut self, rows: &[ChangeRow]) -> anyhow::Result<()> {
        for row in rows {
            if let Some(t) = row.value.as_deref() {
                serde_json::from_str::<serde::de::IgnoredAny>(t)
                    .with_context(|| format!("snapshot value {t:?} is not JSON"))?;
            }
        }
        if rows[0].lane == Scope::Account {
            self.counts.group_account += 1;
            return Ok(());
        }
        let attach = Change::Attach;
        if rows.iter().any(|r| r.change != attach) {
            self.counts.identify += 1;
        }
        self.counts.group_user += rows.iter().filter(|r| r.change == attach).count() as u64;
        self.counts.track += rows.iter().filter(|r| r.track).count() as u64;
        Ok(())
    }

    /// An account's own changed values: one group call, no userId.
    fn account(&mut self, rows: &[ChangeRow]) -> anyhow::Result<()> {
        let group_id = rows[0].entity_id.as_str();
        let mut traits = Vec::with_capacity(rows.len());
        let mut effects = Vec::with_capacity(rows.len());
        let mut parts = vec!["group".to_string(), group_id.to_string()];
        let mut timestamp = i64::MIN;
        for row in rows {
            let comp = self.comp(row);
            let value = json_value(row.value.as_deref())?;
            traits.push((comp.reference(), value.clone()));
            effects.push(Effect::Value {
                computation_id: comp.id.clone(),
                subject: Scope::Account,
                entity_id: group_id.to_string(),
                value,
                // An account's own group call fires no event.
                track_at: None,
            });
            parts.extend(self.change_parts(row, false));
            timestamp = timestamp.max(comp.snapshot.map_or(0, |s| s.taken_at));
            if self.stage {
                state::stage_value(
                    self.conn,
                    &comp.id,
                    "account",
                    group_id,
                    None,
                    row.value.as_deref(),
                    row.overrides,
                )?;
            }
        }
        if self.stage {
            self.staged += rows.len();
        }
        let id = message::message_id(&parts.iter().map(String::as_str).collect::<Vec<_>>());
        let body =
            message::group_account(&self.personas.space_id, group_id, &traits, timestamp, &id);
        self.emit(&Lane::account(group_id), &id, body, &effects, false)
    }

    /// A user's changes: one identify (every changed value, every account left), then one group
    /// per account joined, then one track per change that tracks.
    fn user(&mut self, rows: &[ChangeRow]) -> anyhow::Result<()> {
        let entity_id = rows[0].entity_id.as_str();
        let email = rows.iter().find_map(|r| r.email.as_deref());
        let user = User { entity_id, email };
        let space = self.personas.space_id.as_str();
        let membership_taken = self.membership.map_or(0, |m| m.taken_at);

        // Event times first: each value effect keeps the time of the track its change fires, so
        // a dead letter can re-plan it with that time (`replans`). Per event name (at most
        // three): the last time used for this user in this run.
        let mut last_times: Vec<(&str, i64)> = Vec::new();
        let mut event_times: Vec<Option<(&str, i64)>> = Vec::with_capacity(rows.len());
        for row in rows.iter() {
            if !row.track {
                event_times.push(None);
                continue;
            }
            let comp = self.comp(row);
            let change = row.change;
            let event = match change {
                Change::Entered => self.personas.audience_entered_event.as_str(),
                Change::Exited => self.personas.audience_exited_event.as_str(),
                _ => self.personas.trait_computed_event.as_str(),
            };
            let seen = last_times.iter().position(|(name, _)| *name == event);
            let last = match seen {
                Some(i) => Some(last_times[i].1),
                None => state::last_event_time(self.conn, entity_id, event)?,
            };
            // A re-planned change keeps its time (already below `last`: nothing moves).
            let at = row.event_at.unwrap_or_else(|| {
                message::event_time(comp.snapshot.map_or(0, |s| s.taken_at), last)
            });
            let newest = last.map_or(at, |l| l.max(at));
            match seen {
                Some(i) => last_times[i].1 = newest,
                None => last_times.push((event, newest)),
            }
            event_times.push(Some((event, at)));
        }

        let mut traits = Vec::new();
        let mut detached = Vec::new();
        let mut effects = Vec::new();
        let mut parts = vec!["identify".to_string(), entity_id.to_string()];
        let mut timestamp = i64::MIN;
        for (row, event_time) in rows.iter().zip(&event_times) {
            match row.change {
                Change::Attach => {}
                Change::Detach => {
                    let group_id = row.group_id.as_deref().unwrap_or_default();
                    detached.push(group_id);
                    effects.push(Effect::Membership {
                        membership: MembershipEffect {
                            group_id: group_id.to_string(),
                            user_id: entity_id.to_string(),
                            attached: false,
                        },
                    });
                    parts.extend([
                        "detach".to_string(),
                        group_id.to_string(),
                        self.membership.map(|m| m.id).unwrap_or(-1).to_string(),
                    ]);
                    timestamp = timestamp.max(membership_taken);
                }
                _ => {
                    let comp = self.comp(row);
                    let value = json_value(row.value.as_deref())?;
                    traits.push((comp.reference(), value.clone()));
                    effects.push(Effect::Value {
                        computation_id: comp.id.clone(),
                        subject: Scope::User,
                        entity_id: entity_id.to_string(),
                        value,
                        track_at: event_time.map(|(_, at)| at),
                    });
                    parts.extend(self.change_parts(row, comp.scope == Scope::Account));
                    timestamp = timestamp.max(comp.snapshot.map_or(0, |s| s.taken_at));
                }
            }
        }
        if !traits.is_empty() || !detached.is_empty() {
            let id = message::message_id(&parts.iter().map(String::as_str).collect::<Vec<_>>());
            let body = message::identify(space, user, &traits, &detached, timestamp, &id);
            self.emit(&Lane::user(entity_id), &id, body, &effects, false)?;
        }

        for row in rows.iter().filter(|r| r.change == Change::Attach) {
            let group_id = row.group_id.as_deref().unwrap_or_default();
            let m = self.membership.map(|m| m.id).unwrap_or(-1).to_string();
            let id = message::message_id(&["attach", entity_id, group_id, &m]);
            let body = message::group_attach(space, user, group_id, membership_taken, &id);
            let effects = [Effect::Membership {
                membership: MembershipEffect {
                    group_id: group_id.to_string(),
                    user_id: entity_id.to_string(),
                    attached: true,
                },
            }];
            self.emit(&Lane::user(entity_id), &id, body, &effects, true)?;
        }

        for (row, event_time) in rows.iter().zip(&event_times) {
            let Some((event, at)) = *event_time else {
                continue;
            };
            let comp = self.comp(row);
            let mut id_parts = vec![
                "track".to_string(),
                entity_id.to_string(),
                event.to_string(),
            ];
            id_parts.extend(self.change_parts(row, comp.scope == Scope::Account));
            let id = message::message_id(&id_parts.iter().map(String::as_str).collect::<Vec<_>>());
            let value = json_value(row.value.as_deref())?;
            let body = message::track(space, user, comp.reference(), event, value, at, &id);
            self.emit(&Lane::user(entity_id), &id, body, &[], false)?;
        }
        if self.stage {
            // One row per event name: the last time used for this user.
            for (event, at) in &last_times {
                state::stage_event_time(self.conn, entity_id, event, *at)?;
                self.staged += 1;
            }
        }

        if self.stage {
            self.staged += rows.len();
            for row in rows {
                match row.change {
                    Change::Attach | Change::Detach => state::stage_membership(
                        self.conn,
                        entity_id,
                        row.group_id.as_deref().unwrap_or_default(),
                        row.email.as_deref(),
                        row.change == Change::Attach,
                    )?,
                    _ => state::stage_value(
                        self.conn,
                        &self.comp(row).id,
                        "user",
                        entity_id,
                        row.email.as_deref(),
                        row.value.as_deref(),
                        row.overrides,
                    )?,
                }
            }
        }
        Ok(())
    }

    /// Emit one planned message: serialised here, once (`Message::into_value`), to be printed or
    /// staged for the outbox.
    fn emit(
        &mut self,
        lane: &Lane,
        message_id: &str,
        message: Message,
        effects: &[Effect],
        with_user: bool,
    ) -> anyhow::Result<()> {
        let kind = message.kind();
        let body = &message.into_value();
        let counted = match self.output {
            Output::Plan => true,
            Output::DryRun(out) => {
                // As an `io::Error` (not wrapped in serde_json's): the command line must see a
                // closed standard output (a broken pipe) for what it is.
                serde_json::to_writer(&mut **out, body).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
                true
            }
            Output::Enqueue => {
                outbox::stage_values(
                    self.conn,
                    lane,
                    message_id,
                    kind,
                    body,
                    &serde_json::to_value(effects)?,
                    with_user,
                )?;
                self.staged += 1;
                true
            }
        };
        if counted {
            match kind {
                MessageKind::Identify => self.counts.identify += 1,
                MessageKind::Track => self.counts.track += 1,
                MessageKind::Group if with_user => self.counts.group_user += 1,
                MessageKind::Group => self.counts.group_account += 1,
            }
        }
        Ok(())
    }
}

/// What one chunk counted, written with it.
pub(super) struct ChunkCounts {
    pub comps: Vec<Counts>,
    pub attached: u64,
    pub detached: u64,
}

impl ChunkCounts {
    pub fn new(comps: usize) -> Self {
        ChunkCounts {
            comps: vec![Counts::default(); comps],
            attached: 0,
            detached: 0,
        }
    }

    /// Count one entity's changes (as they are consumed: a chunk counts what it writes).
    pub fn count(&mut self, comps: &[Comp], rows: &[ChangeRow]) {
        for row in rows {
            match row.computation {
                Some(index) => {
                    let index = index as usize;
                    let counts = &mut self.comps[index];
                    if comps[index].scope == Scope::Account && row.lane == Scope::User {
                        counts.users += 1;
                    } else {
                        count(counts, row.change);
                    }
                }
                None if row.change == Change::Attach => self.attached += 1,
                None => self.detached += 1,
            }
        }
    }
}

fn count(counts: &mut Counts, change: Change) {
    match change {
        Change::Entered | Change::Appeared => counts.entered += 1,
        Change::Exited | Change::Gone => counts.exited += 1,
        Change::Changed => counts.changed += 1,
        Change::Resent => counts.resent += 1,
        Change::Attach | Change::Detach => {}
    }
}
