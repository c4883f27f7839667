"""The relay's ingest code without its log: relay.ingest's app (authentication, size checks,
parsing, metrics, the answer) in front of a log that takes every event and keeps nothing.
Next to the bare-aiohttp baseline it shows what the relay's own request path costs before
any storage, so the ingest table can tell that share of the gap from the log's (the SQLite
insert, the commit, the hop to the writer thread and back).

    python -m bench.nolog_server PORT   (RELAY_AUTH_TOKENS and the like from the environment)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import uvloop
from aiohttp import web

from relay.config import load_settings
from relay.events import Event
from relay.ingest import make_app
from relay.queue.log import AppendResult


class NoLog:
    """What relay.ingest uses of the log, storing nothing."""

    pressure: str | None = None

    async def append(self, events: Sequence[Event]) -> AppendResult:
        return AppendResult(len(events), 0)

    async def quarantine(self, source: str, reason: str, headers: str, body: bytes) -> int:
        return 0


def main() -> None:
    settings = load_settings(os.environ)
    app = make_app(settings, NoLog(), {})  # type: ignore[arg-type]
    uvloop.run(web._run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                            print=None))  # fmt: skip


if __name__ == "__main__":
    main()
