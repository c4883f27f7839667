"""Stale events: an event older than one a sink already has of the same object.

Order between an object's events comes from the sender's sequencer (`order_token` in
relay/events.py, one rule per sender). Per sink, `Newest` remembers the newest token
delivered per object for the most recent WINDOW objects (warmed from the log at start),
which catches a store that sends out of order. Dead letters retried and replays carry
`newer`, the newest token of their object the sink had when they were queued again
(relay/queue/admin.py), which catches a retry or a replay of an event the sink has since
seen superseded, however long ago.
"""

from __future__ import annotations

from collections import OrderedDict

WINDOW = 16_384  # objects remembered per sink (~2 MB); a reorder further apart goes unseen


class Newest:
    """The newest order token delivered per object, for the most recent WINDOW objects."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._tokens: OrderedDict[tuple[str, str], str] = OrderedDict()

    def get(self, key: tuple[str, str]) -> str | None:
        return self._tokens.get(key)

    def delivered(self, key: tuple[str, str], token: str | None) -> None:
        if token is None:
            return
        known = self._tokens.get(key)
        if known is None or token > known:
            self._tokens[key] = token
        self._tokens.move_to_end(key)
        if len(self._tokens) > self.window:
            self._tokens.popitem(last=False)


def is_stale(token: str | None, *newer: str | None) -> bool:
    """Older than any of `newer` (tokens of the same object that the sink already has)."""
    return token is not None and any(n is not None and token < n for n in newer)
