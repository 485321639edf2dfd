-- Schema version 5: computations defined in SQL (SPEC section 11).

-- The computations `compute` created from settings ([[computations]]). A key here cannot be
-- loaded with `load`, and `compute` refuses a key that `load` created: the two may not share one.
CREATE TABLE IF NOT EXISTS sql_computations (
    computation_id TEXT PRIMARY KEY REFERENCES computations(id),
    defined_at INTEGER NOT NULL                -- unix seconds: its first compute
);

-- One row per query `compute` (or the daemon before a scheduled run) ran: what `:now` was, what
-- it stored, how long it took, or why it stored nothing. The newest 1,000 are kept.
CREATE TABLE IF NOT EXISTS computes (
    id INTEGER PRIMARY KEY,
    started_at INTEGER NOT NULL,               -- unix seconds
    origin TEXT NOT NULL CHECK (origin IN ('command','daemon')),
    computation TEXT,                          -- the computation's key; NULL: the account membership
    now INTEGER NOT NULL,                      -- the value bound to :now (and the snapshot's taken_at)
    snapshot_id INTEGER,                       -- snapshots.id (membership_snapshots.id); NULL: failed
    rows INTEGER,                              -- rows stored
    took_ms INTEGER NOT NULL,
    error TEXT                                 -- why nothing was stored
);
CREATE INDEX IF NOT EXISTS computes_by_computation ON computes (computation, id);
