"""Every notification MinIO and RustFS send, read by relay.events.parse_body.

Neither store can be installed on the test machines, so their bodies are built here from the
senders' schemas (docs: reference/senders.md §1-§2 wire format, §4.5 audit entries, §6 event
names), with invented values: every event name each sender emits, versioned and unversioned,
keys in each sender's own encoding (MinIO: Go `url.QueryEscape`; RustFS: `form_urlencoded`,
which differ on `~` and `*`), removal events without size and ETag, user metadata, RustFS
request headers in `requestParameters`, the RustFS TargetLog wrappers, and the audit webhooks
of both. Hand-written samples of the rarer shapes are in tests/fixtures/{minio,rustfs,audit}.

For each body the test checks what the relay makes of it: the canonical event name, the
decoded key, and every field of the dedup key (so that a retry is recognised and two distinct
events are never merged).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_plus

import aiohttp
import pytest

from relay.events import Parsed, make_event_id, parse_body
from tests.support.relay_process import RelayProcess

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# --------------------------------------------------------------------------------------------
# Event names (reference/senders.md §6)

MINIO_EVENTS = (
    "s3:ObjectAccessed:Get", "s3:ObjectAccessed:GetRetention", "s3:ObjectAccessed:GetLegalHold",
    "s3:ObjectAccessed:Head", "s3:ObjectAccessed:Attributes",
    "s3:ObjectCreated:CompleteMultipartUpload", "s3:ObjectCreated:Copy", "s3:ObjectCreated:Post",
    "s3:ObjectCreated:Put", "s3:ObjectCreated:PutRetention", "s3:ObjectCreated:PutLegalHold",
    "s3:ObjectCreated:PutTagging", "s3:ObjectCreated:DeleteTagging",
    "s3:ObjectRemoved:Delete", "s3:ObjectRemoved:DeleteMarkerCreated",
    "s3:ObjectRemoved:DeleteAllVersions", "s3:ObjectRemoved:NoOP",
    "s3:BucketCreated:*", "s3:BucketRemoved:*",
    "s3:Replication:OperationFailedReplication", "s3:Replication:OperationCompletedReplication",
    "s3:Replication:OperationMissedThreshold", "s3:Replication:OperationReplicatedAfterThreshold",
    "s3:Replication:OperationNotTracked",
    "s3:ObjectRestore:Post", "s3:ObjectRestore:Completed",
    "s3:ObjectTransition:Failed", "s3:ObjectTransition:Complete",
    "s3:Scanner:ManyVersions", "s3:Scanner:LargeVersions", "s3:Scanner:BigPrefix",
    "s3:LifecycleDelMarkerExpiration:Delete",
)  # fmt: skip

# RustFS: MinIO's strings, but tagging under the AWS name, plus the AWS families it adds.
MINIO_ONLY = {"s3:BucketCreated:*", "s3:BucketRemoved:*", "s3:ObjectCreated:PutTagging",
              "s3:ObjectCreated:DeleteTagging"}  # fmt: skip
RUSTFS_ONLY = (
    "s3:ObjectTagging:Put", "s3:ObjectTagging:Delete", "s3:ObjectAcl:Put",
    "s3:LifecycleExpiration:Delete", "s3:LifecycleExpiration:DeleteMarkerCreated",
    "s3:LifecycleTransition", "s3:IntelligentTiering",
)  # fmt: skip
RUSTFS_EVENTS = tuple(name for name in MINIO_EVENTS if name not in MINIO_ONLY) + RUSTFS_ONLY

# MinIO names tagging changes as creations; the relay's canonical name is the AWS/RustFS one.
MINIO_CANONICAL = {"s3:ObjectCreated:PutTagging": "s3:ObjectTagging:Put",
                   "s3:ObjectCreated:DeleteTagging": "s3:ObjectTagging:Delete"}  # fmt: skip

# MinIO leaves size out on these (and whenever it is 0), and the ETag on every removal.
MINIO_NO_SIZE = {"s3:ObjectRemoved:Delete", "s3:ObjectRemoved:DeleteMarkerCreated",
                 "s3:ObjectRemoved:NoOP"}  # fmt: skip
REMOVAL_PREFIXES = (
    "s3:ObjectRemoved:",
    "s3:LifecycleExpiration:",
    "s3:LifecycleDelMarkerExpiration:",
)


def rustfs_event_version(name: str) -> str:
    """reference/senders.md §2 (crates/s3-types/src/event_name.rs event_schema_version)."""
    if name.startswith("s3:Replication:"):
        return "2.2"
    if name.startswith(("s3:ObjectTagging:", "s3:ObjectAcl:", "s3:LifecycleExpiration:",
                        "s3:LifecycleTransition", "s3:IntelligentTiering")) or name == (
        "s3:ObjectRestore:Completed"
    ):  # fmt: skip
        return "2.3"
    return "2.1"


# --------------------------------------------------------------------------------------------
# Keys, in each sender's encoding

# Decoded keys a relay could get wrong: `+` and `%2B`, literal `%`, `/` as `%2F`, unicode, `~*`.
KEYS = (
    "2024/cat 1.jpg",
    "reports/2025 Q2 (final)+v2.pdf",
    "100% off/sale=yes&x.txt",
    "ünïcødé/日本語 ファイル.txt",
    "a/b/c/d/e.txt",
    "~home/*star*.bin",
    "plain.txt",
)


def minio_encode(key: str) -> str:
    """Go's url.QueryEscape: everything but A-Z a-z 0-9 -_.~ escaped, space as `+`."""
    return quote_plus(key, safe="")


_FORM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._")


def rustfs_encode(key: str) -> str:
    """form_urlencoded::byte_serialize: A-Z a-z 0-9 *-._ kept, space as `+`, `~` escaped."""
    return "".join(
        chr(b) if b in _FORM_SAFE else "+" if b == 0x20 else f"%{b:02X}" for b in key.encode()
    )


def test_the_two_encodings_differ_where_the_senders_do() -> None:
    assert minio_encode("~home/*star*.bin") == "~home%2F%2Astar%2A.bin"
    assert rustfs_encode("~home/*star*.bin") == "%7Ehome%2F*star*.bin"
    assert minio_encode("a+b c") == rustfs_encode("a+b c") == "a%2Bb+c"


# --------------------------------------------------------------------------------------------
# What a case expects from the relay


@dataclass
class Case:
    id: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    # Expected, one entry per event in the body (several for audit NDJSON batches).
    expected: list[dict[str, object]] = field(default_factory=list)
    test_event: bool = False


def expected_event(**fields: object) -> dict[str, object]:
    return fields


# --------------------------------------------------------------------------------------------
# MinIO: the `event.Log` wrapper around one record (senders.md §1.2)

DEPLOYMENT = "0c2f6e1a-7b3d-4e5f-9a8b-1c2d3e4f5a6b"


def minio_case(n: int, name: str, versioned: bool) -> Case:
    bucket = "media" if not name.startswith("s3:Bucket") else f"bucket-{n}"
    key = "" if name.startswith("s3:Bucket") else KEYS[n % len(KEYS)]
    removal = name.startswith(REMOVAL_PREFIXES)
    request_id = f"18{n:03d}{int(versioned)}A2B7C9D0E1F"
    sequencer = f"184A2B7C{n:04X}{int(versioned):04X}"
    size = 0 if name == "s3:ObjectCreated:Post" else 1000 + n  # a zero size is left out
    obj: dict[str, object] = {"key": minio_encode(key)}
    if name not in MINIO_NO_SIZE and size and key:
        obj["size"] = size
    etag = f"{n:032x}"
    if not removal and key:
        obj["eTag"] = etag
        obj["contentType"] = "image/jpeg"
        obj["userMetadata"] = {"X-Amz-Meta-Owner": f"user-{n}", "content-type": "image/jpeg"}
    version = f"7f3e2c1a-9b8d-4c6e-a5f4-{n:012x}" if versioned else ""
    if version:
        obj["versionId"] = version
    obj["sequencer"] = sequencer
    record = {
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
        "eventTime": f"2025-06-02T08:{n % 60:02d}:42.731Z", "eventName": name,
        "userIdentity": {"principalId": "uploader-key"},
        "requestParameters": {"principalId": "uploader-key", "region": "", "sourceIPAddress": ""},
        "responseElements": {"x-amz-id-2": "4f1b9c0e7d2a6b3c5e8f", "x-amz-request-id": request_id,
                             "x-minio-deployment-id": DEPLOYMENT,
                             "x-minio-origin-endpoint": "http://192.0.2.10:9000"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "uploader-key"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": obj},
        "source": {"host": f"192.0.2.{n}", "port": "", "userAgent": "aws-cli/2.17.3"},
    }  # fmt: skip
    raw = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    body = f'{{"EventName":{json.dumps(name)},"Key":{json.dumps(f"{bucket}/{key}")},"Records":[{raw}]}}'
    return Case(
        f"minio-{name}-{'versioned' if versioned else 'unversioned'}",
        body.encode(),
        {"content-type": "application/json", "authorization": "Bearer t"},
        [expected_event(
            dialect="minio", event_name=MINIO_CANONICAL.get(name, name), bucket=bucket, key=key,
            size=obj.get("size"), etag=obj.get("eTag"), version_id=version or None,
            sequencer=sequencer, request_id=request_id, principal="uploader-key",
            source_ip=f"192.0.2.{n}", user_agent="aws-cli/2.17.3",
            metadata={"x-amz-meta-owner": f"user-{n}", "content-type": "image/jpeg"}
            if "userMetadata" in obj else {},
            record=raw.encode(),
        )],
    )  # fmt: skip


def minio_cases() -> Iterator[Case]:
    for n, name in enumerate(MINIO_EVENTS):
        yield minio_case(n, name, versioned=False)
        if not name.startswith("s3:Bucket"):
            yield minio_case(n, name, versioned=True)


# --------------------------------------------------------------------------------------------
# RustFS: the TargetLog wrapper (senders.md §1.3), direct or around a queued-payload item


def rustfs_case(n: int, name: str, versioned: bool, queued: bool) -> Case:
    bucket = "ledger"
    key = KEYS[n % len(KEYS)]
    removal = name.startswith(REMOVAL_PREFIXES)
    request_id = f"5a7c1e9f-2b4d-4f6a-8c0e-{n:08x}{int(versioned)}{int(queued)}00"
    sequencer = f"1852A7C3{n:04X}{int(versioned)}{int(queued)}00"
    version = f"01907d2e-55aa-7c3b-9d1e-{n:012x}" if versioned else ""
    obj: dict[str, object] = {"key": rustfs_encode(key)}
    if not removal:
        obj["size"] = 0 if name == "s3:ObjectCreated:Post" else 2000 + n  # 0 is kept
        obj["eTag"] = f"{n + 7:032x}"
    obj["contentType"] = "" if removal else "application/pdf"
    obj["userMetadata"] = {} if removal else {"x-amz-meta-dept": f"dept-{n}"}
    if version:
        obj["versionId"] = version
    obj["sequencer"] = sequencer
    headers = {
        "accept-encoding": "identity", "authorization": "***redacted***", "host": "s3.internal:9000",
        "principalId": "ledger-writer", "user-agent": "aws-sdk-go-v2/1.30.3 os/linux",
        "x-amz-content-sha256": "***redacted***", "x-amz-date": "20250714T164509Z",
        "x-forwarded-for": f"203.0.113.{n}, 10.1.2.3", "x-real-ip": "10.1.2.3",
    }  # fmt: skip
    record: dict[str, object] = {
        "eventVersion": rustfs_event_version(name), "eventSource": "rustfs:s3", "awsRegion": "",
        "eventTime": f"2025-07-14T16:{n % 60:02d}:09.512Z", "eventName": name,
        "userIdentity": {"principalId": "ledger-writer"},
        "requestParameters": headers,
        "responseElements": {"content-length": "0", "x-amz-id-2": "", "x-amz-request-id": request_id},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "ledger-writer"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": obj},
        "source": {"host": "s3.internal:9000", "port": "9000", "userAgent": ""},
    }  # fmt: skip
    if name == "s3:ObjectRestore:Completed":
        record["glacierEventData"] = {"restoreEventData": {
            "lifecycleRestorationExpiryTime": "2025-07-21T00:00:00.000Z",
            "lifecycleRestoreStorageClass": "STANDARD"}}  # fmt: skip
    raw = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    item = raw
    if queued:
        item = (f'{{"object_name":{json.dumps(obj["key"])},"bucket_name":"{bucket}",'
                f'"event_name":{json.dumps(name)},"data":{raw}}}')  # fmt: skip
    body = f'{{"EventName":{json.dumps(name)},"Key":{json.dumps(f"{bucket}/{key}")},"Records":[{item}]}}'
    variant = ("versioned" if versioned else "unversioned") + ("-queued" if queued else "")
    return Case(
        f"rustfs-{name}-{variant}",
        body.encode(),
        {"content-type": "application/json", "authorization": "Bearer t"},
        [expected_event(
            dialect="rustfs", event_name=name, bucket=bucket, key=key,
            size=obj.get("size"), etag=obj.get("eTag"), version_id=version or None,
            sequencer=sequencer, request_id=request_id, principal="ledger-writer",
            source_ip=f"203.0.113.{n}", user_agent="aws-sdk-go-v2/1.30.3 os/linux",
            metadata={} if removal else {"x-amz-meta-dept": f"dept-{n}"},
            record=raw.encode(),
        )],
    )  # fmt: skip


def rustfs_cases() -> Iterator[Case]:
    for n, name in enumerate(RUSTFS_EVENTS):
        for versioned in (False, True):
            for queued in (False, True):
                yield rustfs_case(n, name, versioned, queued)


# --------------------------------------------------------------------------------------------
# Audit webhooks (senders.md §4.5)

MINIO_AUDIT_APIS = (
    ("PutObject", "photos", "2024/cat 1.jpg"),
    ("GetObject", "photos", "2024/cat+1.jpg"),
    ("DeleteObject", "photos", "100% off/sale.txt"),
    ("CompleteMultipartUpload", "media", "ünï/日本.mp4"),
    ("ListObjectsV2", "photos", ""),
    ("CreateBucket", "new-bucket", ""),
    ("AdminServerInfo", "", ""),
)
TIMES = ("2025-06-02T08:15:42.733145812Z", "2025-06-02T08:15:43Z", "2025-06-02T08:15:44.5Z")


def minio_audit_entry(n: int, api: str, bucket: str, key: str) -> dict[str, object]:
    api_block: dict[str, object] = {"name": api, "status": "OK", "statusCode": 200, "rx": n, "tx": 0,
                                    "timeToResponse": f"{8400 + n}ns",
                                    "timeToResponseInNS": str(8400 + n)}  # fmt: skip
    if bucket:
        api_block["bucket"] = bucket
    if key:
        api_block["object"] = key
    return {
        "version": "1", "deploymentid": DEPLOYMENT, "time": TIMES[n % len(TIMES)], "event": "",
        "trigger": "incoming", "api": api_block, "remotehost": f"198.51.100.{n}",
        "requestID": f"184A2B7C9D0E{n:04X}", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.80",
        "requestPath": f"/{bucket}/{key}", "requestHost": "192.0.2.10:9000",
        "requestClaims": {"accessKey": "uploader-key"}, "requestQuery": {}, "requestHeader": {},
        "responseHeader": {"ETag": f"{n:032x}"}, "tags": {}, "accessKey": "uploader-key",
        "parentUser": "minioadmin",
    }  # fmt: skip


def minio_audit_expected(entry: dict[str, object]) -> dict[str, object]:
    api = entry["api"]
    assert isinstance(api, dict)
    return expected_event(
        dialect="minio-audit", event_name=f"s3:Audit:{api['name']}", bucket=api.get("bucket", ""),
        key=api.get("object", ""), event_time=entry["time"], request_id=entry["requestID"],
        principal="uploader-key", source_ip=entry["remotehost"],
        user_agent="MinIO (linux; amd64) minio-go/v7.0.80",
        record=json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode(),
    )  # fmt: skip


def minio_audit_cases() -> Iterator[Case]:
    entries = [minio_audit_entry(n, *api) for n, api in enumerate(MINIO_AUDIT_APIS)]
    lines = [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in entries]
    # batch_size=1: one entry and a newline, with Content-Type; the token raw, no "Bearer".
    for entry, line in zip(entries, lines):
        api = entry["api"]
        assert isinstance(api, dict)
        yield Case(f"minio-audit-{api['name']}", (line + "\n").encode(),
                   {"content-type": "application/json", "authorization": "t"},
                   [minio_audit_expected(entry)])  # fmt: skip
    # batch_size>1: NDJSON without Content-Type.
    yield Case("minio-audit-batch", ("\n".join(lines) + "\n").encode(),
               {"authorization": "t", "x-minio-webhook-payload-count": str(len(lines))},
               [minio_audit_expected(e) for e in entries])  # fmt: skip


RUSTFS_AUDIT_EVENTS = (
    ("s3:ObjectCreated:Put", "PutObject", "ledger", "invoices/0043 (final)+.json"),
    ("s3:ObjectAccessed:Get", "GetObject", "ledger", "invoices/0043 (final)+.json"),
    ("s3:ObjectRemoved:Delete", "DeleteObject", "ledger", "100% off/sale.txt"),
    (
        "s3:ObjectCreated:CompleteMultipartUpload",
        "CompleteMultipartUpload",
        "media",
        "ünï/日本.mp4",
    ),
    ("kms:Key:Created", "CreateKey", "", ""),
    ("kms:Service:Started", "KmsServiceStart", "", ""),
)


def rustfs_audit_entry(n: int, event: str, api: str, bucket: str, key: str) -> dict[str, object]:
    api_block: dict[str, object] = {"name": api, "status": "OK", "status_code": 200, "rx": n,
                                    "tx": 0, "time_to_response": f"{n}.25ms",
                                    "timeToResponseInNS": str(n * 1000000 + 250000)}  # fmt: skip
    if bucket:
        api_block["bucket"] = bucket
    if key:
        api_block["object"] = key
    return {
        "version": "1.0", "deploymentid": "9d3c1b7a-0e2f-4a6b-8c1d-5e7f9a0b2c4d",
        "time": 1752512345678 + n * 1001, "event": event, "type": "S3", "trigger": api,
        "api": api_block, "remotehost": f"203.0.113.{n}",
        "requestID": f"3c5e7a9b-1d3f-4b5d-9f1a-{n:012x}", "userAgent": "aws-cli/2.17.3",
        "requestPath": f"/{bucket}/{key}", "requestHost": "s3.internal:9000",
        "requestQuery": {"host": "s3.internal:9000", "user-agent": "aws-cli/2.17.3"},
        "tags": {"traceId": f"{n:032x}", "spanId": f"{n:016x}"}, "accessKey": "ledger-writer",
    }  # fmt: skip


def ms_to_rfc3339(ms: int) -> str:
    t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def rustfs_audit_cases() -> Iterator[Case]:
    for n, (event, api, bucket, key) in enumerate(RUSTFS_AUDIT_EVENTS):
        entry = rustfs_audit_entry(n, event, api, bucket, key)
        raw = json.dumps(entry, separators=(",", ":"), ensure_ascii=False)
        time = entry["time"]
        assert isinstance(time, int)
        expected = expected_event(
            dialect="rustfs-audit", event_name=f"s3:Audit:{api}", bucket=bucket, key=key,
            event_time=ms_to_rfc3339(time), request_id=entry["requestID"],
            principal="ledger-writer", source_ip=f"203.0.113.{n}", user_agent="aws-cli/2.17.3",
            record=raw.encode(),
        )  # fmt: skip
        wrapper_key = json.dumps(f"{bucket}/{api}")
        queued = (f'{{"object_name":"{api}","bucket_name":"{bucket}","event_name":'
                  f'{json.dumps(event)},"data":{raw}}}')  # fmt: skip
        for variant, body in (
            ("bare", raw),
            (
                "wrapped",
                f'{{"EventName":{json.dumps(event)},"Key":{wrapper_key},"Records":[{raw}]}}',
            ),
            (
                "queued",
                f'{{"EventName":{json.dumps(event)},"Key":{wrapper_key},"Records":[{queued}]}}',
            ),
        ):
            yield Case(f"rustfs-audit-{api}-{variant}", body.encode(),
                       {"content-type": "application/json", "authorization": "Bearer t"},
                       [expected])  # fmt: skip


# --------------------------------------------------------------------------------------------
# Hand-written samples (tests/fixtures), with what the relay must make of them


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


FILE_CASES: list[tuple[str, list[dict[str, object]]]] = [
    ("minio/delete-marker-versioned.json", [expected_event(
        dialect="minio", event_name="s3:ObjectRemoved:DeleteMarkerCreated", bucket="archive",
        key="reports/2025 Q2+final.pdf", size=None, etag=None,
        version_id="a3c5e7f9-1b2d-4f6a-8c0e-2d4f6a8c0e1a", sequencer="184A40F1E2D3C4B5",
        request_id="184A40F1E2D3C4B5", source_ip="192.0.2.44")]),
    ("minio/put-empty-object.json", [expected_event(
        dialect="minio", event_name="s3:ObjectCreated:Put", bucket="photos",
        key="albums/\u200bempty/.keep", size=None, etag="d41d8cd98f00b204e9800998ecf8427e",
        version_id=None, metadata={"content-type": "application/octet-stream"})]),
    ("minio/bucket-created.json", [expected_event(
        dialect="minio", event_name="s3:BucketCreated:*", bucket="new-bucket", key="",
        size=None, etag=None, request_id="184A4200CC00DD22", principal="minioadmin")]),
    ("minio/replication-failed.json", [expected_event(
        dialect="minio", event_name="s3:Replication:OperationFailedReplication", bucket="archive",
        key="reports/q2.pdf", size=903117, version_id="7f3e2c1a-9b8d-4c6e-a5f4-3b2a1c0d9e8f",
        sequencer="184A2F0011000000", request_id="184A4300EE00FF33",
        user_agent="Internal: [Replication]")]),
    ("rustfs/tagging-put.json", [expected_event(
        dialect="rustfs", event_name="s3:ObjectTagging:Put", bucket="ledger",
        key="invoices/2025/0043 (draft).json", size=512, version_id="01907d2e-77aa-7c3b-9d1e-2f4a6b8c0d1f",
        principal="ledger-tagger", source_ip="203.0.113.91", user_agent="rclone/v1.68.0",
        request_id="2c4e6a8c-0e2f-4a6b-8d0f-1a3c5e7a9c0e")]),
    ("rustfs/restore-completed.json", [expected_event(
        dialect="rustfs", event_name="s3:ObjectRestore:Completed", bucket="cold",
        key="tapes/1998/reel-07.tar", size=7340032, metadata={"x-amz-meta-reel": "07"})]),
    ("rustfs/lifecycle-expiration-delete.json", [expected_event(
        dialect="rustfs", event_name="s3:LifecycleExpiration:Delete", bucket="ledger",
        key="tmp/upload~1*.part", size=None, etag=None,
        version_id="01907d2e-99aa-7c3b-9d1e-2f4a6b8c0d20", principal="rustfs-scanner")]),
    ("rustfs/targetlog-delete-marker.json", [expected_event(
        dialect="rustfs", event_name="s3:ObjectRemoved:DeleteMarkerCreated", bucket="ledger",
        key="invoices/0042.json", size=None, etag=None,
        version_id="01907d2e-aaaa-7c3b-9d1e-2f4a6b8c0d21", source_ip="203.0.113.78",
        request_id="5f7b9d1f-3b5d-4e6f-9a1b-4d6f8a0c2e4b")]),
    ("audit/minio-batch-mixed.ndjson", [
        expected_event(dialect="minio-audit", event_name="s3:Audit:DeleteObjects", bucket="photos",
                       key="", event_time="2025-06-02T09:00:00Z", request_id="184A5000000000A1"),
        expected_event(dialect="minio-audit", event_name="s3:Audit:HeadObject", bucket="photos",
                       key="2024/ünï code.jpg", event_time="2025-06-02T09:00:00.5Z"),
        expected_event(dialect="minio-audit", event_name="s3:Audit:PutObjectTagging",
                       bucket="archive", key="reports/q2.pdf", principal="finance-bot",
                       event_time="2025-06-02T09:00:01.123456789Z"),
        expected_event(dialect="minio-audit", event_name="s3:Audit:CreateBucket",
                       bucket="new-bucket", key="", principal="minioadmin"),
    ]),
    ("audit/rustfs-kms.json", [expected_event(
        dialect="rustfs-audit", event_name="s3:Audit:CreateKey", bucket="", key="",
        event_time="2025-07-14T17:10:00.001Z", principal="rustfsadmin", source_ip="10.1.2.3")]),
    ("audit/rustfs-targetlog-entity.json", [expected_event(
        dialect="rustfs-audit", event_name="s3:Audit:DeleteObject", bucket="ledger",
        key="invoices/0041 old+.json", event_time="2025-07-14T17:11:40.250Z",
        request_id="7b9d1f3b-5d7f-4a9b-8d1f-6f8a0c2e4a6c")]),
]  # fmt: skip


def file_cases() -> Iterator[Case]:
    for name, expected in FILE_CASES:
        body = load(name)
        headers = {"authorization": "Bearer t"}
        if not name.endswith(".ndjson"):
            headers["content-type"] = "application/json"
        yield Case(f"file-{name}", body, headers, expected)
    yield Case("file-aws/test-event.json", load("aws/test-event.json"), {}, [], test_event=True)
    yield Case("minio-empty-ping", b"", {"content-type": "application/json"}, [], test_event=True)


# --------------------------------------------------------------------------------------------

SENDERS: dict[str, Callable[[], Iterator[Case]]] = {
    "minio": minio_cases,
    "rustfs": rustfs_cases,
    "minio-audit": minio_audit_cases,
    "rustfs-audit": rustfs_audit_cases,
    "files": file_cases,
}
ALL_CASES = [case for make in SENDERS.values() for case in make()]


def parse(case: Case) -> Parsed:
    return parse_body(case.body, case.headers, "fixtures")


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_the_relay_reads_what_the_sender_sends(case: Case) -> None:
    parsed = parse(case)
    assert parsed.test_event is case.test_event
    assert len(parsed.events) == len(case.expected)
    for event, want in zip(parsed.events, case.expected):
        assert event.source == "fixtures"
        got = {name: getattr(event, name) for name in want}
        assert got == want
        assert event.event_id == make_event_id(event)
        assert event.event_name.startswith("s3:")


GENERATED = [c for c in ALL_CASES if not c.id.startswith("file-") and c.expected]


@pytest.mark.parametrize("case", GENERATED, ids=lambda c: c.id)
def test_the_dedup_key_is_made_of_the_event_s_own_fields(case: Case) -> None:
    for event, want in zip(parse(case).events, case.expected):
        # bucket, decoded key, version, canonical name, sequencer, the sender's request id
        assert event.dedup_parts() == (
            want["bucket"], want["key"], want.get("version_id") or "", want["event_name"],
            want.get("sequencer") or "", want["request_id"],
        )  # fmt: skip
        # a retry of the same body is the same event
        assert [e.event_id for e in parse(case).events] == [e.event_id for e in parse(case).events]


def test_distinct_events_never_share_an_event_id() -> None:
    # The same record reached in several ways (a RustFS record direct or in a queued item, an
    # audit entry alone or in a batch) is one event; any two different records are two.
    by_id: dict[str, bytes] = {}
    by_record: dict[bytes, str] = {}
    for case in ALL_CASES:
        for event in parse(case).events:
            assert by_id.setdefault(event.event_id, event.record) == event.record, case.id
            assert by_record.setdefault(event.record, event.event_id) == event.event_id, case.id
    assert len(by_id) > 200


def test_minio_reuses_the_sequencer_for_gets_so_the_request_id_tells_them_apart() -> None:
    first = minio_case(3, "s3:ObjectAccessed:Get", versioned=True)
    second = minio_case(3, "s3:ObjectAccessed:Get", versioned=True)
    second.body = second.body.replace(b"18003" + b"1A2B7C9D0E1F", b"18003" + b"1FFFFFFFFFFF")
    a, b = parse(first).events[0], parse(second).events[0]
    assert a.sequencer == b.sequencer and a.request_id != b.request_id
    assert a.event_id != b.event_id


def test_case_counts() -> None:
    """Bodies per sender (generated and hand-written), for the README's "Tested against"."""
    bodies: dict[str, int] = {}
    events: dict[str, int] = {}
    for case in ALL_CASES:
        sender = str(case.expected[0]["dialect"]) if case.expected else "ping/test event"
        bodies[sender] = bodies.get(sender, 0) + 1
        events[sender] = events.get(sender, 0) + len(case.expected)
    print("\nsender fixtures: " + ", ".join(f"{k} {bodies[k]} bodies/{events[k]} events"
                                            for k in sorted(bodies)))  # fmt: skip
    assert sum(1 for _ in minio_cases()) == 2 * len(MINIO_EVENTS) - 2  # bucket events: no version
    assert sum(1 for _ in rustfs_cases()) == 4 * len(RUSTFS_EVENTS)
    assert len(MINIO_EVENTS) == 32 and len(RUSTFS_EVENTS) == 35


# --------------------------------------------------------------------------------------------
# MinIO's audit webhook through the real ingest: the token raw in Authorization, no
# Content-Type on batches.


@pytest.mark.e2e
async def test_minio_audit_batch_with_a_raw_token_is_accepted(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = await relay_factory({"RELAY_AUTH_TOKENS": "raw-audit-token"}).start()
    (batch,) = [c for c in minio_audit_cases() if c.id == "minio-audit-batch"]
    headers = {"x-minio-webhook-payload-count": str(len(batch.expected)),
               "x-minio-version": "RELEASE.2025-05-24T17-08-30Z", "x-minio-deployment-id": DEPLOYMENT,
               "User-Agent": "MinIO (linux; amd64) madmin-go/3.0.70"}  # fmt: skip
    async with aiohttp.ClientSession() as session:

        async def post(token: str) -> tuple[int, object]:
            async with session.post(
                relay.url + "/minio-audit", data=batch.body,
                headers={**headers, "Authorization": token}, skip_auto_headers=["Content-Type"],
            ) as response:  # fmt: skip
                assert "Content-Type" not in response.request_info.headers
                return response.status, await response.json(content_type=None)

        assert await post("wrong-token") == (401, {"error": "missing or wrong token"})
        status, answer = await post("raw-audit-token")
        assert (status, answer) == (200, {"accepted": len(batch.expected), "duplicates": 0})
        assert await post("raw-audit-token") == (
            200,
            {"accepted": 0, "duplicates": len(batch.expected)},
        )
