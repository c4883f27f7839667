"""How fast the SQL sinks drain a backlog, against plain executemany in the same run.

    python -m bench.sql_replay [--events 100000] [--batch-size 100]

Fills a fresh log (temp dir) with N realistic MinIO events, then drains them through the real
Dispatcher into PostgreSQL and into MariaDB (access format, a unique table each, dropped
afterwards), one sink after the other, timing from the first batch to the last settled
cursor. The baseline inserts the same N rows (already built, same SQL, same batch size, one
transaction per batch) with a plain executemany straight from Python: what the database
costs on its own. The ratio relay/baseline is the relay's overhead (reading the log,
rendering, settling the cursor with an fsync per batch).

Servers: PostgreSQL on 5432 (db `test`) and MariaDB on 3306 (db `test`), see infra.md;
`--pg` and `--mysql` point elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncmy
import psycopg

from relay import sinks
from relay.config import SinkSpec, load_sinks
from relay.delivery.dispatcher import Dispatcher, Policy
from relay.events import Event, parse_body
from relay.queue.log import Log, LogEntry
from relay.rules import Router
from relay.sinks.base import event_time
from relay.sinks.formats import render
from relay.sinks.table import mysql, postgres
from tests.support.bodies import minio_body

PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"
MYSQL = "root:@tcp(127.0.0.1:3306)/test"


@dataclass
class Row:
    sink: str
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def make_events(n: int) -> list[Event]:
    names = ("s3:ObjectCreated:Put", "s3:ObjectCreated:Put", "s3:ObjectCreated:Copy",
             "s3:ObjectRemoved:Delete")  # fmt: skip
    events = []
    for i in range(n):
        key = f"photos/2026/03/{i % 28 + 1:02d}/IMG {i:07d}.jpg"
        body = minio_body("bench", key, i, names[i % len(names)])
        events.extend(parse_body(body, {}, "bench").events)
    return events


async def fill(log: Log, events: list[Event]) -> None:
    for start in range(0, len(events), 1000):
        await log.append(events[start : start + 1000])


def spec_for(kind: str, dsn: str, table: str, batch: int) -> SinkSpec:
    prefix = f"RUSTFS_NOTIFY_{kind.upper()}_"
    env = {
        f"{prefix}ENABLE_BENCH": "on",
        f"{prefix}DSN_STRING_BENCH": dsn,
        f"{prefix}TABLE_BENCH": table,
        f"{prefix}FORMAT_BENCH": "access",
        f"{prefix}BATCH_SIZE_BENCH": str(batch),
    }
    specs, _ = load_sinks(env, sinks.declared_options())
    return specs[0]


async def drain(log: Log, spec: SinkSpec) -> float:
    """Seconds for the real dispatcher to deliver every event of the log to the sink."""
    sink = sinks.create(spec)
    await sink.start()  # pool and table ready before the clock starts
    dispatcher = Dispatcher(sink, log, Router([], [spec.name]), Policy.from_spec(spec))
    last = await log.read(lambda c: c.execute("SELECT max(seq) FROM events").fetchone()[0])
    started = time.perf_counter()
    task = asyncio.create_task(dispatcher.run())
    try:
        while dispatcher.cursor < last:
            if task.done():
                task.result()
                raise RuntimeError("the dispatcher stopped early")
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 30)
        await sink.close()
    dead = await log.read(lambda c: c.execute(
        "SELECT count(*) FROM dead_letters WHERE sink = ?", (spec.name,)).fetchone()[0])  # fmt: skip
    if dead:
        raise RuntimeError(f"{spec.name}: {dead} events were dead-lettered")
    return elapsed


# -- baselines: the same rows, the same SQL, executemany per batch --------------------------


def pg_rows(entries: list[LogEntry]) -> list[tuple[Any, ...]]:
    return [(e.event.event_id, event_time(e), e.event.event_name,
             f"{e.event.bucket}/{e.event.key}", render(e, "minio").decode()) for e in entries]  # fmt: skip


async def pg_baseline(dsn: str, table: str, rows: list[tuple[Any, ...]], batch: int) -> float:
    insert = (f'INSERT INTO "{table}" (event_id, event_time, event_name, key, value) '
              "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING")  # fmt: skip
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(insert, rows[start : start + batch])
        return time.perf_counter() - started
    finally:
        await conn.close()


def my_rows(entries: list[LogEntry]) -> list[tuple[Any, ...]]:
    return [(e.event.event_id, event_time(e).replace(tzinfo=None), e.event.event_name,
             f"{e.event.bucket}/{e.event.key}", render(e, "minio").decode()) for e in entries]  # fmt: skip


async def my_baseline(spec: SinkSpec, table: str, rows: list[tuple[Any, ...]], batch: int) -> float:
    insert = (f"INSERT INTO `{table}` (event_id, event_time, event_name, key_name, event_data) "
              "VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE event_id = event_id")  # fmt: skip
    conn = await asyncmy.connect(**connect_args(spec))
    try:
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            async with conn.cursor() as cur:
                await cur.executemany(insert, rows[start : start + batch])
            await conn.commit()
        return time.perf_counter() - started
    finally:
        conn.close()


def connect_args(spec: SinkSpec) -> dict[str, Any]:
    return mysql.MySQL(spec, spec.typed(mysql.Config)).connect_args


# -- table helpers ----------------------------------------------------------------------------


async def pg_sql(dsn: str, statement: str) -> Any:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        cur = await conn.execute(statement)
        return await cur.fetchone() if cur.description else None
    finally:
        await conn.close()


async def my_sql(spec: SinkSpec, statement: str) -> Any:
    conn = await asyncmy.connect(**{**connect_args(spec), "autocommit": True})
    try:
        async with conn.cursor() as cur:
            await cur.execute(statement)
            return await cur.fetchone()
    finally:
        conn.close()


@dataclass
class Target:
    kind: str
    dsn: str
    spec: SinkSpec  # the relay's sink, writing to its own table
    base: SinkSpec  # the same configuration on the baseline's table


def target(kind: str, dsn: str, batch: int) -> Target:
    tag = uuid.uuid4().hex[:8]
    return Target(kind, dsn, spec_for(kind, dsn, f"bench_relay_{tag}", batch),
                  spec_for(kind, dsn, f"bench_base_{tag}", batch))  # fmt: skip


async def run_sink(t: Target, log: Log, entries: list[LogEntry], batch: int) -> list[Row]:
    relay_table, base_table = t.spec["table"], t.base["table"]
    n = len(entries)
    if t.kind == "postgres":
        query: Callable[[str], Awaitable[Any]] = lambda s: pg_sql(t.dsn, s)  # noqa: E731
        ddl = postgres.ddl(t.base)
    else:
        query = lambda s: my_sql(t.spec, s)  # noqa: E731
        ddl = mysql.ddl(t.base)
    try:
        relay_seconds = await drain(log, t.spec)
        (count,) = await query(f"SELECT count(*) FROM {relay_table}")
        assert count == n, f"{relay_table}: {count} rows, {n} expected"
        for statement in ddl.split(";\n"):
            if statement.strip():
                await query(statement)
        if t.kind == "postgres":
            base_seconds = await pg_baseline(t.dsn, base_table, pg_rows(entries), batch)
        else:
            base_seconds = await my_baseline(t.base, base_table, my_rows(entries), batch)
        (count,) = await query(f"SELECT count(*) FROM {base_table}")
        assert count == n, f"{base_table}: {count} rows, {n} expected"
    finally:
        for table in (relay_table, base_table):
            await query(f"DROP TABLE IF EXISTS {table}")
    return [Row(f"{t.kind} via relay", n, relay_seconds),
            Row(f"{t.kind} executemany (baseline)", n, base_seconds)]  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    targets = [target(kind, dsn, args.batch_size)
               for kind, dsn in (("postgres", args.pg), ("mysql", args.mysql))
               if not args.only or kind == args.only]  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-sql-"))
    rows: list[Row] = []
    try:
        print(f"building {args.events} MinIO events …", flush=True)
        events = make_events(args.events)
        log = Log(tmp / "relay.db")
        log.open()
        try:
            names = [t.spec.name for t in targets]
            log.set_sinks(names)
            await log.init_cursors(names)  # before the events: each sink gets all of them
            started = time.perf_counter()
            await fill(log, events)
            print(f"log filled in {time.perf_counter() - started:.1f}s", flush=True)
            entries = [LogEntry(i + 1, time.time(), e) for i, e in enumerate(events)]
            for t in targets:
                print(f"draining into {t.kind} …", flush=True)
                rows += await run_sink(t, log, entries, args.batch_size)
        finally:
            await log.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"batch size {args.batch_size}, access format")  # fmt: skip
    print(f"{'sink':<34} {'events':>8} {'seconds':>9} {'events/s':>10}")
    for row in rows:
        print(f"{row.sink:<34} {row.events:>8} {row.seconds:>9.2f} {row.rate:>10.0f}")
    for i in range(0, len(rows), 2):
        relay, base = rows[i], rows[i + 1]
        print(f"{relay.sink.split()[0]}: relay/baseline throughput = {relay.rate / base.rate:.2f}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--pg", default=PG, help="libpq connection string")
    parser.add_argument("--mysql", default=MYSQL, help="user:pass@tcp(host:port)/db")
    parser.add_argument("--only", choices=("postgres", "mysql"))
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
