"""The table sink with the delivery layer, the same on both servers: PostgreSQL 15 and MariaDB
10.11 (the shared ones on 5432 and 3306, db `test`), driven by the real dispatcher and log.
What only one server has (its DSN, its table shapes, its outages) is in test_postgres_sink.py
and test_mysql_sink.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncmy
import psycopg
import pytest

from relay import metrics, sinks
from relay.config import load_sinks
from tests.support.pipeline import minio_event, pipeline
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("log_backend")]

OBJECTS = 8
ROUNDS = 6


@dataclass(frozen=True)
class Server:
    kind: str  # the sink type
    dsn: str
    key: str  # the namespace table's key column
    history: tuple[str, ...]  # a table {h} and triggers recording every write to {t}, in order
    lock: str  # locks the row of one key (%s) until the transaction ends
    refuse: str  # a constraint `refused_once` that refuses the event of sequencer {sequencer}
    unrefuse: str

    async def sql(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with asyncio.timeout(10), self.session(autocommit=True) as run:
            return await run(statement, params)

    @contextlib.asynccontextmanager
    async def session(self, *, autocommit: bool = False) -> AsyncIterator[Any]:
        """A connection of the test's own; without autocommit, one transaction rolled back
        at the end (its locks held until then)."""
        if self.kind == "postgres":
            pg = await psycopg.AsyncConnection.connect(self.dsn, autocommit=autocommit)

            async def run_pg(statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
                cur = await pg.execute(statement, params)
                return await cur.fetchall() if cur.description else []

            try:
                yield run_pg
            finally:
                await pg.rollback()
                await pg.close()
            return
        my = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", database="test",
                                   autocommit=autocommit, connect_timeout=5)  # fmt: skip

        async def run_my(statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
            async with my.cursor() as cur:
                await cur.execute(statement, params or None)
                return list(await cur.fetchall() or [])

        try:
            yield run_my
        finally:
            await my.rollback()
            my.close()

    def env(self, table: str, **extra: str) -> dict[str, str]:
        prefix = f"RUSTFS_NOTIFY_{self.kind.upper()}_"
        return {
            f"{prefix}ENABLE_T": "on",
            f"{prefix}DSN_STRING_T": self.dsn,
            f"{prefix}TABLE_T": table,
            f"{prefix}BACKOFF_MAX_T": "300ms",
            **{f"{prefix}{k}_T": v for k, v in extra.items()},
        }

    async def rows(self, table: str) -> dict[str, int]:
        """Namespace rows: key → the n of the event it holds (tests.support.bodies)."""
        rows = await self.sql(f"SELECT {self.key}, value FROM {table}")
        return {key.removeprefix("b/"): num(value) for key, value in rows}


POSTGRES = Server(
    kind="postgres",
    dsn="host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5",
    key="key",
    history=(
        "CREATE TABLE {h} (n BIGSERIAL PRIMARY KEY, key VARCHAR NOT NULL, value JSONB NOT NULL)",
        "CREATE FUNCTION {h}() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO {h} (key, value) VALUES (NEW.key, NEW.value); RETURN NEW; END $$",
        "CREATE TRIGGER {h} AFTER INSERT OR UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {h}()",
    ),
    lock="SELECT 1 FROM {t} WHERE key = %s FOR UPDATE",
    refuse="ALTER TABLE {t} ADD CONSTRAINT refused_once "
    "CHECK (value->'Records'->0->'s3'->'object'->>'sequencer' <> '{sequencer}')",
    unrefuse="ALTER TABLE {t} DROP CONSTRAINT refused_once",
)
MARIADB = Server(
    kind="mysql",
    dsn="root:@tcp(127.0.0.1:3306)/test",
    key="key_name",
    history=(
        "CREATE TABLE {h} (n BIGINT AUTO_INCREMENT PRIMARY KEY, key_name VARCHAR(255) NOT NULL, "
        "value JSON)",
        "CREATE TRIGGER {h}_i AFTER INSERT ON {t} FOR EACH ROW "
        "INSERT INTO {h} (key_name, value) VALUES (NEW.key_name, NEW.value)",
        "CREATE TRIGGER {h}_u AFTER UPDATE ON {t} FOR EACH ROW "
        "INSERT INTO {h} (key_name, value) VALUES (NEW.key_name, NEW.value)",
    ),
    # by the unique key_hash: a search on key_name would lock every row it scans
    lock="SELECT 1 FROM {t} WHERE key_hash = SHA2(%s, 256) FOR UPDATE",
    refuse="ALTER TABLE {t} ADD CONSTRAINT refused_once "
    "CHECK (JSON_VALUE(value, '$.Records[0].s3.object.sequencer') <> '{sequencer}')",
    unrefuse="ALTER TABLE {t} DROP CONSTRAINT refused_once",
)


@pytest.fixture(params=[POSTGRES, MARIADB], ids=["postgres", "mariadb"])
async def server(request: pytest.FixtureRequest) -> Server:
    server: Server = request.param
    try:
        await server.sql("SELECT 1")
    except Exception as exc:
        pytest.fail(f"{server.kind} is not reachable at {server.dsn!r} ({exc}); see infra.md")
    return server


@pytest.fixture
async def table(server: Server) -> AsyncIterator[str]:
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    yield name
    await server.sql(f"DROP TABLE IF EXISTS {name}")


def num(value: Any) -> int:
    """The n an event was made with (tests.support.bodies: size = 100 + n)."""
    record = (json.loads(value) if isinstance(value, str) else value)["Records"][0]
    return int(record["s3"]["object"]["size"]) - 100


def counter(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def in_order(written: list[int]) -> bool:
    """The events an object's row took, compared by the last time each was written (an
    event written again after a later one is a resend: its last copy must follow)."""
    last = {n: position for position, n in enumerate(written)}
    return sorted(last, key=lambda n: last[n]) == sorted(last)


async def test_a_locked_row_parks_its_object_while_the_others_flow(
    tmp_path: Path, server: Server, table: str
) -> None:
    """Another session holds one object's row locked (SELECT … FOR UPDATE) while events of
    every object arrive, a batch holding one event of each: the sink's upsert of that row
    fails on its lock wait (half of TIMEOUT), the batch is written again one object per
    transaction, so only the locked object is parked and the others are written meanwhile.
    Once the lock is gone the object's last event lands (a namespace row takes only the last
    event of an object that a batch holds). Triggers record every write the server applied.
    The sink writes an object's events of a batch together, so nothing is acknowledged past
    a failed event: what the server got twice and the resends counted are both none."""
    history = f"{table}_history"
    config = server.env(table, FORMAT="namespace", TIMEOUT="2s", BATCH_SIZE=str(OBJECTS))
    (spec,), _ = load_sinks(config, sinks.declared_options())
    await server.sql(sinks.module(server.kind).ddl(spec))
    keys = [f"k{i}" for i in range(OBJECTS)]
    locked = "k3"
    last = {k: (ROUNDS - 1) * OBJECTS + i for i, k in enumerate(keys)}
    resends_before = counter("relay_resends_total", sink=spec.name)
    try:
        for statement in server.history:
            await server.sql(statement.format(h=history, t=table))
        async with asyncio.timeout(90), pipeline(tmp_path, config) as pipe:
            await pipe.append([minio_event("b", k, i) for i, k in enumerate(keys)])
            await pipe.settled()
            async with server.session() as holder:
                await holder(server.lock.format(t=table), (f"b/{locked}",))
                await pipe.append([minio_event("b", k, r * OBJECTS + i)
                                   for r in range(1, ROUNDS) for i, k in enumerate(keys)])  # fmt: skip

                async def others_written() -> bool:
                    rows = await server.rows(table)
                    return all(rows[k] == last[k] for k in keys if k != locked)

                await eventually(others_written, timeout=45)
                assert ("b", locked) in pipe.dispatcher.parked
                assert (await server.rows(table))[locked] == keys.index(locked)  # round 0's
            await pipe.settled(timeout=30)  # the lock is gone
            assert await pipe.dead_letters() == []
        resent = counter("relay_resends_total", sink=spec.name) - resends_before
        written: dict[str, list[int]] = {}
        for key, value in await server.sql(f"SELECT {server.key}, value FROM {history} ORDER BY n"):
            written.setdefault(key.removeprefix("b/"), []).append(num(value))
    finally:
        await server.sql(f"DROP TABLE IF EXISTS {history}")  # MariaDB: its triggers too
        if server is POSTGRES:
            await server.sql(f"DROP FUNCTION IF EXISTS {history}() CASCADE")
    for i, k in enumerate(keys):
        assert in_order(written[k]) and written[k][-1] == last[k], (k, written[k])
        if k != locked:  # one event of the object per batch: each was written
            assert sorted(set(written[k])) == [r * OBJECTS + i for r in range(ROUNDS)]
    assert resent == sum(len(w) - len(set(w)) for w in written.values())


async def test_a_retried_older_put_never_brings_back_a_deleted_row(
    tmp_path: Path, server: Server, table: str
) -> None:
    """A namespace row must never go back in time (STALE=auto drops stale events there): a
    PUT the table refused once is dead-lettered, the DELETE of its object is delivered, then
    the PUT is retried from the dead letters with the table fixed: the row stays deleted, and
    the PUT is counted stale and dropped."""
    config = server.env(table, FORMAT="namespace")
    (spec,), _ = load_sinks(config, sinks.declared_options())
    await server.sql(sinks.module(server.kind).ddl(spec))
    await server.sql(server.refuse.format(t=table, sequencer=f"{1:016X}"))  # bodies: n=1
    dropped_before = counter("relay_events_stale_total", sink=spec.name, action="drop")
    async with asyncio.timeout(60), pipeline(tmp_path, config) as pipe:
        assert pipe.dispatcher.policy.stale == "drop"
        await pipe.append([minio_event("b", "k", 0)])
        await pipe.settled()
        await pipe.append([minio_event("b", "k", 1)])  # refused: dead-lettered
        await pipe.settled()
        ((_, error),) = await pipe.dead_letters()
        assert "refused_once" in error
        assert await server.rows(table) == {"k": 0}
        await pipe.append([minio_event("b", "k", 2, "s3:ObjectRemoved:Delete")])
        await pipe.settled()
        assert await server.rows(table) == {}

        await server.sql(server.unrefuse.format(t=table))
        queued = await pipe.log.retry_dead_letters(None, spec.name)
        assert queued == 1
        await pipe.settled()
        assert await pipe.dead_letters() == []
    assert await server.rows(table) == {}
    assert counter("relay_events_stale_total", sink=spec.name, action="drop") - dropped_before == 1


async def test_a_table_dropped_while_running_is_created_again(
    tmp_path: Path, server: Server, table: str
) -> None:
    async with (
        asyncio.timeout(30),
        pipeline(tmp_path, server.env(table, FORMAT="namespace")) as pipe,
    ):
        await pipe.append([minio_event("b", "k", 1)])
        await pipe.settled()
        await server.sql(f"DROP TABLE {table}")
        await pipe.append([minio_event("b", "k", 2)])
        await pipe.settled()
        assert await pipe.dead_letters() == []
    assert await server.rows(table) == {"k": 2}
