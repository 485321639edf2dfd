-- Schema version 4: runs of any size (SPEC section 9).

-- ─── Chunked runs ───────────────────────────────────────────────────────────────────────────

-- The run being planned, chunk by chunk (SPEC section 9): at most one row, gone when the run's
-- last chunk commits. While it exists, planned state of the run's computations is split at its
-- progress: the entities the run has committed (accounts up to `through` in the accounts' pass,
-- every account and the users up to `through` in the users' pass) are planned from the run's
-- snapshots (run_computations.snapshot_id, runs.membership_snapshot_id), the rest still from
-- planned_bases. A crash resumes the run after `through`, from the same snapshots.
CREATE TABLE IF NOT EXISTS run_progress (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id),
    pass TEXT NOT NULL CHECK (pass IN ('account','user')),
    through TEXT,                              -- the last entity of `pass` committed; NULL: none
    membership INTEGER NOT NULL,               -- the run diffs the account membership
    dead_letters INTEGER NOT NULL,             -- the dead-letter generation when the run began
    chunks INTEGER NOT NULL DEFAULT 0          -- chunks committed
);

-- What a run's changes of a computation do, kept so a resumed run does the same.
ALTER TABLE run_computations ADD COLUMN track INTEGER NOT NULL DEFAULT 0;
ALTER TABLE run_computations ADD COLUMN resync INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER IF NOT EXISTS run_snapshot_rows_are_kept BEFORE DELETE ON snapshot_rows
WHEN EXISTS (SELECT 1 FROM run_progress p JOIN run_computations c ON c.run_id = p.run_id
             WHERE c.snapshot_id = OLD.snapshot_id)
BEGIN
    SELECT RAISE(ABORT, 'snapshot_rows: a run being planned plans from this snapshot (run_progress); delete it once the run is planned');
END;
CREATE TRIGGER IF NOT EXISTS run_members_are_kept BEFORE DELETE ON membership_rows
WHEN EXISTS (SELECT 1 FROM run_progress p JOIN runs r ON r.id = p.run_id
             WHERE r.membership_snapshot_id = OLD.snapshot_id)
BEGIN
    SELECT RAISE(ABORT, 'membership_rows: a run being planned plans from this membership snapshot (run_progress); delete it once the run is planned');
END;

-- ─── Compact outbox rows ────────────────────────────────────────────────────────────────────

-- A run's messages are stored as a shared shape and their values (schema.sql, outbox and
-- outbox_shapes); rows already queued keep their body and effects whole (shape_id NULL) and
-- read as before. A planner's message id becomes its 16 bytes, on every row, so that a
-- re-planned message still meets the pending one it repeats in outbox_pending_message_id.
-- outbox_pending (status, lane, seq) goes: no query filters on lane.
ALTER TABLE outbox ADD COLUMN shape_id INTEGER;
ALTER TABLE outbox ADD COLUMN parts TEXT;
CREATE TABLE IF NOT EXISTS outbox_shapes (
    id INTEGER PRIMARY KEY,
    shape TEXT NOT NULL UNIQUE,
    last_seq INTEGER NOT NULL DEFAULT 0
);
UPDATE outbox SET message_id = unhex(substr(message_id, 10))
WHERE typeof(message_id) = 'text' AND length(message_id) = 41
  AND substr(message_id, 1, 9) = 'personas_'
  AND substr(message_id, 10) = lower(substr(message_id, 10))
  AND unhex(substr(message_id, 10)) IS NOT NULL;
DROP INDEX IF EXISTS outbox_pending;

-- ─── Prune records ──────────────────────────────────────────────────────────────────────────

-- One row per prune that changed or tried to change something (`audience-sync prune`, and the
-- daemon's prune after each run; not dry runs): when it ran, what it removed, the bytes it
-- returned to the file system, and why it failed (NULL: it did not). A failed prune counts what
-- it had removed before the failure (each batch commits on its own). `status` and `/metrics`
-- show the newest; only the newest 100 are kept (store::retention::PRUNE_RECORDS).
CREATE TABLE IF NOT EXISTS prunes (
    id INTEGER PRIMARY KEY,
    started_at INTEGER NOT NULL,               -- unix seconds
    took_ms INTEGER NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('command','daemon')),
    delivered_messages INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 0,
    snapshots INTEGER NOT NULL DEFAULT 0,
    snapshot_rows INTEGER NOT NULL DEFAULT 0,
    membership_snapshots INTEGER NOT NULL DEFAULT 0,
    membership_rows INTEGER NOT NULL DEFAULT 0,
    bytes_returned INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
