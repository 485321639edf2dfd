-- Schema version 2 → 3: riding out Intercom outages, and re-plans that never invent events.
-- outbox.failing_since: when a message's current run of transient failures (408, 5xx, timeouts,
-- connection errors) began; a message is dead-lettered for them only once it has failed for
-- intercom.retry_for_secs. intercom_outage: the delivery pause while Intercom is unreachable, for
-- `status` in another process. replans: what a dead-lettered change had emitted, so the run that
-- re-plans it emits exactly that; intercom_data_attributes: Intercom's attribute list kept
-- across restarts (schema.sql explains them).
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

-- Intercom's custom data attributes as last listed (GET /data_attributes) and created since, so a
-- restart does not list them again: the list is re-read only when Intercom says an attribute is
-- unknown or already exists. data_type NULL: a type audience-sync does not write. The row of
-- intercom_attributes_listed says the list was read once (a workspace may have none).
CREATE TABLE intercom_data_attributes (
    model TEXT NOT NULL CHECK (model IN ('contact','company')),
    name TEXT NOT NULL,
    data_type TEXT,
    PRIMARY KEY (model, name)
) WITHOUT ROWID;
CREATE TABLE intercom_attributes_listed (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    listed_at INTEGER NOT NULL
);
