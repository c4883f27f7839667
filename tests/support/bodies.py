"""Notification bodies shaped as the stores send them (see tests/fixtures for whole samples),
made unique per call for load and ordering tests."""

from __future__ import annotations

import json
from urllib.parse import quote_plus


def minio_body(bucket: str, key: str, n: int, event: str = "s3:ObjectCreated:Put") -> bytes:
    """A MinIO webhook body; `n` makes the request id and sequencer unique."""
    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": "2026-03-04T10:11:12.345Z",
        "eventName": event,
        "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "10.0.0.7"},
        "responseElements": {"x-amz-id-2": "dd9025bab4ad464b0491", "x-amz-request-id": f"REQ{n:012d}"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key), "size": 100 + n, "eTag": f"{n:032x}",
                       "contentType": "application/octet-stream", "sequencer": f"{n:016X}"},
        },
        "source": {"host": "10.0.0.7", "port": "", "userAgent": "test"},
    }  # fmt: skip
    return json.dumps({"EventName": event, "Key": f"{bucket}/{key}", "Records": [record]}).encode()


def records_body(bucket: str, keys_and_ns: list[tuple[str, int]]) -> bytes:
    """One `{"Records": [...]}` body (AWS/Ceph shape) holding several MinIO-style records: the
    relay stores them in this order, with consecutive seqs."""
    records = [json.loads(minio_body(bucket, key, n))["Records"][0] for key, n in keys_and_ns]
    return json.dumps({"Records": records}).encode()
