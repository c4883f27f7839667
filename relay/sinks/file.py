"""File sink: appends one JSON line per event to a local file (or stdout with `-`), fsynced
per batch before the batch counts as delivered. A local trail that needs no other server."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, BinaryIO

from relay.config import Key, SinkConfig, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks.base import Health, Permanent, Result, Retryable
from relay.sinks.formats import render

TYPE = "file"


class Config(SinkConfig, kw_only=True, frozen=True):
    path: Annotated[
        str, Key("File the NDJSON lines are appended to; `-` for stdout.", required=True)
    ] = ""


class FileSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        config = spec.typed(Config)
        self.path = config.path
        self.format = config.format
        self.file: BinaryIO | None = None

    async def start(self) -> None:
        if self.file is not None:
            return
        if self.path == "-":
            self.file = sys.stdout.buffer
            return
        try:
            self.file = await asyncio.to_thread(_open_append, Path(self.path))
        except OSError as exc:
            raise Retryable(f"cannot open {self.path}: {exc.strerror}") from None

    async def send_batch(self, batch: Sequence[LogEntry]) -> list[Result]:
        try:
            lines = b"".join(render(entry, self.format) + b"\n" for entry in batch)
        except ValueError as exc:
            raise Permanent(str(exc)) from None
        await asyncio.to_thread(self._write, lines)
        return [None] * len(batch)

    def _write(self, data: bytes) -> None:
        assert self.file is not None, "start() first"
        try:
            self.file.write(data)
            self.file.flush()
            if self.path != "-":
                os.fsync(self.file.fileno())
        except OSError as exc:
            raise Retryable(f"cannot write {self.path}: {exc.strerror}") from None

    async def close(self) -> None:
        if self.file is not None and self.path != "-":
            self.file.close()
        self.file = None

    async def health(self) -> Health:
        if self.path == "-":
            return Health(True, "stdout")
        directory = Path(self.path).parent
        if os.access(directory if directory.exists() else directory.parent, os.W_OK):
            return Health(True, f"{self.path} is writable")
        return Health(False, f"{directory} is not writable")


def _open_append(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")  # held open for the sink's life


def create(spec: SinkSpec) -> FileSink:
    return FileSink(spec)
