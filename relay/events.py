"""What an object store sends, turned into one normalised Event per record.

Dialects are told apart by the body's shape, never by a header: senders disagree on
Content-Type (MinIO's batched audit webhook sends none at all).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

import msgspec


@dataclass(slots=True)
class Event:
    """One bucket event, normalised. `record` is the record exactly as the store sent it."""

    source: str  # the ingest path label ("default" for POST /), e.g. "rustfs-a"
    dialect: str  # minio | rustfs | ceph | aws | cloudevents | minio-audit | rustfs-audit
    event_name: str  # canonical, always with the "s3:" prefix, e.g. "s3:ObjectCreated:Put"
    bucket: str
    key: str  # decoded object key ("2024/cat 1.jpg", never "2024%2Fcat+1.jpg")
    record: bytes  # the record exactly as received (the bytes of one element of Records)
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    event_time: str | None = None  # as the sender wrote it (RFC 3339, sender's precision)
    principal: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    sender_event_id: str | None = None  # Ceph's record-level eventId
    metadata: dict[str, str] = field(default_factory=dict)  # user metadata, lower-case keys
    tags: dict[str, str] = field(default_factory=dict)
    # The objects a multi-object request acted on (MinIO's DeleteObjects audit entry lists
    # up to 1 000): one event, as the store logged one request, whose key filters match
    # when any of them matches; `key` is empty then.
    objects: tuple[str, ...] = ()
    event_id: str = ""  # hex of the dedup key's hash; filled by make_event_id()

    def dedup_parts(self) -> tuple[str, ...]:
        # The sequencer alone is not unique: MinIO and RustFS reuse the object's sequencer
        # for every GET/HEAD/tagging event on that version, so the request id is part of it.
        return (
            self.bucket,
            self.key,
            self.version_id or "",
            self.event_name,
            self.sequencer or "",
            self.request_id or self.sender_event_id or self.event_time or "",
        )


def make_event_id(event: Event) -> str:
    """The event id: stable across retries, restarts and replays of the same event."""
    digest = hashlib.blake2b(digest_size=16)
    for part in event.dedup_parts():
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


# MinIO names tagging changes as creations; AWS and RustFS have their own family for them.
# The AWS form is canonical so that one rule catches both senders.
# -- order of an object's events ------------------------------------------------------------------

ORDER_WIDTH = 64  # longer than any sequencer seen (MinIO/RustFS 16 hex digits, AWS ~18)
_HEX = frozenset("0123456789ABCDEF")
_CEPH_DIALECTS = ("ceph", "cloudevents")  # Ceph is the only sender of CloudEvents


def order_token(event: Event) -> str | None:
    """A string that sorts this event among the events of its object the way the sender's
    sequencer says they happened; None when the event has no usable sequencer (AWS tagging
    and ACL events, audit entries).

    - MinIO, RustFS, AWS: hex, "greater is later" once the shorter of two is right-padded
      with `0` (AWS's documented rule; MinIO and RustFS write `%X` of the object's mtime in
      ns). Padding every sequencer to one width lets a plain string comparison do it.
    - Ceph RGW: the hex dump of a little-endian `utime_t{u32 sec, u32 nsec}`
      (src/rgw/driver/rados/rgw_notify.cc), which does not sort as written; decoded to `sec`
      then `nsec` in fixed-width hex, it does.
    Equal tokens are the same moment: MinIO and RustFS give every GET, HEAD and tagging
    event of a version the version's own sequencer."""
    sequencer = (event.sequencer or "").strip().upper()
    if not sequencer or not _HEX.issuperset(sequencer):
        return None
    if event.dialect in _CEPH_DIALECTS and len(sequencer) == 16:
        raw = bytes.fromhex(sequencer)
        sec = int.from_bytes(raw[:4], "little")
        nsec = int.from_bytes(raw[4:], "little")
        return f"{sec:08X}{nsec:08X}"
    return sequencer.ljust(ORDER_WIDTH, "0")


def lane(event: Event) -> tuple[str, str]:
    """The object an event is about; its events keep their order per lane."""
    return (event.bucket, event.key)


# -- event names ---------------------------------------------------------------------------------

_ALIASES = {
    "s3:ObjectCreated:PutTagging": "s3:ObjectTagging:Put",
    "s3:ObjectCreated:DeleteTagging": "s3:ObjectTagging:Delete",
}


def canonical_event_name(name: str) -> str:
    """`ObjectCreated:Put` (Ceph, AWS) and `s3:ObjectCreated:Put` (MinIO, RustFS) are one name."""
    name = name.strip()
    if not name.startswith("s3:"):
        name = "s3:" + name
    return _ALIASES.get(name, name)


# ---------------------------------------------------------------------------------------------
# Parsing: one POST body → Parsed(events)
#
# Detection, by shape only (Content-Type is never consulted):
#   `ce-specversion` header      → CloudEvents binary mode: the body as below (records become
#                                  dialect "cloudevents"; a bare record is accepted), else the
#                                  ce-* headers
#   empty / whitespace body      → liveness ping (test_event)
#   {"Records": [...]}           → one event per element; dialect from each record's
#                                  eventSource (minio:/rustfs:/ceph:/aws:), else the shape:
#                                  EventName/Key wrapper → "minio", bare Records → "aws".
#                                  An element {"data": {...}} without eventName/s3 is a RustFS
#                                  TargetLog item; an element with `api` + `time` is an audit entry
#   {"Event": "s3:TestEvent"}    → test_event
#   {"specversion", "data"}      → CloudEvents structured mode
#   {"api", "time", ...}         → one audit entry (string time: minio-audit; int: rustfs-audit)
#   several JSON lines           → MinIO audit NDJSON batch, every line an audit entry
# Anything else, or any bad record, raises Unparseable for the whole body.


class Unparseable(Exception):
    """The body is not a notification we can read; `reason` says why (short, no secrets)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Parsed:
    events: list[Event]
    # AWS s3:TestEvent, or an empty-body liveness ping: answer 200, store nothing.
    test_event: bool = False


# Typed envelopes. Every field is optional and unknown fields are ignored, so one permissive
# shape reads MinIO, RustFS, Ceph and AWS records; `strict=False` turns Ceph's string sizes
# into ints. `msgspec.Raw` keeps a value's exact bytes without decoding it.


class _Identity(msgspec.Struct):
    principalId: str | None = None


class _RequestParameters(msgspec.Struct):
    sourceIPAddress: str | None = None
    # RustFS puts the request's headers here (lower-case names).
    user_agent: str | None = msgspec.field(name="user-agent", default=None)
    x_forwarded_for: str | None = msgspec.field(name="x-forwarded-for", default=None)
    x_real_ip: str | None = msgspec.field(name="x-real-ip", default=None)


class _ResponseElements(msgspec.Struct):
    request_id: str | None = msgspec.field(name="x-amz-request-id", default=None)


class _Bucket(msgspec.Struct):
    name: str | None = None


class _KeyVal(msgspec.Struct):
    key: str = ""
    val: str = ""


# Ceph encodes maps as [{"key": …, "val": …}]; accept a plain object too.
_Pairs = list[_KeyVal] | dict[str, str] | None


class _Object(msgspec.Struct):
    key: str | None = None
    size: int | None = None
    eTag: str | None = None
    versionId: str | None = None
    sequencer: str | None = None
    userMetadata: dict[str, str] | None = None  # MinIO, RustFS
    metadata: _Pairs = None  # Ceph
    tags: _Pairs = None  # Ceph


class _S3(msgspec.Struct):
    bucket: _Bucket | None = None
    object: _Object | None = None


class _Source(msgspec.Struct):
    host: str | None = None
    userAgent: str | None = None


class _ApiObject(msgspec.Struct):
    objectName: str = ""


class _Api(msgspec.Struct):
    name: str | None = None
    bucket: str | None = None
    object: str | None = None
    objects: list[_ApiObject] | None = None  # a multi-object request (DeleteObjects)


class _Record(msgspec.Struct):
    """One element of `Records`: an S3 event record, a RustFS TargetLog item or an audit entry."""

    # S3 event record
    eventName: str | None = None
    eventSource: str | None = None
    eventTime: str | None = None
    userIdentity: _Identity | None = None
    requestParameters: _RequestParameters | None = None
    responseElements: _ResponseElements | None = None
    s3: _S3 | None = None
    source: _Source | None = None
    eventId: str | None = None  # Ceph, record level
    # RustFS TargetLog item {"object_name","bucket_name","event_name","data":{record}}
    data: msgspec.Raw = msgspec.Raw()
    # audit entry (MinIO: string time; RustFS: integer Unix ms)
    api: _Api | None = None
    time: int | str | None = None
    requestID: str | None = None
    accessKey: str | None = None
    remotehost: str | None = None
    userAgent: str | None = None


class _Top(msgspec.Struct):
    """The top-level object, read only far enough to tell the dialect."""

    Records: list[msgspec.Raw] | None = None
    EventName: msgspec.Raw = msgspec.Raw()  # MinIO/RustFS wrapper
    Event: Any = None  # AWS "s3:TestEvent"
    specversion: msgspec.Raw = msgspec.Raw()  # CloudEvents structured mode
    data: msgspec.Raw = msgspec.Raw()
    api: msgspec.Raw = msgspec.Raw()  # bare audit entry
    time: msgspec.Raw = msgspec.Raw()
    eventName: msgspec.Raw = msgspec.Raw()  # bare S3 record (CloudEvents only)
    s3: msgspec.Raw = msgspec.Raw()


_NO_OBJECT = _Object()
_NO_API = _Api()
_TOP = msgspec.json.Decoder(_Top, strict=False)
_RECORD = msgspec.json.Decoder(_Record, strict=False)
_ANY_JSON = msgspec.json.Decoder()

_NULL = b"null"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CE_TYPE_PREFIX = "com.amazonaws."


def _present(raw: msgspec.Raw) -> bool:
    return len(raw) > 0 and bytes(raw) != _NULL


def _form_decode(key: str) -> str:
    if "%" in key or "+" in key:
        return unquote_plus(key)
    return key


def _pairs(value: list[_KeyVal] | dict[str, str] | None, lower: bool) -> dict[str, str]:
    if not value:
        return {}
    if isinstance(value, dict):
        return {k.lower(): v for k, v in value.items()} if lower else dict(value)
    if lower:
        return {kv.key.lower(): kv.val for kv in value if kv.key}
    return {kv.key: kv.val for kv in value if kv.key}


def _first_address(value: str | None) -> str | None:
    if value:
        first = value.split(",", 1)[0].strip()
        if first:
            return first
    return None


def _ms_to_rfc3339(ms: int) -> str:
    try:
        t = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise Unparseable("audit time out of range") from None
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{t.microsecond // 1000:03d}Z"
    )


def _validation_reason(where: str, exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if text.startswith("Expected `object`") and " - at " not in text:
        return f"{where}: not an object"
    return f"{where}: {text}"


def _decode_record(raw: msgspec.Raw | bytes, where: str) -> _Record:
    try:
        return _RECORD.decode(raw)
    except msgspec.ValidationError as exc:
        raise Unparseable(_validation_reason(where, exc)) from None
    except msgspec.DecodeError as exc:  # only for bytes that were not pre-validated
        raise Unparseable(f"{where}: not JSON: {exc}") from None
    except RecursionError:
        raise Unparseable(f"{where}: too deeply nested") from None


def _is_audit(rec: _Record) -> bool:
    return rec.api is not None and rec.time is not None and rec.eventName is None


def _audit_event(rec: _Record, raw: bytes, source: str) -> Event:
    api = rec.api if rec.api is not None else _NO_API
    if isinstance(rec.time, int):
        dialect = "rustfs-audit"
        event_time: str | None = _ms_to_rfc3339(rec.time)
    else:
        dialect = "minio-audit"
        event_time = rec.time or None
    event = Event(
        source=source,
        dialect=dialect,
        event_name=canonical_event_name("Audit:" + (api.name or "Unknown")),
        bucket=api.bucket or "",
        key=api.object or "",
        objects=tuple(o.objectName for o in api.objects or () if o.objectName),
        record=raw,
        event_time=event_time,
        principal=rec.accessKey or None,
        source_ip=rec.remotehost or None,
        user_agent=rec.userAgent or None,
        request_id=rec.requestID or None,
    )
    event.event_id = make_event_id(event)
    return event


def _s3_event(
    rec: _Record, raw: bytes, where: str, source: str, default: str, override: str | None
) -> Event:
    name = rec.eventName
    if not name or not name.strip():
        raise Unparseable(f"{where}: missing eventName")
    s3 = rec.s3
    bucket = s3.bucket.name if s3 is not None and s3.bucket is not None else None
    if not bucket:
        raise Unparseable(f"{where}: missing s3.bucket.name")
    obj = s3.object if s3 is not None and s3.object is not None else _NO_OBJECT

    origin = rec.eventSource or ""
    if origin.startswith("minio:"):
        dialect = "minio"
    elif origin.startswith("rustfs:"):
        dialect = "rustfs"
    elif origin.startswith("ceph:"):
        dialect = "ceph"
    elif origin.startswith("aws:"):
        dialect = "aws"
    else:  # unknown sender: the body's shape decides (wrapper → minio, bare Records → aws)
        dialect = default

    key = obj.key or ""
    if dialect != "ceph":  # Ceph sends the key raw; everyone else form-encodes it
        key = _form_decode(key)

    params = rec.requestParameters
    src = rec.source
    source_ip = params.sourceIPAddress if params is not None else None
    if not source_ip and dialect == "minio" and src is not None:
        source_ip = src.host  # MinIO: client IP, X-Forwarded-For aware
    if not source_ip and params is not None:  # RustFS: the request's headers
        source_ip = _first_address(params.x_forwarded_for) or _first_address(params.x_real_ip)
    user_agent = src.userAgent if src is not None else None
    if not user_agent and params is not None:
        user_agent = params.user_agent

    identity = rec.userIdentity
    response = rec.responseElements
    metadata = _pairs(obj.userMetadata, True)
    if obj.metadata:
        metadata.update(_pairs(obj.metadata, True))

    event = Event(
        source=source,
        dialect=override or dialect,
        event_name=canonical_event_name(name),
        bucket=bucket,
        key=key,
        record=raw,
        size=obj.size,
        etag=obj.eTag or None,
        version_id=obj.versionId or None,
        sequencer=obj.sequencer or None,
        event_time=rec.eventTime or None,
        principal=(identity.principalId or None) if identity is not None else None,
        source_ip=source_ip or None,
        user_agent=user_agent or None,
        request_id=(response.request_id or None) if response is not None else None,
        sender_event_id=rec.eventId or None,
        metadata=metadata,
        tags=_pairs(obj.tags, False),
    )
    event.event_id = make_event_id(event)
    return event


def _record_event(
    rec: _Record, raw: bytes, where: str, source: str, default: str, override: str | None
) -> Event:
    if rec.eventName is None and rec.s3 is None and rec.api is None and _present(rec.data):
        # RustFS TargetLog item: the record is the `data` object, byte for byte.
        raw = bytes(rec.data)
        rec = _decode_record(rec.data, where + ".data")
    if _is_audit(rec):
        return _audit_event(rec, raw, source)
    return _s3_event(rec, raw, where, source, default, override)


def _records(
    raws: list[msgspec.Raw], source: str, default: str, override: str | None
) -> list[Event]:
    if not raws:
        raise Unparseable("no Records")
    events: list[Event] = []
    for i, raw in enumerate(raws):
        where = f"record {i}"
        rec = _decode_record(raw, where)
        events.append(_record_event(rec, bytes(raw), where, source, default, override))
    return events


def _decode_top(body: bytes) -> _Top:
    try:
        return _TOP.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "`$.Records`" in text:
            raise Unparseable("Records is not a list") from None
        if text.startswith("Expected `object`") and " - at " not in text:
            raise Unparseable("not a JSON object") from None
        raise Unparseable(text) from None
    except RecursionError:
        raise Unparseable("too deeply nested") from None


def _from_top(top: _Top, body: bytes, source: str, ce: bool) -> Parsed:
    """A decoded top-level object → Parsed. `ce`: body of a CloudEvents binary-mode request."""
    override = "cloudevents" if ce else None
    if top.Records is not None:
        default = "minio" if _present(top.EventName) else "aws"
        return Parsed(_records(top.Records, source, default, override))
    if top.Event == "s3:TestEvent":
        return Parsed([], test_event=True)
    if _present(top.specversion):
        if not _present(top.data):
            raise Unparseable("cloudevents: no data")
        return _from_ce_data(top.data, source)
    if _present(top.api) and _present(top.time):
        rec = _decode_record(body, "audit entry")
        if _is_audit(rec):
            return Parsed([_audit_event(rec, body.strip(), source)])
    if ce and (_present(top.eventName) or _present(top.s3)):
        rec = _decode_record(body, "record 0")
        return Parsed([_record_event(rec, body.strip(), "record 0", source, "aws", override)])
    raise Unparseable("no Records")


def _from_ce_data(data: msgspec.Raw, source: str) -> Parsed:
    """CloudEvents structured mode: `data` is a record or {"Records": […]}."""
    raw = bytes(data)
    try:
        top = _decode_top(raw)
    except Unparseable as exc:
        raise Unparseable(f"cloudevents data: {exc.reason}") from None
    if top.Records is not None:
        return Parsed(_records(top.Records, source, "aws", "cloudevents"))
    if _present(top.eventName) or _present(top.s3):
        rec = _decode_record(raw, "data")
        return Parsed([_record_event(rec, raw, "data", source, "aws", "cloudevents")])
    raise Unparseable("cloudevents: data holds no record")


def _ndjson(body: bytes, source: str, first_error: str) -> Parsed:
    """MinIO's batched audit webhook: one audit entry per line."""
    events: list[Event] = []
    for n, line in enumerate(body.split(b"\n"), 1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = _RECORD.decode(line)
        except msgspec.ValidationError as exc:
            raise Unparseable(_validation_reason(f"line {n}", exc)) from None
        except msgspec.DecodeError as exc:
            if not events:
                raise Unparseable(first_error) from None
            raise Unparseable(f"line {n}: not JSON: {exc}") from None
        except RecursionError:
            raise Unparseable(f"line {n}: too deeply nested") from None
        if not _is_audit(rec):
            raise Unparseable(f"line {n}: not an audit entry")
        events.append(_audit_event(rec, line, source))
    return Parsed(events)


def _parse_json(body: bytes, source: str, ce: bool) -> Parsed:
    try:
        top = _decode_top(body)
    except msgspec.DecodeError as exc:
        reason = f"not JSON: {exc}"
        if b"\n" in body.strip():
            return _ndjson(body, source, reason)
        raise Unparseable(reason) from None
    return _from_top(top, body, source, ce)


def _ce_header_event(body: bytes, headers: Mapping[str, str], source: str) -> Event | None:
    """Ceph CloudEvents binary mode with no usable record in the body: the ce-* headers."""
    ce_type = (headers.get("ce-type") or "").strip()
    ce_source = headers.get("ce-source") or ""
    name = ce_type.removeprefix(_CE_TYPE_PREFIX)
    parts = ce_source.split(".", 2)  # <eventSource>.<awsRegion>.<bucket>; buckets may hold dots
    if not name or len(parts) < 3 or not parts[2]:
        return None
    record = b"{}"
    stripped = body.strip()
    if stripped.startswith(b"{"):
        try:
            _ANY_JSON.decode(stripped)
            record = stripped
        except (msgspec.DecodeError, RecursionError):
            pass
    event = Event(
        source=source,
        dialect="cloudevents",
        event_name=canonical_event_name(name),
        bucket=parts[2],
        key=headers.get("ce-subject") or "",
        record=record,
        event_time=headers.get("ce-time") or None,
        request_id=headers.get("ce-id") or None,
    )
    event.event_id = make_event_id(event)
    return event


def _parse_ce_binary(body: bytes, headers: Mapping[str, str], source: str) -> Parsed:
    reason = "no record"
    if body and not body.isspace():
        try:
            parsed = _parse_json(body, source, ce=True)
        except Unparseable as exc:
            reason = exc.reason
        else:
            if parsed.events or parsed.test_event:
                return parsed
    event = _ce_header_event(body, headers, source)
    if event is None:
        raise Unparseable(f"cloudevents: {reason}; no ce-type/ce-source to fall back on")
    return Parsed([event])


def parse_body(body: bytes, headers: Mapping[str, str], source: str) -> Parsed:
    """Raise Unparseable for anything that is not a notification we understand.

    `headers` needs only `.get()` with lower-case names (aiohttp's CIMultiDictProxy, or a
    dict with lower-case keys).
    """
    try:
        if not body.isascii():
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                raise Unparseable("invalid UTF-8") from None
        if headers is not None and headers.get("ce-specversion") is not None:
            return _parse_ce_binary(body, headers, source)
        if not body or body.isspace():
            return Parsed([], test_event=True)  # old MinIO liveness ping
        return _parse_json(body, source, ce=False)
    except Unparseable:
        raise
    except RecursionError:
        raise Unparseable("too deeply nested") from None
    except (msgspec.MsgspecError, ValueError, TypeError, KeyError, OverflowError) as exc:
        # Not expected; a body must never turn into a 500, it is quarantined instead.
        raise Unparseable(f"unreadable: {type(exc).__name__}") from None
