"""The log read once for every sink: recent blocks of events, read and decoded once, shared
by the dispatchers of all sinks.

Each sink reads the log past its own cursor. Seven sinks a few hundred events apart read the
same rows seven times, and decoding a row into an event costs more than reading it. The log
is cut into blocks of BLOCK seqs; a block every seq of which is committed (all at or below
the last seq committed: seqs are given out in commit order) never changes until retention
deletes it, which happens only below every sink's cursor. Such a block, once read, is kept
(the BLOCKS most recently used); the block at the head, still filling, is read afresh.

A LogEntry handed out is the cache's own object: a dispatcher that marks one (stale) marks
a copy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.queue.log import LogEntry

BLOCK = 1024  # seqs per block
BLOCKS = 48  # blocks kept: ~50k events, tens of MB at the usual 1 KiB record


class Window:
    def __init__(self, read: Callable[[int, int], list[LogEntry]]) -> None:
        """`read(after, upto)`: the events with after < seq <= upto, in seq order."""
        self._read = read
        self._blocks: OrderedDict[int, list[LogEntry]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.reads = 0

    def after(self, seq: int, limit: int, committed: int) -> list[LogEntry]:
        """The first `limit` events past `seq`; `committed`: the last seq committed."""
        out: list[LogEntry] = []
        block = seq // BLOCK  # the block holding seq + 1
        while len(out) < limit:
            low, high = block * BLOCK, (block + 1) * BLOCK  # seqs low+1 .. high
            if low >= committed:
                break
            if high <= committed:
                entries = self._block(block, low, high)
            else:  # the head: still filling
                entries = self._read(max(low, seq), committed)
            for entry in entries:
                if entry.seq > seq:
                    out.append(entry)
                    if len(out) == limit:
                        break
            block += 1
        return out

    def forget(self, upto: int) -> None:
        """Retention deleted every event up to `upto`."""
        with self._lock:
            for block in [b for b in self._blocks if (b + 1) * BLOCK <= upto]:
                del self._blocks[block]

    def _block(self, block: int, low: int, high: int) -> list[LogEntry]:
        with self._lock:
            entries = self._blocks.get(block)
            if entries is not None:
                self._blocks.move_to_end(block)
                self.hits += 1
                return entries
        entries = self._read(low, high)  # outside the lock: two sinks may both read it once
        with self._lock:
            self.reads += 1
            self._blocks[block] = entries
            self._blocks.move_to_end(block)
            while len(self._blocks) > BLOCKS:
                self._blocks.popitem(last=False)
        return entries
