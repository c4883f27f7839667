"""One sink driven by the real dispatcher over a real log in a temp dir: what every sink's
integration test uses, so each test only says what goes in and reads back what came out.

The log is SQLite unless `LOG_SERVERS` names NATS servers (the `log_backend` fixture of
tests/conftest.py sets it): then a replicated JetStream log of its own on them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from relay import sinks
from relay.config import load_settings, load_sinks
from relay.delivery.dispatcher import Dispatcher, Policy
from relay.events import Event, parse_body
from relay.queue import stats
from relay.queue.backend import LogBackend
from relay.queue.jetstream.log import JetStreamLog
from relay.queue.log import Log
from relay.rules import Router, Rule
from relay.sinks import redact
from relay.sinks.base import Sink
from tests.support.bodies import minio_body
from tests.support.nats_cluster import drop_log
from tests.support.waiting import eventually


def minio_event(bucket: str, key: str, n: int, event: str = "s3:ObjectCreated:Put") -> Event:
    """A parsed MinIO event; `n` makes it unique (request id, sequencer, size, etag)."""
    return parse_body(minio_body(bucket, key, n, event), {}, "test").events[0]


# NATS servers of a replicated log for the pipelines made now ("": SQLite)
LOG_SERVERS = ""


def open_test_log(path: Path) -> LogBackend:
    """The SQLite log at `path`, or (LOG_SERVERS) a JetStream log of a name of its own."""
    if not LOG_SERVERS:
        sqlite = Log(path)
        sqlite.open()
        return sqlite
    settings = load_settings({
        "RELAY_LOG": LOG_SERVERS, "RELAY_LOG_NAME": "p" + uuid.uuid4().hex[:12],
        "RELAY_MAX_BYTES": "16MiB", "RELAY_LOG_LEASE": "3s",
    })  # fmt: skip
    replicated = JetStreamLog(settings)
    replicated.open()
    return replicated


@dataclass
class Pipeline:
    log: LogBackend
    sink: Sink
    dispatcher: Dispatcher

    async def append(self, events: Sequence[Event]) -> None:
        await self.log.append(events)

    async def stats(self) -> stats.SinkStats:
        return (await self.log.sink_stats([self.sink.name]))[0]

    async def retries(self) -> int:
        """Events of the sink with a retry schedule."""
        if isinstance(self.log, Log):
            sqlite = self.log
            return int(await sqlite.read(
                lambda c: c.execute("SELECT count(*) FROM retries").fetchone()[0]
            ))  # fmt: skip
        assert isinstance(self.log, JetStreamLog)
        doc, _ = await self.log._read_doc(self.sink.name)
        return len(doc.retries)

    async def settled(self, timeout: float = 30.0) -> None:
        """Wait until nothing is pending for the sink (delivered or dead-lettered)."""

        async def done() -> bool:
            return (await self.stats()).pending == 0 and await self.retries() == 0

        await eventually(done, timeout=timeout)

    async def dead_letters(self) -> list[tuple[int, str]]:
        return [(d.seq, d.error) for d in await self.log.dead_letters()]


@asynccontextmanager
async def pipeline(
    tmp_path: Path, env: dict[str, str], *, start: bool = True, rules: Sequence[Rule] = ()
) -> AsyncIterator[Pipeline]:
    """`env` declares exactly one sink, as an operator would (RUSTFS_NOTIFY_…); `rules`
    route events to it (none: every event)."""
    # the relay-wide settings a sink reads (RELAY_EXPECTED_PRINCIPALS) come from `env` too
    specs, warnings = load_sinks(env, sinks.declared_options(), load_settings(env))
    assert len(specs) == 1, (specs, warnings)
    spec = specs[0]
    sink = sinks.create(spec)
    log = open_test_log(tmp_path / f"{spec.type}-{spec.id}.db")
    log.set_sinks([spec.name])
    await log.init_cursors([spec.name])
    dispatcher = Dispatcher(
        sink, log, Router(rules, [spec.name]), Policy.from_spec(spec, sink), redact.for_spec(spec)
    )
    task = asyncio.create_task(dispatcher.run()) if start else None
    try:
        yield Pipeline(log, sink, dispatcher)
    finally:
        dispatcher.stop()
        if task is not None:
            try:
                await asyncio.wait_for(task, 15)
            except TimeoutError:
                task.cancel()
        await sink.close()
        await log.close()
        if isinstance(log, JetStreamLog):
            await drop_log(LOG_SERVERS, log.names.prefix)
