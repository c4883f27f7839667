"""One sink driven by the real dispatcher over a real log in a temp dir: what every sink's
integration test uses, so each test only says what goes in and reads back what came out.

The log is SQLite unless `LOG_SERVERS` names NATS servers (the `log_backend` fixture of
tests/conftest.py sets it): then a replicated JetStream log of its own on them."""

from __future__ import annotations

import asyncio
import hashlib
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
from tests.support.waiting import eventually


def minio_event(bucket: str, key: str, n: int, event: str = "s3:ObjectCreated:Put") -> Event:
    """A parsed MinIO event; `n` makes it unique (request id, sequencer, size, etag)."""
    return parse_body(minio_body(bucket, key, n, event), {}, "test").events[0]


# NATS servers of a replicated log for the pipelines made now ("": SQLite)
LOG_SERVERS = ""
# the replicated logs made, which the `log_backend` fixture drops after the test
MADE: set[str] = set()


def open_test_log(path: Path) -> LogBackend:
    """The SQLite log at `path`, or (LOG_SERVERS) the JetStream log named after `path`: a
    pipeline made again on the same path finds the events, as a relay restarted on its data
    directory does."""
    if not LOG_SERVERS:
        sqlite = Log(path)
        sqlite.open()
        return sqlite
    name = "p" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    MADE.add(name)
    settings = load_settings({
        "RELAY_LOG": LOG_SERVERS, "RELAY_LOG_NAME": name,
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
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """The dispatcher starts (`pipeline(start=False)`: once the test appended what it
        wants in one round)."""
        self.task = asyncio.create_task(self.dispatcher.run())

    async def append(self, events: Sequence[Event]) -> None:
        await self.log.append(events)

    async def stats(self) -> stats.SinkStats:
        return (await self.log.sink_stats([self.sink.name]))[0]

    async def retry_errors(self) -> list[str]:
        """The last error of each event of the sink with a retry schedule."""
        if isinstance(self.log, Log):
            sqlite = self.log
            return list(await sqlite.read(
                lambda c: [r[0] for r in c.execute("SELECT last_error FROM retries")]
            ))  # fmt: skip
        assert isinstance(self.log, JetStreamLog)
        doc = await self.log.sink_document(self.sink.name)
        return [r.error for r in doc.retries.values()] if doc else []

    async def retries(self) -> int:
        """Events of the sink with a retry schedule."""
        return len(await self.retry_errors())

    async def parked(self) -> int:
        return (await self.stats()).parked

    async def seqs_of(self, key: str) -> list[int]:
        """The seqs of the events of `key` (any bucket) in the log."""
        return [e.seq for e in await self.log.page(0, 100_000) if e.event.key == key]

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
    pipe = Pipeline(log, sink, dispatcher)
    if start:
        pipe.start()
    try:
        yield pipe
    finally:
        dispatcher.stop()
        if pipe.task is not None:
            try:
                await asyncio.wait_for(pipe.task, 15)
            except TimeoutError:
                pipe.task.cancel()
        await sink.close()
        await log.close()
