"""One active deliverer per sink: a lease in a key-value bucket whose TTL is RELAY_LOG_LEASE.

- take: `create` of the sink's key (fails while another replica's lease is alive);
- renew: `update` with the revision this replica last wrote (fails once it expired and
  another replica took it);
- the servers forget an unrenewed key after the TTL (the bucket's max age), counted from
  when they stored it, so a replica that dies (or loses the servers) lets go by itself.

A replica counts its lease as held only until `TTL * SAFETY` after the renewal it sent
last began: its own view ends before the servers' does, so two replicas never both think
they hold a sink. The settlement's compare-and-set on the sink's document (see log.py) is
the second guard: a replica that took the sink wrote that document, so a late settlement
of the former holder is refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

log = logging.getLogger("relay.log")

SAFETY = 0.8


@dataclass
class Lease:
    revision: int
    valid_until: float  # monotonic


class Leases:
    def __init__(self, ttl: float, holder: str) -> None:
        self.ttl = ttl
        self.holder = holder
        self.held: dict[str, Lease] = {}
        self.bucket: KeyValue | None = None

    def holds(self, key: str) -> bool:
        lease = self.held.get(key)
        return lease is not None and time.monotonic() < lease.valid_until

    async def take(self, key: str) -> bool:
        assert self.bucket is not None
        began = time.monotonic()
        try:
            revision = await self.bucket.create(key, self.holder.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self.held[key] = Lease(revision, began + self.ttl * SAFETY)
        return True

    async def renew(self, key: str) -> bool:
        assert self.bucket is not None
        lease = self.held.get(key)
        if lease is None:
            return False
        began = time.monotonic()
        try:
            revision = await self.bucket.update(key, self.holder.encode(), last=lease.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            self.held.pop(key, None)
            log.warning("sink lease lost: another replica holds it", extra={"lease": key})
            return False
        lease.revision, lease.valid_until = revision, began + self.ttl * SAFETY
        return True

    def drop(self, key: str) -> None:
        self.held.pop(key, None)

    async def renew_all(self) -> None:
        for key in list(self.held):
            try:
                await self.renew(key)
            except (TimeoutError, nats.errors.Error) as exc:
                # kept until its local validity runs out: the next renewal may go through
                log.warning("sink lease not renewed", extra={"lease": key, "error": str(exc)})

    async def release_all(self) -> None:
        """A clean stop lets go at once, so another replica takes over without waiting."""
        assert self.bucket is not None
        for key, lease in list(self.held.items()):
            try:
                await self.bucket.delete(key, last=lease.revision)
            except (TimeoutError, nats.errors.Error):
                pass
        self.held.clear()
