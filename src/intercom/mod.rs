//! Everything that speaks Intercom: the mapping from Segment messages to request plans, the HTTP client and delivery.

pub mod mapping;
pub mod plan;
pub mod values;
