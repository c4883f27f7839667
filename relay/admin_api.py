"""The operator's window, under `/admin/` on the ingest port: a JSON API, the live tail and
a status page.

Off (every `/admin/` path answers 404) unless RELAY_ADMIN_TOKENS is set. Every API and
stream request carries `Authorization: Bearer <admin token>`, compared in constant time;
ingest tokens, `?token=` and trusted networks do not open it. The page and its script carry
no data and need no token: the operator types the token into the page, which keeps it in
sessionStorage and sends it as that header.

The API runs the same functions as the CLI (relay.queue.admin, relay.queue.stats): reads on
the API's own reader threads (read-only connections: they never block the writer), writes
in the log writer's next transaction (`Log.write`), so an operator action never contends
with the relay's own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web

from relay import ingest, metrics, series, tail
from relay.config import ConfigError, Settings
from relay.delivery.dispatcher import Dispatcher
from relay.queue import admin, trace
from relay.queue.backend import LogBackend

log = logging.getLogger("relay.admin")

RATE_WINDOW = 10.0  # seconds the delivery rate is measured over
SAMPLE_EVERY = 1.0
LIST_LIMIT = 100  # default and …
MAX_LIST_LIMIT = 10_000  # … largest `limit` of a list

STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class DeliveryRates:
    """Events delivered per second, per sink, over the last RATE_WINDOW seconds, from the
    `relay_deliveries_total{outcome="delivered"}` counters."""

    def __init__(self, sinks: list[str]) -> None:
        self._samples: dict[str, deque[tuple[float, float]]] = {s: deque() for s in sinks}

    def sample(self) -> None:
        now = time.monotonic()
        totals = delivered_totals()
        for sink, samples in self._samples.items():
            samples.append((now, totals.get(sink, 0.0)))
            while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
                samples.popleft()

    def rate(self, sink: str, total: float) -> float:
        """From the oldest sample in the window to now (`total`: the counter now)."""
        samples = self._samples.get(sink)
        if not samples:
            return 0.0
        t0, c0 = samples[0]
        elapsed = time.monotonic() - t0
        return max(0.0, total - c0) / elapsed if elapsed >= 0.5 else 0.0

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_EVERY)


def delivered_totals() -> dict[str, float]:
    totals: dict[str, float] = {}
    for family in metrics.DELIVERIES.collect():
        for s in family.samples:
            if s.name.endswith("_total") and s.labels.get("outcome") == "delivered":
                totals[s.labels["sink"]] = s.value
    return totals


class Admin:
    def __init__(
        self, settings: Settings, event_log: LogBackend, dispatchers: Mapping[str, Dispatcher]
    ) -> None:
        self.settings = settings
        self.log = event_log
        self.dispatchers = dispatchers
        self.tokens = [t.encode() for t in settings.admin_tokens]
        self.ingest_filter = ingest.ingest_filter(settings)  # a retried body is ingested again
        self.hub = tail.Hub(event_log)
        self.rates = DeliveryRates(list(dispatchers))
        self.sampler = series.Sampler(
            list(dispatchers), lambda: event_log.last_seq, delivered_totals,
            lambda: {name: d.behind for name, d in dispatchers.items()},
            settings.admin_sample_interval,
        )  # fmt: skip
        self.static = {
            name: resources.files("relay").joinpath("static", name).read_bytes()
            for name in STATIC_FILES
        }
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, app: web.Application) -> None:
        self.hub.start()
        self._tasks.append(asyncio.create_task(self.rates.run(), name="admin rates"))
        self._tasks.append(asyncio.create_task(self.sampler.run(), name="admin series"))

    async def shutdown(self, app: web.Application) -> None:
        await self.hub.close()  # open streams end now, not at the shutdown timeout
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def authorised(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return False
        presented = given.strip().encode()
        ok = False
        for token in self.tokens:
            ok |= hmac.compare_digest(presented, token)  # no early exit
        return ok

    def dispatcher(self, name: str) -> Dispatcher:
        found = self.dispatchers.get(name)
        if found is None:  # sinks are named case-insensitively, as in the rules and the CLI
            found = next(
                (d for n, d in self.dispatchers.items() if n.lower() == name.lower()), None
            )
        if found is None:
            configured = ", ".join(self.dispatchers) or "none"
            raise _error(404, f"no sink {name!r} (configured: {configured})")
        return found


def check(settings: Settings) -> None:
    """An admin token must not be an ingest token: every sender would hold the keys."""
    if set(settings.admin_tokens) & set(settings.auth_tokens):
        raise ConfigError(
            "RELAY_ADMIN_TOKENS: a token is also in RELAY_AUTH_TOKENS; the admin API needs "
            "tokens of its own"
        )


ADMIN_KEY = web.AppKey("admin", Admin)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def mount(
    app: web.Application,
    settings: Settings,
    event_log: LogBackend,
    dispatchers: Mapping[str, Dispatcher],
) -> None:
    """Add `/admin/` to the ingest app (before the server starts). Its routes are more
    specific than ingest's `POST /{source}`, so they take precedence whatever the order."""
    router = app.router
    if not settings.admin_tokens:
        router.add_route("*", "/admin", off)
        router.add_route("*", "/admin/{tail:.*}", off)
        return
    a = Admin(settings, event_log, dispatchers)
    app[ADMIN_KEY] = a
    app.on_startup.append(a.start)
    app.on_shutdown.append(a.shutdown)
    router.add_get("/admin", redirect)
    router.add_get("/admin/", page)
    router.add_get("/admin/static/{name}", static)
    for method, path, handler in (
        ("GET", "/admin/api/sinks", sinks),
        ("POST", "/admin/api/sinks/{name}/pause", pause),
        ("POST", "/admin/api/sinks/{name}/resume", resume),
        ("GET", "/admin/api/series", sink_series),
        ("GET", "/admin/api/dlq", dlq_list),
        ("POST", "/admin/api/dlq/retry", dlq_retry),
        ("POST", "/admin/api/dlq/purge", dlq_purge),
        ("GET", r"/admin/api/dlq/{id:\d+}", dlq_show),
        ("GET", "/admin/api/quarantine", quarantine_list),
        ("POST", "/admin/api/quarantine/retry", quarantine_retry),
        ("GET", r"/admin/api/quarantine/{id:\d+}", quarantine_show),
        ("POST", "/admin/api/replay", replay),
        ("GET", "/admin/api/trace", trace_events),
        ("GET", "/admin/events/stream", events_stream),
    ):
        router.add_route(method, path, guarded(handler))
    # anything else under /admin/ is not ingest's `POST /{source}`
    router.add_route("*", "/admin/{tail:.*}", guarded(not_found))


# -- plumbing -----------------------------------------------------------------------------------


API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json",
        headers=API_HEADERS,
    )  # fmt: skip


class Answer(Exception):
    """An error answer from anywhere in a handler: `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> Answer:
    return Answer(status, message)


def guarded(handler: Handler) -> Handler:
    async def run(request: web.Request) -> web.StreamResponse:
        a = request.app[ADMIN_KEY]
        if not a.authorised(request):
            response = _json({"error": "missing or wrong admin token"}, 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="relay admin"'
            return response
        try:
            return await handler(request)
        except Answer as exc:
            return _json({"error": str(exc)}, exc.status)
        except admin.NotFound as exc:
            return _json({"error": str(exc)}, 404)
        except admin.AdminError as exc:
            return _json({"error": str(exc)}, 400)

    return run


async def off(request: web.Request) -> web.Response:
    return _json({"error": "not found"}, 404)


async def not_found(request: web.Request) -> web.Response:
    return _json({"error": f"no such admin path: {request.method} {request.path}"}, 404)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise _error(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _error(400, "the body must be a JSON object")
    return body


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _error(400, f"{name} must be a whole number")
    try:
        return int(value)
    except ValueError:
        raise _error(400, f"{name} must be a whole number") from None


def _str(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _error(400, f"{name} must be a string")
    return value


def _limit(request: web.Request) -> int:
    return max(1, min(_int(request.query.get("limit", LIST_LIMIT), "limit"), MAX_LIST_LIMIT))


def _selection(body: dict[str, Any]) -> int | None:
    """`{"id": n}` or `{"all": true}`, as the CLI's `ID | --all`."""
    qid = _int(body["id"], "id") if body.get("id") is not None else None
    if qid is None and body.get("all") is not True:
        raise _error(400, 'name the quarantined bodies: {"id": n} or {"all": true}')
    return qid


def _dead_letter_filter(values: Mapping[str, Any]) -> admin.DeadLetterFilter:
    """The filters of GET /admin/api/dlq (query) and of retry and purge (body), as the
    CLI's: `id`, `sink`, `bucket`, `prefix`, `since`, `until`, `error`."""
    now = time.time()
    return admin.DeadLetterFilter(
        id=_int(values["id"], "id") if values.get("id") is not None else None,
        sink=_str(values.get("sink"), "sink"), bucket=_str(values.get("bucket"), "bucket"),
        prefix=_str(values.get("prefix"), "prefix"),
        since=_when(values.get("since"), "since", now),
        until=_when(values.get("until"), "until", now), error=_str(values.get("error"), "error"),
    )  # fmt: skip


def _dead_letters(body: dict[str, Any]) -> admin.DeadLetterFilter:
    """A retry's or purge's selection: an id, filters or `{"all": true}`."""
    which = _dead_letter_filter(body)
    if not which.narrows and body.get("all") is not True:
        raise _error(
            400,
            'name the dead letters: {"id": n}, filters ("sink", "bucket", "prefix", "since", '
            '"until", "error") or {"all": true}',
        )
    return which


# -- page -----------------------------------------------------------------------------------------


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/admin/")


async def page(request: web.Request) -> web.Response:
    a = request.app[ADMIN_KEY]
    return web.Response(body=a.static["index.html"], content_type="text/html",
                        charset="utf-8", headers=PAGE_HEADERS)  # fmt: skip


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_FILES or name == "index.html":
        return await not_found(request)
    a = request.app[ADMIN_KEY]
    return web.Response(body=a.static[name], content_type=STATIC_FILES[name],
                        charset="utf-8", headers=PAGE_HEADERS)  # fmt: skip


# -- sinks ----------------------------------------------------------------------------------------


async def sinks(request: web.Request) -> web.Response:
    a = request.app[ADMIN_KEY]
    names = list(a.dispatchers)

    per_sink, dead, quarantined, orphans = await asyncio.gather(
        a.log.sink_stats(names), a.log.dead_letter_counts(), a.log.quarantine_count(),
        a.log.orphans(),
    )  # fmt: skip
    now = time.time()
    totals = delivered_totals()
    out = []
    for s in per_sink:
        d = a.dispatchers[s.sink]
        out.append({
            "name": s.sink, "type": s.sink.split(":", 1)[0], "state": d.state,
            "up": d.up, "paused": d.paused, "paused_reason": d.paused_reason,
            "failing_since": d.failing_since, "cursor": s.cursor, "pending": s.pending,
            "redeliveries": s.redeliveries, "parked": s.parked,
            "holds_ingest": s.sink in a.log.blocked_by,
            "oldest_pending_age": round(max(0.0, now - s.oldest), 3) if s.oldest else None,
            "dead_letters": dead.get(s.sink, 0),
            "delivered_total": int(totals.get(s.sink, 0)),
            "delivery_rate": round(a.rates.rate(s.sink, totals.get(s.sink, 0.0)), 3),
            "recent_errors": msgspec.to_builtins(d.errors.newest_first()),
        })  # fmt: skip
    body = {
        "sinks": out,
        "orphaned": [dataclasses.asdict(o) for o in orphans],
        "log": {"events": a.log.events, "bytes": a.log.bytes, "pressure": a.log.pressure,
                "blocked_by": list(a.log.blocked_by), "quarantined": quarantined},
    }  # fmt: skip
    return _json(body)


async def sink_series(request: web.Request) -> web.Response:
    """The status page's charts: ingest rate, and per sink delivered/s and backlog, sampled
    every RELAY_ADMIN_SAMPLE_INTERVAL (relay/series.py); `?after=<unix seconds>`: only the
    samples taken since."""
    after = request.query.get("after")
    try:
        since = float(after) if after else None
    except ValueError:
        raise _error(
            400, "after: unix seconds (the `at` of the last sample the page has)"
        ) from None
    body = msgspec.json.encode(request.app[ADMIN_KEY].sampler.series(since))
    return web.Response(body=body, content_type="application/json", headers=API_HEADERS)


async def _sink_body(a: Admin, d: Dispatcher) -> dict[str, Any]:
    return {"name": d.name, "state": d.state, "paused": d.paused,
            "paused_reason": d.paused_reason, "up": d.up}  # fmt: skip


async def pause(request: web.Request) -> web.Response:
    a = request.app[ADMIN_KEY]
    d = a.dispatcher(request.match_info["name"])
    await d.pause()
    return _json(await _sink_body(a, d))


async def resume(request: web.Request) -> web.Response:
    a = request.app[ADMIN_KEY]
    d = a.dispatcher(request.match_info["name"])
    await d.resume()
    return _json(await _sink_body(a, d))


# -- dead letters ---------------------------------------------------------------------------------


def _dead_letter_body(d: admin.DeadLetter) -> dict[str, Any]:
    return {**dataclasses.asdict(d), "state": d.state}


async def dlq_list(request: web.Request) -> web.Response:
    a = request.app[ADMIN_KEY]
    which, limit = _dead_letter_filter(request.query), _limit(request)
    rows = await a.log.dead_letters(which, limit)
    return _json({"dead_letters": [_dead_letter_body(d) for d in rows]})


async def dlq_show(request: web.Request) -> web.Response:
    a = request.app[ADMIN_KEY]
    dlq_id = int(request.match_info["id"])
    return _json(await a.log.dead_letter(dlq_id))


async def dlq_retry(request: web.Request) -> web.Response:
    """Dead letters (an id, filters or all) queued again for their own sink or, with
    `"to"`, for any configured sink; `"dry_run": true` only says how many would go where."""
    a = request.app[ADMIN_KEY]
    body = await _body(request)
    which = _dead_letters(body)
    to_name = _str(body.get("to"), "to")
    to = a.dispatcher(to_name).name if to_name else None
    if body.get("dry_run") is True:
        per_sink = (await a.log.plan_dead_letter_retry(which, to)).by_sink()
        return _json({"dry_run": True, "would_retry": sum(per_sink.values()), "to": per_sink})
    routes = _routes(a)
    n = await a.log.retry_dead_letters(which, to, routes)
    if n:
        log.info("dead letters queued for redelivery (admin API)",
                 extra={"count": n, "selection": _shown(which), "to": to})  # fmt: skip
    return _json({"retried": n})


async def dlq_purge(request: web.Request) -> web.Response:
    a = request.app[ADMIN_KEY]
    body = await _body(request)
    which = _dead_letters(body)
    if body.get("dry_run") is True:
        rows = await a.log.dead_letters(which)
        return _json({"dry_run": True, "would_purge": len(rows)})
    n = await a.log.purge_dead_letters(which)
    if n:
        log.info("dead letters purged (admin API)",
                 extra={"count": n, "selection": _shown(which)})  # fmt: skip
    return _json({"purged": n})


def _routes(a: Admin) -> admin.Routes | None:
    """The sinks' rules, for the stale check of a retry (every dispatcher has the same)."""
    router = next((d.router for d in a.dispatchers.values()), None)
    if router is None:
        return None
    return lambda sink, entry: router.matches(sink, entry.event)


def _shown(which: admin.DeadLetterFilter) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(which).items() if v is not None}


# -- quarantine -----------------------------------------------------------------------------------


async def quarantine_list(request: web.Request) -> web.Response:
    a = request.app[ADMIN_KEY]
    limit = _limit(request)
    rows = await a.log.quarantined(limit)
    keys = ("id", "received_at", "source", "reason", "size")
    return _json({"quarantine": [dict(zip(keys, row)) for row in rows]})


async def quarantine_show(request: web.Request) -> web.Response:
    a = request.app[ADMIN_KEY]
    qid = int(request.match_info["id"])
    return _json(await a.log.quarantined_body(qid))


async def quarantine_retry(request: web.Request) -> web.Response:
    """Each body parsed again; the events of one that now parses go into the log as
    ingest's do (RELAY_INGEST_EVENTS applied), and it leaves quarantine."""
    a = request.app[ADMIN_KEY]
    select = a.ingest_filter
    qid = _selection(await _body(request))
    results = await a.log.retry_quarantine(qid, select.split if select else None)
    return _json({"results": [dataclasses.asdict(r) for r in results]})


# -- replay ---------------------------------------------------------------------------------------


def _when(value: Any, name: str, now: float) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)  # unix seconds
    if isinstance(value, str):
        return admin.parse_when(value, now)
    raise _error(400, f"{name}: an RFC 3339 time, a duration ago (2h) or unix seconds")


async def replay(request: web.Request) -> web.Response:
    """Queue events of the log for redelivery to a sink: the one that had them, or any
    other (a backfill)."""
    a = request.app[ADMIN_KEY]
    body = await _body(request)
    name = _str(body.get("sink"), "sink")
    if name is None:
        raise _error(400, 'name the sink to replay to: {"sink": "type:id", …}')
    d = a.dispatcher(name)
    now = time.time()
    since = _when(body.get("since"), "since", now) or 0.0
    until = _when(body.get("until"), "until", now) or now + 1
    bucket, prefix = _str(body.get("bucket"), "bucket"), _str(body.get("prefix"), "prefix")
    ignore_rules = body.get("ignore_rules") is True
    router, sink = d.router, d.name

    def accept(entry: Any) -> bool:
        return ignore_rules or router.matches(sink, entry.event)

    selected, queued = await a.log.replay(sink, since, until, bucket, prefix, accept)
    log.info("replay queued (admin API)",
             extra={"sink": sink, "selected": selected, "queued": queued,
                    "ignore_rules": ignore_rules})  # fmt: skip
    return _json({"sink": sink, "selected": selected, "queued": queued})


# -- where is my event --------------------------------------------------------------------------


async def trace_events(request: web.Request) -> web.Response:
    """`?q=` an event id, a seq or bucket/key; `?since=`, `?limit=`: the events it names
    and, per sink, where each is (the answer of `relay trace --json`)."""
    a = request.app[ADMIN_KEY]
    text = _str(request.query.get("q"), "q")
    if text is None:
        raise _error(400, "name the event: ?q=<event id> | <seq> | <bucket>/<key>")
    since = _when(request.query.get("since"), "since", time.time())
    limit = max(1, min(_int(request.query.get("limit", trace.LIMIT), "limit"), MAX_LIST_LIMIT))
    query = trace.TraceQuery.parse(text, since, limit)
    return _json(msgspec.to_builtins(await a.log.trace(query, _routing(a))))


def _routing(a: Admin) -> trace.Routing:
    """The sinks as their dispatchers run them: their rules (every dispatcher has the same;
    a reload swaps them) and their STALE."""
    router = next((d.router for d in a.dispatchers.values()), None)
    stale = {name: d.policy.stale for name, d in a.dispatchers.items()}
    why_not = router.why_not_to if router is not None else (lambda sink, event: None)
    return trace.Routing(list(a.dispatchers), why_not, stale)


# -- live tail ------------------------------------------------------------------------------------


async def events_stream(request: web.Request) -> web.StreamResponse:
    return await tail.stream(request, request.app[ADMIN_KEY].hub)
