//! The pure part of speaking Intercom: the mapping from Segment messages to request plans
//! ([`mapping`], [`requests`], [`values`]), what every answer means ([`disposition`]), the outage
//! breaker ([`outage`]) and the rate budget ([`budget`]). The HTTP client, the executor and the
//! drain are the daemon crate's `intercom` module.

pub mod budget;
pub mod disposition;
pub mod mapping;
pub mod outage;
pub mod requests;
pub mod values;
