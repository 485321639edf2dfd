//! The outbox, the one home of its storage: what a message is (`NewMessage` to enqueue,
//! `OutboxMessage` pending, the `Effect`s it carries), how its row is stored and read back
//! (`stored`), a run's messages staged and enqueued (`enqueue`), the pending ones listed in
//! order and their retries scheduled (`pending`), the two transitions delivery ends every
//! message with (`finish`: `mark_delivered`, `mark_dead`), what `status` and `/metrics` count
//! (`counts`), and dead letters listed, put back in the queue or discarded (`dead_letters`).
//! The drain loop that calls all this is `intercom::delivery`.

mod counts;
mod dead_letters;
mod enqueue;
mod finish;
mod pending;
mod stored;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{Lane, Scope};
use crate::segment::{Message, MessageKind, ParseError};

pub use counts::{
    OutboxCounts, StatusCount, max_pending_seq, messages_by_status, oldest_pending_enqueued_at,
    outbox_counts, pending_count,
};
pub use dead_letters::{Acted, DeadLetter, Selection, dead_letters, discard_dead, retry_dead};
pub use enqueue::{
    EnqueuedCounts, create_staging, drop_staging, enqueue, enqueue_staged, stage, stage_values,
};
pub use finish::{Marked, mark_dead, mark_delivered, update_runs};
pub use pending::{
    clear_transient_failures, pending, pending_after, schedule_retry, schedule_transient,
};
pub use stored::{body, effects, first_of_each_type, message_id_from, stored_message_id};

/// One state change a message implies. Delivery confirms it (`mark_delivered`: delivered state
/// takes the value) or undoes it (`mark_dead`: planned state goes back to delivered state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Effect {
    /// A value of planned / delivered state (`planned_overrides`, `delivered_state`).
    Value {
        computation_id: String,
        /// Whose value it is (stored as `"user"` / `"account"`, as ever).
        #[serde(with = "scope_text")]
        subject: Scope,
        entity_id: String,
        value: Value,
        /// The time of the track event the change fired (in a later message of the lane), if
        /// it fired one. A dead letter keeps it (`replans`), so the re-plan sends the event
        /// with this time or, when it is `None`, sends none. Older messages have no such key:
        /// they re-plan as before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        track_at: Option<i64>,
    },
    /// A row of `membership_state`.
    Membership { membership: MembershipEffect },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembershipEffect {
    pub group_id: String,
    pub user_id: String,
    pub attached: bool,
}

/// A message waiting for delivery, as `pending` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// Global outbox order. Within one lane, deliver strictly in `seq` order.
    pub seq: i64,
    /// Messages of one lane (a user, or `account:<group id>`) must be delivered in order, one at
    /// a time; different lanes are independent.
    pub lane: Lane,
    pub message_id: String,
    pub kind: MessageKind,
    /// The Segment-spec message, parsed once when the row is read. `Err`: a stored body that is
    /// not a message Intercom can take (delivery dead-letters it without a request).
    pub message: Result<Message, ParseError>,
    pub attempts: i64,
    /// Unix seconds before which the message must not be tried again; `None` = now.
    pub next_attempt_at: Option<i64>,
    /// Unix seconds: since when the message has been failing with transient errors, if it is.
    pub failing_since: Option<i64>,
}

/// A message to enqueue.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub lane: &'a Lane,
    pub message_id: &'a str,
    pub kind: MessageKind,
    pub body: &'a str,
    pub effects: &'a str,
}

/// A [`Scope`] as an effect stores it: its text, `"user"` or `"account"` (the form existing
/// databases hold).
mod scope_text {
    use serde::{Deserialize, Deserializer, Serializer, de};

    use crate::domain::Scope;

    pub fn serialize<S: Serializer>(scope: &Scope, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(scope.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Scope, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Scope::parse(&text).ok_or_else(|| de::Error::custom(format!("unknown subject {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn effects_serialize_exactly_as_before() {
        // The effects column of existing databases holds this text: it must read back, and a
        // new effect must be written the same, byte for byte.
        let stored = r#"[{"computation_id":"tra_1","subject":"user","entity_id":"u1","value":3.5,"track_at":1700000000},{"computation_id":"aud_1","subject":"account","entity_id":"acme","value":true},{"membership":{"group_id":"acme","user_id":"u1","attached":false}}]"#;
        let effects = vec![
            Effect::Value {
                computation_id: "tra_1".into(),
                subject: Scope::User,
                entity_id: "u1".into(),
                value: json!(3.5),
                track_at: Some(1_700_000_000),
            },
            Effect::Value {
                computation_id: "aud_1".into(),
                subject: Scope::Account,
                entity_id: "acme".into(),
                value: json!(true),
                track_at: None,
            },
            Effect::Membership {
                membership: MembershipEffect {
                    group_id: "acme".into(),
                    user_id: "u1".into(),
                    attached: false,
                },
            },
        ];
        assert_eq!(serde_json::to_string(&effects).unwrap(), stored);
        let read: Vec<Effect> = serde_json::from_str(stored).unwrap();
        assert_eq!(read, effects);
        let read: Vec<Effect> =
            serde_json::from_value(serde_json::from_str(stored).unwrap()).unwrap();
        assert_eq!(read, effects);
        assert!(
            serde_json::from_str::<Vec<Effect>>(
                r#"[{"computation_id":"tra_1","subject":"group","entity_id":"u1","value":1}]"#
            )
            .is_err()
        );
    }
}
