"""A progress bar for long CLI operations (replay, dead-letter retry, fsck --repair).

Drawn on stdout only when stdout is a terminal: `replay [#######.....] 4 200/7 000 60%
3 512/s ETA 0:01`, redrawn at most ten times a second, left on screen with the time taken
when the work is done. Piped or redirected, it writes nothing: scripts and tests see the
same output as without it.

A `Bar` is callable as `bar(done, total)`, the `progress` callback of relay.queue.admin.
"""

from __future__ import annotations

import shutil
import sys
import time
from types import TracebackType
from typing import TextIO

REDRAW_EVERY = 0.1  # seconds
MIN_RATE_SPAN = 0.2  # seconds of work before a rate (and an ETA) is shown


class Bar:
    def __init__(
        self,
        label: str,
        unit: str = "",
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stdout
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self.done = 0
        self.total = 0
        self._created = time.monotonic()
        self._first: tuple[float, int] | None = None  # (when, done) of the first update
        self._drawn_at: float | None = None
        self._closed = False

    def __call__(self, done: int, total: int) -> None:
        self.update(done, total)

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if not self.enabled or self._closed:
            return
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        if self._drawn_at is not None and now - self._drawn_at < REDRAW_EVERY and done < total:
            return
        self._draw(now, final=False)

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n, max(self.total, self.done + n))

    def close(self) -> None:
        """Leave the finished bar on its own line (nothing at all if it was never drawn)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled and self._drawn_at is not None:
            self._draw(time.monotonic(), final=True)
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Bar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def rate(self, now: float, min_span: float = MIN_RATE_SPAN) -> float | None:
        """Per second since the first update; None until there is enough to tell."""
        if self._first is None:
            return None
        since, start = self._first
        elapsed = now - since
        if elapsed < max(min_span, 1e-6):
            return None
        return (self.done - start) / elapsed

    def render(self, now: float, final: bool = False, width: int = 80) -> str:
        rate = self.rate(now, 0.0 if final else MIN_RATE_SPAN)
        done, total = self.done, max(self.total, self.done)
        fraction = done / total if total else 1.0
        unit = f" {self.unit}" if self.unit else ""
        counts = f"{_n(done)}/{_n(total)}{unit} {fraction:4.0%}"
        speed = f"{_n(round(rate))}/s" if rate is not None else "-/s"
        if final:
            tail = f"{speed} in {_clock(now - self._created)}"
        else:
            eta = (total - done) / rate if rate else None
            tail = f"{speed} ETA {_clock(eta) if eta is not None else '-:--'}"
        room = width - len(self.label) - len(counts) - len(tail) - 6
        bar = ""
        if room >= 10:
            cells = min(room, 40)
            filled = int(cells * fraction)
            bar = " [" + "#" * filled + "." * (cells - filled) + "]"
        return f"{self.label}{bar} {counts} {tail}"

    def _draw(self, now: float, final: bool) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        line = self.render(now, final, width)[: max(width - 1, 1)]
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self._drawn_at = now


def _n(value: int) -> str:
    return f"{value:,}".replace(",", " ")


def _clock(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
