"""One relay per data directory: an exclusive `flock` on its pid file.

Two relays on one log would both deliver every event, and a repair under a running relay
would lose what the relay writes meanwhile; the lock makes the second one fail at once,
naming the first. The kernel drops the lock when its holder dies, however it dies, so a pid
file left behind by a crash never blocks a restart.

The lock belongs to the relay's main process. Worker processes of that same relay share it
rather than take it: flock locks belong to the open file description, so a worker forked
from the main process holds it through the inherited descriptor, and one started by exec
gets the descriptor passed (`pass_fds=[lock.fd]`; Python opens files non-inheritable). The
lock then lasts until the last of them exits, so no other relay starts while any worker of
this one still writes. A worker never calls `acquire()`: its own open of the file would
conflict with its main process.

This module imports nothing heavy: `relay serve` takes the lock before the rest of the
relay is imported, so a second relay is turned away in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PID_NAME = "relay.pid"  # the lock, holding the holder's pid for `relay reload`
PID_WAIT = 0.5  # how long to wait for a holder that has just locked to write its pid


class DataDirInUse(Exception):
    """Another relay process holds the data directory; the message names it."""


@dataclass
class _Held:
    fd: int
    holders: int


# pid files this process holds → their descriptor: taking the lock again in the same
# process (the CLI before importing the relay, then the relay itself) shares it
_HELD: dict[str, _Held] = {}


class DataDirLock:
    def __init__(self, data_dir: str | Path) -> None:
        self.directory = Path(data_dir)
        self.path = self.directory / PID_NAME
        self._key: str | None = None

    @property
    def fd(self) -> int | None:
        """The locked descriptor while held (what a worker process would inherit)."""
        held = _HELD.get(self._key) if self._key else None
        return held.fd if held else None

    def acquire(self) -> None:
        """Lock and write our pid, or raise DataDirInUse naming the holder. Never waits for
        the lock: a second relay exits at once."""
        self.directory.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        held = _HELD.get(key)
        if held is not None:
            held.holders += 1
            self._key = key
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise DataDirInUse(self._in_use()) from None
            # A holder that was stopping may have unlinked the file between our open and our
            # lock: we would hold a lock on a file nobody else opens any more. Start over.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = _Held(fd, 1)
        self._key = key

    def release(self) -> None:
        """The last holder in this process removes the pid file, while still holding the
        lock (see acquire), and unlocks."""
        if self._key is None:
            return
        key, self._key = self._key, None
        held = _HELD[key]
        held.holders -= 1
        if held.holders:
            return
        del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(key)
        os.close(held.fd)

    @contextlib.contextmanager
    def held(self) -> Iterator[DataDirLock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def _in_use(self) -> str:
        return (
            f"the data directory {self.directory} is in use by another relay process (pid "
            f"{self._holder() or 'unknown'}, holding {self.path}); stop it first, or give "
            "this one a RELAY_DATA_DIR of its own"
        )

    def _holder(self) -> int | None:
        """The pid in the file; the holder writes it right after locking, so an empty file
        is given a moment."""
        deadline = time.monotonic() + PID_WAIT
        while True:
            try:
                return int(self.path.read_text().strip())
            except (OSError, ValueError):
                if time.monotonic() >= deadline:
                    return None
            time.sleep(0.02)
