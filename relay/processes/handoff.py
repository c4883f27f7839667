"""Connections accepted once, by the supervisor, and handed to the ingest workers in turn.

Ingest workers that all accept on one inherited socket do not share the load: the kernel
wakes the one already awake: under wrk's 64 connections one of two workers' profiles held
1 275 samples, the other's 284, most of those its start. SO_REUSEPORT
would spread them, but it lets any other process of the same user join the port (a second
relay with another data directory would silently take half the events into its own log).
So the port is bound once, without it, and the supervisor accepts: each connection goes to
the next live worker over a unix socket (SCM_RIGHTS), round robin. It costs one accept and
one sendmsg per connection, not per request: stores keep their connections open.

A connection handed to a worker that has just died waits in its channel until the worker is
started again and takes it; none is closed unanswered by the hand-off itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("relay.worker")

HANDSHAKE = 10.0  # seconds a TLS client has to finish its handshake


class Channel:
    """The supervisor's end of one ingest worker's channel; `child` is inherited by it."""

    def __init__(self) -> None:
        self.parent, self.child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.child.set_inheritable(True)
        self.parent.settimeout(1.0)  # a worker that stops reading must not stall the others

    def send(self, conn: socket.socket) -> None:
        socket.send_fds(self.parent, [b"c"], [conn.fileno()])

    def close(self) -> None:
        self.parent.close()
        self.child.close()


async def accept(listener: socket.socket, channels: Sequence[Channel],
                 alive: Callable[[int], bool]) -> None:  # fmt: skip
    """Accept for ever, handing each connection to the next worker `alive(i)` says runs
    (when none does, still in turn: each takes its own once started again)."""
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    turn = 0
    while True:
        conn, _ = await loop.sock_accept(listener)
        with conn:
            for step in range(len(channels)):
                i = (turn + step) % len(channels)
                if alive(i) or step == len(channels) - 1:
                    try:
                        channels[i].send(conn)
                        break
                    except OSError as exc:
                        log.warning("could not hand a connection to an ingest worker",
                                    extra={"worker": i, "error": str(exc)})  # fmt: skip
            turn += 1


def receive(channel_fd: int, protocol: Callable[[], asyncio.Protocol],
            context: ssl.SSLContext | None) -> Callable[[], None]:  # fmt: skip
    """In an ingest worker: serve each connection the supervisor hands over with
    `protocol` (the aiohttp server). Returns what stops taking new ones."""
    loop = asyncio.get_running_loop()
    channel = socket.socket(fileno=channel_fd)
    channel.setblocking(False)
    handshakes: set[asyncio.Future[Any]] = set()
    tls: dict[str, Any] = (
        {} if context is None else {"ssl": context, "ssl_handshake_timeout": HANDSHAKE}
    )

    def take() -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(channel, 16, 64)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message:  # the supervisor is gone: so are we, soon
                stop()
                return
            for fd in fds:
                conn = socket.socket(fileno=fd)
                conn.setblocking(False)
                future = asyncio.ensure_future(loop.connect_accepted_socket(protocol, conn, **tls))
                handshakes.add(future)
                future.add_done_callback(_settled(handshakes, conn))

    def stop() -> None:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(channel)
        channel.close()

    loop.add_reader(channel, take)
    return stop


def _settled(pending: set[asyncio.Future[Any]],
             conn: socket.socket) -> Callable[[asyncio.Future[Any]], None]:  # fmt: skip
    def done(future: asyncio.Future[Any]) -> None:
        pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            conn.close()  # a failed TLS handshake: the client sees the connection close

    return done
