//! A world for one campaign run: the shared [`World`] (a temporary directory with the database,
//! the Intercom sandbox in this process, the real binary) with the campaign's settings.

use intercom_sandbox::SandboxConfig;

pub use crate::harness::{World, args};

/// A sandbox with `config`; the product is told a budget of `rate_limit` requests per
/// `window_secs` (which may differ from the sandbox's own), gives a message 30 attempts, a
/// request 1 s, and logs errors only.
pub fn campaign_world(config: SandboxConfig, rate_limit: u32, window_secs: u64) -> World {
    let mut world = World::new(config);
    world.set("INTERCOM__RATE_LIMIT", &rate_limit.to_string());
    world.set("INTERCOM__RATE_LIMIT_WINDOW_SECS", &window_secs.to_string());
    world.set("INTERCOM__MAX_ATTEMPTS", "30");
    world.set("INTERCOM__REQUEST_TIMEOUT_SECS", "1");
    world.set("LOG__LEVEL", "error");
    world
}
