"""The supervisor's hand-off of accepted connections to the ingest workers, over real sockets."""

from __future__ import annotations

import asyncio
import socket

from relay.processes import handoff


async def _handed(channels: list[handoff.Channel], alive: list[bool], clients: int) -> list[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    task = asyncio.create_task(handoff.accept(listener, channels, lambda i: alive[i]))
    opened = []
    try:
        for _ in range(clients):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append(writer)
        counts = [0] * len(channels)
        while sum(counts) < clients:
            for i, channel in enumerate(channels):
                channel.child.setblocking(False)
                try:
                    _, fds, _, _ = socket.recv_fds(channel.child, 16, 64)
                except BlockingIOError:
                    continue
                counts[i] += len(fds)
                for fd in fds:
                    socket.socket(fileno=fd).close()
            await asyncio.sleep(0.01)
        return counts
    finally:
        task.cancel()
        for writer in opened:
            writer.close()
        listener.close()


async def test_connections_go_to_the_workers_in_turn() -> None:
    channels = [handoff.Channel() for _ in range(3)]
    try:
        assert await _handed(channels, [True, True, True], 9) == [3, 3, 3]
    finally:
        for channel in channels:
            channel.close()


async def test_a_dead_worker_is_passed_over_and_none_alive_they_queue_in_turn() -> None:
    channels = [handoff.Channel() for _ in range(2)]
    try:
        assert await _handed(channels, [False, True], 4) == [0, 4]
        assert await _handed(channels, [False, False], 4) == [2, 2]
    finally:
        for channel in channels:
            channel.close()
