"""The relay's processes (RELAY_WORKERS > 1; with 1, `relay/app.py` runs everything in one).

    supervisor (relay serve) ── holds the data directory's lock, checks the log, binds the
        │                       port and accepts, starts the others and starts again any
        │                       that dies
        ├── delivery worker ─── every sink's dispatcher, the log's upkeep (retention,
        │                       checkpoints), the admin API on a local socket
        ├── ingest worker 1 ─┐
        ├── …                ├─ take the connections the supervisor hands them in turn
        └── ingest worker N ─┘  (handoff.py): parse, authenticate, append (2xx after the
                                fsynced commit); /admin is passed on
                                to the delivery worker, /metrics answers for all of them

One process per role keeps the guarantees where they were: ingest answers 2xx only after its
own commit, whichever worker commits; delivery is one process, so per-object order and
a sink's cursor have one owner; and the lock of the data directory is shared by the
workers, so a second relay is still turned away. A burst of ingest runs on other cores than
delivery's, which it can no longer starve. What the processes share is on the board
(board.py) and, for the SQLite log, relay/queue/shared.py.
"""
