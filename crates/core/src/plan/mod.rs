//! The pure part of planning: what one (planned, snapshot) pair means ([`diff`]) and the Segment
//! messages the Personas emitter builds ([`message`]). The runs themselves (cursors over SQLite,
//! chunks, staging) are the daemon crate's `plan` module.

pub mod diff;
pub mod message;
