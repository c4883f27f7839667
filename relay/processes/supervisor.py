"""`relay serve` with RELAY_WORKERS > 1: check the log, bind the port, start the delivery
worker and, once it has placed the sinks' cursors, the ingest workers; start again any that
dies; on SIGTERM stop ingest first (their commits finish), then delivery (its batches
settle)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field

from prometheus_client import multiprocess

from relay import app
from relay.datadir import DataDirLock
from relay.processes import handoff
from relay.processes.board import Board

log = logging.getLogger("relay")

READY_WAIT = 600.0  # the delivery worker's start: its sinks' cursors placed
RESTART_MIN, RESTART_MAX = 0.1, 5.0  # wait before starting again a worker that died
STEADY = 30.0  # a worker that ran this long before dying is started again at once
KILL_AFTER = 5.0  # seconds past the shutdown timeout before a worker is killed


@dataclass
class Worker:
    role: str  # ingest | delivery
    index: int
    argv: list[str]
    pass_fds: tuple[int, ...]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    wait: float = RESTART_MIN
    exits: asyncio.Queue[int] = field(default_factory=asyncio.Queue)

    @property
    def name(self) -> str:
        return self.role if self.role == "delivery" else f"ingest {self.index}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, pass_fds=self.pass_fds, env=self.env
        )
        self.started_at = time.monotonic()

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    async def stopped(self, within: float) -> None:
        """SIGTERM, then SIGKILL once `within` has passed."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            log.error("worker did not stop in time; killed", extra={"worker": self.name})
            self.signal(signal.SIGKILL)
            await self.proc.wait()


async def supervise(
    config: app.Config, lock: DataDirLock, early_reload: asyncio.Event, stop: asyncio.Event | None
) -> None:
    settings = config.settings
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    # checked once here; the workers open it without checking again
    event_log = app.open_checked_log(settings, role="supervisor")
    events, open_seconds = event_log.events, event_log.open_seconds
    background = event_log.check_in_background
    await event_log.close()
    board = Board(settings.data_dir, create=True)
    family = socket.AF_INET6 if ":" in settings.listen_host else socket.AF_INET
    listener = socket.create_server((settings.listen_host, settings.listen_port), family=family,
                                    backlog=1024)  # fmt: skip
    # the run's files: every process's metrics, the delivery worker's admin socket (a short
    # path: a unix socket's is limited to 107 bytes); in memory where the system has it
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    run_dir = tempfile.mkdtemp(prefix="s3-notify-relay-", dir=shm)
    metrics_dir = os.path.join(run_dir, "metrics")
    os.mkdir(metrics_dir)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    assert lock.fd is not None
    base = [sys.executable, "-m", "relay", "_worker"]
    pid = str(os.getpid())
    delivery = Worker("delivery", 0, [*base, "delivery", "0", "-1", pid, run_dir], (lock.fd,), env)
    channels = [handoff.Channel() for _ in range(settings.workers)]
    ingest = [
        Worker("ingest", i, [*base, "ingest", str(i), str(c.child.fileno()), pid, run_dir],
               (lock.fd, c.child.fileno()), env)
        for i, c in enumerate(channels)
    ]  # fmt: skip

    def alive(i: int) -> bool:
        proc = ingest[i].proc
        return proc is not None and proc.returncode is None

    stopping = False
    watchers: list[asyncio.Task[None]] = []

    async def watch(worker: Worker) -> None:
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            if stopping:
                return
            ran = time.monotonic() - worker.started_at
            worker.wait = RESTART_MIN if ran > STEADY else min(worker.wait * 2, RESTART_MAX)
            log.error("worker process died; starting it again",
                      extra={"worker": worker.name, "pid": worker.proc.pid, "exit": code,
                             "restart_in": worker.wait})  # fmt: skip
            board.count_restart(worker.role)
            multiprocess.mark_process_dead(worker.proc.pid, metrics_dir)
            await asyncio.sleep(worker.wait)
            if stopping:
                return
            await worker.start()

    try:
        await delivery.start()
        await _delivery_ready(board, delivery)
        watchers.append(asyncio.create_task(watch(delivery), name="watch delivery"))
        for worker in ingest:
            await worker.start()
            watchers.append(asyncio.create_task(watch(worker), name=f"watch {worker.name}"))
        accepting = asyncio.create_task(handoff.accept(listener, channels, alive), name="accept")
        watchers.append(accepting)
        check = ({"log_check": "background"} if background
                 else {"log_check_seconds": round(open_seconds, 3)})  # fmt: skip
        log.info(
            "relay listening",
            extra={"listen": f"{settings.listen_host}:{settings.listen_port}",
                   "sinks": [s.name for s in config.specs], "data_dir": settings.data_dir,
                   "sync": settings.sync, "events_in_log": events,
                   "workers": settings.workers,
                   "start_seconds": round(time.monotonic() - started, 3), **check},
        )  # fmt: skip
        stop = stop or asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        def forward_sighup() -> None:
            for worker in (delivery, *ingest):
                worker.signal(signal.SIGHUP)

        loop.add_signal_handler(signal.SIGHUP, forward_sighup)
        if early_reload.is_set():
            forward_sighup()
        await stop.wait()
        log.info("shutting down")
    finally:
        stopping = True
        for task in watchers:
            task.cancel()
        within = settings.shutdown_timeout + KILL_AFTER
        # ingest first: no event is acknowledged once delivery is gone ...
        await asyncio.gather(*(w.stopped(within) for w in ingest))
        listener.close()
        for channel in channels:
            channel.close()
        await delivery.stopped(within)  # ... then delivery lets its batches settle
        board.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    log.info("stopped")


async def _delivery_ready(board: Board, delivery: Worker) -> None:
    """The delivery worker publishes its first view once every sink's cursor is placed; an
    event taken before that could be missed by a new sink starting at `latest`."""
    deadline = time.monotonic() + READY_WAIT
    while not board.published:
        assert delivery.proc is not None
        if delivery.proc.returncode is not None:
            raise RuntimeError(f"the delivery worker exited with {delivery.proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("the delivery worker did not start in time")
        await asyncio.sleep(0.02)
