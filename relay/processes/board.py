"""The board the processes of one relay read each other's state from: a small file mapped
into every process (`relay.board` in the data directory), whatever keeps the log.

- The delivery process publishes what ingest answers by: backpressure (why, and which sinks
  hold it) and each sink's state for /readyz. It is the one writer; a generation counter,
  odd while it writes, lets a reader tell a torn read and skip parsing when nothing
  changed (ingest looks at it on every request: one 8-byte read then). The head is written
  as whole slices, never with `struct.pack_into`, which zeroes the bytes before it fills
  them (a reader in between read torn values; relay/queue/shared.py).
- The supervisor counts the workers it started again after they died.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.queue.backend import LogBackend

BOARD_NAME = "relay.board"
SIZE = 64 * 1024
_MAGIC = 0x52424431  # "RBD1"
_RESTARTS = struct.Struct("<qq")  # ingest, delivery
_RESTARTS_AT = 8
_HEAD = struct.Struct("<QI")  # generation, length of the view
_GENERATION = struct.Struct("<Q")
_LENGTH = struct.Struct("<I")
_HEAD_AT = 24
_VIEW_AT = 64


@dataclass(frozen=True)
class View:
    """The delivery process's view, as ingest answers by it."""

    pressure: str | None = None
    pressure_detail: str = ""
    blocked_by: tuple[str, ...] = ()
    sinks: dict[str, str] = field(default_factory=dict)  # name → up | down | starting | paused
    check_state: str = "ok"  # the log's integrity check


class Board:
    def __init__(self, data_dir: str | Path, *, create: bool = False) -> None:
        path = Path(data_dir) / BOARD_NAME
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0), 0o600)
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
        self.path = path
        self._generation = -1
        self._view = View(check_state="running")

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self._map.close()

    # -- the delivery process's view ------------------------------------------------------------

    def publish(self, view: View) -> None:
        body = json.dumps({"pressure": view.pressure, "detail": view.pressure_detail,
                           "blocked_by": list(view.blocked_by), "sinks": view.sinks,
                           "check": view.check_state}).encode()  # fmt: skip
        if len(body) > SIZE - _VIEW_AT:  # thousands of sinks: /readyz lists none of them
            return self.publish(View(view.pressure, view.pressure_detail[:1000],
                                     view.blocked_by[:50], {}, view.check_state))  # fmt: skip
        generation, _ = _HEAD.unpack_from(self._map, _HEAD_AT)
        generation += generation % 2  # a writer that died half-way left it odd
        self._map[_HEAD_AT : _HEAD_AT + 8] = _GENERATION.pack(generation + 1)
        self._map[_HEAD_AT + 8 : _HEAD_AT + 12] = _LENGTH.pack(0)
        self._map[_VIEW_AT : _VIEW_AT + len(body)] = body
        # the length before the generation: a reader that sees the new generation sees it
        self._map[_HEAD_AT + 8 : _HEAD_AT + 12] = _LENGTH.pack(len(body))
        self._map[_HEAD_AT : _HEAD_AT + 8] = _GENERATION.pack(generation + 2)

    @property
    def published(self) -> bool:
        """Whether the delivery process has published a view yet."""
        return bool(_HEAD.unpack_from(self._map, _HEAD_AT)[0])

    def view(self) -> View:
        """The view last published (the one before, while a new one is being written)."""
        generation, length = _HEAD.unpack(self._map[_HEAD_AT : _HEAD_AT + _HEAD.size])
        if generation == self._generation or generation % 2 or not length:
            return self._view
        body = bytes(self._map[_VIEW_AT : _VIEW_AT + length])
        if _GENERATION.unpack(self._map[_HEAD_AT : _HEAD_AT + 8])[0] != generation:
            return self._view  # rewritten while read: the next request reads it
        data: dict[str, Any] = json.loads(body)
        self._view = View(data["pressure"], data["detail"], tuple(data["blocked_by"]),
                          data["sinks"], data["check"])  # fmt: skip
        self._generation = generation
        return self._view

    # -- the supervisor's counts ------------------------------------------------------------------

    def restarts(self) -> dict[str, int]:
        """Worker processes started again after they died, by role."""
        ingest, delivery = _RESTARTS.unpack_from(self._map, _RESTARTS_AT)
        return {"ingest": ingest, "delivery": delivery}

    def count_restart(self, role: str) -> None:
        counts = self.restarts()
        counts[role] += 1
        packed = _RESTARTS.pack(counts["ingest"], counts["delivery"])
        self._map[_RESTARTS_AT : _RESTARTS_AT + _RESTARTS.size] = packed


class BoardGate:
    """An ingest worker's gate (relay/ingest.py Gate): the log's own marks, which its
    ingest side sees at once, then the delivery process's view (the sinks' bounds, their
    states), which reaches it within the publishing interval."""

    def __init__(self, board: Board, log: LogBackend) -> None:
        self.board = board
        self.log = log

    @property
    def pressure(self) -> str | None:
        return self.log.pressure or self.board.view().pressure

    def view(self) -> View:
        view = self.board.view()
        own = self.log.pressure
        if own and not view.pressure:
            return dataclasses.replace(view, pressure=own)
        return view
