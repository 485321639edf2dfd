-- audience-sync schema, version 5 (the current one).
--
-- The binary applies this file on start when the database is new (PRAGMA user_version = 0) and
-- records the version; an older database is brought here by the numbered migrations in
-- src/store/mod.rs (migrations/). Every statement is idempotent (IF NOT EXISTS), so applying it
-- twice changes nothing.
--
-- The first five tables are the upstream contract (SPEC section 3): an upstream job may write
-- snapshots into them with plain SQL. Everything after them is internal, but plain tables an
-- operator can query with sqlite3.

-- ─── Contract: computations and snapshots ────────────────────────────────────────────────────

CREATE TABLE IF NOT EXISTS computations (
    id TEXT PRIMARY KEY,                      -- aud_… or tra_…, stable for life
    key TEXT UNIQUE NOT NULL,                 -- snake_case; the Intercom attribute name
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('audience','trait')),
    scope TEXT NOT NULL CHECK (scope IN ('user','account')),
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);

-- An upstream writer inserts with complete = 0, inserts rows, then sets complete = 1 last.
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY,
    computation_id TEXT NOT NULL REFERENCES computations(id),
    taken_at INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    row_count INTEGER
);
CREATE INDEX IF NOT EXISTS snapshots_newest ON snapshots (computation_id, complete, taken_at, id);

-- entity_id: the user's entity id (user_id, or lower-cased email when it has none) or the
-- group_id for account scope. value: JSON; true for audience members; null = no value.
CREATE TABLE IF NOT EXISTS snapshot_rows (
    snapshot_id INTEGER NOT NULL,
    entity_id TEXT NOT NULL,
    email TEXT,
    value TEXT,
    PRIMARY KEY (snapshot_id, entity_id)
);

CREATE TABLE IF NOT EXISTS membership_snapshots (
    id INTEGER PRIMARY KEY,
    taken_at INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0
);

-- user_id holds the user's entity id.
CREATE TABLE IF NOT EXISTS membership_rows (
    snapshot_id INTEGER NOT NULL,
    group_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    email TEXT,
    PRIMARY KEY (snapshot_id, group_id, user_id)
);

-- Membership rows read by user (the per-user derived values of account computations and the
-- membership diff walk users in order). An index only: the contract columns are unchanged.
CREATE INDEX IF NOT EXISTS membership_rows_by_user ON membership_rows (snapshot_id, user_id, group_id);

-- ─── Internal: planned and delivered state ───────────────────────────────────────────────────
--
-- Planned state: per (computation, subject, entity), the JSON value the outbox is driving
-- Intercom toward (NULL = no value; audiences use 'true' and, after an exit, 'false'). subject
-- 'user' holds a user's value (for account-scoped computations: the user's derived value);
-- subject 'account' an account's own value (account scope only, for `group`).
--
-- It is stored as a base and exceptions, so that a run writes only what changed: planned state
-- of a computation is its snapshot planned_bases.snapshot_id read as a run reads a snapshot
-- (audience members 'true'; for an account computation's user values, derived with membership
-- snapshot planned_bases.membership_snapshot_id), except for the entities planned_overrides
-- has a row for, whose planned value is that row's. A committed run moves the base to the
-- snapshots it diffed, so after it planned state equals the newest snapshots except for
-- audience exits ('false') and what dead letters moved back. No base row: the overrides alone.
-- Diffs are taken against planned; a dead letter sets an override to the delivered value.
CREATE TABLE IF NOT EXISTS planned_bases (
    computation_id TEXT PRIMARY KEY REFERENCES computations(id),
    snapshot_id INTEGER NOT NULL,
    membership_snapshot_id INTEGER             -- account computations' user values
) WITHOUT ROWID;

-- email: the user's email as last seen (exits need it once the snapshot row is gone).
CREATE TABLE IF NOT EXISTS planned_overrides (
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
CREATE TRIGGER IF NOT EXISTS planned_base_rows_are_kept BEFORE DELETE ON snapshot_rows
WHEN EXISTS (SELECT 1 FROM planned_bases WHERE snapshot_id = OLD.snapshot_id)
BEGIN
    SELECT RAISE(ABORT, 'snapshot_rows: this snapshot is the planned base of a computation (planned_bases); delete it once a newer snapshot has been planned');
END;
CREATE TRIGGER IF NOT EXISTS planned_base_members_are_kept BEFORE DELETE ON membership_rows
WHEN EXISTS (SELECT 1 FROM planned_bases WHERE membership_snapshot_id = OLD.snapshot_id)
BEGIN
    SELECT RAISE(ABORT, 'membership_rows: this membership snapshot is part of the planned base of an account computation (planned_bases); delete it once a newer one has been planned');
END;

-- Delivered state: the JSON value Intercom has confirmed; no row = no value (or never
-- delivered). Confirmation writes it; a dead letter reads it.
CREATE TABLE IF NOT EXISTS delivered_state (
    computation_id TEXT NOT NULL REFERENCES computations(id),
    subject TEXT NOT NULL CHECK (subject IN ('user','account')),
    entity_id TEXT NOT NULL,
    delivered TEXT NOT NULL,
    PRIMARY KEY (computation_id, subject, entity_id)
) WITHOUT ROWID;

-- Which (account, user) memberships the outbox has attached in Intercom, keyed by user first
-- (the membership diff walks users in order). planned / delivered: 1 attached, 0 detached.
-- A row whose planned and delivered are both 0 is deleted.
CREATE TABLE IF NOT EXISTS membership_state (
    user_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    email TEXT,
    planned INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, group_id)
) WITHOUT ROWID;

-- What a dead-lettered change emitted, per (computation, subject, entity) its message carried:
-- the value it drove toward and, if it fired a track event, that event's time (NULL: it fired
-- none: an initial sync, a `--full` resync, a trait gone). A run that re-plans the entity to the
-- same value emits exactly that: no track for an initial sync's change, the same event time for
-- an incremental one (Intercom de-duplicates a re-sent event on contact, name and created_at).
-- A run that plans the entity deletes its row; `dead-letters retry` too (it re-sends the
-- original message instead).
CREATE TABLE IF NOT EXISTS replans (
    computation_id TEXT NOT NULL REFERENCES computations(id),
    subject TEXT NOT NULL CHECK (subject IN ('user','account')),
    entity_id TEXT NOT NULL,
    value TEXT,
    track_at INTEGER,
    PRIMARY KEY (computation_id, subject, entity_id)
) WITHOUT ROWID;

-- Per (user entity, event name): the last event time used, so a new event gets
-- max(taken_at, last + 1) and Intercom never de-duplicates two distinct events.
CREATE TABLE IF NOT EXISTS event_times (
    entity_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    last_at INTEGER NOT NULL,
    PRIMARY KEY (entity_id, event_name)
) WITHOUT ROWID;

-- What the last committed run planned from: per computation id, the snapshot (and, for account
-- computations, the membership snapshot) its planned state reflects; the row named 'membership'
-- holds the membership snapshot membership_state reflects. An incremental run skips an input
-- whose snapshots are unchanged; a dead letter deletes the cursors of what it touched, so the
-- next run diffs them again.
CREATE TABLE IF NOT EXISTS plan_cursors (
    subject TEXT PRIMARY KEY,                  -- a computation id, or 'membership'
    snapshot_id INTEGER,
    membership_snapshot_id INTEGER
) WITHOUT ROWID;

-- ─── Internal: runs and the outbox ───────────────────────────────────────────────────────────

CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    mode TEXT NOT NULL CHECK (mode IN ('full','incremental')),
    started_at INTEGER NOT NULL,
    planned_at INTEGER,                        -- when the outbox transaction committed
    finished_at INTEGER,                       -- when delivery of its messages ended
    status TEXT NOT NULL DEFAULT 'planned' CHECK (status IN ('planned','delivering','finished','failed')),
    membership_snapshot_id INTEGER,            -- the membership snapshot diffed, if any
    attached INTEGER NOT NULL DEFAULT 0,       -- memberships attached (group with userId)
    detached INTEGER NOT NULL DEFAULT 0,       -- memberships detached (companies remove)
    messages_identify INTEGER NOT NULL DEFAULT 0,
    messages_track INTEGER NOT NULL DEFAULT 0,
    messages_group INTEGER NOT NULL DEFAULT 0,
    error TEXT
);

-- Per computation planned in a run. mode 'full' for a computation's initial sync or `--full`.
-- entered / exited / changed count the computation's own entities (users, or accounts for
-- account scope): audience entered / exited; trait appeared / gone (as entered / exited) and
-- changed; resent counts `--full` re-sends of unchanged values; users counts the member users
-- whose derived value changed (account scope only).
CREATE TABLE IF NOT EXISTS run_computations (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    computation_id TEXT NOT NULL REFERENCES computations(id),
    snapshot_id INTEGER,
    mode TEXT NOT NULL CHECK (mode IN ('full','incremental')),
    entered INTEGER NOT NULL DEFAULT 0,
    exited INTEGER NOT NULL DEFAULT 0,
    changed INTEGER NOT NULL DEFAULT 0,
    resent INTEGER NOT NULL DEFAULT 0,
    users INTEGER NOT NULL DEFAULT 0,
    track INTEGER NOT NULL DEFAULT 0,          -- its changes fire track events
    resync INTEGER NOT NULL DEFAULT 0,         -- diffed with `--full` semantics
    PRIMARY KEY (run_id, computation_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS run_computations_by_computation ON run_computations (computation_id);

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

-- The durable queue of Segment-spec messages. seq is the global outbox order; lane groups the
-- messages that must be delivered strictly in order (a user's entity id, or 'account:' || group
-- id for an account's own group call); lanes are independent of each other. effects: JSON array
-- of the state changes delivery confirms (mark_delivered) or undoes (mark_dead), e.g.
-- [{"computation_id":…, "subject":"user", "entity_id":…, "value":…}] and
-- [{"membership": {"group_id":…, "user_id":…, "attached": true}}]. message_id is unique among
-- pending messages: a message re-planned after a dead letter keeps its id; a planner's id
-- (personas_ + 32 hex digits) is stored as those 16 bytes, a BLOB (hex(message_id) reads it).
--
-- A run's messages are stored compact: shape_id names their shape (outbox_shapes: the body and
-- effects with every per-message value taken out) and parts holds those values, a JSON array;
-- body and effects are then ''. Messages from `send`, and rows that do not split, keep body and
-- effects whole (shape_id NULL). store::outbox::body(conn, seq) gives any row's message back.
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    run_id INTEGER REFERENCES runs(id),       -- NULL for messages from `send`
    lane TEXT NOT NULL,
    message_id TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('identify','track','group')),
    body TEXT NOT NULL,                        -- the Segment message, JSON ('' with a shape)
    effects TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','delivered','dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,                   -- unix seconds; NULL = now
    last_error TEXT,
    enqueued_at INTEGER NOT NULL,
    finished_at INTEGER,                       -- delivered or dead-lettered at
    -- When the message's current run of transient failures (408, 5xx, timeouts, connection
    -- errors) began; they do not count as attempts, and dead-letter the message only once it has
    -- failed for intercom.retry_for_secs. NULL: not failing (cleared when Intercom answers again
    -- after an outage).
    failing_since INTEGER,
    shape_id INTEGER,                          -- outbox_shapes.id; NULL: body and effects whole
    parts TEXT                                 -- with a shape: the values it takes, JSON array
);
CREATE INDEX IF NOT EXISTS outbox_status_seq ON outbox (status, seq);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_pending_message_id ON outbox (message_id) WHERE status = 'pending';

-- The shapes of compact outbox rows (store::outbox, shape.rs): JSON {"b": body, "e": effects,
-- "h": holes}, the body and effects with null where a value was taken out, and per taken-out
-- value its source (an index into the row's parts, {"t": index} for a time kept as unix
-- seconds, "m" the row's message id, "l" its lane) and path. Many rows share one (a run's
-- identifies of the same traits). last_seq: no row with a higher seq uses it; a run deletes
-- the shapes below the oldest row's seq. No foreign key from outbox: checking one would scan
-- the outbox for every shape deleted.
CREATE TABLE IF NOT EXISTS outbox_shapes (
    id INTEGER PRIMARY KEY,
    shape TEXT NOT NULL UNIQUE,
    last_seq INTEGER NOT NULL DEFAULT 0
);

-- ─── Internal: what Intercom is known to hold ────────────────────────────────────────────────

-- user entity id → Intercom contact id, from every create, search and 409.
CREATE TABLE IF NOT EXISTS intercom_contacts (
    entity_id TEXT PRIMARY KEY,
    contact_id TEXT NOT NULL,
    learned_at INTEGER NOT NULL
) WITHOUT ROWID;

-- company_id (the Segment groupId) → Intercom company id.
CREATE TABLE IF NOT EXISTS intercom_companies (
    company_id TEXT PRIMARY KEY,
    intercom_id TEXT NOT NULL,
    learned_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Event names sent to this workspace (Intercom keeps at most 120 active names; case-insensitive).
CREATE TABLE IF NOT EXISTS intercom_event_names (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    first_sent_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Intercom's custom data attributes as last listed (GET /data_attributes) and created since, so a
-- restart does not list them again: the list is re-read only when Intercom says an attribute is
-- unknown or already exists. data_type NULL: a type audience-sync does not write. The row of
-- intercom_attributes_listed says the list was read once (a workspace may have none).
CREATE TABLE IF NOT EXISTS intercom_data_attributes (
    model TEXT NOT NULL CHECK (model IN ('contact','company')),
    name TEXT NOT NULL,
    data_type TEXT,
    PRIMARY KEY (model, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS intercom_attributes_listed (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    listed_at INTEGER NOT NULL
);

-- The last rate-limit budget Intercom announced, so a new process does not overspend a window.
CREATE TABLE IF NOT EXISTS intercom_rate_limit (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    limit_per_window INTEGER NOT NULL,
    remaining INTEGER NOT NULL,
    reset_at INTEGER NOT NULL,                 -- unix seconds
    observed_at INTEGER NOT NULL
);

-- While delivery is paused because Intercom is unreachable (every request failing with 5xx, 408,
-- a timeout or a dropped connection across lanes): since when, how many probes failed, the last
-- error. The row exists only during the pause; `status` reads it from another process.
CREATE TABLE IF NOT EXISTS intercom_outage (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    since INTEGER NOT NULL,
    probes INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at INTEGER NOT NULL
);

-- ─── Computations defined in SQL (SPEC section 11) ──────────────────────────────────────────

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
