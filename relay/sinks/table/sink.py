"""The table sink, the same on PostgreSQL and on MySQL/MariaDB; a `Dialect` knows the server.

`FORMAT=namespace`: one row per object, keyed "bucket/decoded key", holding the object's last
event; removal events (DELETE_ON) delete the row, every other event upserts it.
`FORMAT=access`: one row per event, appended; where the table has a unique event_id a row
already there is skipped, so a retried or replayed event never adds a second one.

The table is created when missing; a table found is used as it is when it has the columns
of MinIO's or RustFS's shape (MinIO's access table has no event id: writes to it are not
idempotent, and a warning says so). It is looked up each time the sink connects, so a table
fixed or re-created while the sink was down is taken as it is then.

A batch is one transaction. When the table refuses it for what may be one object's doing (an
event's data, a row another session holds locked), each object's events are written in a
transaction of their own, and those of an object whose data is refused one event at a time:
only what is at fault fails, for the delivery layer to dead-letter (data) or park (a lock),
and everything else is delivered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Literal, TypeVar

from relay.config import ConfigError, Key, SinkConfig, SinkSpec
from relay.delivery.lanes import by_lane
from relay.queue.log import LogEntry
from relay.rules import compile_event_patterns
from relay.sinks.base import (
    DeliveryError,
    Health,
    Permanent,
    Result,
    Retryable,
    event_time,
    object_name,
)
from relay.sinks.connection import Connection
from relay.sinks.formats import render

log = logging.getLogger("relay.sinks.table")

Format = Literal["namespace", "access"]
# What a failure says about the write: `lost` (the connection died: once more on a fresh
# one), `down` (cannot connect, no answer), `retry` (the server is busy or short of
# something), `locked` (a row is locked by another session, or a deadlock), `data` (an
# event's data is refused), `schema` (the table or the grants do not take the write).
Kind = Literal["lost", "down", "retry", "locked", "data", "schema"]

P = TypeVar("P")  # the client library's pool
C = TypeVar("C")  # one of its connections


class TableConfig(SinkConfig, kw_only=True, frozen=True):
    """The keys of both table sinks; each dialect adds how to connect."""

    # FORMAT keeps the stores' meaning here, as MinIO's SQL targets have it.
    format: Annotated[
        Literal["", "namespace", "access"],
        Key(
            "`namespace`: one row per object (upsert; delete on DELETE_ON events). `access`: "
            "one row per event, appended, idempotent on the event id. Unset: `namespace`, "
            "except for RUSTFS_NOTIFY_MYSQL_* (`access`, the only format of RustFS's MySQL "
            "target). (The payload shape is PAYLOAD_FORMAT: on this sink FORMAT keeps the "
            "stores' meaning.)"
        ),
    ] = ""  # type: ignore[assignment]
    batch_size: Annotated[
        int,
        Key(
            "Most events handed to the sink at once, written in one transaction (a larger "
            "default than other sinks': a round trip and a commit per batch are what a SQL "
            "sink waits on; measured 1.45x PostgreSQL's rate at 100)."
        ),
    ] = 1000
    table: Annotated[
        str,
        Key(
            "Table written to, `name` or `schema.name` (MySQL: `db.name`); created when "
            'missing. Quote a part as the server does (`"Name"`, `` `Name` ``) to keep its '
            "case where PostgreSQL would fold it to lower case.",
            required=True,
        ),
    ] = ""
    payload_format: Annotated[
        Literal["minio", "records", "cloudevents", "raw"],
        Key(
            "Shape of the JSON stored in the table (`value`, `event_data`): `minio` "
            "({EventName, Key, Records}, what MinIO and RustFS tables hold), `records`, "
            "`cloudevents` or `raw`."
        ),
    ] = "minio"
    delete_on: Annotated[
        tuple[str, ...],
        Key(
            "Namespace format: events that delete the object's row (comma-separated names, "
            "`family:*` wildcards). The default is RustFS's choice; MinIO deletes on "
            "`s3:ObjectRemoved:Delete` only (delete markers keep the row). Empty: never "
            "delete."
        ),
    ] = ("s3:ObjectRemoved:*",)
    max_open_connections: Annotated[
        int, Key("Most connections the sink's pool opens (a batch uses one).")
    ] = 2
    tls_ca: Annotated[
        str,
        Key(
            "PEM CA bundle the server's certificate must chain to: TLS on, verified "
            "(PostgreSQL: `sslmode=verify-full`)."
        ),
    ] = ""
    tls_client_cert: Annotated[str, Key("PEM client certificate (with TLS_CLIENT_KEY).")] = ""
    tls_client_key: Annotated[str, Key("PEM key of the client certificate.")] = ""


def check(spec: SinkSpec, config: TableConfig) -> None:
    """What the keys' types do not say (a dialect checks this first)."""
    if config.max_open_connections < 1:
        raise ConfigError(f"{spec.variable('max_open_connections')}: must be at least 1")
    if bool(config.tls_client_cert) != bool(config.tls_client_key):
        raise ConfigError(
            f"{spec.variable('tls_client_cert')} and {spec.variable('tls_client_key')} go "
            "together: set both or neither"
        )


def lock_wait(timeout: float) -> float:
    """How long a write waits for a row another session holds locked before the server fails
    it: half the sink's TIMEOUT, so a lock is reported as one (retryable, one object's)
    instead of the whole write timing out and its connection being thrown away."""
    return timeout / 2


class Poison(Permanent):
    """The table refuses the data of (at least) one event of the write: find which."""


class Locked(Retryable):
    """A row of the write is locked by another session (or a deadlock): find whose."""


# -- the table --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameRules:
    """How a server reads a table name."""

    quote: str  # '"' or '`'
    bare: str  # regex of an unquoted part
    fold: bool  # unquoted parts are folded to lower case
    max_length: int
    qualifier: str  # what the first of two parts is called


@dataclass(frozen=True, slots=True)
class TableName:
    text: str  # as configured
    parts: tuple[str, ...]  # [schema,] name, as the server resolves them
    quote: str

    @classmethod
    def parse(cls, text: str, variable: str, rules: NameRules) -> TableName:
        q = re.escape(rules.quote)
        part = re.compile(f"{q}((?:[^{q}]|{q}{q})+){q}|({rules.bare})")
        parts: list[str] = []
        pos = 0
        text = text.strip()
        while match := part.match(text, pos):
            quoted, bare = match.groups()
            if quoted is not None:
                parts.append(quoted.replace(rules.quote * 2, rules.quote))
            else:
                parts.append(bare.lower() if rules.fold else bare)
            pos = match.end()
            if pos == len(text) or text[pos] != ".":
                break
            pos += 1
        too_long = any(len(p) > rules.max_length for p in parts)
        if pos != len(text) or not 1 <= len(parts) <= 2 or too_long:
            raise ConfigError(
                f"{variable}: {text!r} is not a table name (use `name` or "
                f"`{rules.qualifier}.name`: letters, digits, _ and $; or a "
                f"{rules.quote}quoted name{rules.quote})"
            )
        return cls(text, tuple(parts), rules.quote)

    @property
    def schema(self) -> str | None:
        return self.parts[0] if len(self.parts) == 2 else None

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def sql(self) -> str:
        return ".".join(self.quoted(p) for p in self.parts)

    def quoted(self, part: str) -> str:
        return self.quote + part.replace(self.quote, self.quote * 2) + self.quote


@dataclass(frozen=True, slots=True)
class Column:
    needs_value: bool  # NOT NULL, and nothing fills it in
    unique: bool  # a unique index on this column alone
    generated: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """How writes go to the table found (or created) when the sink connected."""

    namespace: bool
    write: str  # the upsert (namespace) or the insert (access)
    delete: str = ""
    hashed: bool = False  # namespace rows are deleted by key_hash: SHA2(key, 256)
    columns: tuple[str, ...] = ()  # access: the table's columns the insert fills
    idempotent: bool = True
    shape: str = ""


@dataclass(slots=True)
class Writes:
    """One transaction: `statement` for every row, then `delete` of the keys."""

    statement: str
    rows: list[dict[str, Any]]
    delete: str = ""
    keys: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Target(Generic[P]):
    """What the sink's Connection holds: the pool, and how to write to the table."""

    pool: P
    plan: Plan


# -- a server ---------------------------------------------------------------------------------


class Dialect(ABC, Generic[P, C]):
    """A server: its client library, its SQL (`queries`, by name), its errors."""

    server: str  # "PostgreSQL", in messages
    where: str  # "PostgreSQL at host:5432", in messages (no secret)
    table: TableName
    queries: dict[str, str]
    key_column: str  # the namespace key: "key" (PostgreSQL), "key_name" (MySQL)
    hashed_key: bool  # a namespace table may have key_hash = SHA2(key, 256)
    access_columns: tuple[str, ...]  # every access column written when the table has it
    created_columns: tuple[str, ...]  # those of the access table the sink creates
    naive_utc: bool  # event_time is written without a zone, in UTC
    expected: dict[str, str]  # format → the columns a table of it needs, for messages

    @abstractmethod
    def create_statements(self, fmt: Format) -> list[str]:
        """The DDL of the table the sink creates (`relay check --print-ddl`)."""

    @abstractmethod
    async def connect(self) -> C:
        """One connection of its own (table lookup, health), autocommit or committed."""

    @abstractmethod
    async def disconnect(self, conn: C) -> None: ...

    @abstractmethod
    async def run(self, conn: C, statement: str) -> None:
        """A statement without parameters (DDL), committed."""

    @abstractmethod
    async def columns(self, conn: C) -> dict[str, Column] | None:
        """The table's columns, or None if there is no such table."""

    @abstractmethod
    async def pool_lifetime(self, conn: C) -> float:
        """Seconds a pooled connection may live: shorter than the server keeps one idle."""

    @abstractmethod
    async def open_pool(self, lifetime: float) -> P: ...

    @abstractmethod
    async def close_pool(self, pool: P) -> None: ...

    @abstractmethod
    async def transaction(self, pool: P, writes: Writes) -> None:
        """`writes` in one transaction on a connection of the pool."""

    @abstractmethod
    def classify(self, exc: BaseException) -> tuple[Kind, str]:
        """What a failure says about the write, and its message (the client's text)."""


# -- the sink ---------------------------------------------------------------------------------

_DROP_REASON: dict[Kind, str | None] = {
    "lost": "the connection was lost",
    "schema": "the table does not take the write: it is looked up again",
    "down": None,  # the dispatcher says the sink is down
}


class TableSink:
    def __init__(
        self, spec: SinkSpec, config: TableConfig, dialect: Dialect[Any, Any], fmt: Format
    ) -> None:
        self.name = spec.name
        self.dialect = dialect
        self.format = fmt
        self.payload = config.payload_format
        self.timeout = config.timeout
        self.deletes = compile_event_patterns(config.delete_on, spec.variable("delete_on"))
        self.connection: Connection[Target[Any]] = Connection(
            spec.name, dialect.where, self._open, self._close, config.timeout
        )
        self._warned = False

    @property
    def stale_default(self) -> str:
        # A namespace row must never go back in time: an event older than the one the row
        # has is not written. An access table keeps every event: an older one is flagged.
        return "drop" if self.format == "namespace" else "flag"

    async def start(self) -> None:
        await self.connection.get()

    async def close(self) -> None:
        await self.connection.close()

    async def health(self) -> Health:
        d = self.dialect
        try:
            async with asyncio.timeout(min(self.timeout, 5.0)):
                conn = await d.connect()
                try:
                    columns = await d.columns(conn)
                finally:
                    await d.disconnect(conn)
        except Exception as exc:
            return Health(False, d.classify(exc)[1])
        if columns is None:
            return Health(True, f"connected; table {d.table.text} will be created")
        try:
            plan = self._plan(columns)
        except Retryable as exc:
            return Health(False, str(exc))
        return Health(True, f"connected; table {d.table.text} ({plan.shape})")

    # -- sending ------------------------------------------------------------------------------

    async def send_batch(self, batch: Sequence[LogEntry]) -> list[Result]:
        try:
            await self._write(batch)
        except (Poison, Locked) as exc:
            return await self._write_apart(batch, exc)
        return [None] * len(batch)

    async def _write_apart(self, entries: Sequence[LogEntry], error: DeliveryError) -> list[Result]:
        """`entries` failed together with `error`, which may be one object's doing: write
        each object's events on their own, and those of an object whose data is refused
        one by one (a lock holds an object's events together: they wait for the same row)."""
        objects = list(by_lane(entries).values())
        if len(objects) > 1:
            parts = objects
        elif isinstance(error, Poison) and len(entries) > 1:
            parts = [[index] for index in range(len(entries))]
        else:
            return [error] * len(entries)
        results: list[Result] = [None] * len(entries)
        for indexes in parts:
            part = [entries[index] for index in indexes]
            try:
                await self._write(part)
                continue
            except (Poison, Locked) as exc:
                outcome = await self._write_apart(part, exc)
            except DeliveryError as exc:
                outcome = [exc] * len(part)
            for index, result in zip(indexes, outcome):
                results[index] = result
        return results

    async def _write(self, entries: Sequence[LogEntry]) -> None:
        """One transaction. A connection that died while idle in the pool costs one more try
        on a fresh pool, never a failed write."""
        for last_try in (False, True):
            target = await self.connection.get()
            writes = self._writes(target.plan, entries)  # Poison: no round trip needed
            try:
                async with asyncio.timeout(self.timeout):
                    await self.dialect.transaction(target.pool, writes)
                return
            except Exception as exc:
                kind, message = self.dialect.classify(exc)
            if kind in _DROP_REASON:
                self.connection.drop(_DROP_REASON[kind])
                if kind == "lost" and not last_try:
                    continue
            raise _failure(kind, message)

    def _writes(self, plan: Plan, entries: Sequence[LogEntry]) -> Writes:
        if not plan.namespace:
            return Writes(plan.write, [self._access_row(e, plan.columns) for e in entries])
        # The table ends as if the events were applied in order: only each object's last
        # event matters (an upsert replaces the row, a delete removes it).
        last = {object_name(e): e for e in entries}
        writes = Writes(plan.write, [], plan.delete)
        for key, entry in last.items():
            if self.deletes is not None and self.deletes.match(entry.event.event_name):
                writes.keys.append(key_hash(key) if plan.hashed else key)
            else:
                writes.rows.append({"key": key, "value": self._json(entry)})
        return writes

    def _access_row(self, entry: LogEntry, columns: Sequence[str]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for column in columns:
            if column == "event_id":
                row[column] = entry.event.event_id
            elif column == "event_time":
                when = event_time(entry)
                row[column] = when.replace(tzinfo=None) if self.dialect.naive_utc else when
            elif column == "event_name":
                row[column] = entry.event.event_name
            elif column in ("key", "key_name"):
                row[column] = object_name(entry)
            elif column == "queued_at_ms":  # RustFS's PostgreSQL access table
                row[column] = int(entry.received_at * 1000)
            else:  # value, event_data
                row[column] = self._json(entry)
        return row

    def _json(self, entry: LogEntry) -> str:
        try:
            return render(entry, self.payload).decode("utf-8")
        except (ValueError, UnicodeDecodeError) as exc:
            raise Poison(f"seq {entry.seq}: cannot render the event as JSON: {exc}") from None

    # -- the connection -----------------------------------------------------------------------

    async def _open(self) -> Target[Any]:
        """Find the table (create it when missing), then open the pool."""
        d = self.dialect
        try:
            conn = await d.connect()
            try:
                lifetime = await d.pool_lifetime(conn)
                columns = await d.columns(conn)
                if columns is None:
                    for statement in d.create_statements(self.format):
                        await d.run(conn, statement)
                    log.info("table created", extra={"sink": self.name, "table": d.table.text,
                                                     "format": self.format})  # fmt: skip
                    columns = await d.columns(conn)
            finally:
                await d.disconnect(conn)
            plan = self._plan(columns or {})
            pool = await d.open_pool(lifetime)
        except DeliveryError:
            raise
        except Exception as exc:
            raise Retryable(d.classify(exc)[1]) from None
        if not plan.idempotent and not self._warned:
            self._warned = True
            log.warning(
                "the table has no unique event_id column: writes are not idempotent, a "
                "retried or replayed event adds a second row",
                extra={"sink": self.name, "table": d.table.text, "shape": plan.shape},
            )
        return Target(pool, plan)

    async def _close(self, target: Target[Any]) -> None:
        await self.dialect.close_pool(target.pool)

    def _plan(self, columns: dict[str, Column]) -> Plan:
        """The writes for the table's columns; Retryable when the table cannot take this
        format's rows (the sink is down until the table is fixed: nothing is dead-lettered)."""
        d = self.dialect
        names = set(columns)
        key = d.key_column
        namespace = self.format == "namespace"
        hashed = (
            d.hashed_key and "key_hash" in columns
            and columns["key_hash"].unique and columns["key_hash"].generated
        )  # fmt: skip
        if namespace:
            known = {key, "value", "key_hash"}
        else:
            known = set(d.access_columns)
        payload = [c for c in ("value", "event_data") if c in d.access_columns]
        problem = ""
        if namespace and not {key, "value"} <= names:
            problem = f"it has no `{key}` and `value` columns"
        elif namespace and not hashed and not columns[key].unique:
            problem = (
                f"neither `key_hash` nor `{key}` is unique"
                if d.hashed_key
                else f"its `{key}` column is not unique (PRIMARY KEY or UNIQUE)"
            )
        elif not namespace and not names & set(payload):
            problem = "it has no " + " or ".join(f"`{c}`" for c in payload) + " column"
        elif not namespace and not names & {"event_id", "event_time"}:
            problem = "it has neither an `event_id` nor an `event_time` column"
        required = sorted(n for n, c in columns.items() if c.needs_value and n not in known)
        if not problem and required:
            problem = f"its columns {', '.join(required)} are NOT NULL without a default"
        if problem:
            hint = ""
            if not namespace and {key, "value"} <= names:
                hint = " (it looks like a namespace table: set FORMAT=namespace)"
            elif namespace and names & {"event_id", "event_data"}:
                hint = " (it looks like an access table: set FORMAT=access)"
            raise Retryable(
                f"table {d.table.text} cannot take {self.format} rows: {problem}{hint}; "
                f"expected columns: {d.expected[self.format]}"
            )
        q, table = d.queries, d.table.sql
        if namespace:
            return Plan(
                namespace=True,
                write=q["upsert_object"].format(table=table),
                delete=q["delete_objects_by_hash" if hashed else "delete_objects"].format(
                    table=table
                ),
                hashed=hashed,
                shape="namespace" if hashed or not d.hashed_key else f"namespace (by {key})",
            )
        cols = tuple(c for c in d.access_columns if c in names)
        idempotent = "event_id" in names and columns["event_id"].unique
        insert = q["insert_events_once" if idempotent else "insert_events"].format(
            table=table, columns=", ".join(cols), values=", ".join(f"%({c})s" for c in cols)
        )
        shape = (
            "MinIO access"
            if not idempotent
            else "access"
            if set(d.created_columns) <= names
            else "RustFS access"
        )
        return Plan(False, insert, columns=cols, idempotent=idempotent, shape=shape)


def key_hash(key: str) -> str:
    """SHA2(key, 256) as MySQL computes it of a utf8mb4 key_name: the SHA-256 of its UTF-8."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def _failure(kind: Kind, message: str) -> DeliveryError:
    if kind == "data":
        return Poison(message)
    if kind == "locked":
        return Locked(message)
    return Retryable(message)


def script(statements: Sequence[str]) -> str:
    return ";\n".join(statements) + ";\n"
