"""The HTTP side: where object stores POST their notifications.

The contract with the senders: 2xx only once the event is in an fsynced commit (they forget
it after a 2xx); 202 + quarantine for an authenticated body we cannot read (a 4xx would make
MinIO's queue retry it forever and block everything behind it); 503 + Retry-After when the
log is full or the disk low (the stores keep the event and retry: lossless backpressure).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import web

from relay import metrics, signing
from relay.config import ConfigError, Settings
from relay.events import Event, Unparseable, parse_body
from relay.processes.board import View
from relay.queue.backend import EventTooLarge, LogBackend
from relay.rules import EventSet, compile_event_patterns

log = logging.getLogger("relay.ingest")

RETRY_AFTER = "5"
_CREDENTIAL_HEADERS = {"authorization", "cookie", "proxy-authorization", "x-amz-security-token"}
MAX_SOURCE_LABEL = 64


class Gate(Protocol):
    """What ingest answers by besides the log: whether the relay takes events now (and why
    not, naming the sinks that hold it) and each sink's state. In one process the log and
    the dispatchers say; in an ingest worker, the delivery process's view
    (relay/processes/board.py)."""

    @property
    def pressure(self) -> str | None: ...

    def view(self) -> View: ...


LOG_KEY = web.AppKey("log", LogBackend)
SETTINGS_KEY = web.AppKey("settings", Settings)
GATE_KEY = web.AppKey("gate", Gate)
SIGNING_KEYS = web.AppKey("signing_keys", list)


_UNSEEN = object()


class IngestFilter:
    """RELAY_INGEST_EVENTS: the events the relay stores; the others are answered as stored
    and counted by name. The patterns are the rules' (relay/rules.py), so a wildcard means
    the same here as in a rule. Each name's verdict is worked out once and remembered: an
    event costs one dict look-up (the senders use a few dozen names)."""

    MAX_NAMES = 4096  # verdicts remembered; past it (names made up by a sender) each is worked out
    MAX_LABELS = 256  # event names counted by name; past it they count as "other"

    def __init__(self, events: EventSet) -> None:
        self._events = events
        self._verdicts: dict[str, Any] = {}  # name → None (stored) or its filtered counter
        self._labelled: set[str] = set()

    def split(self, events: list[Event]) -> tuple[list[Event], int]:
        """The events to store, and how many were left out (counted)."""
        verdicts = self._verdicts
        left_out: dict[Any, int] = {}
        kept: list[Event] = []
        for event in events:
            name = event.event_name
            counter = verdicts.get(name, _UNSEEN)
            if counter is _UNSEEN:
                counter = self._verdict(name)
            if counter is None:
                kept.append(event)
            else:
                left_out[counter] = left_out.get(counter, 0) + 1
        for counter, n in left_out.items():
            counter.inc(n)
        return (events, 0) if len(kept) == len(events) else (kept, len(events) - len(kept))

    def _verdict(self, name: str) -> Any:
        if self._events.match(name):
            counter = None
        else:
            if len(self._labelled) < self.MAX_LABELS:
                self._labelled.add(name)
            label = name if name in self._labelled else "other"
            counter = metrics.EVENTS_FILTERED.labels(label)
        if len(self._verdicts) < self.MAX_NAMES:
            self._verdicts[name] = counter
        return counter


FILTER_KEY: web.AppKey[IngestFilter | None] = web.AppKey("ingest_filter")


def ingest_filter(settings: Settings) -> IngestFilter | None:
    """None when every event is stored (the default, and `s3:*`)."""
    events = compile_event_patterns(settings.ingest_events, "RELAY_INGEST_EVENTS")
    return IngestFilter(events) if events is not None and not events.everything else None


def source_label(path: str) -> str:
    label = path.strip("/")
    return label[:MAX_SOURCE_LABEL] if label else "default"


def presented_tokens(request: web.Request) -> list[str]:
    """Every credential the request carries: `Bearer <t>`, a bare `<t>` (MinIO's audit
    webhook sends the token raw), Basic with the token as password (or user), `?token=`."""
    found: list[str] = []
    header = request.headers.get("Authorization", "").strip()
    if header:
        scheme, _, rest = header.partition(" ")
        if scheme.lower() == "bearer":
            found.append(rest.strip())
        elif scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(rest.strip()).decode().partition(":")
                found.extend(p for p in (password, user) if p)
            except (binascii.Error, UnicodeDecodeError):
                pass
        else:
            found.append(header)
    query_token = request.query.get("token")
    if query_token:
        found.append(query_token)
    return found


def authorised(request: web.Request, settings: Settings) -> bool:
    if not settings.auth_tokens:
        return True
    if settings.trusted_networks and request.remote:
        try:
            address = ipaddress.ip_address(request.remote)
        except ValueError:
            address = None
        if address is not None and any(address in net for net in settings.trusted_networks):
            return True
    ok = False
    for presented in presented_tokens(request):
        given = presented.encode()
        for token in settings.auth_tokens:
            # no early exit: the time taken does not tell which token came close
            ok |= hmac.compare_digest(given, token.encode())
    return ok


def safe_headers(request: web.Request) -> str:
    """The request's headers for the quarantine record, without credentials."""
    headers: dict[str, Any] = {
        k: ("***" if k.lower() in _CREDENTIAL_HEADERS else v) for k, v in request.headers.items()
    }
    query = {k: ("***" if k == "token" else v) for k, v in request.query.items()}
    headers["_request"] = {"method": request.method, "path": request.path, "query": query,
                           "remote": request.remote}  # fmt: skip
    return json.dumps(headers)


def _json(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json",
        headers=headers,
    )  # fmt: skip


_JSON_HEADERS = {"Content-Type": "application/json"}
_COMMON_ANSWERS = {
    (n, d): json.dumps({"accepted": n, "duplicates": d}).encode()
    for n in range(3)
    for d in range(3)
}


def _accepted(accepted: int, duplicates: int) -> web.Response:
    # one record per request is the norm: its answers are made once, not per request
    body = (
        _COMMON_ANSWERS.get((accepted, duplicates))
        or json.dumps({"accepted": accepted, "duplicates": duplicates}).encode()
    )
    return web.Response(body=body, headers=_JSON_HEADERS)


def _reject(reason: str, status: int, message: str, **headers: str) -> web.Response:
    metrics.INGEST_REJECTED.labels(reason).inc()
    return _json(status, {"error": message}, **headers)


async def receive(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    event_log = request.app[LOG_KEY]
    keys = request.app[SIGNING_KEYS]
    signed = bool(keys) and "webhook-signature" in request.headers
    if not signed and not authorised(request, settings):
        return _reject("unauthorized", 401, "missing or wrong token")
    gate = request.app[GATE_KEY]
    if gate.pressure:
        view = gate.view()
        why = f"{view.pressure} ({view.pressure_detail})" if view.pressure_detail else view.pressure
        return _reject(
            view.pressure or "error", 503, f"the relay is not accepting events: {why}",
            **{"Retry-After": RETRY_AFTER},
        )  # fmt: skip
    if request.content_length is not None and request.content_length > settings.max_body:
        return _reject("too_large", 413, f"body over {settings.max_body} bytes")
    try:
        if request.content.is_eof():  # the usual case: the body came with the headers
            body = await request.read()
        else:
            async with asyncio.timeout(settings.request_timeout):
                body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _reject("too_large", 413, f"body over {settings.max_body} bytes")
    except TimeoutError:
        return _reject("slow_client", 408, "the body did not arrive in time")
    if signed:
        try:
            signing.verify(keys, request.headers, body)
        except signing.SignatureError as exc:
            return _reject("bad_signature", 401, f"signature not accepted: {exc}")
    source = source_label(request.path)
    try:
        parsed = parse_body(body, request.headers, source)
    except Unparseable as exc:
        return await _quarantine(request, event_log, source, exc.reason, body)
    if parsed.test_event:
        metrics.TEST_EVENTS.inc()
        return _accepted(0, 0)
    events, left_out = parsed.events, 0
    event_filter = request.app[FILTER_KEY]
    if event_filter is not None:
        events, left_out = event_filter.split(events)
        if not events:  # answered as stored: the sender must not send them again
            return _accepted(left_out, 0)
    started = time.perf_counter()
    try:
        result = await event_log.append(events)
    except EventTooLarge as exc:  # a retry cannot help: the body must change, or the servers
        log.error("append refused", extra={"error": str(exc), "source": source})
        return _reject("too_large", 413, str(exc))
    except Exception as exc:  # disk full, I/O error, shutting down (LogClosed)
        log.error("append failed", extra={"error": str(exc), "source": source})
        return _reject(
            "error", 503, "the log cannot take events now", **{"Retry-After": RETRY_AFTER}
        )
    metrics.INGEST_COMMIT_SECONDS.observe(time.perf_counter() - started)
    if result.accepted:
        metrics.received(source, events[0].dialect).inc(result.accepted)
    if result.duplicates:
        metrics.EVENTS_DUPLICATE.inc(result.duplicates)
    return _accepted(result.accepted + left_out, result.duplicates)


async def _quarantine(
    request: web.Request, event_log: LogBackend, source: str, reason: str, body: bytes
) -> web.Response:
    try:
        qid = await event_log.quarantine(source, reason, safe_headers(request), body)
    except Exception as exc:
        log.error("quarantine failed", extra={"error": str(exc), "source": source})
        return _reject(
            "error", 503, "the log cannot take events now", **{"Retry-After": RETRY_AFTER}
        )
    metrics.INGEST_REJECTED.labels("quarantined").inc()
    log.warning("body quarantined", extra={"id": qid, "reason": reason, "source": source})
    return _json(202, {"quarantined": qid, "reason": reason})


async def root(request: web.Request) -> web.Response:
    # RustFS probes HEAD / without a token before it delivers; MinIO only dials the port.
    return web.Response(text="s3-notify-relay\n")


async def healthz(request: web.Request) -> web.Response:
    return _json(200, {"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    view = request.app[GATE_KEY].view()
    body: dict[str, Any] = {"ready": view.pressure is None, "sinks": view.sinks}
    if view.pressure:
        body["reason"] = view.pressure
        if view.blocked_by:
            body["blocked_by"] = list(view.blocked_by)
            body["detail"] = view.pressure_detail
        return _json(503, body, **{"Retry-After": RETRY_AFTER})
    return _json(200, body)


async def metrics_endpoint(request: web.Request) -> web.Response:
    payload = await metrics.scrape()
    return web.Response(body=payload, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})  # fmt: skip


def make_app(settings: Settings, event_log: LogBackend, gate: Gate) -> web.Application:
    app = web.Application(client_max_size=settings.max_body, handler_args={"max_field_size": 16384})
    app[SETTINGS_KEY] = settings
    app[LOG_KEY] = event_log
    app[GATE_KEY] = gate
    app[SIGNING_KEYS] = signing_keys(settings)
    app[FILTER_KEY] = ingest_filter(settings)
    app.router.add_get("/", root)  # HEAD / too
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_post("/{source:.*}", receive)
    return app


def signing_keys(settings: Settings) -> list[bytes]:
    try:
        return [signing.secret_key(s) for s in settings.ingest_signing_secrets]
    except ValueError as exc:
        raise ConfigError(f"RELAY_INGEST_SIGNING_SECRETS: {exc}") from None


def ingest_warnings(settings: Settings) -> Sequence[str]:
    signing_keys(settings)  # validates
    ingest_filter(settings)
    if not settings.auth_tokens and not settings.ingest_signing_secrets:
        return ["RELAY_AUTH_TOKENS is empty: anyone who can reach the port can post events"]
    return []
