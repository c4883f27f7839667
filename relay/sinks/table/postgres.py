"""PostgreSQL sink: writes events into a table the way MinIO's and RustFS's PostgreSQL targets
do, so an existing table (and whatever reads it) keeps working when the relay takes over.

The table sink (sink.py) on psycopg 3: a pool of autocommit connections, a batch one
pipelined transaction (BEGIN, the statements and COMMIT travel together), errors told apart
by SQLSTATE. The SQL is postgres.sql.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from relay.config import ConfigError, Key, SinkSpec
from relay.queue.queries import named
from relay.sinks import clientlogs
from relay.sinks.table import sink

TYPE = "postgres"


class Config(sink.TableConfig, kw_only=True, frozen=True):
    connection_string: Annotated[
        str,
        Key(
            "MinIO's key: the libpq connection string, `host=… port=… user=… password=… "
            "dbname=…` or a `postgresql://user:pass@host:port/db` URL. Set this or DSN_STRING.",
            secret=True,
        ),
    ] = ""
    dsn_string: Annotated[
        str,
        Key(
            "RustFS's key: the same as CONNECTION_STRING (either form). Set one of the two.",
            secret=True,
        ),
    ] = ""
    tls_required: Annotated[
        bool, Key("Require TLS (`sslmode=require`, or `verify-full` when TLS_CA is set).")
    ] = False


Q = named("relay.sinks.table", "postgres.sql")
NAMES = sink.NameRules(
    quote='"', bare=r"[A-Za-z_][A-Za-z0-9_$]*", fold=True, max_length=63, qualifier="schema"
)
MAX_LIFETIME = 1800.0  # seconds a pooled connection lives, unless the server's is shorter
MAX_IDLE = 300.0


def create(spec: SinkSpec) -> sink.TableSink:
    config = spec.typed(Config)
    return sink.TableSink(spec, config, PostgreSQL(spec, config), config.format or "namespace")


def ddl(spec: SinkSpec) -> str:
    """The statements that create the sink's table (what it runs when the table is missing)."""
    config = spec.typed(Config)
    table = sink.TableName.parse(config.table, spec.variable("table"), NAMES)
    return sink.script(statements(table, config.format or "namespace"))


def statements(table: sink.TableName, fmt: sink.Format) -> list[str]:
    if fmt == "namespace":
        return [Q["create_namespace_table"].format(table=table.sql)]
    index = table.quoted(f"{table.name[:48]}_event_time_idx")
    return [Q["create_access_table"].format(table=table.sql),
            Q["create_access_index"].format(index=index, table=table.sql)]  # fmt: skip


Pool = AsyncConnectionPool[Any]
Conn = psycopg.AsyncConnection[Any]


class PostgreSQL(sink.Dialect[Pool, Conn]):
    server = "PostgreSQL"
    queries = Q
    key_column = "key"
    hashed_key = False
    # Tables found are used as they are when they hold these columns:
    #   namespace  key (unique), value                                        relay, MinIO
    #   access     event_id (unique), event_time, event_name, key, value      relay
    #              event_id (unique), event_name, key, value, queued_at_ms   RustFS
    #              event_time, event_data  (no event id: not idempotent)      MinIO
    access_columns = ("event_id", "event_time", "event_name", "key", "value", "event_data",
                      "queued_at_ms")  # fmt: skip
    created_columns = ("event_id", "event_time", "event_name", "key", "value")
    naive_utc = False
    expected = {
        "namespace": "key (unique), value",
        "access": "event_id (unique), event_time, event_name, key, value — or RustFS's "
        "(event_id, event_name, key, value, queued_at_ms) or MinIO's (event_time, event_data)",
    }

    def __init__(self, spec: SinkSpec, config: Config) -> None:
        sink.check(spec, config)
        self.sink = spec.name
        self.table = sink.TableName.parse(config.table, spec.variable("table"), NAMES)
        self.timeout = config.timeout
        self.max_size = config.max_open_connections
        self.lock_timeout_ms = str(max(1, round(sink.lock_wait(config.timeout) * 1000)))
        self.conninfo, self.where = _conninfo(spec, config)
        clientlogs.quiet("psycopg.pool")  # a line per failed reconnect while the server is down

    def create_statements(self, fmt: sink.Format) -> list[str]:
        return statements(self.table, fmt)

    async def connect(self) -> Conn:
        return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)

    async def disconnect(self, conn: Conn) -> None:
        await conn.close()

    async def run(self, conn: Conn, statement: str) -> None:
        await conn.execute(statement)

    async def columns(self, conn: Conn) -> dict[str, sink.Column] | None:
        table = {"table": self.table.sql}
        async with conn.cursor(row_factory=dict_row) as cur:
            found = await (await cur.execute(Q["table_exists"], table)).fetchone()
            if not found or not found["found"]:
                return None
            rows = await (await cur.execute(Q["table_columns"], table)).fetchall()
        return {
            r["column_name"]: sink.Column(r["needs_value"], r["is_unique"], r["is_generated"])
            for r in rows
        }

    async def pool_lifetime(self, conn: Conn) -> float:
        async with conn.cursor(row_factory=dict_row) as cur:
            row = await (await cur.execute(Q["idle_session_timeout"])).fetchone()
        idle_ms = int(row["idle_ms"]) if row and row["idle_ms"] else 0
        return max(1.0, min(MAX_LIFETIME, idle_ms / 2000)) if idle_ms else MAX_LIFETIME

    async def open_pool(self, lifetime: float) -> Pool:
        pool: Pool = AsyncConnectionPool(
            self.conninfo,
            kwargs={"autocommit": True},  # transactions are explicit
            open=False,
            min_size=1,
            max_size=self.max_size,
            check=AsyncConnectionPool.check_connection,
            configure=self._configure,
            timeout=self.timeout,
            max_lifetime=lifetime,
            max_idle=min(MAX_IDLE, lifetime),
            name=self.sink,
        )
        try:
            await pool.open(wait=True, timeout=self.timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close_pool(pool)
            raise
        return pool

    async def _configure(self, conn: Conn) -> None:
        await conn.execute(Q["use_utc"])
        await conn.execute(Q["set_lock_timeout"], {"lock_timeout": self.lock_timeout_ms})

    async def close_pool(self, pool: Pool) -> None:
        await pool.close(timeout=min(2.0, self.timeout))

    async def transaction(self, pool: Pool, writes: sink.Writes) -> None:
        async with pool.connection() as conn:
            async with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                if writes.rows:
                    await cur.executemany(writes.statement, writes.rows)
                if writes.keys:
                    await cur.execute(writes.delete, {"keys": writes.keys})

    def classify(self, exc: BaseException) -> tuple[sink.Kind, str]:
        return _classify(exc, self.timeout)


# SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html)
_LOST = {"57P01", "57P02", "57P03"}  # admin/crash shutdown, cannot connect now
_LOCKED = {"55P03", "40P01"}  # lock_timeout, deadlock: another session holds a row
_RETRY = {"40001", "57014", "25006"}  # serialization, cancelled, read-only transaction
_RETRY_CLASSES = {"40", "53", "58", "XX"}  # rollback, resources, system, internal
_DATA_CLASSES = {"22", "23", "44", "P0", "2F", "38", "39", "27"}  # data, constraints, triggers
_SCHEMA_CLASSES = {"42", "0A", "3F", "3D", "2B", "0L", "0P"}  # undefined, denied, unsupported


def _classify(exc: BaseException, timeout: float) -> tuple[sink.Kind, str]:
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
        if state in _LOCKED:
            return "locked", text
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


def _conninfo(spec: SinkSpec, config: Config) -> tuple[str, str]:
    """The connection string with the relay's defaults and the TLS keys, and where it
    connects to (for messages)."""
    if config.connection_string and config.dsn_string:
        raise ConfigError(
            f"{spec.variable('connection_string')} and {spec.variable('dsn_string')} are both "
            "set; keep one of them"
        )
    key = "connection_string" if config.connection_string else "dsn_string"
    text = (config.connection_string or config.dsn_string).strip()
    if not text:
        raise ConfigError(
            f"{spec.variable('connection_string')} (MinIO) or {spec.variable('dsn_string')} "
            f"(RustFS): one is required for the sink {spec.name}"
        )
    try:
        params = pg_conninfo.conninfo_to_dict(text)
    except psycopg.Error:
        # libpq's message quotes the string, password included: not repeated here
        raise ConfigError(
            f"{spec.variable(key)}: not a valid connection string (use `host=… dbname=…` "
            "key=value pairs or a postgresql://user:pass@host:port/db URL)"
        ) from None
    defaults: dict[str, Any] = {
        "connect_timeout": max(2, int(config.timeout)),
        "application_name": "s3-notify-relay",
        # a peer that vanished (network cut) is noticed in seconds, not hours
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    extra = {k: v for k, v in defaults.items() if k not in params}
    if config.tls_client_cert:
        extra["sslcert"] = config.tls_client_cert
        extra["sslkey"] = config.tls_client_key
    if config.tls_ca:
        extra["sslrootcert"] = config.tls_ca
        extra["sslmode"] = "verify-full"
    elif config.tls_required:
        extra["sslmode"] = "require"
    host = str(params.get("host") or params.get("hostaddr") or "")
    port = str(params.get("port") or 5432)
    where = f"PostgreSQL at {host}:{port}" if host and not host.startswith("/") else "PostgreSQL"
    return pg_conninfo.make_conninfo(text, **extra), where
