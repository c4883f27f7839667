"""Payload shapes a sink can send (`FORMAT` key). The record is embedded byte for byte as the
store sent it; only the envelope around it is ours.

    minio        {"EventName", "Key": "bucket/key", "Records": [record]}  (MinIO/RustFS consumers)
    records      {"Records": [record]}                                    (AWS/Ceph consumers)
    raw          the record as received
    cloudevents  CloudEvents 1.0, structured mode, the record as `data`
    envelope     a flat projection for event buses, the record as `payload`

A stale event (older than one the sink already had of the same object, STALE=flag) is
marked: `"relayStale": true` in minio and records, the extension attribute
`"relaystale": true` in cloudevents, `"stale": true` in envelope. `raw` is the record
alone and cannot carry a mark (the webhook sink adds the header `Relay-Stale: true`).

The relay's own `relay:MissedEvents` marker (relay/delivery/missed.py) goes out in every
format too: minio `{"EventName": "relay:MissedEvents", "Key": "", "Records": [marker]}`,
records `{"Records": [marker]}`, raw the marker alone, cloudevents type
`s3-notify-relay.MissedEvents` from source `s3-notify-relay`, envelope namespace `relay`,
operation `missed-events`.
"""

from __future__ import annotations

import re

import msgspec

from relay.queue.log import LogEntry

FORMATS = ("minio", "records", "raw", "cloudevents", "envelope")
_json = msgspec.json.Encoder()


class _Origin(msgspec.Struct):
    eventSource: str = ""
    awsRegion: str = ""
    eventVersion: str = ""


_origin = msgspec.json.Decoder(_Origin)


def origin(entry: LogEntry) -> _Origin:
    """The sender-level fields of the record that the Event does not carry."""
    try:
        return _origin.decode(entry.event.record)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _Origin()


_STALE_MARK = {
    "minio": b',"relayStale":true}',
    "records": b',"relayStale":true}',
    "cloudevents": b',"relaystale":true}',
    "envelope": b',"stale":true}',
}


def render(entry: LogEntry, fmt: str) -> bytes:
    event = entry.event
    end = _STALE_MARK.get(fmt, b"}") if entry.stale else b"}"
    if fmt == "minio":
        # What MinIO and RustFS consumers already parse: the canonical name, the decoded
        # "bucket/key", and the record unchanged.
        return b"".join((
            b'{"EventName":', _json.encode(event.event_name),
            b',"Key":', _json.encode(f"{event.bucket}/{event.key}" if event.bucket else ""),
            b',"Records":[', event.record, b"]", end,
        ))  # fmt: skip
    if fmt == "records":
        return b'{"Records":[' + event.record + b"]" + end
    if fmt == "raw":
        return event.record
    if fmt == "cloudevents":
        return _json.encode(cloudevent_attributes(entry))[:-1] + b',"data":' + event.record + end
    if fmt == "envelope":
        return _json.encode(envelope_fields(entry))[:-1] + b',"payload":' + event.record + end
    raise ValueError(f"unknown format {fmt!r}")


def content_type(fmt: str) -> str:
    return "application/cloudevents+json" if fmt == "cloudevents" else "application/json"


# -- CloudEvents ---------------------------------------------------------------------------------


def cloudevent_attributes(entry: LogEntry) -> dict[str, str]:
    """The CloudEvents 1.0 context attributes of an event (as Ceph names them: type
    `com.amazonaws.s3.<name>`, source `<eventSource>.<region>.<bucket>`, subject the key)."""
    event = entry.event
    if event.event_name.startswith("relay:"):  # the relay's own events (relay:MissedEvents)
        attributes = {
            "specversion": "1.0",
            "id": event.event_id,
            "source": "s3-notify-relay",
            "type": "s3-notify-relay." + event.event_name.removeprefix("relay:"),
            "datacontenttype": "application/json",
        }
        if event.event_time:
            attributes["time"] = event.event_time
        return attributes
    o = origin(entry)
    attributes = {
        "specversion": "1.0",
        "id": event.event_id,
        "source": f"{o.eventSource or event.dialect + ':s3'}.{o.awsRegion}.{event.bucket}",
        "type": "com.amazonaws.s3." + event.event_name.removeprefix("s3:"),
        "subject": event.key,
        "datacontenttype": "application/json",
    }
    if event.event_time:
        attributes["time"] = event.event_time
    return attributes


def cloudevent_headers(entry: LogEntry) -> dict[str, str]:
    """Binary mode: the attributes as `ce-*` headers, the record alone as the body."""
    attributes = cloudevent_attributes(entry)
    content = attributes.pop("datacontenttype")
    headers = {f"ce-{k}": _header_safe(v) for k, v in attributes.items()}
    headers["Content-Type"] = content
    return headers


def _header_safe(value: str) -> str:
    # CloudEvents HTTP binding: attribute values are percent-encoded outside printable ASCII
    return "".join(c if 0x20 <= ord(c) < 0x7F and c != "%" else _pct(c) for c in value)


def _pct(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode("utf-8"))


# -- envelope ------------------------------------------------------------------------------------

# event-name family → envelope family
_FAMILIES = {
    "ObjectCreated": "created", "ObjectRemoved": "removed", "ObjectAccessed": "accessed",
    "ObjectTagging": "tagging", "ObjectAcl": "acl", "ObjectRestore": "restore",
    "ObjectTransition": "transition", "LifecycleExpiration": "lifecycle-expiration",
    "LifecycleTransition": "lifecycle-transition", "ObjectLifecycle": "lifecycle",
    "LifecycleDelMarkerExpiration": "lifecycle-expiration", "Replication": "replication",
    "ObjectSynced": "synced", "IntelligentTiering": "intelligent-tiering",
    "Scanner": "scanner", "Audit": "audit", "BucketCreated": "created",
    "BucketRemoved": "removed", "TestEvent": "test",
}  # fmt: skip
# actions whose kebab-case form would read badly
_ACTIONS = {
    "CompleteMultipartUpload": "multipart-complete",
    "NoOP": "no-op",
    "AbortMPU": "multipart-abort",
}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def operation(event_name: str) -> tuple[str, str]:
    """`s3:ObjectCreated:CompleteMultipartUpload` →
    ("storage.object", "created.multipart-complete")."""
    if event_name.startswith("relay:"):  # relay:MissedEvents → ("relay", "missed-events")
        return "relay", _kebab(event_name.removeprefix("relay:"))
    parts = event_name.removeprefix("s3:").split(":")
    family = parts[0]
    namespace = "storage.bucket" if family.startswith("Bucket") else "storage.object"
    name = _FAMILIES.get(family, _kebab(family))
    actions = [a for a in parts[1:] if a and a != "*"]
    if not actions:
        return namespace, name
    action = "-".join(_ACTIONS.get(a) or _kebab(a) for a in actions)
    return namespace, f"{name}.{action}"


def _kebab(text: str) -> str:
    return _CAMEL.sub("-", text).lower()


def envelope_fields(entry: LogEntry) -> dict[str, object]:
    event = entry.event
    o = origin(entry)
    namespace, op = operation(event.event_name)
    return {
        "id": event.event_id,
        "namespace": namespace,
        "operation": op,
        "timestamp": event.event_time,
        "source": o.eventSource or f"{event.dialect}:s3",
        "metadata": {
            "bucket": event.bucket,
            "key": event.key,
            "size": event.size,
            "eTag": event.etag,
            "versionId": event.version_id,
            "sequencer": event.sequencer,
            "principalId": event.principal,
            "eventVersion": o.eventVersion or None,
        },
    }
