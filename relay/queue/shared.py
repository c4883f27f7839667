"""What the processes of one relay share about its SQLite log (RELAY_WORKERS > 1).

Ingest workers append, the delivery process settles and prunes, all to one database file.
Three things cross the process boundary, none of them through the database (the process
model's own shared state, backpressure and sink states, is relay/processes/board.py):
- the write lock: each writer thread holds an exclusive `flock` on `relay.write-lock` from
  its BEGIN IMMEDIATE to its COMMIT. SQLite serialises writers too, but a writer that finds
  the database locked sleeps in SQLite's busy handler (1, 2, 5, 10 … ms) where one blocked
  in flock is woken the moment the lock is free;
- counters every process must agree on, kept in a small file mapped into each process
  (`relay.shared`): events in the log, the last seq committed, the log's bytes and the free
  disk. They are changed only under the write lock (an append adds, a prune takes away),
  so they never drift from the database;
- a datagram to the delivery process after every append commit, which wakes the
  dispatchers as the in-process listener does in a single process.

The supervisor creates the file before it starts any worker; workers only open it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

SHARED_NAME = "relay.shared"
LOCK_NAME = "relay.write-lock"
SIZE = 4096
_MAGIC = 0x52454C31  # "REL1"
# layout: magic u32, pad u32, then the i64 counters
_COUNTERS = struct.Struct("<qqqq")  # events, last_seq, bytes, free_disk
_COUNTERS_AT = 8


def wake_address(data_dir: str | Path) -> str:
    """The delivery process's wake-up socket, in Linux's abstract namespace (no file to
    clean up, no path length limit), one per data directory."""
    digest = hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:24]
    return f"\0s3-notify-relay-wake-{digest}"


class SharedLog:
    def __init__(self, data_dir: str | Path, *, create: bool = False) -> None:
        directory = Path(data_dir)
        path = directory / SHARED_NAME
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        if create:
            struct.pack_into("<I", self._map, 0, _MAGIC)
        elif struct.unpack_from("<I", self._map, 0)[0] != _MAGIC:
            raise RuntimeError(f"{path} was not made by this relay's supervisor")
        self._lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        self._wake = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._wake.setblocking(False)
        self._wake_address = wake_address(directory)

    def close(self) -> None:
        self._wake.close()
        os.close(self._lock_fd)
        with contextlib.suppress(BufferError):
            self._map.close()

    # -- the write lock -----------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- counters -----------------------------------------------------------------------------

    def counters(self) -> tuple[int, int, int, int]:
        """(events, last seq, bytes, free disk)."""
        return _COUNTERS.unpack_from(self._map, _COUNTERS_AT)  # type: ignore[return-value]

    @property
    def events(self) -> int:
        return int(struct.unpack_from("<q", self._map, _COUNTERS_AT)[0])

    @property
    def last_seq(self) -> int:
        return int(struct.unpack_from("<q", self._map, _COUNTERS_AT + 8)[0])

    def set_counters(self, events: int, last_seq: int, bytes_: int, free_disk: int) -> None:
        """Under the write lock (or before any worker runs)."""
        _COUNTERS.pack_into(self._map, _COUNTERS_AT, events, last_seq, bytes_, free_disk)

    def appended(self, inserted: int, last_seq: int, bytes_: int) -> None:
        """After an append commit, still under the write lock."""
        events, seq, _, free = self.counters()
        self.set_counters(events + inserted, max(seq, last_seq), bytes_, free)

    def pruned(self, deleted: int) -> None:
        events, seq, bytes_, free = self.counters()
        self.set_counters(max(0, events - deleted), seq, bytes_, free)

    def measured(self, bytes_: int, free_disk: int | None = None) -> None:
        events, seq, _, free = self.counters()
        self.set_counters(events, seq, bytes_, free if free_disk is None else free_disk)

    # -- wake-ups -------------------------------------------------------------------------------

    def wake_delivery(self) -> None:
        """A datagram to the delivery process; lost if it is not listening (being restarted:
        it reads the log afresh when it starts) or its queue is full (it is awake already)."""
        with contextlib.suppress(OSError):
            self._wake.sendto(b"w", self._wake_address)

    def wake_socket(self) -> socket.socket:
        """The delivery process's end: readable after every append commit of any worker."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self._wake_address)
        sock.setblocking(False)
        return sock
