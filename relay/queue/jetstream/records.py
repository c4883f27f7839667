"""How events, quarantined bodies and dead letters are stored as NATS messages (msgpack)."""

from __future__ import annotations

import msgspec

from relay.events import Event
from relay.queue.log import LogEntry


class StoredEvent(msgspec.Struct, array_like=True):
    received_at: float  # the relay's clock when ingest took it (the message's own
    # timestamp is the stream leader's, at the PubAck)
    event: Event


class StoredBody(msgspec.Struct, array_like=True):
    received_at: float
    source: str
    reason: str
    headers: str  # JSON, as ingest's safe_headers() made it
    body: bytes


class DeadRecord(msgspec.Struct, kw_only=True):
    """A dead letter, with a copy of its event: it pins nothing in the stream, so retention
    can go on past it (on SQLite the event row stays instead)."""

    id: int
    sink: str
    seq: int
    attempts: int
    error: str
    at: float
    retrying_to: str | None = None
    received_at: float = 0.0
    event: Event | None = None


EVENT_ENCODER = msgspec.msgpack.Encoder()
_EVENT_DECODER = msgspec.msgpack.Decoder(StoredEvent)
_BODY_DECODER = msgspec.msgpack.Decoder(StoredBody)
_DEAD_DECODER = msgspec.json.Decoder(DeadRecord)
DEAD_ENCODER = msgspec.json.Encoder()


def encode_event(event: Event, received_at: float) -> bytes:
    return EVENT_ENCODER.encode(StoredEvent(received_at, event))


def decode_entry(seq: int, data: bytes) -> LogEntry:
    stored = _EVENT_DECODER.decode(data)
    return LogEntry(seq=seq, received_at=stored.received_at, event=stored.event)


def encode_body(body: StoredBody) -> bytes:
    return EVENT_ENCODER.encode(body)


def decode_body(data: bytes) -> StoredBody:
    return _BODY_DECODER.decode(data)


def decode_dead(data: bytes) -> DeadRecord:
    return _DEAD_DECODER.decode(data)
