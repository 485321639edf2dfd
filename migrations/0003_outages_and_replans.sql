-- Schema version 2 → 3: riding out Intercom outages, and re-plans that never invent events.
-- outbox.failing_since: when a message's current run of transient failures (408, 5xx, timeouts,
-- connection errors) began; a message is dead-lettered for them only once it has failed for
-- intercom.retry_for_secs. intercom_outage: the delivery pause while Intercom is unreachable, for
-- `status` in another process. replans: what a dead-lettered change had emitted, so the run that
-- re-plans it emits exactly that (schema.sql explains both).
ALTER TABLE outbox ADD COLUMN failing_since INTEGER;

CREATE TABLE intercom_outage (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    since INTEGER NOT NULL,
    probes INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at INTEGER NOT NULL
);

CREATE TABLE replans (
    computation_id TEXT NOT NULL REFERENCES computations(id),
    subject TEXT NOT NULL CHECK (subject IN ('user','account')),
    entity_id TEXT NOT NULL,
    value TEXT,
    track_at INTEGER,
    PRIMARY KEY (computation_id, subject, entity_id)
) WITHOUT ROWID;
