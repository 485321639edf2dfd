//! audience-sync keeps Intercom in step with audiences and computed traits, the way Segment
//! Personas does. See ARCHITECTURE.md for the data flow and the code map.

pub use audience_sync_core::{domain, segment};

pub mod cli;
pub mod commands;
pub mod compute;
pub mod daemon;
pub mod demo;
pub mod http;
pub mod intercom;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod settings;
pub mod status;
pub mod store;
#[cfg(test)]
mod tidy;
