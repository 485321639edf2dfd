//! The Intercom destination mapping: one Segment identify / track / group message to the plan of Intercom requests it needs.
//!
//! Architecture Invariant: this module is pure. No IO, no clock, no network: "now" comes in
//! [`MapOptions::now`], what is already known about Intercom comes in [`KnownIds`], and the
//! active event names come in [`EventNames`]. The rules are SPEC section 6.
//!
//! One file per message type: `identify.rs` (the contact, its lookup or create, the companies
//! an identify names), `group.rs` (the company body, attaching and detaching members),
//! `track.rs` (the event and its metadata), and `event_names.rs` (the workspace's 120-name
//! guard); `contact.rs` holds what identify and group share about the contact (its lookup, the
//! identity-only create, the resolve step), so the two import it, not each other.

mod contact;
mod event_names;
mod group;
mod identify;
mod track;

use std::collections::BTreeMap;

use super::requests::Plan;
use super::values::LongStrings;
pub use super::values::MapError;
use crate::segment::Message;
pub use event_names::{Admission, EventNames};
pub use group::map_group;
pub use identify::map_identify;
pub use track::{MAX_METADATA_KEYS, map_track};

/// What the mapping needs from settings and the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOptions {
    pub long_strings: LongStrings,
    /// Prepended to a Personas account computation's key on the company (SPEC "One name, one
    /// model"), see [`map_group`].
    pub company_attribute_prefix: String,
    /// Unix seconds standing in for a missing `timestamp` (the caller's clock, read once).
    pub now: i64,
}

impl MapOptions {
    /// `intercom.long_strings` and `intercom.company_attribute_prefix`, with the caller's "now"
    /// (the daemon crate's `intercom::map_options` reads them from settings).
    pub fn new(long_strings: LongStrings, company_attribute_prefix: &str, now: i64) -> MapOptions {
        MapOptions {
            long_strings,
            company_attribute_prefix: company_attribute_prefix.to_string(),
            now,
        }
    }
}

/// Intercom ids the caller already holds (its caches). The dry run knows nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KnownIds {
    /// The Intercom id of this message's contact.
    pub contact_id: Option<String>,
    /// Intercom company ids by our `company_id`.
    pub company_ids: BTreeMap<String, String>,
}

impl KnownIds {
    pub fn nothing() -> KnownIds {
        KnownIds::default()
    }
}

/// Map any message.
pub fn map_message(
    message: &Message,
    options: &MapOptions,
    known: &KnownIds,
) -> Result<Plan, MapError> {
    match message {
        Message::Identify(m) => map_identify(m, options, known),
        Message::Track(m) => map_track(m, options, known),
        Message::Group(m) => map_group(m, options, known),
    }
}

#[cfg(test)]
mod tests;
