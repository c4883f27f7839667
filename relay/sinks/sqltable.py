"""What the SQL sinks share: the rows of the stores' two table shapes, and finding the one
event of a batch whose data a table refuses. No client library here; postgres.py and
mysql.py each talk to their own server.

    namespace  one row per object, `bucket/key` → the event; removal events delete it
    access     one row per event, keyed by the event id where the table allows
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.config import Option
from relay.queue.log import LogEntry
from relay.rules import EventSet
from relay.sinks.base import Permanent, Result, Retryable, event_time, object_name
from relay.sinks.formats import render

# Keys both SQL sinks take, besides the stores' FORMAT (namespace|access), declared by each.
TABLE_OPTIONS = (
    Option(
        "payload_format", "choice", "minio",
        "Shape of the JSON stored in the table (`value`, `event_data`): `minio` ({EventName, "
        "Key, Records}, what MinIO and RustFS tables hold), `records`, `cloudevents` or `raw`.",
        choices=("minio", "records", "cloudevents", "raw"),
    ),
    Option(
        "delete_on", "list", ("s3:ObjectRemoved:*",),
        "Namespace format: events that delete the object's row (comma-separated names, "
        "`family:*` wildcards). The default is RustFS's choice; MinIO deletes on "
        "`s3:ObjectRemoved:Delete` only (delete markers keep the row). Empty: never delete.",
    ),
    Option(
        "batch_size", "int", 1000,
        "Most events handed to the sink at once, written in one transaction (a larger default "
        "than other sinks': a round trip and a commit per batch are what a SQL sink waits on; "
        "measured 1.45x PostgreSQL's rate at 100).",
    ),
    Option(
        "max_open_connections", "int", 2,
        "Most connections the sink's pool opens (a batch uses one).",
    ),
)  # fmt: skip


class Poison(Permanent):
    """The data of (at least) one event of the batch is refused: find which."""


@dataclass(slots=True)
class TableRows:
    rows: list[tuple[Any, ...]]
    deletes: list[str] = field(default_factory=list)  # namespace keys to delete


def json_value(entry: LogEntry, payload_format: str) -> str:
    try:
        return render(entry, payload_format).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise Poison(f"seq {entry.seq}: cannot render the event as JSON: {exc}") from None


def namespace_rows(
    batch: Sequence[LogEntry], deletes: EventSet | None, payload_format: str
) -> TableRows:
    """The table ends as if the events were applied in order: only each object's last event
    matters (an upsert replaces the row, a delete removes it)."""
    last = {object_name(e): e for e in batch}

    def removes(entry: LogEntry) -> bool:
        return deletes is not None and deletes.match(entry.event.event_name)

    return TableRows(
        rows=[(k, json_value(e, payload_format)) for k, e in last.items() if not removes(e)],
        deletes=[k for k, e in last.items() if removes(e)],
    )


def access_rows(
    batch: Sequence[LogEntry], columns: Sequence[str], payload_format: str, *, naive_utc: bool
) -> TableRows:
    """One row per event with the table's columns, in its order. `naive_utc`: a DATETIME
    column that holds UTC without a zone (MySQL)."""

    def value(entry: LogEntry, column: str) -> Any:
        if column == "event_id":
            return entry.event.event_id
        if column == "event_time":
            when = event_time(entry)
            return when.replace(tzinfo=None) if naive_utc else when
        if column == "event_name":
            return entry.event.event_name
        if column in ("key", "key_name"):
            return object_name(entry)
        if column == "queued_at_ms":  # RustFS's access table
            return int(entry.received_at * 1000)
        return json_value(entry, payload_format)  # value, event_data

    return TableRows(rows=[tuple(value(e, c) for c in columns) for e in batch])


async def send_isolating_poison(
    batch: Sequence[LogEntry], write: Callable[[Sequence[LogEntry]], Awaitable[None]]
) -> list[Result]:
    """Write the batch in one go; when the table refuses the data of some event, write the
    events one by one so only those are dead-lettered. A retryable failure stops there."""
    try:
        await write(batch)
        return [None] * len(batch)
    except Poison as exc:
        if len(batch) == 1:
            return [Permanent(str(exc))]
    results: list[Result] = []
    for index, entry in enumerate(batch):
        try:
            await write([entry])
            results.append(None)
        except Poison as exc:
            results.append(Permanent(str(exc)))
        except Retryable as exc:
            rest = len(batch) - index - 1
            results.append(exc)
            results.extend([Retryable(f"not sent: an earlier event failed ({exc})")] * rest)
            break
    return results
