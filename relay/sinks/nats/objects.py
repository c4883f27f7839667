"""NATS object store sink: writes each batch as NDJSON objects to a JetStream object store,
the same objects under the same names as the audit bucket sink.

Objects are named `<prefix>/<bucket>/YYYY/MM/DD/HH-MM-SS-<first seq>-<last seq>.ndjson[.gz]`
(see relay/sinks/auditlog.py, also for how each event is written once), one per source
bucket per batch. The object store keeps a SHA-256 digest of each object, which readers (and
`relay audit verify`) check. Writing a name again replaces the object (its old chunks are
purged), so a retried upload leaves no duplicate. The store's bucket is created when missing
(file storage, one replica).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Annotated

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.object_store import ObjectStore

from relay.config import ConfigError, Key, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks import auditlog
from relay.sinks.base import Health, Permanent, Result, Retryable, describe
from relay.sinks.nats import connection
from relay.sinks.nats.connection import NatsConnection

TYPE = "nats_objects"
_BUCKET = re.compile(r"^[a-zA-Z0-9_-]+$")


class Config(auditlog.AuditConfig, kw_only=True, frozen=True):
    # connection, credentials and TLS: the nats sink's keys, spelled (and aliased) the same
    address: connection.Address = ""
    username: connection.Username = ""
    password: connection.Password = ""
    token: connection.Token = ""
    credentials_file: connection.CredentialsFile = ""
    tls_ca: connection.TlsCa = ""
    tls_client_cert: connection.TlsClientCert = ""
    tls_client_key: connection.TlsClientKey = ""
    tls_required: connection.TlsRequired = False
    bucket: Annotated[
        str,
        Key(
            "Object store (bucket) the objects are written to; letters, digits, `-` and `_`. "
            "Created when missing (file storage, one replica).",
            required=True,
        ),
    ] = ""


class NatsObjectsSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        config = spec.typed(Config)
        self.timeout = config.timeout
        self.bucket = config.bucket
        if not _BUCKET.match(self.bucket):
            raise ConfigError(
                f"{spec.variable('bucket')}: {self.bucket!r} is not an object store name "
                "(letters, digits, - and _)"
            )
        self.prefix = auditlog.normalise_prefix(config.prefix, spec.variable("prefix"))
        self.writer = auditlog.AuditWriter(
            self.name, self.prefix, config.compression, config.concurrency,
            auditlog.expected_principals(spec.relay), auditlog.remembered(config),
        )  # fmt: skip
        # the relay never writes while disconnected, so the reconnect buffer stays small
        pending = max(2 * 1024**2, 2 * config.batch_bytes)
        self.link = NatsConnection(spec, pending, prepare=self._open_store)
        self.store: ObjectStore | None = None
        self._names: list[str] | None = None  # the store's listing, read once per verify

    async def start(self) -> None:
        await self.link.client()

    async def _open_store(self, nc: NatsClient) -> None:
        js = nc.jetstream(timeout=self.timeout)
        try:
            async with asyncio.timeout(self.timeout * 2):
                try:
                    self.store = await js.object_store(self.bucket)
                except nats.js.errors.BucketNotFoundError:
                    config = ObjectStoreConfig(
                        bucket=self.bucket,
                        description="s3-notify-relay audit trail",
                        storage=StorageType.FILE,
                    )
                    self.store = await js.create_object_store(self.bucket, config=config)
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            raise Retryable(f"JetStream is not enabled on {self.link.where}") from None
        except nats.js.errors.APIError as exc:
            raise Retryable(f"cannot open object store {self.bucket!r}: "
                            f"{exc.description or exc}") from None  # fmt: skip
        except (TimeoutError, nats.errors.Error) as exc:
            raise Retryable(f"cannot open object store {self.bucket!r}: "
                            f"{describe(exc)}") from None  # fmt: skip

    async def _ready(self) -> ObjectStore:
        await self.link.client()
        assert self.store is not None, "opened with the client"
        return self.store

    # -- sending ------------------------------------------------------------------------------

    async def send_batch(self, batch: Sequence[LogEntry]) -> list[Result]:
        await self._ready()
        return await self.writer.send(batch, self._put)

    async def _put(self, obj: auditlog.AuditObject) -> None:
        store = await self._ready()
        meta = ObjectMeta(name=obj.name, headers={"Content-Type": [obj.content_type]})
        try:
            async with asyncio.timeout(self.timeout * 2):
                await store.put(obj.name, obj.body, meta=meta)
        except TimeoutError:
            raise Retryable(f"put {obj.name}: not acknowledged within {self.timeout * 2:g}s"
                            ) from None  # fmt: skip
        except nats.js.errors.APIError as exc:
            # stream limits (max bytes), storage unavailable, …: an operator fixes the
            # store; the events wait
            raise Retryable(f"put {obj.name}: JetStream refused it: "
                            f"{exc.description or exc}") from None  # fmt: skip
        except (nats.errors.Error, OSError) as exc:
            raise Retryable(f"put {obj.name}: {describe(exc)}") from None
        except (TypeError, ValueError) as exc:
            raise Permanent(f"put {obj.name}: {exc}") from None

    # -- reading (relay audit verify) ---------------------------------------------------------

    async def list_objects(self, prefix: str) -> list[str]:
        """Names under `prefix` (segment-wise); the store's whole listing is read once."""
        store = await self._ready()
        if self._names is None:
            try:
                async with asyncio.timeout(self.timeout * 6):
                    infos = await store.list(ignore_deletes=True)
            except nats.js.errors.NotFoundError:
                infos = []
            except (TimeoutError, nats.errors.Error) as exc:
                raise Retryable(f"cannot list object store {self.bucket!r}: "
                                f"{describe(exc)}") from None  # fmt: skip
            self._names = sorted(i.name for i in infos if not i.deleted and i.name)
        head = prefix.rstrip("/") + "/"
        return [n for n in self._names if n.startswith(head)]

    async def read_object(self, name: str) -> bytes:
        """An object's bytes; nats-py checks them against the stored SHA-256 digest."""
        store = await self._ready()
        try:
            async with asyncio.timeout(self.timeout * 6):
                got = await store.get(name)
        except nats.js.errors.DigestMismatchError:
            raise Permanent(f"{name}: content does not match its SHA-256 digest") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise Retryable(f"cannot read {name}: {describe(exc)}") from None
        return bytes(got.data or b"")

    # -- the rest -----------------------------------------------------------------------------

    async def close(self) -> None:
        await self.link.close()

    async def health(self) -> Health:
        return await self.link.health(f"object store {self.bucket!r} on {self.link.where}")


def create(spec: SinkSpec) -> NatsObjectsSink:
    return NatsObjectsSink(spec)
