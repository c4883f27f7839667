"""Await a condition instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = ..., interval: float = ...
) -> T: ...
@overload
async def eventually(check: Callable[[], T], timeout: float = ..., interval: float = ...) -> T: ...


async def eventually(
    check: Callable[[], Awaitable[T] | T], timeout: float = 30.0, interval: float = 0.05
) -> T:
    """Poll `check` until it returns something truthy; fail with its last value otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        result = check()
        last = await result if isinstance(result, Awaitable) else result
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)
