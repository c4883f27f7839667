-- Every query the relay runs, by name. Python calls them as Q["name"].

-- name: insert_event
-- OR IGNORE on the dedup index (event time, event id) is the dedup: rowcount 0 means
-- "already in the log".
INSERT OR IGNORE INTO events (
    event_id, received_at, source, dialect, event_name, bucket, key, size, etag, version_id,
    sequencer, event_time, principal, source_ip, user_agent, request_id, sender_event_id,
    attrs, record
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: event_ids_after
-- The events a commit inserted (seq above the highest before it): used only when some of
-- its rows were duplicates, to credit each request.
SELECT event_id FROM events WHERE seq > ?;

-- name: insert_quarantine
INSERT INTO quarantine (received_at, source, reason, headers, body) VALUES (?, ?, ?, ?, ?);

-- name: events_after
-- A sink's next window of the log.
SELECT seq, received_at, event_id, source, dialect, event_name, bucket, key, size, etag,
       version_id, sequencer, event_time, principal, source_ip, user_agent, request_id,
       sender_event_id, attrs, record
FROM events WHERE seq > ? ORDER BY seq LIMIT ?;

-- name: redeliveries_for
-- Events an operator queued again for a sink (dead letters retried, replays), oldest first,
-- with the column `newer` last; parked events wait on their own schedule instead.
SELECT e.seq, e.received_at, e.event_id, e.source, e.dialect, e.event_name, e.bucket, e.key,
       e.size, e.etag, e.version_id, e.sequencer, e.event_time, e.principal, e.source_ip,
       e.user_agent, e.request_id, e.sender_event_id, e.attrs, e.record, r.newer
FROM redeliveries r JOIN events e ON e.seq = r.seq
WHERE r.sink = ? AND r.reason != 'parked' ORDER BY r.seq LIMIT ?;

-- name: received_between
-- A page of the events received in [since, until), after seq :after (relay audit verify).
SELECT seq, received_at, event_id, source, dialect, event_name, bucket, key, size, etag,
       version_id, sequencer, event_time, principal, source_ip, user_agent, request_id,
       sender_event_id, attrs, record
FROM events
WHERE seq > :after AND received_at >= :since AND received_at < :until
ORDER BY seq LIMIT :limit;

-- name: redelivery_seqs
-- Every event a sink is still to be handed outside its cursor's order (queued again, or
-- parked): not delivered yet.
SELECT seq FROM redeliveries WHERE sink = :sink;

-- name: parked_for
-- A sink's parked events (each waits for an earlier event of its object), with the retry
-- schedule of those that head their object's queue.
SELECT r.seq, e.bucket, e.key, t.attempts, t.next_at
FROM redeliveries r
JOIN events e ON e.seq = r.seq
LEFT JOIN retries t ON t.sink = r.sink AND t.seq = r.seq
WHERE r.sink = :sink AND r.reason = 'parked'
ORDER BY r.seq;

-- name: entries_by_seq
-- The events whose seqs are in the JSON array :seqs, in seq order.
SELECT seq, received_at, event_id, source, dialect, event_name, bucket, key, size, etag,
       version_id, sequencer, event_time, principal, source_ip, user_agent, request_id,
       sender_event_id, attrs, record
FROM events WHERE seq IN (SELECT value FROM json_each(:seqs)) ORDER BY seq;

-- name: entries_before
-- The last :limit events up to and including :seq, newest first (to learn what a sink has
-- recently had of each object).
SELECT seq, received_at, event_id, source, dialect, event_name, bucket, key, size, etag,
       version_id, sequencer, event_time, principal, source_ip, user_agent, request_id,
       sender_event_id, attrs, record
FROM events WHERE seq <= :seq ORDER BY seq DESC LIMIT :limit;

-- name: retries_by_seq
-- Attempts so far of the events whose seqs are in the JSON array :seqs.
SELECT seq, attempts, first_at FROM retries
WHERE sink = :sink AND seq IN (SELECT value FROM json_each(:seqs));

-- name: park
-- An event waits for an earlier event of its object; a redelivery of it (a dead letter
-- retried, a replay) becomes a parked one.
INSERT INTO redeliveries (sink, seq, reason) VALUES (:sink, :seq, 'parked')
ON CONFLICT (sink, seq) DO UPDATE SET reason = 'parked';

-- name: get_cursor
SELECT seq FROM cursors WHERE sink = ?;

-- name: advance_cursor
UPDATE cursors SET seq = max(seq, ?), updated_at = ? WHERE sink = ?;

-- name: get_retry
SELECT attempts, first_at, next_at, last_error FROM retries WHERE sink = ? AND seq = ?;

-- name: upsert_retry
INSERT INTO retries (sink, seq, attempts, first_at, next_at, last_error)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (sink, seq) DO UPDATE SET
    attempts = excluded.attempts, next_at = excluded.next_at, last_error = excluded.last_error;

-- name: delete_retry
DELETE FROM retries WHERE sink = ? AND seq = ?;

-- name: delete_retries_upto
-- The cursor passed them; a parked event keeps its schedule.
DELETE FROM retries
WHERE sink = :sink AND seq <= :seq
  AND seq NOT IN (SELECT seq FROM redeliveries WHERE sink = :sink);

-- name: insert_dead_letter
INSERT INTO dead_letters (sink, seq, attempts, error, at) VALUES (?, ?, ?, ?, ?);

-- name: delete_redelivery
DELETE FROM redeliveries WHERE sink = ? AND seq = ?;

-- name: log_counts
SELECT count(*) FROM events;

-- name: max_seq
SELECT coalesce(max(seq), 0) FROM events;

-- name: first_seq_since
-- The oldest event that is still inside the retention window.
SELECT seq FROM events WHERE received_at >= ? ORDER BY seq LIMIT 1;

-- name: prune_range
-- Range delete of delivered events past retention; rows a dead letter or redelivery of a
-- configured sink (:sinks, a JSON array) still needs are kept, and so are the other events
-- of an object with such a dead letter: retrying it checks them to tell whether the sink
-- has since had a newer event of the object (stale). A sink no longer configured pins
-- nothing.
DELETE FROM events
WHERE seq > :low AND seq <= :high
  AND seq NOT IN (SELECT seq FROM dead_letters WHERE sink IN (SELECT value FROM json_each(:sinks)))
  AND seq NOT IN (SELECT seq FROM redeliveries WHERE sink IN (SELECT value FROM json_each(:sinks)))
  AND (bucket, key) NOT IN (
      SELECT o.bucket, o.key FROM dead_letters d JOIN events o ON o.seq = d.seq
      WHERE d.sink IN (SELECT value FROM json_each(:sinks)));

-- name: min_event_seq
SELECT coalesce(min(seq), 0) FROM events;

-- name: oldest_after
-- When the first event past a cursor arrived (the sink's oldest pending event).
SELECT received_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1;

-- name: redelivery_stats
SELECT count(*), count(*) FILTER (WHERE r.reason = 'parked'), min(e.received_at)
FROM redeliveries r JOIN events e ON e.seq = r.seq WHERE r.sink = :sink;

-- name: dead_letter_counts
SELECT sink, count(*) FROM dead_letters GROUP BY sink;

-- name: quarantine_count
SELECT count(*) FROM quarantine;

-- name: list_dead_letters
-- A sink's dead letters (or every one) by position (`relay audit verify` reads them).
SELECT d.id, d.sink, d.seq, d.attempts, d.error, d.at, e.event_name, e.bucket, e.key
FROM dead_letters d LEFT JOIN events e ON e.seq = d.seq
WHERE (? IS NULL OR d.sink = ?) ORDER BY d.id LIMIT ?;

-- name: select_dead_letters
-- The dead letters an operator names (`relay dlq list|retry|purge`, the admin API), oldest
-- first. Every filter that is not NULL must hold: :sink (any case), :bucket, :prefix of the
-- decoded key, :since <= dead-lettered at < :until (unix seconds), :error a substring of the
-- last error (any case). :limit -1 is no limit. The event's columns are NULL should its row
-- be gone (retention keeps it; a repaired log may not have it).
SELECT d.id, d.sink, d.seq, d.attempts, d.error, d.at, d.retrying_to,
       e.event_name, e.bucket, e.key
FROM dead_letters d LEFT JOIN events e ON e.seq = d.seq
WHERE (:id IS NULL OR d.id = :id)
  AND (:sink IS NULL OR d.sink = :sink COLLATE NOCASE)
  AND (:bucket IS NULL OR e.bucket = :bucket)
  AND (:prefix IS NULL OR substr(e.key, 1, length(:prefix)) = :prefix)
  AND (:since IS NULL OR d.at >= :since)
  AND (:until IS NULL OR d.at < :until)
  AND (:error IS NULL OR instr(lower(d.error), lower(:error)) > 0)
ORDER BY d.id
LIMIT :limit;

-- name: get_dead_letter
SELECT d.id, d.sink, d.seq, d.attempts, d.error, d.at, d.retrying_to, e.event_id,
       e.event_name, e.bucket, e.key, e.record
FROM dead_letters d LEFT JOIN events e ON e.seq = d.seq WHERE d.id = :id;

-- name: requeue_dead_letter
-- A dead letter retried: its event is queued for :sink (its own sink or another), with the
-- stale check's token of that sink.
INSERT OR IGNORE INTO redeliveries (sink, seq, reason, newer)
VALUES (:sink, :seq, 'dlq-retry', :newer);

-- name: mark_dead_letter_retrying
-- … and the dead letter stays, marked, until that redelivery is finished
-- (finish_retried_dead_letters).
UPDATE dead_letters SET retrying_to = :sink WHERE id = :id;

-- name: finish_retried_dead_letters
-- Run by the delivery settlement for every redelivery to :sink it finishes (Settlement.done:
-- delivered, dropped as stale, or dead-lettered again): the dead letters of that event
-- retried to :sink leave. One that failed again is replaced by the dead letter the same
-- settlement writes for :sink, with the new error (that one is not marked, so it stays).
DELETE FROM dead_letters WHERE seq = :seq AND retrying_to = :sink;

-- name: delete_dead_letter
DELETE FROM dead_letters WHERE id = :id;

-- name: list_quarantine
SELECT id, received_at, source, reason, length(body) FROM quarantine ORDER BY id LIMIT ?;

-- name: get_quarantine
SELECT id, received_at, source, reason, headers, body FROM quarantine WHERE id = :id;

-- name: delete_quarantine
DELETE FROM quarantine WHERE id = ?;

-- name: replay_select
-- Events an operator replays to a sink: by time range, bucket and key prefix.
SELECT seq, received_at, event_id, source, dialect, event_name, bucket, key, size, etag,
       version_id, sequencer, event_time, principal, source_ip, user_agent, request_id,
       sender_event_id, attrs, record
FROM events
WHERE received_at >= ? AND received_at < ?
  AND (? IS NULL OR bucket = ?)
  AND (? IS NULL OR substr(key, 1, length(?)) = ?)
ORDER BY seq;

-- name: list_cursors
SELECT sink, seq, updated_at FROM cursors ORDER BY sink;

-- name: insert_redelivery_if_present
-- An operator's redelivery (replay from the admin API): only for an event still in the log,
-- as retention may have pruned it between the selection and this write.
INSERT OR IGNORE INTO redeliveries (sink, seq, reason, newer)
SELECT :sink, seq, :reason, :newer FROM events WHERE seq = :seq;

-- name: later_events_of
-- What a sink has had of some objects since :after: their events up to its cursor that it
-- neither dead-lettered nor still waits to send. :objects is a JSON array of
-- [bucket, key] pairs. (Before rules: the caller applies the sink's.)
SELECT seq, received_at, event_id, source, dialect, event_name, bucket, key, size, etag,
       version_id, sequencer, event_time, principal, source_ip, user_agent, request_id,
       sender_event_id, attrs, record
FROM events
WHERE seq > :after
  AND seq <= (SELECT seq FROM cursors WHERE sink = :sink)
  AND (bucket, key) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
                        FROM json_each(:objects))
  AND seq NOT IN (SELECT seq FROM dead_letters WHERE sink = :sink)
  AND seq NOT IN (SELECT seq FROM redeliveries WHERE sink = :sink)
ORDER BY seq;

-- name: replay_count
-- How many events a replay scans (for the CLI's progress bar).
SELECT count(*)
FROM events
WHERE received_at >= ? AND received_at < ?
  AND (? IS NULL OR bucket = ?)
  AND (? IS NULL OR substr(key, 1, length(?)) = ?);

-- Schema version 2 (relay/queue/migrations.py): the dedup index in event-time order.
-- A hash alone as the key put every insert on a random page of the index: a commit of N
-- events rewrote ~N index pages into the WAL (6.3 KB of WAL per 1.2 KB event, 35 % of the
-- writer's time). Led by the event time, inserts land on the index's last pages. A sender's
-- retry carries the same record, so the same event time: the dedup is unchanged.

-- name: drop_event_id_index
DROP INDEX IF EXISTS events_event_id;

-- name: create_dedup_index
CREATE UNIQUE INDEX IF NOT EXISTS events_dedup ON events (coalesce(event_time, ''), event_id);

-- Schema version 3: per-object order. A redelivery carries `newer`, the newest order token
-- (relay/delivery/stale.py) of its object that the sink had when it was queued again, so a
-- retried dead letter or a replay that the sink has since seen superseded is known stale.
-- Parked events (reason 'parked') are redeliveries too.

-- name: add_redelivery_newer
ALTER TABLE redeliveries ADD COLUMN newer TEXT;

-- Schema version 4: missed-events markers. A sink that sheds past its backlog bound
-- (ON_FULL=shed), or whose cursor points into a range retention already pruned, is owed one
-- `relay:MissedEvents` marker per range, delivered in order before anything after it.

-- name: create_missed
CREATE TABLE IF NOT EXISTS missed (
    id        INTEGER PRIMARY KEY,
    sink      TEXT    NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    count     INTEGER,            -- events of the range for the sink; NULL when not known
    first_at  REAL,               -- received_at of the first and last of them
    last_at   REAL,
    reason    TEXT    NOT NULL    -- max_backlog | max_backlog_bytes | max_backlog_age | pruned
);

-- name: missed_for
-- The markers a sink is owed, oldest range first.
SELECT id, first_seq, last_seq, count, first_at, last_at, reason
FROM missed WHERE sink = :sink ORDER BY first_seq;

-- name: extend_missed
-- A range that starts where the sink's last owed marker of the same reason ends joins it:
-- one marker per gap, however long the sink stays behind.
UPDATE missed
SET last_seq = :last_seq, count = count + :count,
    first_at = coalesce(first_at, :first_at), last_at = coalesce(:last_at, last_at)
WHERE id = (SELECT id FROM missed WHERE sink = :sink AND reason = :reason
            AND last_seq = :first_seq - 1 ORDER BY id DESC LIMIT 1);

-- name: insert_missed
INSERT INTO missed (sink, first_seq, last_seq, count, first_at, last_at, reason)
VALUES (:sink, :first_seq, :last_seq, :count, :first_at, :last_at, :reason);

-- name: delete_missed
DELETE FROM missed WHERE id = :id;

-- name: entries_between
-- The events of a range, e.g. to count what a sink misses (the caller applies its rules).
SELECT seq, received_at, event_id, source, dialect, event_name, bucket, key, size, etag,
       version_id, sequencer, event_time, principal, source_ip, user_agent, request_id,
       sender_event_id, attrs, record
FROM events WHERE seq > :after AND seq <= :upto ORDER BY seq;

-- name: first_seq_received
-- Past a sink's cursor, the first event young enough for its MAX_BACKLOG_AGE (read from the
-- cursor on: only what is shed is scanned).
SELECT seq FROM events WHERE seq > :after AND received_at >= :since ORDER BY seq LIMIT 1;

-- Schema version 5: the sink life cycle. A sink in the log that is no longer configured is
-- an orphan from `orphaned_at`: it pins nothing, and its state goes after RELAY_RETENTION
-- (or at once, `relay sinks forget`).

-- name: add_cursor_orphaned_at
ALTER TABLE cursors ADD COLUMN orphaned_at REAL;

-- name: create_log_state
-- Facts about the log as a whole. `pruned_upto`: retention has deleted every event up to
-- this seq that nothing pinned. Seqs have holes of two kinds, events pruned and seqs a
-- duplicate used up (an ignored insert still takes its AUTOINCREMENT number); only a hole
-- at or below pruned_upto is events someone may have missed.
CREATE TABLE IF NOT EXISTS log_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);

-- name: get_pruned_upto
SELECT coalesce((SELECT value FROM log_state WHERE key = 'pruned_upto'), 0);

-- name: set_pruned_upto
INSERT INTO log_state (key, value) VALUES ('pruned_upto', :seq)
ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value);

-- name: cursor_rows
SELECT sink, seq, orphaned_at FROM cursors ORDER BY sink;

-- name: start_cursor
-- A new sink, or one configured again after it was removed, starts where START says.
-- One configured again starts afresh: not paused, no failures counted.
INSERT INTO cursors (sink, seq, updated_at, orphaned_at) VALUES (:sink, :seq, :now, NULL)
ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq, updated_at = :now, orphaned_at = NULL,
    paused = NULL, paused_at = NULL, failing_since = NULL;

-- name: orphan_cursor
UPDATE cursors SET orphaned_at = :now WHERE sink = :sink AND orphaned_at IS NULL;

-- name: forget_parked
-- The retry schedules and parked events of a sink's previous life.
DELETE FROM redeliveries WHERE sink = :sink AND reason = 'parked';

-- name: forget_retries
DELETE FROM retries WHERE sink = :sink;

-- name: forget_redeliveries
DELETE FROM redeliveries WHERE sink = :sink;

-- name: forget_dead_letters
DELETE FROM dead_letters WHERE sink = :sink;

-- name: forget_missed
DELETE FROM missed WHERE sink = :sink;

-- name: forget_cursor
DELETE FROM cursors WHERE sink = :sink;

-- name: orphans_past
-- Orphaned sinks whose state has been kept for RELAY_RETENTION.
SELECT sink FROM cursors WHERE orphaned_at IS NOT NULL AND orphaned_at < :before;

-- name: seq_before_time
-- Where a sink that starts at a time begins: before the first event received then or later.
SELECT coalesce(
    (SELECT seq FROM events WHERE received_at >= :since ORDER BY seq LIMIT 1) - 1,
    (SELECT coalesce(max(seq), 0) FROM events));

-- name: oldest_event
SELECT seq, received_at FROM events ORDER BY seq LIMIT 1;

-- name: orphans
-- Sinks the log keeps state for that the configuration no longer has, with what they hold.
SELECT c.sink AS sink, c.seq AS cursor, c.orphaned_at AS orphaned_at,
       (SELECT count(*) FROM dead_letters d WHERE d.sink = c.sink) AS dead_letters,
       (SELECT count(*) FROM redeliveries r WHERE r.sink = c.sink) AS redeliveries
FROM cursors c WHERE c.orphaned_at IS NOT NULL ORDER BY c.sink;

-- Schema version 6: a retried dead letter stays until its redelivery is finished, marked
-- with the sink it is being retried to (NULL: waiting for an operator).

-- name: add_dead_letter_retrying_to
ALTER TABLE dead_letters ADD COLUMN retrying_to TEXT;

-- Schema version 7: a sink's pause (by an operator, or by its PAUSE_AFTER) and the start of
-- its current run of failures, kept across restarts (a pause an operator made is not undone
-- by a restart; PAUSE_AFTER counts the days a sink failed, not the time since the relay
-- last started).

-- name: add_cursor_paused
ALTER TABLE cursors ADD COLUMN paused TEXT;

-- name: add_cursor_paused_at
ALTER TABLE cursors ADD COLUMN paused_at REAL;

-- name: add_cursor_failing_since
ALTER TABLE cursors ADD COLUMN failing_since REAL;

-- name: sink_state
-- `paused`: why (operator, pause_after), NULL while it runs; `failing_since`: the first
-- failure since its last delivery, NULL while it delivers.
SELECT paused, paused_at, failing_since FROM cursors WHERE sink = :sink;

-- name: set_paused
UPDATE cursors SET paused = :reason, paused_at = :at WHERE sink = :sink;

-- name: set_failing_since
UPDATE cursors SET failing_since = :at WHERE sink = :sink;

-- Tracing events (`relay trace`, GET /admin/api/trace; relay/queue/trace.py): where the log
-- says an event is for each sink. Read only, on the operator's reader threads. No index
-- serves a search by object: one on (bucket, key) would cost every insert, so a trace reads
-- the events from where the log reaches its `since` (found by seq, see event_at_or_after).

-- name: trace_by_seq
SELECT seq, received_at, event_id, source, dialect, event_name, bucket, key, size, etag,
       version_id, sequencer, event_time, principal, source_ip, user_agent, request_id,
       sender_event_id, attrs, record
FROM events WHERE seq = :seq;

-- name: trace_by_event_id
-- The dedup index holds the event id: SQLite finds the seq by scanning the index, which is
-- far smaller than the table.
SELECT seq, received_at, event_id, source, dialect, event_name, bucket, key, size, etag,
       version_id, sequencer, event_time, principal, source_ip, user_agent, request_id,
       sender_event_id, attrs, record
FROM events WHERE seq IN (SELECT seq FROM events WHERE event_id = :event_id) ORDER BY seq;

-- name: trace_object
-- The events of one object received at :since or later, oldest first; :from_seq is where
-- the log reaches :since, so the scan starts there rather than at the oldest event.
SELECT seq, received_at, event_id, source, dialect, event_name, bucket, key, size, etag,
       version_id, sequencer, event_time, principal, source_ip, user_agent, request_id,
       sender_event_id, attrs, record
FROM events
WHERE seq >= :from_seq AND bucket = :bucket AND key = :key AND received_at >= :since
ORDER BY seq;

-- name: event_at_or_after
-- One step of the search for the first event received at a time: seqs rise with
-- received_at (a commit's time), so a search by seq finds it in a few look-ups.
SELECT seq, received_at FROM events WHERE seq >= :seq ORDER BY seq LIMIT 1;

-- name: trace_cursors
SELECT sink, seq, updated_at, paused FROM cursors;

-- name: trace_dead_letters
-- The dead letters of the events whose seqs are in the JSON array :seqs, oldest first.
SELECT id, sink, seq, attempts, error, at, retrying_to FROM dead_letters
WHERE seq IN (SELECT value FROM json_each(:seqs)) ORDER BY id;

-- name: trace_redeliveries
-- What waits outside a cursor's order for the events in :seqs: queued again (a dead letter
-- retried, a replay; `newer` the stale check's token) or parked.
SELECT sink, seq, reason, newer FROM redeliveries
WHERE seq IN (SELECT value FROM json_each(:seqs));

-- name: trace_retries
-- Every retry schedule (few: one per parked object's head, one per sink whose cursor holds).
SELECT sink, seq, attempts, next_at, last_error FROM retries;

-- name: trace_parked_objects
-- Per sink, the parked events of the objects in :objects (a JSON array of [bucket, key]
-- pairs), in order: the first of each object's is the one that failed.
SELECT r.sink, r.seq, e.bucket, e.key
FROM redeliveries r JOIN events e ON e.seq = r.seq
WHERE r.reason = 'parked'
  AND (e.bucket, e.key) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
                            FROM json_each(:objects))
ORDER BY r.sink, r.seq;

-- name: trace_missed
-- The relay:MissedEvents markers still owed, per sink (a delivered marker leaves the table).
SELECT sink, first_seq, last_seq, count, first_at, last_at, reason FROM missed
ORDER BY sink, first_seq;

-- name: count_between
SELECT count(*) FROM events WHERE seq > :after AND seq < :before;
