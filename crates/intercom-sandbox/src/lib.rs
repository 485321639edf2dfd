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
//! An Intercom outage (every API request refused with a load-balancer 5xx or a dropped
//! connection, nothing applied, no budget spent) can be begun and ended at any time, last a
//! length of real time, or be scheduled after a number of answered requests:
//!
//! ```no_run
//! # async fn demo() -> Result<(), intercom_sandbox::SandboxError> {
//! use std::time::Duration;
//! use intercom_sandbox::{Outage, OutageKind, Sandbox, SandboxConfig, ScheduledOutage};
//! let mut config = SandboxConfig::new("secret");
//! config.outage = Some(ScheduledOutage {
//!     after_requests: 20,
//!     outage: Outage::lasting(OutageKind::Mixed, Duration::from_secs(2)),
//! });
//! let sandbox = Sandbox::start(config).await?;
//! sandbox.begin_outage(Outage::until_ended(OutageKind::Errors));
//! assert!(sandbox.outage_active());
//! sandbox.end_outage();
//! let outage = sandbox.snapshot().counters.outage;
//! println!("{} requests refused, at {:?} ms", outage.refused, outage.refused_at_ms);
//! # Ok(()) }
//! ```
//!
//! See README.md for what it enforces and what it does not model.

mod config;
mod error;
mod outage;
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
pub use outage::{Outage, OutageKind, ScheduledOutage};
pub use server::{Sandbox, SandboxHandle};
pub use snapshot::{
    CompanySnapshot, ContactSnapshot, Counters, DataAttributeSnapshot, EventSnapshot,
    OutageCounters, Snapshot,
};
