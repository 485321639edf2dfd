//! The pure core of audience-sync: everything that decides what to send and how, with no IO.
//!
//! Architecture Invariant: nothing here touches a database, the network or an async runtime,
//! and nothing reads the clock (time comes in as an argument). The compiler keeps it so: this
//! crate's `Cargo.toml` has no rusqlite, reqwest or tokio.
//!
//! - [`domain`]: the vocabulary every layer shares (`Kind`, `Scope`).

pub mod domain;
