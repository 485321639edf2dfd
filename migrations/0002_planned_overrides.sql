-- Schema version 1 → 2: planned state as a base snapshot plus overrides (schema.sql explains
-- it); delivered state in its own table; the outbox loses its index on every message id (the
-- partial unique index on pending ones serves every lookup, and a run's enqueue no longer
-- maintains a second index of random keys). Version 1 kept one entity_state row per entity with
-- both values. Without a base row, planned state is the overrides alone, so every planned row
-- becomes an override and nothing the outbox is driving toward changes.
CREATE TABLE planned_bases (
    computation_id TEXT PRIMARY KEY REFERENCES computations(id),
    snapshot_id INTEGER NOT NULL,
    membership_snapshot_id INTEGER
) WITHOUT ROWID;

CREATE TABLE planned_overrides (
    computation_id TEXT NOT NULL REFERENCES computations(id),
    subject TEXT NOT NULL CHECK (subject IN ('user','account')),
    entity_id TEXT NOT NULL,
    email TEXT,
    planned TEXT,
    PRIMARY KEY (computation_id, subject, entity_id)
) WITHOUT ROWID;

-- The rows of a planned base are planned state: an upstream job that prunes old snapshots must
-- keep them until a run has planned a newer snapshot of that computation (then they are just an
-- old snapshot). Deleting them would make every planned value vanish.
CREATE TRIGGER planned_base_rows_are_kept BEFORE DELETE ON snapshot_rows
WHEN EXISTS (SELECT 1 FROM planned_bases WHERE snapshot_id = OLD.snapshot_id)
BEGIN
    SELECT RAISE(ABORT, 'snapshot_rows: this snapshot is the planned base of a computation (planned_bases); delete it once a newer snapshot has been planned');
END;
CREATE TRIGGER planned_base_members_are_kept BEFORE DELETE ON membership_rows
WHEN EXISTS (SELECT 1 FROM planned_bases WHERE membership_snapshot_id = OLD.snapshot_id)
BEGIN
    SELECT RAISE(ABORT, 'membership_rows: this membership snapshot is part of the planned base of an account computation (planned_bases); delete it once a newer one has been planned');
END;

CREATE TABLE delivered_state (
    computation_id TEXT NOT NULL REFERENCES computations(id),
    subject TEXT NOT NULL CHECK (subject IN ('user','account')),
    entity_id TEXT NOT NULL,
    delivered TEXT NOT NULL,
    PRIMARY KEY (computation_id, subject, entity_id)
) WITHOUT ROWID;

INSERT INTO planned_overrides (computation_id, subject, entity_id, email, planned)
    SELECT computation_id, subject, entity_id, email, planned FROM entity_state;
INSERT INTO delivered_state (computation_id, subject, entity_id, delivered)
    SELECT computation_id, subject, entity_id, delivered FROM entity_state
    WHERE delivered IS NOT NULL;
DROP TABLE entity_state;

DROP INDEX IF EXISTS outbox_message_id;
