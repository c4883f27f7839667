"""Dialect parsing: what each store sends → normalised Events (relay/events.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from relay.events import Event, Parsed, Unparseable, make_event_id, parse_body

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse(body: bytes, headers=None, source: str = "default") -> Parsed:
    return parse_body(body, {} if headers is None else headers, source)


def one(body: bytes, headers=None, source: str = "default") -> Event:
    parsed = parse(body, headers, source)
    assert parsed.test_event is False
    assert len(parsed.events) == 1
    event = parsed.events[0]
    assert event.event_id == make_event_id(event)
    assert re.fullmatch(r"[0-9a-f]{32}", event.event_id)
    return event


def wrapped_record(body: bytes) -> bytes:
    """The single record of a `{"EventName","Key","Records":[record]}` or `{"Records":[record]}`."""
    start = body.index(b'"Records":[') + len(b'"Records":[')
    assert body.endswith(b"]}")
    return body[start:-2]


def ceph_http() -> tuple[dict[str, str], bytes]:
    """The captured RGW request: request line, headers, blank line, body (Content-Length bytes)."""
    head, _, rest = load("ceph/ceph-rgw-16.2.15-objectcreated-put.http").partition(b"\n\n")
    lines = head.decode().splitlines()
    assert lines[0] == "POST /s3-events HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, rest[: int(headers["content-length"])]


def ceph_jsonl() -> list[tuple[dict[str, str], bytes]]:
    captured = []
    for line in load("ceph/ceph-rgw-16.2.15-put-delete.jsonl").splitlines():
        request = json.loads(line)
        headers = {name.lower(): value for name, value in request["headers"]}
        body = request["body"].encode()
        assert len(body) == int(headers["content-length"])
        captured.append((headers, body))
    return captured


# ---------------------------------------------------------------------------------------------
# MinIO


def test_minio_put_decodes_key_and_keeps_record_bytes():
    body = load("minio/put.json")
    event = one(body, {"content-type": "application/json"}, source="minio-a")
    assert event.source == "minio-a"
    assert event.dialect == "minio"
    assert event.event_name == "s3:ObjectCreated:Put"
    assert event.bucket == "photos"
    assert event.key == "2024/cat 1.jpg"
    assert event.record == wrapped_record(body)
    assert event.record.startswith(b'{"eventVersion":"2.0"') and event.record.endswith(b'"}}')
    assert event.size == 48213
    assert event.etag == "0f343b0931126a20f133d67c2b018a3b"
    assert event.version_id is None
    assert event.sequencer == "184A2B7C9D0E1F23"
    assert event.event_time == "2025-06-02T08:15:42.731Z"
    assert event.principal == "uploader-key"
    assert event.source_ip == "192.0.2.44"
    assert event.user_agent == "MinIO (linux; amd64) minio-go/v7.0.80"
    assert event.request_id == "184A2B7C9D0E1F23"
    assert event.sender_event_id is None
    assert event.metadata == {"x-amz-meta-camera": "fuji-x100", "content-type": "image/jpeg"}
    assert event.tags == {}


def test_minio_removal_has_no_size_or_etag():
    event = one(load("minio/delete.json"))
    assert event.event_name == "s3:ObjectRemoved:Delete"
    assert event.key == "2024/cat 1.jpg"
    assert (event.size, event.etag, event.version_id) == (None, None, None)
    assert event.metadata == {}
    assert event.sequencer == "184A2B8E0F4C5D6E"


def test_minio_versioned_object():
    event = one(load("minio/put-versioned.json"))
    assert event.bucket == "archive"
    assert event.key == "reports/q2.pdf"
    assert event.version_id == "7f3e2c1a-9b8d-4c6e-a5f4-3b2a1c0d9e8f"
    assert event.size == 903117


def test_minio_put_tagging_is_the_aws_tagging_name():
    event = one(load("minio/put-tagging.json"))
    assert event.event_name == "s3:ObjectTagging:Put"
    assert event.dialect == "minio"


def test_minio_source_host_is_the_fallback_client_ip():
    body = load("minio/put.json").replace(
        b'"sourceIPAddress":"192.0.2.44"', b'"sourceIPAddress":""'
    )
    body = body.replace(b'"host":"192.0.2.44"', b'"host":"192.0.2.99"')
    assert one(body).source_ip == "192.0.2.99"


def test_wrapper_with_unknown_event_source_reads_as_minio():
    body = load("minio/put.json").replace(b'"eventSource":"minio:s3"', b'"eventSource":"acme:s3"')
    event = one(body)
    assert event.dialect == "minio"
    assert event.key == "2024/cat 1.jpg"


def test_event_source_decides_the_dialect_before_the_body_shape():
    minio = wrapped_record(load("minio/put.json"))
    aws_in_wrapper = load("minio/put.json").replace(b'"minio:s3"', b'"aws:s3"')
    assert one(b'{"Records":[' + minio + b"]}").dialect == "minio"  # MinIO's Redis/SQL shape
    assert one(aws_in_wrapper).dialect == "aws"
    ceph = wrapped_record(ceph_http()[1])
    event = one(b'{"EventName":"x","Key":"y","Records":[' + ceph + b"]}")
    assert (event.dialect, event.key) == ("ceph", "photos/cat.jpg")
    unknown = _records_body(_record(eventSource="acme:s3"))
    assert one(unknown).dialect == "aws"


def test_records_array_whitespace_is_not_part_of_the_record():
    record = wrapped_record(load("minio/put.json"))
    body = b'{ "Records" : [ \n ' + record + b" ,\t" + record + b"\n] }"
    first, second = parse(body).events
    assert first.record == second.record == record
    assert first.event_id == second.event_id  # the same event twice in one body


def test_non_ascii_keys_and_metadata():
    body = load("minio/put.json").replace(b"2024%2Fcat+1.jpg", b"%C3%A9t%C3%A9%2Fk%C3%B6ln+1.jpg")
    body = body.replace(b'"fuji-x100"', '"Fujifilm™"'.encode())
    event = one(body)
    assert event.key == "été/köln 1.jpg"
    assert event.metadata["x-amz-meta-camera"] == "Fujifilm™"
    assert event.record == wrapped_record(body)


# ---------------------------------------------------------------------------------------------
# Event ids


def test_same_body_twice_gives_the_same_event_id():
    body = load("minio/put.json")
    first, second = one(body), one(body)
    assert first.event_id == second.event_id
    assert first == second


def test_gets_sharing_a_sequencer_get_different_event_ids():
    a = one(load("minio/get-1.json"))
    b = one(load("minio/get-2.json"))
    assert a.event_name == b.event_name == "s3:ObjectAccessed:Get"
    assert (a.bucket, a.key, a.version_id) == (b.bucket, b.key, b.version_id)
    assert a.sequencer == b.sequencer == "184A2F0011000000"
    assert a.request_id == "184A30AA00000001"
    assert b.request_id == "184A30BB00000002"
    assert a.event_id != b.event_id


def test_captured_ceph_retry_keeps_its_event_id():
    _, http_body = ceph_http()
    (_, jsonl_body), _ = ceph_jsonl()
    assert http_body == jsonl_body  # the same PUT, captured twice
    assert one(http_body).event_id == one(jsonl_body, source="other").event_id


# ---------------------------------------------------------------------------------------------
# RustFS


def test_rustfs_plain_wrapper_with_request_headers():
    body = load("rustfs/put.json")
    event = one(body)
    assert event.dialect == "rustfs"
    assert event.event_name == "s3:ObjectCreated:Put"
    assert event.bucket == "ledger"
    assert event.key == "reports/2025 Q2 (final)+v2.pdf"
    assert event.record == wrapped_record(body)
    # requestParameters carries the request's headers; source.host is the Host header, not a client
    assert event.source_ip == "203.0.113.50"
    assert event.user_agent == "aws-sdk-go-v2/1.30.3 os/linux"
    assert event.request_id == "5a7c1e9f-2b4d-4f6a-8c0e-9d1b3a5c7e9f"
    assert event.principal == "ledger-writer"
    assert event.size == 20480
    assert event.version_id is None
    assert event.metadata == {"x-amz-meta-dept": "Accounts"}


def test_rustfs_targetlog_data_wrapper_is_unwrapped():
    body = load("rustfs/put-targetlog.json")
    event = one(body)
    data_start = body.index(b'"data":') + len(b'"data":')
    assert body.endswith(b"}]}")
    assert event.record == body[data_start:-3]  # minus the item's "}" and "]}"
    assert event.record.startswith(b'{"eventVersion":"2.1"')
    assert msgspec.json.decode(event.record)["eventSource"] == "rustfs:s3"
    assert event.dialect == "rustfs"
    assert event.key == "invoices/0042.json"
    assert event.size == 0  # RustFS sends 0, which is not "absent"
    assert event.version_id == "01907d2e-55aa-7c3b-9d1e-2f4a6b8c0d1e"
    assert event.source_ip == "203.0.113.77"  # x-real-ip
    assert event.user_agent == "rclone/v1.68.0"
    assert event.metadata == {}


def test_rustfs_removal_takes_user_agent_from_request_headers():
    event = one(load("rustfs/delete.json"))
    assert event.event_name == "s3:ObjectRemoved:Delete"
    assert event.key == "invoices/0041.json"
    assert (event.size, event.etag, event.version_id) == (None, None, None)
    assert event.user_agent == "rclone/v1.68.0"  # source.userAgent is ""
    assert event.source_ip is None  # no forwarding headers; Host is not a client address


# ---------------------------------------------------------------------------------------------
# Ceph


def test_captured_ceph_put():
    headers, body = ceph_http()
    event = one(body, headers)
    assert event.dialect == "ceph"
    assert event.event_name == "s3:ObjectCreated:Put"
    assert event.bucket == "src"
    assert event.key == "photos/cat.jpg"
    assert event.record == wrapped_record(body)
    assert b'"opaqueData":"relay-test-opaque"' in event.record
    assert event.size == 40
    assert event.etag == "7a202d1233ddda000efda8f196043be9"
    assert event.version_id is None  # "" when unversioned
    assert event.sequencer == "0D1B016B7FE68510"
    assert event.event_time == "2026-11-21T04:16:13.275630Z"
    assert event.principal == "relay"
    assert event.source_ip is None  # RGW always sends ""
    assert event.user_agent is None
    assert event.request_id == "8638bf14-29d4-41ea-83ef-07d8499ac64f.4118.13237349113955780248"
    assert event.sender_event_id == "1795234573.277210.7a202d1233ddda000efda8f196043be9"
    assert event.metadata == {"x-amz-meta-owner": "alice"}
    assert event.tags == {}


def test_captured_ceph_put_then_delete():
    (put_headers, put_body), (del_headers, del_body) = ceph_jsonl()
    put, delete = one(put_body, put_headers), one(del_body, del_headers)
    assert put.event_name == "s3:ObjectCreated:Put"
    assert delete.event_name == "s3:ObjectRemoved:Delete"
    assert put.key == delete.key == "photos/cat.jpg"
    assert delete.record == wrapped_record(del_body)
    assert delete.sender_event_id == "1795234573.282576.7a202d1233ddda000efda8f196043be9"
    assert delete.metadata == {
        "x-amz-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "x-amz-date": "20261121T041613Z",
        "x-amz-meta-owner": "alice",
    }
    assert put.event_id != delete.event_id


def test_ceph_string_size_raw_key_and_tags():
    body = load("ceph/string-size.json")
    event = one(body)
    assert event.dialect == "ceph"
    assert event.event_name == "s3:ObjectCreated:CompleteMultipartUpload"
    assert event.bucket == "nightly.backups"
    assert event.key == "db/a+b 2025%.tar"  # raw: neither "+" nor "%" is decoded
    assert event.size == 1024
    assert event.version_id == "kZrW3yVqX9nM2pL7tQ4sH1dF6gJ8bC0e"
    assert event.metadata == {"x-amz-meta-retention": "30d", "x-amz-meta-host": "db-7"}
    assert event.tags == {"tier": "cold", "Owner": "dba"}
    assert event.sender_event_id == "1759269917.000431.8f14e45fceea167a5a36dedd4bea2543-3"
    assert event.record == wrapped_record(body)


# ---------------------------------------------------------------------------------------------
# AWS


def test_aws_multi_record_body():
    body = load("aws/multi-record.json")
    parsed = parse(body)
    assert parsed.test_event is False
    first, second = parsed.events
    split = body.index(b', {"eventVersion"')
    assert first.record == body[len(b'{"Records":[') : split]
    assert second.record == body[split + 2 : -2]
    assert first.dialect == second.dialect == "aws"
    assert first.event_name == "s3:ObjectCreated:Put"
    assert first.key == "flowers/red flower.jpg"
    assert first.size == 2048
    assert first.source_ip == "198.51.100.5"
    assert first.principal == "AWS:AIDA4GARDENUPLOAD01"
    assert first.request_id == "7E21A94B03C6D58F"
    assert second.event_name == "s3:ObjectRemoved:DeleteMarkerCreated"
    assert second.key == "notes/x=y z.txt"
    assert second.size is None
    assert first.event_id != second.event_id


def test_aws_test_event_is_acknowledged_without_events():
    assert parse(load("aws/test-event.json")) == Parsed([], test_event=True)


@pytest.mark.parametrize("body", [b"", b" ", b"\r\n", b" \t\n \n"])
def test_empty_body_is_a_liveness_ping(body):
    assert parse(body) == Parsed([], test_event=True)


# ---------------------------------------------------------------------------------------------
# CloudEvents


def ce_headers(**extra: str) -> CIMultiDict[str]:
    # Mixed-case names as they arrive on the wire; lookups in the parser are lower-case.
    headers = CIMultiDict(
        {
            "Content-Type": "application/json",
            "Ce-SpecVersion": "1.0",
            "CE-Type": "com.amazonaws.ObjectCreated:Put",
            "ce-Time": "2025-10-01T06:07:08.090807Z",
            "CE-ID": "d4e5f6a7-1111-4222-8333-944455556666.7000.2.1016-default-default",
            "CE-Source": "ceph:s3.zg1.my.dotted.bucket",
            "CE-Subject": "raw key+1.txt",
        }
    )
    headers.update(extra)
    return headers


def test_cloudevents_binary_reads_the_records_body():
    _, body = ceph_http()
    event = one(body, ce_headers())
    assert event.dialect == "cloudevents"
    assert event.event_name == "s3:ObjectCreated:Put"
    assert event.bucket == "src"  # from the body, which wins over the headers
    assert event.key == "photos/cat.jpg"
    assert event.record == wrapped_record(body)
    assert event.sender_event_id == "1795234573.277210.7a202d1233ddda000efda8f196043be9"
    assert event.request_id == "8638bf14-29d4-41ea-83ef-07d8499ac64f.4118.13237349113955780248"


def test_cloudevents_binary_with_a_bare_record_body():
    _, records_body = ceph_http()
    record = wrapped_record(records_body)
    event = one(record + b"\n", ce_headers())
    assert event.dialect == "cloudevents"
    assert event.record == record
    assert event.key == "photos/cat.jpg"
    assert event.metadata == {"x-amz-meta-owner": "alice"}


@pytest.mark.parametrize(
    ("body", "record"),
    [
        (b"", b"{}"),
        (b"not json", b"{}"),
        (b'["a"]', b"{}"),
        (b'{"note":"no record here"}', b'{"note":"no record here"}'),
        (b'{"Records":[]}\n', b'{"Records":[]}'),
    ],
)
def test_cloudevents_binary_falls_back_to_headers(body, record):
    event = one(body, ce_headers())
    assert event.dialect == "cloudevents"
    assert event.event_name == "s3:ObjectCreated:Put"
    assert event.bucket == "my.dotted.bucket"  # ce-source split on the first two dots only
    assert event.key == "raw key+1.txt"
    assert event.request_id == "d4e5f6a7-1111-4222-8333-944455556666.7000.2.1016-default-default"
    assert event.event_time == "2025-10-01T06:07:08.090807Z"
    assert event.record == record


def test_cloudevents_binary_header_lookup_with_plain_lowercase_dict():
    headers = {k.lower(): v for k, v in ce_headers().items()}
    assert one(b"", headers).bucket == "my.dotted.bucket"


@pytest.mark.parametrize(
    "drop_or_change",
    [
        {"ce-type": ""},
        {"ce-source": "ceph:s3.zg1"},
        {"ce-source": "ceph:s3.zg1."},
        {"ce-type": "com.amazonaws."},
    ],
)
def test_cloudevents_binary_without_record_or_usable_headers_is_unparseable(drop_or_change):
    with pytest.raises(Unparseable) as caught:
        parse(b"", ce_headers(**drop_or_change))
    assert caught.value.reason.startswith("cloudevents:")


def test_cloudevents_structured_with_a_record():
    body = load("cloudevents/structured.json")
    event = one(body)
    start = body.index(b'"data":') + len(b'"data":')
    assert event.record == body[start:-1]
    assert event.dialect == "cloudevents"
    assert event.event_name == "s3:ObjectCreated:Copy"
    assert event.bucket == "nightly.backups"
    assert event.key == "db/copy of a+b.tar"  # eventSource ceph:s3 → raw
    assert event.version_id is None
    assert event.size == 1024


def test_cloudevents_structured_with_records():
    _, ceph = ceph_http()
    body = b'{"specversion":"1.0","type":"com.amazonaws.ObjectCreated:Put","id":"x","data":'
    body += ceph + b"}"
    event = one(body)
    assert event.dialect == "cloudevents"
    assert event.record == wrapped_record(ceph)
    assert event.key == "photos/cat.jpg"


# ---------------------------------------------------------------------------------------------
# Audit


def test_minio_audit_single_entry():
    body = load("audit/minio-single.json")
    assert body.endswith(b"}\n")
    event = one(body)  # no Content-Type needed
    assert event.dialect == "minio-audit"
    assert event.event_name == "s3:Audit:PutObject"
    assert event.bucket == "photos"
    assert event.key == "2024/cat 1.jpg"
    assert event.request_id == "184A2B7C9D0E1F23"
    assert event.principal == "uploader-key"
    assert event.source_ip == "192.0.2.44"
    assert event.user_agent == "MinIO (linux; amd64) minio-go/v7.0.80"
    assert event.event_time == "2025-06-02T08:15:42.733145812Z"
    assert event.record == body[:-1]
    assert event.size is None and event.sequencer is None


def test_minio_audit_ndjson_batch():
    body = load("audit/minio-batch.ndjson")
    lines = body.splitlines()
    parsed = parse(body)
    assert parsed.test_event is False
    assert [e.record for e in parsed.events] == lines
    assert [e.dialect for e in parsed.events] == ["minio-audit"] * 3
    assert [e.event_name for e in parsed.events] == [
        "s3:Audit:GetObject",
        "s3:Audit:ListObjectsV2",
        "s3:Audit:Unknown",
    ]
    assert [(e.bucket, e.key) for e in parsed.events] == [
        ("photos", "2024/cat 1.jpg"),
        ("photos", ""),
        ("", ""),
    ]
    assert parsed.events[2].principal == "minioadmin"
    assert len({e.event_id for e in parsed.events}) == 3


def test_minio_audit_ndjson_with_a_non_audit_line_is_rejected_whole():
    lines = load("audit/minio-batch.ndjson").splitlines()
    body = b"\n".join([lines[0], load("minio/put.json"), lines[1]])
    with pytest.raises(Unparseable) as caught:
        parse(body)
    assert caught.value.reason == "line 2: not an audit entry"


def test_rustfs_audit_in_targetlog_wrapper_has_integer_ms_time():
    body = load("audit/rustfs-wrapped.json")
    event = one(body)
    assert event.dialect == "rustfs-audit"
    assert event.event_name == "s3:Audit:PutObject"
    assert event.event_time == "2025-07-14T16:59:05.678Z"
    assert (event.bucket, event.key) == ("ledger", "invoices/0043.json")
    assert event.request_id == "3c5e7a9b-1d3f-4b5d-9f1a-3b5d7f9b1d3f"
    assert event.principal == "ledger-writer"
    assert event.source_ip == "203.0.113.50"
    assert event.user_agent == "aws-cli/2.17.3"
    assert event.record == wrapped_record(body)


def test_rustfs_audit_bare_entry():
    body = load("audit/rustfs-bare.json")
    event = one(body)
    assert event.dialect == "rustfs-audit"
    assert event.event_name == "s3:Audit:DeleteObject"
    assert event.event_time == "2025-03-04T10:11:12.345Z"
    assert event.record == body


# ---------------------------------------------------------------------------------------------
# Rejections: Unparseable and nothing else


def _record(**changes) -> dict:
    record = msgspec.json.decode(wrapped_record(load("minio/put.json")))
    record.update(changes)
    return record


def _records_body(*records) -> bytes:
    return msgspec.json.encode({"Records": list(records)})


def _without_bucket_name() -> dict:
    record = _record()
    del record["s3"]["bucket"]["name"]
    return record


def _with_bucket_name(name) -> dict:
    record = _record()
    record["s3"]["bucket"]["name"] = name
    return record


def _with_size(size) -> dict:
    record = _record()
    record["s3"]["object"]["size"] = size
    return record


_AWS = msgspec.json.decode(load("aws/multi-record.json"))["Records"]
_AWS_SECOND_WITHOUT_BUCKET = json.loads(json.dumps(_AWS))
del _AWS_SECOND_WITHOUT_BUCKET[1]["s3"]["bucket"]


REJECTED = [
    pytest.param(b"hello", "not JSON: ", id="text"),
    pytest.param(b"{", "not JSON: ", id="truncated"),
    pytest.param(b"{'Records': []}", "not JSON: ", id="single-quotes"),
    pytest.param(b'{"Records":[]}x', "not JSON: ", id="trailing-garbage"),
    pytest.param(b"\xff\xfe{}", "invalid UTF-8", id="bad-utf8-bom"),
    pytest.param(
        load("minio/put.json").replace(b"cat+1", b"cat\xc3+1"), "invalid UTF-8", id="bad-utf8"
    ),
    pytest.param(b"[1, 2]", "not a JSON object", id="array"),
    pytest.param(b'"Records"', "not a JSON object", id="string"),
    pytest.param(b"42", "not a JSON object", id="number"),
    pytest.param(b"null", "not a JSON object", id="null"),
    pytest.param(b"{}", "no Records", id="empty-object"),
    pytest.param(
        b'{"EventName":"s3:ObjectCreated:Put","Key":"a/b"}', "no Records", id="no-records"
    ),
    pytest.param(b'{"Records":null}', "no Records", id="records-null"),
    pytest.param(b'{"Records":[]}', "no Records", id="records-empty"),
    pytest.param(b'{"Records":{"eventName":"x"}}', "Records is not a list", id="records-object"),
    pytest.param(b'{"Records":"[]"}', "Records is not a list", id="records-string"),
    pytest.param(b'{"Records":[5]}', "record 0: not an object", id="record-number"),
    pytest.param(b'{"Records":[null]}', "record 0: not an object", id="record-null"),
    pytest.param(
        _records_body(_without_bucket_name()), "record 0: missing s3.bucket.name", id="no-bucket"
    ),
    pytest.param(
        _records_body(_with_bucket_name("")), "record 0: missing s3.bucket.name", id="empty-bucket"
    ),
    pytest.param(_records_body(_record(s3=None)), "record 0: missing s3.bucket.name", id="s3-null"),
    pytest.param(
        _records_body(_record(eventName=None)), "record 0: missing eventName", id="no-name"
    ),
    pytest.param(
        _records_body(_record(eventName=" ")), "record 0: missing eventName", id="blank-name"
    ),
    pytest.param(
        _records_body({"awsRegion": "x"}), "record 0: missing eventName", id="empty-record"
    ),
    pytest.param(
        _records_body(_with_bucket_name(7)), "record 0: Expected `str", id="bucket-number"
    ),
    pytest.param(_records_body(_with_size("big")), "record 0: Expected `int", id="size-text"),
    pytest.param(
        _records_body(_record(eventName=["x"])), "record 0: Expected `str", id="name-list"
    ),
    pytest.param(
        _records_body(_AWS[0], _AWS_SECOND_WITHOUT_BUCKET[1]),
        "record 1: missing s3.bucket.name",
        id="one-bad-of-two",
    ),
    pytest.param(
        b'{"Records":[{"event_name":"s3:ObjectCreated:Put","data":"{}"}]}',
        "record 0.data: not an object",
        id="targetlog-data-string",
    ),
    pytest.param(
        b'{"Records":[{"data":{"eventName":"s3:ObjectCreated:Put"}}]}',
        "record 0: missing s3.bucket.name",
        id="targetlog-data-no-bucket",
    ),
    pytest.param(b"[" * 100_000, "not a JSON object", id="deep-array"),
    pytest.param(b'{"Records":' + b"[" * 100_000, "too deeply nested", id="deep-records"),
    pytest.param(
        b'{"Records":[' + b"[" * 50_000 + b"]" * 50_000 + b"]}",
        "too deeply nested",
        id="deep-record",
    ),
    pytest.param(
        b'{"x":' + b'{"y":' * 50_000 + b"1" + b"}" * 50_001, "too deeply nested", id="deep-obj"
    ),
    pytest.param(
        b'{"version":"1","time":"t","api":{"name":"A"}}\n{"extra":' + b"[" * 100_000,
        "line 2: too deeply nested",
        id="deep-ndjson-line",
    ),
    pytest.param(b'{"a":1}\n{"b":2}\n', "line 1: not an audit entry", id="ndjson-not-audit"),
    pytest.param(b"garbage\n{}\n", "not JSON: ", id="ndjson-garbage"),
    pytest.param(b'{"specversion":"1.0","type":"t"}', "cloudevents: no data", id="ce-no-data"),
    pytest.param(b'{"specversion":"1.0","data":{"a":1}}', "cloudevents: data", id="ce-empty-data"),
    pytest.param(
        b'{"specversion":"1.0","data":[1]}',
        "cloudevents data: not a JSON object",
        id="ce-data-array",
    ),
    pytest.param(b'{"time":1,"api":{"name":"A"},"x":1}x', "not JSON: ", id="audit-trailing"),
    pytest.param(
        b'{"time":100000000000000000,"api":{}}', "audit time out of range", id="time-range"
    ),
    pytest.param(b'{"time":true,"api":{}}', "audit entry: Expected", id="time-bool"),
    pytest.param(b'{"time":"t","api":"PutObject"}', "audit entry: Expected", id="api-string"),
    pytest.param(b'{"Service":"Amazon S3","Event":"s3:Other"}', "no Records", id="not-test-event"),
    pytest.param(b'{"eventName":"s3:ObjectCreated:Put","s3":{}}', "no Records", id="bare-record"),
]


@pytest.mark.parametrize(("body", "reason"), REJECTED)
def test_rejections_raise_unparseable(body, reason):
    with pytest.raises(Unparseable) as caught:
        parse(body)
    assert type(caught.value) is Unparseable
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert str(caught.value) == caught.value.reason
    assert len(caught.value.reason) < 200


def test_rejection_reason_carries_no_record_values():
    body = load("rustfs/put.json").replace(b'"name":"ledger"', b'"name":{"secret":"hunter2"}')
    with pytest.raises(Unparseable) as caught:
        parse(body)
    assert caught.value.reason.startswith("record 0: Expected `str")
    assert "hunter2" not in caught.value.reason


def test_deep_nesting_in_a_cloudevents_body_falls_back_or_is_unparseable():
    deep = b'{"Records":' + b"[" * 100_000
    assert one(deep, ce_headers()).record == b"{}"
    with pytest.raises(Unparseable) as caught:
        parse(deep, {"ce-specversion": "1.0"})
    assert "too deeply nested" in caught.value.reason


# ---------------------------------------------------------------------------------------------
# Properties: any input → Parsed or Unparseable, never another exception


VALID_BODIES = [
    load("minio/put.json"),
    load("minio/delete.json"),
    load("rustfs/put.json"),
    load("rustfs/put-targetlog.json"),
    load("ceph/string-size.json"),
    ceph_http()[1],
    load("aws/multi-record.json"),
    load("aws/test-event.json"),
    load("cloudevents/structured.json"),
    load("audit/minio-single.json"),
    load("audit/minio-batch.ndjson"),
    load("audit/rustfs-wrapped.json"),
    load("audit/rustfs-bare.json"),
]

JSON_BODIES = [body for body in VALID_BODIES if body.count(b"\n") <= 1]  # all but the NDJSON

HEADER_SETS = [{}, {"ce-specversion": "1.0"}, {k.lower(): v for k, v in ce_headers().items()}]


def check_total(body: bytes, headers) -> None:
    try:
        parsed = parse_body(body, headers, "fuzz")
    except Unparseable as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return
    assert isinstance(parsed, Parsed)
    assert not (parsed.test_event and parsed.events)
    for event in parsed.events:
        assert isinstance(event, Event)
        assert event.event_name.startswith("s3:")
        assert event.event_id == make_event_id(event)
        assert event.record == b"{}" or event.record in body
        assert isinstance(event.bucket, str) and isinstance(event.key, str)
        assert event.size is None or isinstance(event.size, int)


def test_every_valid_fixture_parses():
    for body in VALID_BODIES:
        parsed = parse(body)
        assert parsed.events or parsed.test_event


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=2048), headers=st.sampled_from(HEADER_SETS))
def test_arbitrary_bytes_are_parsed_or_unparseable(body, headers):
    check_total(body, headers)


@st.composite
def mutated(draw) -> bytes:
    body = bytearray(draw(st.sampled_from(VALID_BODIES)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "truncate", "duplicate"]))
        if op == "delete":
            del body[pos : pos + draw(st.integers(1, 16))]
        elif op == "insert":
            body[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "replace" and pos < len(body):
            body[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del body[pos:]
        elif op == "duplicate":
            body[pos:pos] = body[pos : pos + draw(st.integers(1, 64))]
    return bytes(body)


@settings(max_examples=600, deadline=None)
@given(body=mutated(), headers=st.sampled_from(HEADER_SETS))
def test_mutated_bodies_are_parsed_or_unparseable(body, headers):
    check_total(body, headers)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), headers=st.sampled_from(HEADER_SETS))
def test_valid_bodies_with_a_field_of_another_type_are_parsed_or_unparseable(data, headers):
    """Structure-aware mutation: replace one value anywhere in a valid body by arbitrary JSON."""
    document = json.loads(data.draw(st.sampled_from(JSON_BODIES)))
    path = data.draw(st.sampled_from(list(_paths(document))[1:]))
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = data.draw(JSON_VALUES)
    check_total(json.dumps(document).encode(), headers)
