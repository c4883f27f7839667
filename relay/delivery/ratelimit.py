"""RATE_LIMIT: a token bucket that says how long a round waits before it is sent.

A round takes its events' worth of tokens at once and may leave the bucket in debt; the
next round waits until the debt is paid. Rounds are at most a burst (Policy.batch_limit),
so the target never sees more than RATE_BURST events at once, and over any stretch of a
drain the rate is RATE_LIMIT (within one burst).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self, events: int) -> float:
        """Seconds to wait before sending `events` (0: at once); they are taken now."""
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= events
        return max(0.0, -self.tokens / self.rate)
