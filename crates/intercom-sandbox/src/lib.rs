//! A stateful Intercom REST API 2.x sandbox that is as strict as Intercom, for tests and demos.
//!
//! ```no_run
//! # async fn demo() -> Result<(), intercom_sandbox::SandboxError> {
//! use intercom_sandbox::{Sandbox, SandboxConfig};
//! let sandbox = Sandbox::start(SandboxConfig::new("secret")).await?;
//! println!("Intercom at {}", sandbox.base_url());
//! let state = sandbox.snapshot();
//! assert!(state.contacts.is_empty());
//! sandbox.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! See README.md for what it enforces and what it does not model.

mod config;
mod error;
mod rng;
mod server;
mod snapshot;
mod store;

pub use config::{
    Clock, FaultPoint, Faults, INTERCOM_EVENT_NAME_LIMIT, INTERCOM_RATE_LIMIT_PER_WINDOW,
    INTERCOM_WINDOW_SECS, LongStrings, MAX_STRING_CHARS, ManualClock,
    PERSONAS_RATE_LIMIT_PER_WINDOW, RateLimitHeaders, SandboxConfig, SlowResponses,
};
pub use error::SandboxError;
pub use server::{Sandbox, SandboxHandle};
pub use snapshot::{
    CompanySnapshot, ContactSnapshot, Counters, DataAttributeSnapshot, EventSnapshot, Snapshot,
};
