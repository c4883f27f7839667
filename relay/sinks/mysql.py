"""MySQL/MariaDB sink: writes events into a table the way MinIO's and RustFS's MySQL targets do,
so an existing table (and whatever reads it) keeps working when the relay takes over.

`FORMAT=namespace` (MinIO's default): one row per object, `key_name` = "bucket/decoded key",
`key_hash` = SHA2(key_name, 256) computed by the server, `value` = the object's last event as
JSON; removal events (`DELETE_ON`) delete the row (by hash), every other event upserts it.
`FORMAT=access` (RustFS's only format): one row per event, appended; the event id is the
primary key and rows are written with `ON DUPLICATE KEY UPDATE event_id = event_id`, so a
retried or replayed event never adds a second row. The table is created when missing; an
existing table in MinIO's or RustFS's shape is used as it is (MinIO's access table has no
event id: writes to it are not idempotent, and a warning says so).

A batch is one transaction (a multi-row INSERT). When it fails on the data of an event (a
constraint, bad JSON, a value too long), the events are written one by one, so only the bad
one is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncmy
from asyncmy import errors as my_errors

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
from relay.sinks.tls import client_context

log = logging.getLogger("relay.sinks.mysql")

TYPE = "mysql"
OPTIONS = (
    Option(
        "dsn_string",
        "str",
        "",
        "Where to connect: Go form `user:pass@tcp(host:port)/db` (what MinIO and RustFS "
        "take; `?tls=true` and `?tls=skip-verify` are honoured) or a "
        "`mysql://user:pass@host:port/db` URL.",
        secret=True,
        required=True,
    ),
    Option(
        "table",
        "str",
        "",
        "Table written to, `name` or `db.name`; created when missing.",
        required=True,
    ),
    Option(
        "format",
        "choice",
        "",
        "`namespace`: one row per object (upsert; delete on DELETE_ON events). `access`: one "
        "row per event, appended, idempotent on the event id. Unset: as the store does, "
        "`namespace` for MINIO_NOTIFY_MYSQL_*, `access` for RUSTFS_NOTIFY_MYSQL_* (RustFS "
        "has no other). (The payload shape is PAYLOAD_FORMAT: on this sink FORMAT keeps the "
        "stores' meaning.)",
        choices=("namespace", "access"),
    ),
    *sqltable.TABLE_OPTIONS,
    Option(
        "tls_ca",
        "str",
        "",
        "PEM CA bundle the server's certificate must chain to (turns TLS on, verified).",
    ),
    Option("tls_client_cert", "str", "", "PEM client certificate (with TLS_CLIENT_KEY)."),
    Option("tls_client_key", "str", "", "PEM key of the client certificate."),
)

# The tables this sink creates. `{table}` is the quoted, possibly db-qualified name.
# MinIO declares key_hash `STORED NOT NULL PRIMARY KEY`, which MariaDB refuses (no NOT NULL
# and no primary key on a generated column): a UNIQUE key gives the same upsert and delete.
NAMESPACE_DDL = """\
CREATE TABLE IF NOT EXISTS {table} (
    key_name VARCHAR(3072) NOT NULL,  -- "bucket/decoded key"
    key_hash CHAR(64) GENERATED ALWAYS AS (SHA2(key_name, 256)) STORED,
    value    JSON,                    -- the object's last event (PAYLOAD_FORMAT)
    UNIQUE KEY key_hash (key_hash)
) CHARACTER SET = utf8mb4 COLLATE = utf8mb4_bin ROW_FORMAT = DYNAMIC"""

ACCESS_DDL = """\
CREATE TABLE IF NOT EXISTS {table} (
    event_id   VARCHAR(64) NOT NULL PRIMARY KEY,  -- the relay's event id: a replay adds no row
    event_time DATETIME(6) NOT NULL,   -- the record's eventTime (UTC), else when received
    event_name VARCHAR(255) NOT NULL,  -- canonical, e.g. s3:ObjectCreated:Put
    key_name   VARCHAR(3072) NOT NULL, -- "bucket/decoded key"
    event_data JSON NOT NULL,          -- the event (PAYLOAD_FORMAT)
    KEY event_time (event_time)
) CHARACTER SET = utf8mb4 COLLATE = utf8mb4_bin ROW_FORMAT = DYNAMIC"""

# Tables found at start are used as they are when they hold these columns:
#   namespace  key_name, key_hash (unique, generated), value    relay, MinIO
#              key_name (unique), value                         (deletes by key_name)
#   access     event_id (unique), event_time, event_name, key_name, event_data   relay
#              event_id (unique), event_time, event_data                        RustFS
#              event_time, event_data  (no event id: not idempotent)            MinIO
# Columns of the table the relay does not know must be nullable or have a default.
ACCESS_COLUMNS = ("event_id", "event_time", "event_name", "key_name", "event_data")

MAX_RECYCLE = 3600  # seconds a pooled connection may sit idle, unless the server's is shorter

_COLUMNS_SQL = """\
SELECT c.COLUMN_NAME,
       c.IS_NULLABLE = 'NO' AND c.COLUMN_DEFAULT IS NULL AND c.EXTRA NOT LIKE '%%GENERATED%%'
           AND c.EXTRA NOT LIKE '%%auto_increment%%',
       EXISTS (SELECT 1 FROM information_schema.STATISTICS s
               WHERE s.TABLE_SCHEMA = c.TABLE_SCHEMA AND s.TABLE_NAME = c.TABLE_NAME
                 AND s.COLUMN_NAME = c.COLUMN_NAME AND s.NON_UNIQUE = 0 AND s.SEQ_IN_INDEX = 1
                 AND NOT EXISTS (SELECT 1 FROM information_schema.STATISTICS s2
                                 WHERE s2.TABLE_SCHEMA = s.TABLE_SCHEMA
                                   AND s2.TABLE_NAME = s.TABLE_NAME
                                   AND s2.INDEX_NAME = s.INDEX_NAME AND s2.SEQ_IN_INDEX = 2)),
       c.EXTRA LIKE '%%GENERATED%%'
FROM information_schema.COLUMNS c
WHERE c.TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND c.TABLE_NAME = %s
ORDER BY c.ORDINAL_POSITION"""


def ddl(spec: SinkSpec) -> str:
    """The statement that creates the sink's table (what `start()` runs when it is missing)."""
    table = _Table.parse(spec["table"], spec.variable("table"))
    return table.ddl(_table_format(spec)) + ";\n"


def create(spec: SinkSpec) -> MySQLSink:
    return MySQLSink(spec)


def _table_format(spec: SinkSpec) -> str:
    if spec["format"]:
        return str(spec["format"])
    # Unset: what the store whose keys configure the sink does.
    rustfs = spec.variables.get("enable", "").startswith("RUSTFS_")
    return "access" if rustfs else "namespace"


# -- the sink -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """How batches are written to the table found (or created) at start."""

    namespace: bool
    write: str = ""  # upsert (namespace) or insert (access)
    delete_by: str = ""  # namespace: "key_hash" or "key_name"
    columns: tuple[str, ...] = ()
    idempotent: bool = True
    shape: str = ""


@dataclass(frozen=True, slots=True)
class _Column:
    needs_value: bool  # NOT NULL, no default, not generated
    unique: bool  # a one-column unique index
    generated: bool


class MySQLSink:
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
        self.connect_args, self._secrets = _connect_args(spec, self.timeout)
        self.pool: Any = None  # asyncmy.Pool
        self.plan: _Plan | None = None
        self.recycle = MAX_RECYCLE

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
                conn = await asyncmy.connect(**self.connect_args)
                try:
                    columns = await _columns(conn, self.table)
                finally:
                    conn.close()
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
        """One connection: read the server's wait_timeout, find or create the table."""
        try:
            async with asyncio.timeout(self.timeout):
                conn = await asyncmy.connect(**self.connect_args)
                try:
                    async with conn.cursor() as cur:
                        await cur.execute("SELECT @@SESSION.wait_timeout")
                        row = await cur.fetchone()
                    columns = await _columns(conn, self.table)
                    if columns is None:
                        async with conn.cursor() as cur:
                            await cur.execute(self.table.ddl(self.format))
                        await conn.commit()
                        log.info(
                            "table created",
                            extra={"sink": self.name, "table": self.table.text,
                                   "format": self.format},
                        )  # fmt: skip
                        columns = await _columns(conn, self.table)
                    await conn.commit()
                finally:
                    conn.close()
        except Exception as exc:
            raise self._error(exc) from None
        wait = int(row[0]) if row and row[0] else 28800
        # Recycle a pooled connection before the server drops it for idleness (asyncmy's
        # ping(reconnect=True) does not reconnect: long2ice/asyncmy#27).
        self.recycle = max(1, min(MAX_RECYCLE, wait - 60 if wait > 120 else wait // 2))
        plan = self._plan(columns or {})
        if not plan.idempotent:
            log.warning(
                "the table has no unique event_id column: writes are not idempotent, a "
                "retried or replayed event adds a second row",
                extra={"sink": self.name, "table": self.table.text, "shape": plan.shape},
            )
        return plan

    def _plan(self, columns: dict[str, _Column]) -> _Plan:
        t = self.table.sql
        names = set(columns)
        known = (
            {"key_name", "key_hash", "value"} if self.format == "namespace" else set(ACCESS_COLUMNS)
        )
        required = sorted(n for n, c in columns.items() if c.needs_value and n not in known)
        problem = ""
        if self.format == "namespace":
            expected = "key_name, key_hash (generated SHA2(key_name, 256), unique), value"
            hashed = "key_hash" in names and columns["key_hash"].unique
            hashed = hashed and columns["key_hash"].generated
            if not {"key_name", "value"} <= names:
                problem = "it has no `key_name` and `value` columns"
            elif not hashed and not columns["key_name"].unique:
                problem = "neither `key_hash` nor `key_name` is unique"
        else:
            expected = (
                "event_id (unique), event_time, event_name, key_name, event_data — or "
                "RustFS's (event_id, event_time, event_data) or MinIO's (event_time, event_data)"
            )
            if "event_data" not in names:
                problem = "it has no `event_data` column"
        if not problem and required:
            problem = f"its columns {', '.join(required)} are NOT NULL without a default"
        if problem:
            hint = (
                " (it looks like a namespace table: set FORMAT=namespace)"
                if self.format == "access" and {"key_name", "value"} <= names
                else " (it looks like an access table: set FORMAT=access)"
                if self.format == "namespace" and "event_data" in names
                else ""
            )
            raise Permanent(
                f"table {self.table.text} cannot take {self.format} rows: {problem}{hint}; "
                f"expected columns: {expected}"
            )
        if self.format == "namespace":
            return _Plan(
                namespace=True,
                write=f"INSERT INTO {t} (key_name, value) VALUES (%s, %s) "
                "ON DUPLICATE KEY UPDATE value = VALUES(value)",
                delete_by="key_hash" if hashed else "key_name",
                shape="namespace" if hashed else "namespace (by key_name)",
            )
        cols = tuple(c for c in ACCESS_COLUMNS if c in names)
        idempotent = "event_id" in names and columns["event_id"].unique
        write = f"INSERT INTO {t} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
        if idempotent:
            # not INSERT IGNORE: that would also turn a refused value into a silent warning
            write += " ON DUPLICATE KEY UPDATE event_id = event_id"
        shape = (
            "MinIO access"
            if not idempotent
            else "access"
            if {"event_name", "key_name"} <= names
            else "RustFS access"
        )
        return _Plan(False, write=write, columns=cols, idempotent=idempotent, shape=shape)

    async def _open_pool(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                self.pool = await asyncmy.create_pool(
                    minsize=1,
                    maxsize=self.max_size,
                    pool_recycle=self.recycle,
                    **self.connect_args,
                )
        except Exception as exc:
            raise self._error(exc) from None

    async def _discard_pool(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.terminate()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await pool.wait_closed()

    # -- sending ------------------------------------------------------------------------------

    async def send(self, batch: Sequence[LogEntry]) -> list[Result]:
        return await send_isolating_poison(batch, self._attempt)

    async def _attempt(self, batch: Sequence[LogEntry]) -> None:
        """Write the batch; "server has gone away" / "lost connection" (2006/2013) on a pooled
        connection costs one immediate retry on a fresh pool, never a failed batch."""
        for retry in (False, True):
            if self.pool is None:
                await self.start()
            assert self.plan is not None
            plan = self.plan
            params = self._params(plan, batch)  # may raise Poison: no connection needed
            try:
                async with asyncio.timeout(self.timeout):
                    await self._execute(plan, params)
                return
            except Exception as exc:
                kind, message = self._classify(exc)
                if kind in ("lost", "down"):
                    await self._discard_pool()
                    if kind == "lost" and not retry:
                        continue
                raise _failure(kind, message) from None

    async def _execute(self, plan: _Plan, params: TableRows) -> None:
        conn = await self.pool.acquire()
        try:
            async with conn.cursor() as cur:
                if params.rows:
                    await cur.executemany(plan.write, params.rows)  # one multi-row INSERT
                if params.deletes:
                    marks = ", ".join(
                        ["SHA2(%s, 256)" if plan.delete_by == "key_hash" else "%s"]
                        * len(params.deletes)
                    )
                    await cur.execute(
                        f"DELETE FROM {self.table.sql} WHERE {plan.delete_by} IN ({marks})",
                        params.deletes,
                    )
            await conn.commit()
        except BaseException:
            # Never hand back a connection in an unknown state (a cancelled read leaves it
            # out of sync): closing it also rolls the transaction back on the server.
            conn.close()
            raise
        finally:
            self.pool.release(conn)

    def _params(self, plan: _Plan, batch: Sequence[LogEntry]) -> TableRows:
        if plan.namespace:
            return namespace_rows(batch, self.deletes, self.payload)
        return access_rows(batch, plan.columns, self.payload, naive_utc=True)

    # -- errors -------------------------------------------------------------------------------

    def _classify(self, exc: BaseException) -> tuple[str, str]:
        kind, message = _classify(exc, self.timeout)
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return kind, message

    def _error(self, exc: BaseException) -> Retryable | Permanent:
        return _failure(*self._classify(exc))


def _failure(kind: str, message: str) -> Retryable | Permanent:
    if kind == "data":
        return Poison(message)
    if kind == "schema":
        return Permanent(message)
    return Retryable(message)


# Server and client error numbers (MariaDB/MySQL "Error codes" references).
_LOST = {
    2006, 2013, 2055, 2014,  # gone away, lost during query, lost at handshake, out of sync
    1053, 1927, 4031,  # server shutdown, connection killed, idle client disconnected
    1152, 1153, 1154, 1155, 1156, 1157, 1158, 1159, 1160, 1161,  # aborted, net errors
    0,  # asyncmy: "Not connected"
}  # fmt: skip
_DOWN = {
    2002, 2003, 2005, 2026, 2059,  # cannot connect, unknown host, TLS, auth plugin
    1040, 1203, 1226,  # too many connections, user limits
    1044, 1045, 1129, 1130,  # access denied at login, host blocked / not allowed
}  # fmt: skip
_RETRY = {
    1205, 1213,  # lock wait timeout, deadlock
    1021, 1114, 1030, 1180, 1181,  # disk full, table full, engine error, commit failed
    1290, 1836, 1637, 1317, 1969, 3024,  # read-only, busy, interrupted, statement timeouts
}  # fmt: skip
_DATA = {
    1048, 1062, 1264, 1265, 1292, 1300, 1366, 1367, 1406, 1411, 1451, 1452, 1690,
    3140, 3146, 3819,  # MySQL: invalid JSON, JSON type, CHECK violated
    4025, 4038,  # MariaDB: CHECK (and JSON_VALID) failed, JSON syntax
}  # fmt: skip
_SCHEMA = {1036, 1049, 1054, 1064, 1142, 1143, 1146, 1227, 1288, 1109}


def _classify(exc: BaseException, timeout: float) -> tuple[str, str]:
    if isinstance(exc, TimeoutError):
        return "down", f"no answer from MySQL within {timeout:g}s"
    if isinstance(exc, my_errors.MySQLError):
        args = exc.args
        number = args[0] if args and isinstance(args[0], int) else -1
        text = str(args[1]) if len(args) > 1 else str(exc)
        text = f"{number}: {text}" if number > 0 else text or type(exc).__name__
        if number in _LOST:
            return "lost", f"connection lost: {text}"
        if number in _DOWN:
            return "down", text
        if number in _RETRY:
            return "retry", text
        if number in _DATA:
            return "data", text
        if number in _SCHEMA:
            return "schema", text
        if 2000 <= number < 3000:  # other client-side errors: the connection is suspect
            return "lost", f"connection lost: {text}"
        return "retry", text
    if isinstance(exc, OSError | EOFError):
        return "lost", f"connection lost: {type(exc).__name__}: {exc}"
    return "retry", f"{type(exc).__name__}: {exc}"


async def _columns(conn: Any, table: _Table) -> dict[str, _Column] | None:
    """The table's columns, or None if there is no such table."""
    async with conn.cursor() as cur:
        await cur.execute(_COLUMNS_SQL, (table.schema, table.name))
        rows = await cur.fetchall()
    if not rows:
        return None
    return {str(r[0]): _Column(bool(r[1]), bool(r[2]), bool(r[3])) for r in rows}


# -- configuration --------------------------------------------------------------------------

_PART = re.compile(r"`((?:[^`]|``)+)`|([A-Za-z0-9_$]+)")


@dataclass(frozen=True, slots=True)
class _Table:
    text: str  # as configured
    schema: str | None
    name: str

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
            parts.append(quoted.replace("``", "`") if quoted is not None else bare)
            pos = match.end()
            if pos == len(text) or text[pos] != ".":
                break
            pos += 1
        if pos != len(text) or not 1 <= len(parts) <= 2 or any(len(p) > 64 for p in parts):
            raise ConfigError(
                f"{variable}: {text!r} is not a table name (use `name` or `db.name`: letters, "
                "digits, _ and $; or a `quoted name`)"
            )
        schema = parts[0] if len(parts) == 2 else None
        return cls(text, schema, parts[-1])

    @property
    def sql(self) -> str:
        parts = (self.schema, self.name) if self.schema else (self.name,)
        return ".".join("`" + p.replace("`", "``") + "`" for p in parts)

    def ddl(self, fmt: str) -> str:
        return (NAMESPACE_DDL if fmt == "namespace" else ACCESS_DDL).format(table=self.sql)


def _connect_args(spec: SinkSpec, timeout: float) -> tuple[dict[str, Any], list[str]]:
    """asyncmy.connect() arguments from DSN_STRING and the TLS keys; and the secrets to strip
    from every error message."""
    variable = spec.variable("dsn_string")
    text = spec["dsn_string"].strip()
    if text.startswith(("mysql://", "mariadb://")):
        dsn = _parse_url(text, variable)
    else:
        dsn = _parse_go_dsn(text, variable)
    args: dict[str, Any] = {
        "user": dsn.user or "root",
        "password": dsn.password,
        "database": dsn.database or None,
        "charset": "utf8mb4",
        "autocommit": False,  # a batch is one transaction
        "connect_timeout": timeout,
    }
    if dsn.socket:
        args["unix_socket"] = dsn.socket
    else:
        args["host"] = dsn.host or "127.0.0.1"
        args["port"] = dsn.port or 3306
    if not args["database"]:
        raise ConfigError(f"{variable}: names no database (…/dbname at the end)")
    context = _tls_context(spec, dsn.tls, variable)
    if context is not None:
        args["ssl"] = context
    secrets = [s for s in (text, dsn.password) if len(s) >= 3]
    return args, secrets


@dataclass(slots=True)
class _Dsn:
    user: str = ""
    password: str = ""
    host: str = ""
    port: int = 0
    socket: str = ""
    database: str = ""
    tls: str = ""  # "", true, skip-verify, false


def _parse_go_dsn(text: str, variable: str) -> _Dsn:
    """`[user[:password]@][net[(addr)]]/dbname[?param=value&…]`, as go-sql-driver/mysql reads
    it: the last `/` starts the database, the last `@` before it ends the credentials."""
    bad = ConfigError(
        f"{variable}: not a MySQL DSN (use user:pass@tcp(host:port)/db or "
        "mysql://user:pass@host:port/db)"
    )
    slash = text.rfind("/")
    if slash < 0:
        raise bad
    dsn = _Dsn()
    head, tail = text[:slash], text[slash + 1 :]
    at = head.rfind("@")
    if at >= 0:
        user, _, password = head[:at].partition(":")
        dsn.user, dsn.password = user, password
    address = head[at + 1 :]
    net, paren, addr = address.partition("(")
    if paren:
        if not addr.endswith(")"):
            raise bad
        addr = addr[:-1]
    if net in ("", "tcp", "tcp6"):
        dsn.host, dsn.port = _host_port(addr, bad)
    elif net == "unix":
        dsn.socket = addr or "/tmp/mysql.sock"
    else:
        raise ConfigError(f"{variable}: network {net!r} is not supported (use tcp or unix)")
    database, _, query = tail.partition("?")
    dsn.database = database
    params = dict(parse_qsl(query))
    dsn.tls = params.get("tls", "").lower()
    return dsn


def _parse_url(text: str, variable: str) -> _Dsn:
    bad = ConfigError(f"{variable}: not a mysql://user:pass@host:port/db URL")
    try:
        parts = urlsplit(text)
        port = parts.port or 0
    except ValueError:
        raise bad from None
    params = {k.lower(): v for k, v in parse_qsl(parts.query)}
    tls = params.get("tls", "").lower()
    mode = params.get("ssl-mode", params.get("ssl_mode", "")).lower()
    if mode in ("required", "require"):
        tls = "skip-verify"
    elif mode in ("verify_ca", "verify_identity", "verify-full", "verify-ca"):
        tls = "true"
    return _Dsn(
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        host=parts.hostname or "",
        port=port,
        database=unquote(parts.path.lstrip("/")),
        tls=tls,
    )


def _host_port(addr: str, bad: ConfigError) -> tuple[str, int]:
    if not addr:
        return "127.0.0.1", 3306
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = addr.rpartition(":") if ":" in addr else (addr, "", "")
    if port and not port.isdigit():
        raise bad
    return host, int(port) if port else 3306


def _tls_context(spec: SinkSpec, dsn_tls: str, variable: str) -> ssl.SSLContext | None:
    if spec["tls_client_cert"] or spec["tls_client_key"]:
        if not (spec["tls_client_cert"] and spec["tls_client_key"]):
            raise ConfigError(
                f"{spec.variable('tls_client_cert')} and {spec.variable('tls_client_key')} go "
                "together: set both or neither"
            )
    wanted = spec["tls_ca"] or spec["tls_client_cert"] or dsn_tls in ("true", "skip-verify")
    if not wanted:
        return None
    return client_context(spec, skip_verify=dsn_tls == "skip-verify" and not spec["tls_ca"])
