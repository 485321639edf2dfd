//! The status report: computations, snapshots, runs and the outbox, as text or JSON.
