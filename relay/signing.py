"""Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
`<webhook-id>.<webhook-timestamp>.<body>`, sent as `webhook-signature: v1,<base64>`.

Used both ways: the webhook sink signs what it sends, and ingest verifies senders that sign.
A secret is `whsec_<base64 key>` (the standard form) or any other string, used as bytes.
Several secrets allow rotation: a message is signed with each and verified by any.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

TOLERANCE = 300.0  # seconds a signed message's timestamp may differ from now


class SignatureError(Exception):
    pass


def secret_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[6:], validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return secret.encode()


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def sign(
    keys: Sequence[bytes], msg_id: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The three headers of a signed message."""
    timestamp = int(now if now is not None else time.time())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(k, msg_id, timestamp, body) for k in keys),
    }


def verify(keys: Sequence[bytes], headers: Mapping[str, str], body: bytes,
           now: float | None = None) -> None:  # fmt: skip
    """Raise SignatureError unless one of the message's signatures matches one of `keys`
    and its timestamp is within TOLERANCE of now (`headers`: a request's, any mapping)."""
    get = headers.get
    msg_id, stamp, given = get("webhook-id"), get("webhook-timestamp"), get("webhook-signature")
    if not (msg_id and stamp and given):
        raise SignatureError("webhook-id, webhook-timestamp and webhook-signature are required")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not a number") from None
    if abs((now if now is not None else time.time()) - timestamp) > TOLERANCE:
        raise SignatureError("webhook-timestamp is too far from now")
    offered = [s for s in given.split() if s.startswith("v1,")]
    ok = False
    for key in keys:
        expected = signature(key, msg_id, timestamp, body)
        for candidate in offered:
            ok |= hmac.compare_digest(expected, candidate)
    if not ok:
        raise SignatureError("no signature matches")
