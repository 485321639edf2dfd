//! Snapshot storage: computations, snapshots and membership snapshots.
