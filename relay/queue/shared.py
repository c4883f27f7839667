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
  disk. Every change is a read-modify-write under a lock of their own (an append adds, a
  prune takes away, a measurement replaces), so none is lost and they never drift from the
  database; a reader takes no lock but a version, odd while a writer is at work, and reads
  again when it changed. Without it a reader saw torn values: `struct.pack_into` zeroes
  its bytes before it packs them, and a reader between the two saw 0.5 M zeroes in 11 M
  reads of a busy counter, enough to read "no free disk" and answer 503 for a moment;
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
import threading
from collections.abc import Iterator
from pathlib import Path

SHARED_NAME = "relay.shared"
LOCK_NAME = "relay.write-lock"
SIZE = 4096
_MAGIC = 0x52454C31  # "REL1"
# layout: magic u32, version u32 (odd while a writer is at work), then the i64 counters
_VERSION = struct.Struct("<I")
_VERSION_AT = 4
_COUNTERS = struct.Struct("<qqqq")  # events, last_seq, bytes, free_disk
_COUNTERS_AT = 8
_COUNTERS_END = _COUNTERS_AT + _COUNTERS.size


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
        # the counters' lock: a flock of their file between processes, and a thread lock
        # between the threads of one process (they share the file description, and with it
        # the flock)
        self._counters_fd = os.open(path, os.O_RDWR)
        self._counters_thread_lock = threading.Lock()
        self._wake = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._wake.setblocking(False)
        self._wake_address = wake_address(directory)

    def close(self) -> None:
        self._wake.close()
        os.close(self._lock_fd)
        os.close(self._counters_fd)
        with contextlib.suppress(BufferError):
            self._map.close()

    # -- the write lock -----------------------------------------------------------------------

    def writing(self) -> contextlib.AbstractContextManager[None]:
        return _flocked(self._lock_fd)

    # -- counters -----------------------------------------------------------------------------

    def counters(self) -> tuple[int, int, int, int]:
        """(events, last seq, bytes, free disk), all from one write."""
        for _ in range(1000):
            (before,) = _VERSION.unpack(self._map[_VERSION_AT:_COUNTERS_AT])
            raw = self._map[_COUNTERS_AT:_COUNTERS_END]
            (after,) = _VERSION.unpack(self._map[_VERSION_AT:_COUNTERS_AT])
            if before == after and not before % 2:
                return _COUNTERS.unpack(raw)  # type: ignore[return-value]
        with self._counters_lock():  # a writer died half-way: the version stays odd
            return _COUNTERS.unpack(self._map[_COUNTERS_AT:_COUNTERS_END])  # type: ignore[return-value]

    @property
    def events(self) -> int:
        return self.counters()[0]

    @property
    def last_seq(self) -> int:
        return self.counters()[1]

    def set_counters(self, events: int, last_seq: int, bytes_: int, free_disk: int) -> None:
        with self._counters_lock():
            self._write(events, last_seq, bytes_, free_disk)

    def appended(self, inserted: int, last_seq: int, bytes_: int) -> None:
        """After an append commit, still under the write lock."""
        with self._counters_lock():
            events, seq, _, free = self._read_locked()
            self._write(events + inserted, max(seq, last_seq), bytes_, free)

    def pruned(self, deleted: int) -> None:
        with self._counters_lock():
            events, seq, bytes_, free = self._read_locked()
            self._write(max(0, events - deleted), seq, bytes_, free)

    def measured(self, bytes_: int | None = None, free_disk: int | None = None) -> None:
        with self._counters_lock():
            events, seq, old_bytes, free = self._read_locked()
            self._write(events, seq, old_bytes if bytes_ is None else bytes_,
                        free if free_disk is None else free_disk)  # fmt: skip

    @contextlib.contextmanager
    def _counters_lock(self) -> Iterator[None]:
        with self._counters_thread_lock, _flocked(self._counters_fd):
            yield

    def _read_locked(self) -> tuple[int, int, int, int]:
        return _COUNTERS.unpack(self._map[_COUNTERS_AT:_COUNTERS_END])  # type: ignore[return-value]

    def _write(self, *counters: int) -> None:
        """Under the counters' lock. Whole slices (one copy each), never `pack_into`, which
        zeroes the bytes before it fills them."""
        (version,) = _VERSION.unpack(self._map[_VERSION_AT:_COUNTERS_AT])
        version += version % 2  # a writer that died half-way left it odd
        self._map[_VERSION_AT:_COUNTERS_AT] = _VERSION.pack((version + 1) & 0xFFFFFFFF)
        self._map[_COUNTERS_AT:_COUNTERS_END] = _COUNTERS.pack(*counters)
        self._map[_VERSION_AT:_COUNTERS_AT] = _VERSION.pack((version + 2) & 0xFFFFFFFF)

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


@contextlib.contextmanager
def _flocked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
