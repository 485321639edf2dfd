//! The pure core of audience-sync: everything that decides what to send and how, with no IO.
//!
//! Architecture Invariant: nothing here touches a database, the network or an async runtime,
//! and nothing reads the clock (time comes in as an argument). The compiler keeps it so: this
//! crate's `Cargo.toml` has no rusqlite, reqwest or tokio. The daemon crate (`audience-sync`)
//! re-exports these modules at their old paths (`audience_sync::segment`,
//! `audience_sync::intercom::mapping`, …).
//!
//! - [`domain`]: the vocabulary every layer shares (`Kind`, `Scope`).
//! - [`json`]: strict JSON parsing (no duplicate keys) and `serde_json` errors as text.
//! - [`plan`]: the per-entity diff (`plan::diff`) and the Personas messages (`plan::message`).
//! - [`segment`]: the typed Segment message model.
//! - [`intercom`]: the mapping from a Segment message to a plan of Intercom requests, with
//!   Intercom's value rules; dispositions of answers; the outage breaker; the rate budget.
//! - [`shape`]: compact outbox rows (a message split into its shape and its parts).

pub mod domain;
pub mod intercom;
pub mod json;
pub mod plan;
pub mod segment;
pub mod shape;
