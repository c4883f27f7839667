"""`relay:MissedEvents`: the marker a sink gets, in order, for a range of events it will
never get — shed past its MAX_BACKLOG* bound (ON_FULL=shed), or pruned by retention before
it got them. The marker is an event of its own, rendered in the sink's payload format like
any other (relay/sinks/formats.py); its record is

    {"eventVersion": "2.0", "eventSource": "s3-notify-relay", "eventName": "relay:MissedEvents",
     "eventTime": "2026-12-02T10:00:05.123Z", "sink": "webhook:crm",
     "count": 4000, "first_seq": 1001, "last_seq": 5000,
     "first_time": "2026-12-02T09:58:00.000Z", "last_time": "2026-12-02T10:00:01.000Z",
     "reason": "max_backlog"}

`count` is how many events of the range the sink's rules route to it (null when the range
was pruned before it could be counted); the times are when the relay received the first and
the last of them; `reason` is max_backlog, max_backlog_bytes, max_backlog_age or pruned.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import msgspec

from relay.events import Event
from relay.queue.log import LogEntry, Missed

EVENT_NAME = "relay:MissedEvents"
_json = msgspec.json.Encoder()


def _time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entry(sink: str, missed: Missed) -> LogEntry:
    """The marker of `missed` as an entry the sink sends like any other; its seq is the last
    of the range, so it sorts where the events it stands for were."""
    now = _time(time.time())
    record = {
        "eventVersion": "2.0",
        "eventSource": "s3-notify-relay",
        "eventName": EVENT_NAME,
        "eventTime": now,
        "sink": sink,
        "count": missed.count,
        "first_seq": missed.first_seq,
        "last_seq": missed.last_seq,
        "first_time": _time(missed.first_at),
        "last_time": _time(missed.last_at),
        "reason": missed.reason,
    }
    # stable across resends of the same marker, so targets can drop a repeat
    ident = hashlib.sha256(f"{sink}|{missed.first_seq}|{missed.reason}".encode()).hexdigest()
    event = Event(
        source="relay",
        dialect="relay",
        event_name=EVENT_NAME,
        bucket="",
        key="",
        record=_json.encode(record),
        event_time=now,
        event_id=ident[:32],
    )
    return LogEntry(missed.last_seq, missed.last_at or time.time(), event)


def is_marker(event: Event) -> bool:
    return event.event_name == EVENT_NAME
