"""The window every sink reads the log through: a committed block is read and decoded once
for all of them; the block at the head is read afresh."""

from __future__ import annotations

from pathlib import Path

from relay.queue.log import Log, LogEntry
from relay.queue.window import BLOCK, Window
from tests.support.pipeline import minio_event


def fake_rows(after: int, upto: int) -> list[LogEntry]:
    # seq 5 is a hole (a duplicate used it up)
    return [LogEntry(s, 0.0, minio_event("b", f"k{s}", s)) for s in range(after + 1, upto + 1)
            if s != 5]  # fmt: skip


def test_a_committed_block_is_read_once_for_every_reader() -> None:
    reads: list[tuple[int, int]] = []

    def read(after: int, upto: int) -> list[LogEntry]:
        reads.append((after, upto))
        return fake_rows(after, upto)

    window = Window(read)
    committed = 3 * BLOCK + 10
    first = window.after(0, 100, committed)  # one sink
    second = window.after(2, 100, committed)  # another, a little further on
    assert [e.seq for e in first] == [s for s in range(1, 102) if s != 5]
    assert [e.seq for e in second] == [s for s in range(3, 104) if s != 5]
    assert reads == [(0, BLOCK)]
    assert first[5] is second[3]  # the same decoded entry
    across = window.after(BLOCK - 3, 10, committed)  # spans two blocks
    assert [e.seq for e in across] == list(range(BLOCK - 2, BLOCK + 8))
    assert reads == [(0, BLOCK), (BLOCK, 2 * BLOCK)]


def test_the_head_block_is_read_afresh_and_only_up_to_what_is_committed() -> None:
    reads: list[tuple[int, int]] = []

    def read(after: int, upto: int) -> list[LogEntry]:
        reads.append((after, upto))
        return fake_rows(after, upto)

    window = Window(read)
    assert [e.seq for e in window.after(10, 5, 13)] == [11, 12, 13]
    assert [e.seq for e in window.after(10, 5, 20)] == [11, 12, 13, 14, 15]
    assert reads == [(10, 13), (10, 20)]
    assert window.after(20, 5, 20) == []


async def test_the_log_hands_every_sink_the_same_events_through_it(tmp_path: Path) -> None:
    log = Log(tmp_path / "relay.db")
    log.open()
    try:
        await log.append([minio_event("b", f"k{n}", n) for n in range(BLOCK + 50)])
        direct = [e.seq for e in log.entries_between(0, BLOCK + 50)]
        assert [e.seq for e in log.entries_after(0, BLOCK + 100)] == direct
        assert [e.seq for e in log.entries_after(40, 20)] == direct[40:60]
        assert log._window is not None and log._window.hits >= 1
    finally:
        await log.close()
