//! Everything that speaks Intercom: the mapping from Segment messages to request plans, the HTTP client and delivery.

pub mod client;
pub mod delivery;
pub mod disposition;
pub mod executor;
pub mod mapping;
pub mod outage;
pub mod plan;
pub mod ratelimit;
pub mod resolve;
pub mod values;
