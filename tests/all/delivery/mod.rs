//! End-to-end delivery: the real binary, a real SQLite file, the Intercom sandbox over HTTP.
//! The sandbox's final state must equal what the snapshots say, event by event, with and without
//! injected faults, and across SIGKILLs.

mod bench;
mod contention;
mod floor;
mod oracle;
mod scenarios;
