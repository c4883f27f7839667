"""A sink's recent delivery errors, for the status page (a sink's row opens them): the last
KEPT, newest first, in memory only (the log keeps dead letters and retry schedules; this is
what happened lately, including failures that were retried and went through). Bounded: at
most KEPT entries of at most MAX_TEXT characters of error each, ~10 KB per sink."""

from __future__ import annotations

import time
from collections import deque

import msgspec

KEPT = 20
MAX_TEXT = 400


class RecentError(msgspec.Struct):
    at: float  # unix seconds
    error: str  # redacted before it gets here, as every error the dispatcher logs
    outcome: str  # retrying | dead-lettered | not started | marker not sent
    seq: int | None = None
    bucket: str | None = None
    key: str | None = None
    attempts: int | None = None


class RecentErrors:
    def __init__(self, kept: int = KEPT) -> None:
        self._errors: deque[RecentError] = deque(maxlen=kept)

    def add(
        self, outcome: str, error: str, seq: int | None = None, bucket: str | None = None,
        key: str | None = None, attempts: int | None = None, at: float | None = None,
    ) -> None:  # fmt: skip
        if len(error) > MAX_TEXT:
            error = error[: MAX_TEXT - 1] + "…"
        at = time.time() if at is None else at
        self._errors.append(RecentError(at, error, outcome, seq, bucket, key, attempts))

    def newest_first(self) -> list[RecentError]:
        return list(reversed(self._errors))
