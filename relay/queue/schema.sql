-- The relay's log: everything the relay knows lives in these tables.
-- Version 1 of the schema; later versions are new migrations in relay/queue/migrations.py.

-- Every accepted event, append-only. AUTOINCREMENT so a seq is never reused, even after the
-- retention job has deleted every row: sink cursors are seqs and must only ever move forward.
CREATE TABLE events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL,   -- hex hash of the dedup key; what sinks use for idempotence
    received_at     REAL    NOT NULL,   -- unix seconds, when the commit holding it was made
    source          TEXT    NOT NULL,   -- ingest path label
    dialect         TEXT    NOT NULL,
    event_name      TEXT    NOT NULL,   -- canonical, "s3:" prefixed
    bucket          TEXT    NOT NULL,
    key             TEXT    NOT NULL,   -- decoded
    size            INTEGER,
    etag            TEXT,
    version_id      TEXT,
    sequencer       TEXT,
    event_time      TEXT,
    principal       TEXT,
    source_ip       TEXT,
    user_agent      TEXT,
    request_id      TEXT,
    sender_event_id TEXT,
    attrs           TEXT,               -- JSON {"metadata": {...}, "tags": {...}}, NULL when both empty
    record          BLOB    NOT NULL    -- the record exactly as received
);
-- Dedup: a sender's retry of an event already in the log is answered 2xx and not stored again.
-- The window is the retention period, since pruned rows leave the index with them.
-- (Replaced in schema version 2 by events_dedup: see the end of queries.sql.)
CREATE UNIQUE INDEX events_event_id ON events (event_id);

-- How far each sink has got: every event with seq <= cursor is delivered, dead-lettered or
-- not for this sink.
CREATE TABLE cursors (
    sink       TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    updated_at REAL    NOT NULL
);

-- The backoff of an event that failed with a retryable error, persisted so that a restart
-- keeps the schedule and the attempt count (max_attempts, max_age).
CREATE TABLE retries (
    sink       TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    attempts   INTEGER NOT NULL,
    first_at   REAL    NOT NULL,
    next_at    REAL    NOT NULL,
    last_error TEXT    NOT NULL,
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;

-- Events a sink gave up on. The event row is kept (retention skips it) until the dead letter
-- is retried or purged.
CREATE TABLE dead_letters (
    id       INTEGER PRIMARY KEY,
    sink     TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    error    TEXT    NOT NULL,
    at       REAL    NOT NULL
);
CREATE INDEX dead_letters_sink ON dead_letters (sink, seq);
CREATE INDEX dead_letters_seq ON dead_letters (seq);

-- Events to hand to a sink outside its cursor's order: dead letters being retried and
-- operator replays (drained before new events), and, from schema version 3, parked events
-- (waiting for an earlier event of their object; `newer` is added by version 3 too).
CREATE TABLE redeliveries (
    sink   TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    reason TEXT    NOT NULL,  -- "dlq-retry" | "replay" | "parked"
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
CREATE INDEX redeliveries_seq ON redeliveries (seq);

-- Authenticated bodies the relay could not read. Kept raw, never dropped, re-ingestable.
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    headers     TEXT NOT NULL,  -- JSON object, credentials removed
    body        BLOB NOT NULL
);
