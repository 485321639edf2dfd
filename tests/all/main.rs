//! The integration tests, one binary: `cargo test --test all` runs them all, and a module path
//! names a suite (`cargo test --test all campaign::`, `… delivery::floor`, `… cli::load::`).
//!
//! Every test uses the one harness ([`harness`]): a fresh temporary directory, the real binary,
//! its settings (a settings file, or `AUDIENCE_SYNC__…` variables) and, for the end-to-end
//! suites, the Intercom sandbox serving in this process.

mod campaign;
mod cli;
mod delivery;
mod fuzz_loaders;
mod harness;
mod mapping;
mod mapping_cli;
mod openapi_bodies;
mod plan;
mod proof_inputs;
