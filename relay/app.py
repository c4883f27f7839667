"""Wires configuration → log → sinks → dispatchers → web server, and takes them down in the
reverse order: stop accepting, let in-flight commits finish, let batches settle, close."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from relay import admin_api, ingest, metrics, sinks, tls
from relay.config import (
    ConfigError,
    Settings,
    SinkSpec,
    load_settings,
    load_sinks,
    parse_start,
    unknown_settings,
)
from relay.datadir import DataDirLock
from relay.delivery.dispatcher import Dispatcher, Policy
from relay.processes.board import View
from relay.queue import admin, fsck
from relay.queue.backend import LogBackend
from relay.queue.fsck import LogDamaged
from relay.queue.log import Log, Role
from relay.rules import Router, rules_from_env, rules_from_toml
from relay.sinks import redact
from relay.sinks.base import Sink

log = logging.getLogger("relay")
T = TypeVar("T")

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
    admin_api.check(settings)
    specs, warnings = load_sinks(env, sinks.declared_options(), settings)
    warnings += unknown_settings(env)
    router = load_router(env, settings, [s.name for s in specs])
    warnings += router.warnings
    warnings += list(ingest.ingest_warnings(settings))
    if not specs:
        warnings.append(
            "no sink is configured: events are stored but go nowhere "
            "(e.g. RUSTFS_NOTIFY_FILE_ENABLE_LOCAL=on RUSTFS_NOTIFY_FILE_PATH_LOCAL=events.ndjson)"
        )
    return Config(settings, specs, router, warnings)


def load_router(env: Mapping[str, str], settings: Settings, sink_names: list[str]) -> Router:
    rules = rules_from_env(env)
    if settings.rules_file:
        rules += rules_from_toml(settings.rules_file)
    return Router(rules, sink_names)


def open_log(settings: Settings, *, client: bool = False, role: Role = "single") -> LogBackend:
    """The log (not opened yet). `client`: for an operator's command next to a running relay
    (no integrity check, no pruning: the relay does those); `role`: which part of the relay
    opens it (relay/queue/log.py Role)."""
    if settings.log != "sqlite":
        from relay.queue.jetstream.log import JetStreamLog

        return JetStreamLog(settings, client=client, role=role)
    path = Path(settings.data_dir) / DB_NAME
    if client and not path.exists():
        raise admin.AdminError(f"no log at {path} (is RELAY_DATA_DIR right?)")
    return Log(
        path,
        sync=settings.sync,
        retention=settings.retention,
        max_events=settings.max_events,
        max_bytes=settings.max_bytes,
        min_free_bytes=settings.min_free_bytes,
        check=settings.log_check,
        client=client,
        role=role,
    )


def open_checked_log(settings: Settings, role: Role = "single") -> LogBackend:
    """The log opened, its integrity checked; with RELAY_ON_DAMAGE=set-aside a damaged log
    is moved aside and a new one started."""
    event_log = open_log(settings, role=role)
    try:
        event_log.open()
    except LogDamaged as exc:
        if settings.on_damage != "set-aside":
            raise
        moved = fsck.set_aside(Path(settings.data_dir) / DB_NAME)
        log.error("log damaged: set aside, starting a new log",
                  extra={"error": str(exc), "damaged_copy": str(moved)})  # fmt: skip
        event_log = open_log(settings, role=role)
        event_log.open()
    return event_log


async def operate(settings: Settings, action: Callable[[LogBackend], Awaitable[T]]) -> T:
    """Run an operator's action on the log (the CLI), next to a running relay or not."""
    event_log = open_log(settings, client=True)
    event_log.open()
    try:
        return await action(event_log)
    finally:
        await event_log.close()


def build_sinks(config: Config) -> list[Sink]:
    """Sink objects (no connection yet); their constructors validate what env alone can't."""
    return [sinks.create(spec) for spec in config.specs]


class LocalGate:
    """Ingest's gate (relay/ingest.py Gate) where the log and the dispatchers are in the same
    process: a single process, and the delivery process publishing its view."""

    def __init__(self, event_log: LogBackend, dispatchers: Mapping[str, Dispatcher]) -> None:
        self.log = event_log
        self.dispatchers = dispatchers

    @property
    def pressure(self) -> str | None:
        return self.log.pressure

    def view(self) -> View:
        return View(
            self.log.pressure, self.log.pressure_detail, self.log.blocked_by,
            {name: d.state for name, d in self.dispatchers.items()}, self.log.check_state,
        )  # fmt: skip


@dataclass
class Delivery:
    """The dispatchers of every sink, running."""

    config: Config
    outputs: list[Sink]
    log: LogBackend
    dispatchers: dict[str, Dispatcher]
    tasks: list[asyncio.Task[None]]

    async def stop(self) -> None:
        """Let the batches in flight settle (RELAY_SHUTDOWN_TIMEOUT), close the sinks."""
        timeout = self.config.settings.shutdown_timeout
        for dispatcher in self.dispatchers.values():
            dispatcher.stop()
        _, pending = await asyncio.wait(self.tasks, timeout=timeout) if self.tasks else ((), ())
        for task in pending:
            task.cancel()  # unsettled batches stay in the log and are sent again after restart
        await asyncio.gather(*pending, return_exceptions=True)
        for sink in self.outputs:
            try:
                await asyncio.wait_for(sink.close(), 5)
            except Exception as exc:
                log.warning("sink did not close cleanly",
                            extra={"sink": sink.name, "error": str(exc)})  # fmt: skip


async def start_delivery(config: Config, outputs: list[Sink], event_log: LogBackend) -> Delivery:
    """Place every sink's cursor (a new sink where its START says), then start delivering."""
    names = [s.name for s in outputs]
    policies = {s.name: Policy.from_spec(spec, s) for s, spec in zip(outputs, config.specs)}
    event_log.set_sinks(names, {name: policy.bound for name, policy in policies.items()})
    starts = {name: parse_start(policy.start) for name, policy in policies.items()}
    await event_log.init_cursors(starts)
    dispatchers = {
        sink.name: Dispatcher(
            sink, event_log, config.router, policies[sink.name], redact.for_spec(spec)
        )
        for sink, spec in zip(outputs, config.specs)
    }
    tasks = [asyncio.create_task(d.run(), name=f"dispatch {n}") for n, d in dispatchers.items()]
    return Delivery(config, outputs, event_log, dispatchers, tasks)


def web_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    # keepalive_timeout also closes a connection that never completes its headers
    # (aiohttp arms it when the connection opens): no slowloris.
    return web.AppRunner(
        app, access_log=None, shutdown_timeout=settings.shutdown_timeout,
        keepalive_timeout=settings.request_timeout,
    )  # fmt: skip


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    settings = config.settings
    # `relay reload` may read the pid as soon as the lock is taken: a SIGHUP while starting
    # must not end the process (SIGHUP's default); it is acted on once the relay runs
    early_reload = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, early_reload.set)
    for warning in config.warnings:
        log.warning(warning)
    outputs = build_sinks(config)  # before the log: a bad sink or TLS file touches nothing
    server_tls = tls.server_context(settings)
    # one relay per data directory, from before the log is opened until after it is closed
    with DataDirLock(settings.data_dir).held() as lock:
        if settings.workers > 1:
            from relay.processes import supervisor

            await supervisor.supervise(config, lock, early_reload, stop)
        else:
            await _serve(config, outputs, server_tls, early_reload, stop)


async def _serve(
    config: Config,
    outputs: list[Sink],
    server_tls: ssl.SSLContext | None,
    early_reload: asyncio.Event,
    stop: asyncio.Event | None,
) -> None:
    settings = config.settings
    loop = asyncio.get_running_loop()
    event_log = open_checked_log(settings)
    delivery = await start_delivery(config, outputs, event_log)
    dispatchers = delivery.dispatchers
    names = list(dispatchers)
    gate = LocalGate(event_log, dispatchers)
    metrics.install(event_log, names, gate)

    app = ingest.make_app(settings, event_log, gate)
    admin_api.mount(app, settings, event_log, dispatchers)  # /admin/: 404 unless tokens set
    runner = web_runner(app, settings)
    await runner.setup()
    site = web.TCPSite(
        runner, settings.listen_host, settings.listen_port, backlog=1024, ssl_context=server_tls
    )
    await site.start()
    watcher = asyncio.create_task(tls.watch(), name="tls files")
    # no seconds for a check still running: they would read as the check's cost
    check = ({"log_check": "background"} if event_log.check_in_background
             else {"log_check_seconds": round(event_log.open_seconds, 3)})  # fmt: skip
    log.info(
        "relay listening",
        extra={"listen": f"{settings.listen_host}:{settings.listen_port}", "sinks": names,
               "data_dir": settings.data_dir, "sync": settings.sync,
               "events_in_log": event_log.events, **check},
    )  # fmt: skip

    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Future[None]] = set()

    def on_sighup() -> None:
        future = asyncio.ensure_future(reload(config, dispatchers))
        reloads.add(future)
        future.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if early_reload.is_set():
        on_sighup()
    await stop.wait()
    watcher.cancel()

    log.info("shutting down")
    await runner.cleanup()  # no new requests; in-flight handlers finish their commit
    await delivery.stop()
    await event_log.close()
    log.info("stopped")


async def reload(config: Config, dispatchers: Mapping[str, Dispatcher]) -> None:
    """SIGHUP: read the rules file (RELAY_RULES_FILE) and the TLS files again. New rules are
    checked whole before any dispatcher sees them; invalid ones leave the running rules in
    place. RELAY_RULE_* and the sinks come from the environment, which a running process
    cannot re-read (os.environ is the one it started with): changing them takes a restart
    (the log keeps every event meanwhile)."""
    try:
        router = load_router(os.environ, config.settings, list(dispatchers))
    except ConfigError as exc:
        log.error("reload refused: the new rules are invalid; the running ones stay",
                  extra={"error": str(exc)})  # fmt: skip
    else:
        for dispatcher in dispatchers.values():
            dispatcher.router = router
        for warning in router.warnings:
            log.warning(warning)
        log.info("rules reloaded", extra={"rules": len(router.rules)})
    await asyncio.to_thread(tls.check)
