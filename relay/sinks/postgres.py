"""PostgreSQL sink: writes events into a table the way MinIO's and RustFS's PostgreSQL targets
do, so an existing table (and whatever reads it) keeps working when the relay takes over.

`FORMAT=namespace` (default): one row per object, `key` = "bucket/decoded key", `value` =
the object's last event as JSONB; removal events (`DELETE_ON`) delete the row, every other
event upserts it. `FORMAT=access`: one row per event, appended; the event id is the primary
key and rows are written with `ON CONFLICT (event_id) DO NOTHING`, so a retried or replayed
event never adds a second row. The table is created when missing (`relay check --print-ddl`
shows the statement); an existing table in MinIO's or RustFS's shape is used as it is (MinIO's
access table has no event id: writes to it are not idempotent, and a warning says so).

A batch is one transaction (pipelined). When it fails on the data of an event (a constraint,
bad JSON), the events are written one by one, so only the bad one is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from relay.config import ConfigError, Option, SinkSpec
from relay.queue.log import LogEntry
from relay.rules import compile_event_patterns
from relay.sinks import sqltable
from relay.sinks.base import Health, Permanent, Result, Retryable
from relay.sinks.sqltable import (
    Poison,
    TableRows,
    access_rows,
    namespace_rows,
    send_isolating_poison,
)

log = logging.getLogger("relay.sinks.postgres")

TYPE = "postgres"
OPTIONS = (
    Option(
        "connection_string",
        "str",
        "",
        "MinIO's key: the libpq connection string, `host=… port=… user=… password=… "
        "dbname=…` or a `postgresql://user:pass@host:port/db` URL. Set this or DSN_STRING.",
        secret=True,
    ),
    Option(
        "dsn_string",
        "str",
        "",
        "RustFS's key: the same as CONNECTION_STRING (either form). Set one of the two.",
        secret=True,
    ),
    Option(
        "table",
        "str",
        "",
        "Table written to, `name` or `schema.name`; created when missing. Unquoted names are "
        'folded to lower case as PostgreSQL does; write `"Name"` for a case-sensitive one.',
        required=True,
    ),
    Option(
        "format",
        "choice",
        "namespace",
        "`namespace`: one row per object (upsert; delete on DELETE_ON events). `access`: one "
        "row per event, appended, idempotent on the event id. (The payload shape is "
        "PAYLOAD_FORMAT: on this sink FORMAT keeps the stores' meaning.)",
        choices=("namespace", "access"),
    ),
    *sqltable.TABLE_OPTIONS,
    Option(
        "tls_required",
        "bool",
        False,
        "Require TLS (`sslmode=require`, or `verify-full` when TLS_CA is set).",
    ),
    Option(
        "tls_ca",
        "str",
        "",
        "PEM CA bundle the server's certificate must chain to; implies `sslmode=verify-full`.",
    ),
    Option("tls_client_cert", "str", "", "PEM client certificate (with TLS_CLIENT_KEY)."),
    Option("tls_client_key", "str", "", "PEM key of the client certificate."),
)

# The tables this sink creates. `{table}` is the quoted, possibly schema-qualified name.
NAMESPACE_DDL = """\
CREATE TABLE IF NOT EXISTS {table} (
    key   VARCHAR PRIMARY KEY,  -- "bucket/decoded key"
    value JSONB NOT NULL        -- the object's last event (PAYLOAD_FORMAT)
)"""

ACCESS_DDL = """\
CREATE TABLE IF NOT EXISTS {table} (
    event_id   VARCHAR(64) PRIMARY KEY,  -- the relay's event id: a replay adds no row
    event_time TIMESTAMPTZ NOT NULL,     -- the record's eventTime, else when it was received
    event_name VARCHAR NOT NULL,         -- canonical, e.g. s3:ObjectCreated:Put
    key        VARCHAR NOT NULL,         -- "bucket/decoded key"
    value      JSONB NOT NULL            -- the event (PAYLOAD_FORMAT)
)"""

ACCESS_INDEX_DDL = "CREATE INDEX IF NOT EXISTS {index} ON {table} (event_time)"

# Tables found at start are used as they are when they hold these columns:
#   namespace  key (unique), value                          relay, MinIO
#   access     event_id (unique), event_time, event_name, key, value      relay
#              event_id (unique), event_name, key, value, queued_at_ms   RustFS
#              event_time, event_data  (no event id: not idempotent)      MinIO
# Any subset of the access columns that has `value` or `event_data` is written; columns of
# the table the relay does not know must be nullable or have a default.
ACCESS_COLUMNS = ("event_id", "event_time", "event_name", "key", "value", "event_data",
                  "queued_at_ms")  # fmt: skip

MAX_LIFETIME = 1800.0  # seconds a pooled connection lives, unless the server's is shorter
MAX_IDLE = 300.0

_COLUMNS_SQL = """\
SELECT a.attname,
       a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '',
       EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indpred IS NULL
                 AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum)
FROM pg_attribute a
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""


def ddl(spec: SinkSpec) -> str:
    """The statements that create the sink's table (what `start()` runs when it is missing)."""
    table = _Table.parse(spec["table"], spec.variable("table"))
    return ";\n".join(table.ddl(_table_format(spec))) + ";\n"


def create(spec: SinkSpec) -> PostgresSink:
    return PostgresSink(spec)


def _table_format(spec: SinkSpec) -> str:
    return str(spec["format"] or "namespace")


# -- the sink -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """How batches are written to the table found (or created) at start."""

    namespace: bool
    upsert: str = ""
    delete: str = ""
    insert: str = ""
    columns: tuple[str, ...] = ()
    idempotent: bool = True
    shape: str = ""


class PostgresSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.timeout: float = spec["timeout"]
        self.format = _table_format(spec)
        self.payload: str = spec["payload_format"]
        self.table = _Table.parse(spec["table"], spec.variable("table"))
        self.deletes = compile_event_patterns(spec["delete_on"], spec.variable("delete_on"))
        self.max_size: int = spec["max_open_connections"]
        if self.max_size < 1:
            raise ConfigError(f"{spec.variable('max_open_connections')}: must be at least 1")
        self.conninfo, self._secrets = _conninfo(spec, self.timeout)
        self.pool: AsyncConnectionPool[Any] | None = None
        self.plan: _Plan | None = None
        self.lifetime = MAX_LIFETIME
        self._stale = False  # the pool said it cannot reconnect: rebuild it

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.plan is None:
            self.plan = await self._prepare()
        if self.pool is None:
            await self._open_pool()

    async def close(self) -> None:
        await self._discard_pool()

    async def health(self) -> Health:
        try:
            async with asyncio.timeout(min(self.timeout, 5.0)):
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                try:
                    columns = await _columns(conn, self.table)
                finally:
                    await conn.close()
        except Exception as exc:
            return Health(False, self._classify(exc)[1])
        if columns is None:
            return Health(True, f"connected; table {self.table.text} will be created")
        try:
            plan = self._plan(columns)
        except Permanent as exc:
            return Health(False, str(exc))
        return Health(True, f"connected; table {self.table.text} ({plan.shape})")

    async def _prepare(self) -> _Plan:
        """One connection: read the server's idle timeout, find or create the table."""
        try:
            async with asyncio.timeout(self.timeout):
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                try:
                    row = await (
                        await conn.execute(
                            "SELECT setting::bigint FROM pg_settings "
                            "WHERE name = 'idle_session_timeout'"
                        )
                    ).fetchone()
                    columns = await _columns(conn, self.table)
                    if columns is None:
                        for statement in self.table.ddl(self.format):
                            await conn.execute(statement)
                        log.info(
                            "table created",
                            extra={"sink": self.name, "table": self.table.text,
                                   "format": self.format},
                        )  # fmt: skip
                        columns = await _columns(conn, self.table)
                finally:
                    await conn.close()
        except Exception as exc:
            raise self._error(exc) from None
        idle_ms = int(row[0]) if row and row[0] else 0
        if idle_ms:  # recycle before the server closes idle sessions
            self.lifetime = max(1.0, min(MAX_LIFETIME, idle_ms / 2000))
        plan = self._plan(columns or {})
        if not plan.idempotent:
            log.warning(
                "the table has no unique event_id column: writes are not idempotent, a "
                "retried or replayed event adds a second row",
                extra={"sink": self.name, "table": self.table.text, "shape": plan.shape},
            )
        return plan

    def _plan(self, columns: dict[str, tuple[bool, bool]]) -> _Plan:
        """The write statements for the table's columns ({name: (needs_value, unique)})."""
        t = self.table.sql
        names = set(columns)
        known = {"key", "value"} if self.format == "namespace" else set(ACCESS_COLUMNS)
        required = sorted(n for n, (needs, _) in columns.items() if needs and n not in known)
        expected = (
            "key (unique), value"
            if self.format == "namespace"
            else "event_id (unique), event_time, event_name, key, value — or RustFS's "
            "(event_id, event_name, key, value, queued_at_ms) or MinIO's (event_time, "
            "event_data)"
        )
        problem = ""
        if self.format == "namespace":
            if not {"key", "value"} <= names:
                problem = "it has no `key` and `value` columns"
            elif not columns["key"][1]:
                problem = "its `key` column is not unique (PRIMARY KEY or UNIQUE)"
        elif not names & {"value", "event_data"}:
            problem = "it has neither a `value` nor an `event_data` column"
        elif not names & {"event_id", "event_time"}:
            problem = "it has neither an `event_id` nor an `event_time` column"
        if not problem and required:
            problem = f"its columns {', '.join(required)} are NOT NULL without a default"
        if problem:
            hint = (
                " (it looks like a namespace table: set FORMAT=namespace)"
                if self.format == "access" and {"key", "value"} <= names
                else " (it looks like an access table: set FORMAT=access)"
                if self.format == "namespace" and names & {"event_id", "event_data"}
                else ""
            )
            raise Permanent(
                f"table {self.table.text} cannot take {self.format} rows: {problem}{hint}; "
                f"expected columns: {expected}"
            )
        if self.format == "namespace":
            return _Plan(
                namespace=True,
                upsert=f"INSERT INTO {t} (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                delete=f"DELETE FROM {t} WHERE key = ANY(%s)",
                shape="namespace",
            )
        cols = tuple(c for c in ACCESS_COLUMNS if c in names)
        idempotent = "event_id" in names and columns["event_id"][1]
        insert = f"INSERT INTO {t} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
        if idempotent:
            insert += " ON CONFLICT (event_id) DO NOTHING"
        shape = (
            "MinIO access"
            if not idempotent
            else "RustFS access"
            if "queued_at_ms" in names
            else "access"
        )
        return _Plan(False, insert=insert, columns=cols, idempotent=idempotent, shape=shape)

    async def _open_pool(self) -> None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.conninfo,
            kwargs={"autocommit": True},  # transactions are explicit
            open=False,
            min_size=1,
            max_size=self.max_size,
            check=AsyncConnectionPool.check_connection,
            configure=_configure,
            timeout=self.timeout,
            max_lifetime=self.lifetime,
            max_idle=min(MAX_IDLE, self.lifetime),
            reconnect_failed=self._reconnect_failed,
            name=self.name,
        )
        try:
            async with asyncio.timeout(self.timeout + 1):
                await pool.open(wait=True, timeout=self.timeout)
        except Exception as exc:
            await _close_pool(pool)
            raise self._error(exc) from None
        self.pool = pool
        self._stale = False

    async def _discard_pool(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            await _close_pool(pool)

    def _reconnect_failed(self, pool: AsyncConnectionPool[Any]) -> None:
        # psycopg-pool gives up reconnecting after reconnect_timeout (and has been seen to
        # stay stuck after an outage): say so, and build a fresh pool on the next batch.
        self._stale = True
        log.warning("the connection pool could not reconnect", extra={"sink": self.name})

    # -- sending ------------------------------------------------------------------------------

    async def send(self, batch: Sequence[LogEntry]) -> list[Result]:
        return await send_isolating_poison(batch, self._attempt)

    async def _attempt(self, batch: Sequence[LogEntry]) -> None:
        """Write the batch; a connection that died while idle in the pool costs one immediate
        retry on a fresh pool, never a failed batch."""
        for retry in (False, True):
            if self.pool is None or self._stale:
                await self._discard_pool()
                await self.start()
            assert self.pool is not None and self.plan is not None
            plan = self.plan
            params = self._params(plan, batch)  # may raise Poison: no connection needed
            try:
                async with asyncio.timeout(self.timeout):
                    async with self.pool.connection() as conn:
                        await _execute(conn, plan, params)
                return
            except Exception as exc:
                kind, message = self._classify(exc)
                if kind in ("lost", "down"):
                    await self._discard_pool()
                    if kind == "lost" and not retry:
                        continue
                raise _failure(kind, message) from None

    def _params(self, plan: _Plan, batch: Sequence[LogEntry]) -> TableRows:
        if plan.namespace:
            return namespace_rows(batch, self.deletes, self.payload)
        return access_rows(batch, plan.columns, self.payload, naive_utc=False)

    # -- errors -------------------------------------------------------------------------------

    def _classify(self, exc: BaseException) -> tuple[str, str]:
        """(kind, message): kind is `lost` (a connection died: retry on a fresh one), `down`
        (cannot connect, timed out), `retry` (deadlock, serialization, resources), `data` (an
        event's data is refused), `schema` (the table or the grants are wrong)."""
        kind, message = _classify(exc, self.timeout)
        return kind, self._scrub(message)

    def _error(self, exc: BaseException) -> Retryable | Permanent:
        kind, message = self._classify(exc)
        return _failure(kind, message)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)
        return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


async def _execute(conn: psycopg.AsyncConnection[Any], plan: _Plan, params: TableRows) -> None:
    """One transaction, pipelined: BEGIN, the statements and COMMIT travel together."""
    async with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
        if params.rows:
            await cur.executemany(plan.upsert if plan.namespace else plan.insert, params.rows)
        if params.deletes:
            await cur.execute(plan.delete, (params.deletes,))


def _failure(kind: str, message: str) -> Retryable | Permanent:
    if kind == "data":
        return Poison(message)
    if kind == "schema":
        return Permanent(message)
    return Retryable(message)


# SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html)
_LOST = {"57P01", "57P02", "57P03"}  # admin/crash shutdown, cannot connect now
_RETRY = {"40001", "40P01", "55P03", "57014", "25006"}  # serialization, deadlock, lock, cancel
_RETRY_CLASSES = {"40", "53", "58", "XX"}  # rollback, resources, system, internal
_DATA_CLASSES = {"22", "23", "44", "P0", "2F", "38", "39", "27"}  # data, constraints, triggers
_SCHEMA_CLASSES = {"42", "0A", "3F", "3D", "2B", "0L", "0P"}  # undefined, denied, unsupported


def _classify(exc: BaseException, timeout: float) -> tuple[str, str]:
    if isinstance(exc, TimeoutError):
        return "down", f"no answer from PostgreSQL within {timeout:g}s"
    if isinstance(exc, PoolTimeout | PoolClosed | TooManyRequests):
        return "down", f"cannot get a PostgreSQL connection: {_first_line(exc)}"
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        text = f"{state}: {_first_line(exc)}" if state else _first_line(exc)
        cls = state[:2]
        if not state:
            if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
                return "data", text
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                return "lost", f"connection lost: {text}"
            return "retry", text
        if cls == "08" or state in _LOST:
            return "lost", f"connection lost: {text}"
        if cls == "28":  # authentication: the sink is down until the credentials are fixed
            return "down", text
        if state in _RETRY or cls in _RETRY_CLASSES:
            return "retry", text
        if cls in _DATA_CLASSES:
            return "data", text
        if cls in _SCHEMA_CLASSES:
            return "schema", text
        return "retry", text
    if isinstance(exc, OSError):
        return "lost", f"connection lost: {type(exc).__name__}: {exc}"
    return "retry", f"{type(exc).__name__}: {exc}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # A TIMESTAMP (without time zone) column gets UTC, not the server's local time.
    await conn.execute("SET TIME ZONE 'UTC'")


async def _close_pool(pool: AsyncConnectionPool[Any]) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(3):
            await pool.close(timeout=2)


async def _columns(
    conn: psycopg.AsyncConnection[Any], table: _Table
) -> dict[str, tuple[bool, bool]] | None:
    """{column: (needs a value, has a one-column unique index)}, or None if no such table."""
    row = await (await conn.execute("SELECT to_regclass(%s)::text", (table.sql,))).fetchone()
    if row is None or row[0] is None:
        return None
    rows = await (await conn.execute(_COLUMNS_SQL, (table.sql,))).fetchall()
    return {name: (bool(needs), bool(unique)) for name, needs, unique in rows}


# -- configuration --------------------------------------------------------------------------

_PART = re.compile(r'"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*)')


@dataclass(frozen=True, slots=True)
class _Table:
    text: str  # as configured
    parts: tuple[str, ...]  # [schema,] name, as PostgreSQL resolves them

    @classmethod
    def parse(cls, text: str, variable: str) -> _Table:
        parts: list[str] = []
        pos = 0
        text = text.strip()
        while True:
            match = _PART.match(text, pos)
            if match is None:
                break
            quoted, bare = match.groups()
            parts.append(quoted.replace('""', '"') if quoted is not None else bare.lower())
            pos = match.end()
            if pos == len(text) or text[pos] != ".":
                break
            pos += 1
        if pos != len(text) or not 1 <= len(parts) <= 2 or any(len(p) > 63 for p in parts):
            raise ConfigError(
                f"{variable}: {text!r} is not a table name (use `name` or `schema.name`: "
                'letters, digits, _ and $; or a "quoted name")'
            )
        return cls(text, tuple(parts))

    @property
    def sql(self) -> str:
        return ".".join(_quote(p) for p in self.parts)

    def ddl(self, fmt: str) -> list[str]:
        if fmt == "namespace":
            return [NAMESPACE_DDL.format(table=self.sql)]
        index = _quote(f"{self.parts[-1][:48]}_event_time_idx")
        return [ACCESS_DDL.format(table=self.sql),
                ACCESS_INDEX_DDL.format(index=index, table=self.sql)]  # fmt: skip


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _conninfo(spec: SinkSpec, timeout: float) -> tuple[str, list[str]]:
    """The connection string with the relay's defaults and the TLS keys; and the secrets to
    strip from every error message."""
    given = [k for k in ("connection_string", "dsn_string") if spec[k]]
    if len(given) == 2:
        raise ConfigError(
            f"{spec.variable('connection_string')} and {spec.variable('dsn_string')} are both "
            "set; keep one of them"
        )
    if not given:
        raise ConfigError(
            f"{spec.variable('connection_string')} (MinIO) or {spec.variable('dsn_string')} "
            f"(RustFS): one is required for the sink {spec.name}"
        )
    key = given[0]
    text = spec[key].strip()
    try:
        params = pg_conninfo.conninfo_to_dict(text)
    except psycopg.Error:
        # libpq's message quotes the string, password included: not repeated here
        raise ConfigError(
            f"{spec.variable(key)}: not a valid connection string (use `host=… dbname=…` "
            "key=value pairs or a postgresql://user:pass@host:port/db URL)"
        ) from None
    extra: dict[str, Any] = {}
    defaults = {
        "connect_timeout": max(2, int(timeout)),
        "application_name": "s3-notify-relay",
        # a peer that vanished (network cut) is noticed in seconds, not hours
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    extra.update({k: v for k, v in defaults.items() if k not in params})
    if spec["tls_client_cert"] or spec["tls_client_key"]:
        if not (spec["tls_client_cert"] and spec["tls_client_key"]):
            raise ConfigError(
                f"{spec.variable('tls_client_cert')} and {spec.variable('tls_client_key')} go "
                "together: set both or neither"
            )
        extra["sslcert"] = spec["tls_client_cert"]
        extra["sslkey"] = spec["tls_client_key"]
    if spec["tls_ca"]:
        extra["sslrootcert"] = spec["tls_ca"]
        extra["sslmode"] = "verify-full"
    elif spec["tls_required"]:
        extra["sslmode"] = "require"
    secrets = [s for s in (text, str(params.get("password") or "")) if len(s) >= 3]
    return pg_conninfo.make_conninfo(text, **extra), secrets
