"""Payload shapes a sink can send (`FORMAT` key). The record is embedded byte for byte as the
store sent it; only the envelope around it is ours."""

from __future__ import annotations

import msgspec

from relay.queue.log import LogEntry

_json = msgspec.json.Encoder()


class _Origin(msgspec.Struct):
    eventSource: str = ""
    awsRegion: str = ""


_origin = msgspec.json.Decoder(_Origin)


def render(entry: LogEntry, fmt: str) -> bytes:
    event = entry.event
    if fmt == "minio":
        # What MinIO and RustFS consumers already parse: the canonical name, the decoded
        # "bucket/key", and the record unchanged.
        return b"".join((
            b'{"EventName":', _json.encode(event.event_name),
            b',"Key":', _json.encode(f"{event.bucket}/{event.key}"),
            b',"Records":[', event.record, b"]}",
        ))  # fmt: skip
    if fmt == "records":
        return b'{"Records":[' + event.record + b"]}"
    if fmt == "raw":
        return event.record
    if fmt == "cloudevents":
        return cloudevent(entry)
    raise ValueError(f"unknown format {fmt!r}")


def cloudevent(entry: LogEntry) -> bytes:
    """CloudEvents 1.0, structured mode (JSON), with the record as `data`."""
    event = entry.event
    try:
        origin = _origin.decode(event.record)
    except msgspec.DecodeError:
        origin = _Origin()
    source = f"{origin.eventSource or event.dialect + ':s3'}.{origin.awsRegion}.{event.bucket}"
    head = {
        "specversion": "1.0",
        "id": event.event_id,
        "source": source,
        "type": "com.amazonaws.s3." + event.event_name.removeprefix("s3:"),
        "subject": event.key,
        "datacontenttype": "application/json",
    }
    if event.event_time:
        head["time"] = event.event_time
    return _json.encode(head)[:-1] + b',"data":' + event.record + b"}"


def content_type(fmt: str) -> str:
    return "application/cloudevents+json" if fmt == "cloudevents" else "application/json"
