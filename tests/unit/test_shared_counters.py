"""The counters the processes of one relay share (relay/queue/shared.py): read while other
processes write them, a reader never sees a torn value, and no process's change is lost."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from relay.queue.shared import SharedLog

FREE = 84_883_390_464  # bytes free on a disk with room: every byte but the top three set
APPENDS = 20_000


def _append(data_dir: Path, start: multiprocessing.synchronize.Event) -> None:
    shared = SharedLog(data_dir)
    start.wait()
    for n in range(APPENDS):
        shared.appended(1, n, 4096 * (n % 9 + 1))
    shared.close()


def _measure(data_dir: Path, start: multiprocessing.synchronize.Event) -> None:
    shared = SharedLog(data_dir)
    start.wait()
    for n in range(APPENDS):
        shared.measured(free_disk=FREE + 4096 * (n % 5))
    shared.close()


def test_readers_never_see_a_torn_counter_and_no_change_is_lost(tmp_path: Path) -> None:
    shared = SharedLog(tmp_path, create=True)
    shared.set_counters(0, 0, 4096, FREE)
    context = multiprocessing.get_context("fork")
    start = context.Event()
    writers = [context.Process(target=_append, args=(tmp_path, start)) for _ in range(2)]
    writers.append(context.Process(target=_measure, args=(tmp_path, start)))
    for p in writers:
        p.start()
    start.set()
    reads, torn, last_events = 0, [], 0
    while any(p.is_alive() for p in writers):
        events, _, bytes_, free = shared.counters()
        reads += 1
        if not FREE <= free < FREE + 5 * 4096 or not 4096 <= bytes_ <= 9 * 4096:
            torn.append((events, bytes_, free))
        if events < last_events:
            torn.append((events, bytes_, free))
        last_events = events
    for p in writers:
        p.join()
        assert p.exitcode == 0
    assert reads > 100
    assert torn == []
    assert shared.counters()[0] == 2 * APPENDS  # every append counted, none overwritten
    shared.close()
