"""The two kinds of worker the supervisor starts: `relay _worker ingest|delivery …`."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from relay import admin_api, app, ingest, metrics, tls
from relay.processes import handoff, proxy
from relay.processes.board import Board, BoardGate, View

log = logging.getLogger("relay.worker")

PUBLISH_EVERY = 0.05  # the delivery process's view reaches ingest within this
ADMIN_SOCKET = "admin.sock"  # in the supervisor's run directory
PR_SET_PDEATHSIG = 1


def die_with(supervisor: int) -> None:
    """A worker goes when its supervisor goes, however it goes (a supervisor killed with
    SIGKILL cannot stop them itself): the kernel sends SIGKILL when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:  # it died before the line above
        sys.exit(1)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


async def ingest_worker(config: app.Config, index: int, channel_fd: int, run_dir: Path) -> None:
    settings = config.settings
    loop = asyncio.get_running_loop()
    event_log = app.open_log(settings, role="ingest")
    event_log.open()
    board = Board(settings.data_dir)
    gate = BoardGate(board, event_log)
    metrics.install(event_log, [s.name for s in config.specs], gate, delivering=False,
                    board=board)  # fmt: skip
    web_app = ingest.make_app(settings, event_log, gate)
    proxy.mount(web_app, str(run_dir / ADMIN_SOCKET))
    runner = app.web_runner(web_app, settings)
    await runner.setup()
    assert runner.server is not None
    stop_taking = handoff.receive(channel_fd, runner.server, tls.server_context(settings))
    watcher = asyncio.create_task(tls.watch(), name="tls files")
    stop = asyncio.Event()
    _stop_on_signals(stop)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: asyncio.ensure_future(asyncio.to_thread(tls.check))
    )
    log.debug("ingest worker ready", extra={"worker": index})
    await stop.wait()
    watcher.cancel()
    stop_taking()
    await runner.cleanup()  # no new requests; in-flight handlers finish their commit
    await event_log.close()
    board.close()


async def delivery_worker(config: app.Config, run_dir: Path) -> None:
    settings = config.settings
    loop = asyncio.get_running_loop()
    outputs = app.build_sinks(config)
    event_log = app.open_log(settings, role="delivery")
    event_log.open()
    board = Board(settings.data_dir)
    delivery = await app.start_delivery(config, outputs, event_log)
    gate = app.LocalGate(event_log, delivery.dispatchers)
    board.publish(gate.view())  # the supervisor starts ingest once the cursors are placed
    metrics.install(event_log, list(delivery.dispatchers), gate, board=board)
    publisher = asyncio.create_task(_publish(board, gate), name="publish view")
    watcher = asyncio.create_task(tls.watch(), name="tls files")  # the sinks' certificates

    admin = web.Application()
    admin_api.mount(admin, settings, event_log, delivery.dispatchers)
    runner = app.web_runner(admin, settings)
    await runner.setup()
    await web.UnixSite(runner, str(run_dir / ADMIN_SOCKET)).start()

    stop = asyncio.Event()
    _stop_on_signals(stop)
    reloads: set[asyncio.Future[None]] = set()

    def on_sighup() -> None:
        future = asyncio.ensure_future(app.reload(config, delivery.dispatchers))
        reloads.add(future)
        future.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    await runner.cleanup()
    await delivery.stop()
    publisher.cancel()
    watcher.cancel()
    await event_log.close()
    board.close()


async def _publish(board: Board, gate: app.LocalGate) -> None:
    last = View()
    while True:
        view = gate.view()
        if view != last:
            board.publish(view)
            last = view
        await asyncio.sleep(PUBLISH_EVERY)
