"""Client libraries' own log lines, kept for debugging only.

aiokafka, aio-pika/aiormq, nats-py and others log a warning or an error per reconnect
attempt and per retried request: many lines a second while a target is down. The relay
reports what matters itself (the dispatcher logs "sink down" once, with the error), so a
client library's loggers are raised to CRITICAL unless the relay logs at debug level or
the operator set their level explicitly.
"""

from __future__ import annotations

import logging


def quiet(*names: str) -> None:
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in names:
        client = logging.getLogger(name)
        if client.level == logging.NOTSET:
            client.setLevel(logging.CRITICAL)
