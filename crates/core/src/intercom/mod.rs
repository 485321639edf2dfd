//! The pure part of speaking Intercom: the mapping from Segment messages to request plans
//! ([`mapping`], [`plan`], [`values`]), what every answer means ([`disposition`]), the outage
//! breaker ([`outage`]). The HTTP client, the executor, the rate limiter and the drain are the
//! daemon crate's `intercom` module.

pub mod disposition;
pub mod mapping;
pub mod outage;
pub mod plan;
pub mod values;
