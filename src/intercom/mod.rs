//! Everything that speaks Intercom: the mapping from Segment messages to request plans, the HTTP client and the drain.
//!
//! The pure parts (mapping, request plans, value rules, dispositions, the outage breaker, the
//! rate budget) live in the core crate, `audience_sync_core::intercom`, and are re-exported here
//! at their old paths; this module keeps what does IO: the client, the executor, bulk lookups,
//! the drain and the rate limiter's waiting.

pub use audience_sync_core::intercom::{disposition, mapping, outage, requests, values};

pub mod client;
pub mod drain;
pub mod executor;
pub mod ratelimit;
pub mod resolve;

use crate::settings::IntercomSettings;
use mapping::MapOptions;

/// The mapping's options from settings (`intercom.long_strings`,
/// `intercom.company_attribute_prefix`), with the caller's "now" (unix seconds, read once).
pub fn map_options(settings: &IntercomSettings, now: i64) -> MapOptions {
    MapOptions::new(
        settings.long_strings,
        &settings.company_attribute_prefix,
        now,
    )
}
