//! The workspace's active event names: a pure guard that refuses a new name beyond Intercom's
//! 120, compared case-insensitively as Intercom does.

use std::collections::BTreeSet;

use super::MapError;

/// Whether an event name is already active in the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Sent before: no new name is used up.
    Known,
    /// A new name, within the limit.
    New,
}

/// The active event names of the workspace (Intercom keeps at most 120 and answers a 121st
/// with an error): a pure guard over the names already sent, compared case-insensitively as
/// Intercom does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNames {
    names: BTreeSet<String>,
    limit: usize,
}

impl EventNames {
    pub const INTERCOM_LIMIT: usize = 120;

    /// The guard over the names this workspace has been sent.
    pub fn new<'a>(sent: impl IntoIterator<Item = &'a str>) -> EventNames {
        EventNames::with_limit(sent, EventNames::INTERCOM_LIMIT)
    }

    pub fn with_limit<'a>(sent: impl IntoIterator<Item = &'a str>, limit: usize) -> EventNames {
        EventNames {
            names: sent.into_iter().map(fold).collect(),
            limit,
        }
    }

    /// May an event with this name be sent? A new name beyond the limit is refused.
    pub fn check(&self, name: &str) -> Result<Admission, MapError> {
        if self.names.contains(&fold(name)) {
            Ok(Admission::Known)
        } else if self.names.len() < self.limit {
            Ok(Admission::New)
        } else {
            Err(MapError::TooManyEventNames {
                name: name.to_string(),
                limit: self.limit,
            })
        }
    }

    /// Count a name as sent (after Intercom accepted it).
    pub fn record(&mut self, name: &str) {
        self.names.insert(fold(name));
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn fold(name: &str) -> String {
    name.trim().to_lowercase()
}
