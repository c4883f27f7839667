from __future__ import annotations

import json

import pytest

from relay import signing
from relay.queue.log import LogEntry
from relay.sinks.formats import cloudevent_headers, operation, render
from tests.support.pipeline import minio_event

VECTOR = {  # the Standard Webhooks specification's published test vector
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "timestamp": 1614265330,
    "body": b'{"test": 2432232314}',
    "signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}


def entry(key: str = "2024/cat 1.jpg", name: str = "s3:ObjectCreated:Put") -> LogEntry:
    return LogEntry(1, 0.0, minio_event("photos", key, 1, event=name))


def test_signature_matches_the_standard_webhooks_vector() -> None:
    key = signing.secret_key(VECTOR["secret"])
    assert (
        signing.signature(key, VECTOR["id"], VECTOR["timestamp"], VECTOR["body"])
        == VECTOR["signature"]
    )
    headers = {"webhook-id": VECTOR["id"], "webhook-timestamp": str(VECTOR["timestamp"]),
               "webhook-signature": "v1,bogus " + VECTOR["signature"]}  # fmt: skip
    signing.verify([key], headers, VECTOR["body"], now=VECTOR["timestamp"] + 10)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"webhook-signature": "v1,AAAA"}, "no signature matches"),
     ({"webhook-timestamp": "1614265000"}, "too far"),
     ({"webhook-id": ""}, "required")],
)  # fmt: skip
def test_verify_rejects(change: dict[str, str], message: str) -> None:
    key = signing.secret_key(VECTOR["secret"])
    headers = {"webhook-id": VECTOR["id"], "webhook-timestamp": str(VECTOR["timestamp"]),
               "webhook-signature": VECTOR["signature"], **change}  # fmt: skip
    with pytest.raises(signing.SignatureError, match=message):
        signing.verify([key], headers, VECTOR["body"], now=VECTOR["timestamp"])


def test_minio_format_keeps_the_record_bytes() -> None:
    e = entry()
    body = render(e, "minio")
    assert json.loads(body)["Key"] == "photos/2024/cat 1.jpg"
    assert e.event.record in body
    assert render(e, "raw") == e.event.record
    assert render(e, "records") == b'{"Records":[' + e.event.record + b"]}"


def test_cloudevents_structured_and_binary() -> None:
    e = entry()
    doc = json.loads(render(e, "cloudevents"))
    assert doc["type"] == "com.amazonaws.s3.ObjectCreated:Put"
    assert doc["source"] == "minio:s3..photos"
    assert doc["subject"] == "2024/cat 1.jpg" and doc["id"] == e.event.event_id
    assert doc["data"]["s3"]["object"]["key"] == "2024%2Fcat+1.jpg"
    headers = cloudevent_headers(entry("caf\u00e9 50%.txt"))
    assert headers["ce-subject"] == "caf%C3%A9 50%25.txt"
    assert headers["ce-specversion"] == "1.0" and headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("s3:ObjectCreated:Put", ("storage.object", "created.put")),
     ("s3:ObjectCreated:CompleteMultipartUpload", ("storage.object", "created.multipart-complete")),
     ("s3:ObjectRemoved:DeleteMarkerCreated", ("storage.object", "removed.delete-marker-created")),
     ("s3:ObjectAccessed:Get", ("storage.object", "accessed.get")),
     ("s3:ObjectTagging:Put", ("storage.object", "tagging.put")),
     ("s3:BucketCreated:*", ("storage.bucket", "created")),
     ("s3:ObjectLifecycle:Expiration:Current", ("storage.object", "lifecycle.expiration-current")),
     ("s3:LifecycleExpiration:Delete", ("storage.object", "lifecycle-expiration.delete"))],
)  # fmt: skip
def test_envelope_operations(name: str, expected: tuple[str, str]) -> None:
    assert operation(name) == expected


def test_envelope_fields() -> None:
    e = entry()
    doc = json.loads(render(e, "envelope"))
    assert doc["namespace"] == "storage.object" and doc["operation"] == "created.put"
    assert doc["metadata"]["key"] == "2024/cat 1.jpg" and doc["metadata"]["eventVersion"] == "2.0"
    assert doc["metadata"]["principalId"] == "minioadmin"
    assert doc["payload"]["eventName"] == "s3:ObjectCreated:Put"


def test_a_stale_event_is_marked_in_every_format_that_can_carry_a_mark() -> None:
    entry = LogEntry(1, 0.0, minio_event("b", "k", 1))
    fresh = {
        fmt: json.loads(render(entry, fmt))
        for fmt in ("minio", "records", "cloudevents", "envelope")
    }
    entry.stale = True
    marks = {"minio": "relayStale", "records": "relayStale", "cloudevents": "relaystale",
             "envelope": "stale"}  # fmt: skip
    for fmt, field in marks.items():
        marked = json.loads(render(entry, fmt))
        assert marked.pop(field) is True and field not in fresh[fmt]
        assert marked == fresh[fmt]
    assert render(entry, "raw") == entry.event.record
