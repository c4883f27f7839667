-- What the table sink runs on PostgreSQL, by name (relay/sinks/table/postgres.py).
-- {table} is the sink's table, quoted and possibly schema-qualified; every value is a named
-- parameter. Rows are read by column name.

-- name: create_namespace_table
-- MinIO's namespace table, with the value NOT NULL (the relay never writes a NULL).
CREATE TABLE IF NOT EXISTS {table} (
    key   VARCHAR PRIMARY KEY,  -- "bucket/decoded key"
    value JSONB NOT NULL        -- the object's last event (PAYLOAD_FORMAT)
);

-- name: create_access_table
CREATE TABLE IF NOT EXISTS {table} (
    event_id   VARCHAR(64) PRIMARY KEY,  -- the relay's event id: a replay adds no row
    event_time TIMESTAMPTZ NOT NULL,     -- the record's eventTime, else when it was received
    event_name VARCHAR NOT NULL,         -- canonical, e.g. s3:ObjectCreated:Put
    key        VARCHAR NOT NULL,         -- "bucket/decoded key"
    value      JSONB NOT NULL            -- the event (PAYLOAD_FORMAT)
);

-- name: create_access_index
-- {index} is the table's name with _event_time_idx, quoted.
CREATE INDEX IF NOT EXISTS {index} ON {table} (event_time);

-- name: table_exists
SELECT to_regclass(%(table)s) IS NOT NULL AS found;

-- name: table_columns
-- needs_value: NOT NULL with nothing that fills it in (default, identity, generated);
-- is_unique: a unique index on this column alone (what ON CONFLICT (column) needs).
SELECT a.attname AS column_name,
       a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
           AS needs_value,
       EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indpred IS NULL
                 AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum) AS is_unique,
       a.attgenerated <> '' AS is_generated
FROM pg_attribute a
WHERE a.attrelid = %(table)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: idle_session_timeout
-- Milliseconds after which the server closes an idle session (0: never): pooled
-- connections are recycled before that.
SELECT setting::bigint AS idle_ms FROM pg_settings WHERE name = 'idle_session_timeout';

-- name: use_utc
-- A TIMESTAMP (without time zone) column gets UTC, not the server's local time.
SET TIME ZONE 'UTC';

-- name: set_lock_timeout
-- A row another session holds locked fails our statement with 55P03 after :lock_timeout
-- (milliseconds), within the sink's TIMEOUT: the server names the lock, the connection
-- stays usable, and the sink writes the other objects without the locked one.
SELECT set_config('lock_timeout', %(lock_timeout)s, false);

-- name: upsert_object
INSERT INTO {table} (key, value) VALUES (%(key)s, %(value)s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;

-- name: delete_objects
DELETE FROM {table} WHERE key = ANY(%(keys)s);

-- name: insert_events
-- MinIO's access table has no event id: nothing to make a second write of an event a no-op.
-- {columns} are the access columns the table has, {values} their parameters.
INSERT INTO {table} ({columns}) VALUES ({values});

-- name: insert_events_once
INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT (event_id) DO NOTHING;
