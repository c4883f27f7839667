-- What the table sink runs on MySQL and MariaDB, by name (relay/sinks/table/mysql.py).
-- {table} is the sink's table, quoted and possibly db-qualified; every value is a named
-- parameter (a % of the SQL itself is written %%). Rows are read by column name.

-- name: create_namespace_table
-- MinIO declares key_hash `STORED NOT NULL PRIMARY KEY`, which MariaDB refuses (no NOT NULL
-- and no primary key on a generated column): a UNIQUE key gives the same upsert and delete.
CREATE TABLE IF NOT EXISTS {table} (
    key_name VARCHAR(3072) NOT NULL,  -- "bucket/decoded key"
    key_hash CHAR(64) GENERATED ALWAYS AS (SHA2(key_name, 256)) STORED,
    value    JSON,                    -- the object's last event (PAYLOAD_FORMAT)
    UNIQUE KEY key_hash (key_hash)
) CHARACTER SET = utf8mb4 COLLATE = utf8mb4_bin ROW_FORMAT = DYNAMIC;

-- name: create_access_table
CREATE TABLE IF NOT EXISTS {table} (
    event_id   VARCHAR(64) NOT NULL PRIMARY KEY,  -- the relay's event id: a replay adds no row
    event_time DATETIME(6) NOT NULL,   -- the record's eventTime (UTC), else when received
    event_name VARCHAR(255) NOT NULL,  -- canonical, e.g. s3:ObjectCreated:Put
    key_name   VARCHAR(3072) NOT NULL, -- "bucket/decoded key"
    event_data JSON NOT NULL,          -- the event (PAYLOAD_FORMAT)
    KEY event_time (event_time)
) CHARACTER SET = utf8mb4 COLLATE = utf8mb4_bin ROW_FORMAT = DYNAMIC;

-- name: table_columns
-- No row: no such table. needs_value: NOT NULL with nothing that fills it in (default,
-- generated, auto_increment); is_unique: a unique index on this column alone.
SELECT c.COLUMN_NAME AS column_name,
       c.IS_NULLABLE = 'NO' AND c.COLUMN_DEFAULT IS NULL AND c.EXTRA NOT LIKE '%%GENERATED%%'
           AND c.EXTRA NOT LIKE '%%auto_increment%%' AS needs_value,
       EXISTS (SELECT 1 FROM information_schema.STATISTICS s
               WHERE s.TABLE_SCHEMA = c.TABLE_SCHEMA AND s.TABLE_NAME = c.TABLE_NAME
                 AND s.COLUMN_NAME = c.COLUMN_NAME AND s.NON_UNIQUE = 0 AND s.SEQ_IN_INDEX = 1
                 AND NOT EXISTS (SELECT 1 FROM information_schema.STATISTICS s2
                                 WHERE s2.TABLE_SCHEMA = s.TABLE_SCHEMA
                                   AND s2.TABLE_NAME = s.TABLE_NAME
                                   AND s2.INDEX_NAME = s.INDEX_NAME AND s2.SEQ_IN_INDEX = 2))
           AS is_unique,
       c.EXTRA LIKE '%%GENERATED%%' AS is_generated
FROM information_schema.COLUMNS c
WHERE c.TABLE_SCHEMA = COALESCE(%(schema)s, DATABASE()) AND c.TABLE_NAME = %(name)s
ORDER BY c.ORDINAL_POSITION;

-- name: wait_timeout
-- Seconds after which the server closes an idle connection: pooled connections are
-- recycled before that (asyncmy's ping(reconnect=True) does not reconnect:
-- long2ice/asyncmy#27).
SELECT @@SESSION.wait_timeout AS wait_timeout;

-- name: set_lock_wait
-- Run by every new connection. A row another session holds locked fails our statement with
-- 1205 after {seconds} (whole seconds, at least 1), within the sink's TIMEOUT: the server
-- names the lock, and the sink writes the other objects without the locked one.
SET SESSION innodb_lock_wait_timeout = {seconds};

-- name: upsert_object
INSERT INTO {table} (key_name, value) VALUES (%(key)s, %(value)s)
ON DUPLICATE KEY UPDATE value = VALUES(value);

-- name: delete_objects_by_hash
-- :keys are SHA2(key_name, 256) of the keys (computed by the sink: the SHA-256 of the
-- key's UTF-8, what the server computes of a utf8mb4 key_name), so the unique key_hash
-- index finds the rows; key_name itself is too long to be indexed.
DELETE FROM {table} WHERE key_hash IN %(keys)s;

-- name: delete_objects
-- A namespace table whose key_name is unique (no key_hash column).
DELETE FROM {table} WHERE key_name IN %(keys)s;

-- name: insert_events
-- MinIO's access table has no event id: nothing to make a second write of an event a no-op.
-- {columns} are the access columns the table has, {values} their parameters.
INSERT INTO {table} ({columns}) VALUES ({values});

-- name: insert_events_once
-- Not INSERT IGNORE: that would also turn a refused value into a silent warning.
INSERT INTO {table} ({columns}) VALUES ({values}) ON DUPLICATE KEY UPDATE event_id = event_id;
