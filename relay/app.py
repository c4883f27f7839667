"""Wires configuration → log → sinks → dispatchers → web server, and takes them down in the
reverse order: stop accepting, let in-flight commits finish, let batches settle, close."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from relay import ingest, metrics, sinks
from relay.config import Settings, SinkSpec, load_settings, load_sinks
from relay.dispatch import Dispatcher, Policy
from relay.queue import fsck
from relay.queue.fsck import LogDamaged
from relay.queue.log import Log
from relay.rules import Router, rules_from_env, rules_from_toml
from relay.sinks.base import Sink

log = logging.getLogger("relay")

DB_NAME = "relay.db"


@dataclass(frozen=True)
class Config:
    settings: Settings
    specs: list[SinkSpec]
    router: Router
    warnings: list[str]


def load_config(env: Mapping[str, str]) -> Config:
    """Everything from the environment, validated; raises ConfigError naming the variable.
    Touches nothing on disk."""
    settings = load_settings(env)
    specs, warnings = load_sinks(env, sinks.declared_options())
    rules = rules_from_env(env)
    if settings.rules_file:
        rules += rules_from_toml(settings.rules_file)
    router = Router(rules, [s.name for s in specs])
    warnings += router.warnings
    warnings += list(ingest.ingest_warnings(settings))
    if not specs:
        warnings.append(
            "no sink is configured: events are stored but go nowhere "
            "(e.g. RUSTFS_NOTIFY_FILE_ENABLE_LOCAL=on RUSTFS_NOTIFY_FILE_PATH_LOCAL=events.ndjson)"
        )
    return Config(settings, specs, router, warnings)


def open_log(settings: Settings) -> Log:
    return Log(
        Path(settings.data_dir) / DB_NAME,
        sync=settings.sync,
        retention=settings.retention,
        max_events=settings.max_events,
        max_bytes=settings.max_bytes,
        min_free_bytes=settings.min_free_bytes,
    )


def build_sinks(config: Config) -> list[Sink]:
    """Sink objects (no connection yet); their constructors validate what env alone can't."""
    return [sinks.create(spec) for spec in config.specs]


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    settings = config.settings
    for warning in config.warnings:
        log.warning(warning)
    outputs = build_sinks(config)  # before the log: a bad sink config touches nothing
    event_log = open_log(settings)
    try:
        event_log.open()
    except LogDamaged as exc:
        if settings.on_damage != "set-aside":
            raise
        moved = fsck.set_aside(event_log.path)
        log.error("log damaged: set aside, starting a new log",
                  extra={"error": str(exc), "damaged_copy": str(moved)})  # fmt: skip
        event_log = open_log(settings)
        event_log.open()
    names = [s.name for s in outputs]
    event_log.set_sinks(names)
    await event_log.init_cursors(names)
    metrics.install(event_log, names)

    dispatchers = {
        sink.name: Dispatcher(sink, event_log, config.router, Policy.from_spec(spec))
        for sink, spec in zip(outputs, config.specs)
    }
    tasks = [asyncio.create_task(d.run(), name=f"dispatch {n}") for n, d in dispatchers.items()]

    app = ingest.make_app(settings, event_log, dispatchers)
    # keepalive_timeout also closes a connection that never completes its headers
    # (aiohttp arms it when the connection opens): no slowloris.
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=settings.shutdown_timeout,
        keepalive_timeout=settings.request_timeout,
    )  # fmt: skip
    await runner.setup()
    site = web.TCPSite(runner, settings.listen_host, settings.listen_port, backlog=1024)
    await site.start()
    log.info(
        "relay listening",
        extra={"listen": f"{settings.listen_host}:{settings.listen_port}", "sinks": names,
               "data_dir": settings.data_dir, "sync": settings.sync,
               "events_in_log": event_log.events,
               "log_check_seconds": round(event_log.open_seconds, 3)},
    )  # fmt: skip

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    log.info("shutting down")
    await runner.cleanup()  # no new requests; in-flight handlers finish their commit
    for dispatcher in dispatchers.values():
        dispatcher.stop()
    _, pending = await asyncio.wait(tasks, timeout=settings.shutdown_timeout) if tasks else ((), ())
    for task in pending:
        task.cancel()  # unsettled batches stay in the log and are sent again after restart
    await asyncio.gather(*pending, return_exceptions=True)
    for sink in outputs:
        try:
            await asyncio.wait_for(sink.close(), 5)
        except Exception as exc:
            log.warning("sink did not close cleanly", extra={"sink": sink.name, "error": str(exc)})
    await event_log.close()
    log.info("stopped")
