"""NATS object store sink: writes each batch as NDJSON objects to a JetStream object store,
the same objects under the same names as the audit bucket sink.

Objects are named `<prefix>/<bucket>/YYYY/MM/DD/HH-MM-SS-<first seq>-<last seq>.ndjson[.gz]`
(see relay/sinks/auditlog.py), one per source bucket per batch. The object store keeps a
SHA-256 digest of each object, which readers (and `relay audit verify`) check. Writing a
name again replaces the object (its old chunks are purged), so a retried upload leaves no
duplicate. The store's bucket is created when missing (file storage, one replica).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.object_store import ObjectStore

from relay.config import ConfigError, Option, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks import auditlog
from relay.sinks import nats as nats_sink
from relay.sinks.base import Health, Permanent, Result, Retryable

log = logging.getLogger("relay.sinks.nats_objects")

TYPE = "nats_objects"
# Connection, credentials and TLS: the nats sink's keys, spelled (and aliased) the same.
_NATS_KEYS = (
    "address", "username", "password", "token", "credentials_file", "tls_ca",
    "tls_client_cert", "tls_client_key", "tls_required",
)  # fmt: skip
OPTIONS = (
    *(o for o in nats_sink.OPTIONS if o.key in _NATS_KEYS),
    Option(
        "bucket",
        "str",
        "",
        "Object store (bucket) the objects are written to; letters, digits, `-` and `_`. "
        "Created when missing (file storage, one replica).",
        required=True,
    ),
    *auditlog.OPTIONS,
)

_BUCKET = re.compile(r"^[a-zA-Z0-9_-]+$")


class NatsObjectsSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        self.timeout: float = spec["timeout"]
        self.bucket: str = spec["bucket"]
        if not _BUCKET.match(self.bucket):
            raise ConfigError(
                f"{spec.variable('bucket')}: {self.bucket!r} is not an object store name "
                "(letters, digits, - and _)"
            )
        self.prefix = auditlog.normalise_prefix(spec["prefix"], spec.variable("prefix"))
        self.servers = nats_sink._servers(spec)
        self.tls_required: bool = spec["tls_required"]
        self.secrets = [s for s in (spec["password"], spec["token"]) if len(s) >= 4]
        self.connect_options = nats_sink._auth(spec)
        context = nats_sink._ssl_context(spec)
        if context is not None:
            self.connect_options["tls"] = context
        self.writer = auditlog.AuditWriter(
            self.name, self.prefix, spec["compression"], spec["concurrency"],
            auditlog.expected_principals(),
        )  # fmt: skip
        # the relay never writes while disconnected, so the reconnect buffer stays small
        self.pending_size = max(2 * 1024**2, 2 * spec["batch_bytes"])
        self.nc: NatsClient | None = None
        self.store: ObjectStore | None = None
        self.last_error = ""
        self._names: list[str] | None = None  # the store's listing, read once per verify

    # -- connection ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.nc is not None and not self.nc.is_closed and self.store is not None:
            return
        await self._connect()

    async def _connect(self) -> None:
        await self._drop()
        self.last_error = ""
        nc = await nats_sink.connect(self, reconnected_cb=self._on_reconnected)
        self.nc = nc
        try:
            self.store = await self._open_store(nc)
        except Exception:
            await self._drop()
            raise

    async def _open_store(self, nc: NatsClient) -> ObjectStore:
        js = nc.jetstream(timeout=self.timeout)
        try:
            async with asyncio.timeout(self.timeout * 2):
                try:
                    return await js.object_store(self.bucket)
                except nats.js.errors.BucketNotFoundError:
                    log.info("creating object store", extra={"sink": self.name,
                                                             "bucket": self.bucket})  # fmt: skip
                    config = ObjectStoreConfig(
                        bucket=self.bucket,
                        description="s3-notify-relay audit trail",
                        storage=StorageType.FILE,
                    )
                    return await js.create_object_store(self.bucket, config=config)
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            raise Retryable(f"JetStream is not enabled on {self._where()}") from None
        except nats.js.errors.APIError as exc:
            raise Retryable(f"cannot open object store {self.bucket!r}: "
                            f"{exc.description or exc}") from None  # fmt: skip
        except (TimeoutError, nats.errors.Error) as exc:
            raise Retryable(f"cannot open object store {self.bucket!r}: "
                            f"{self._text(exc) or 'timeout'}") from None  # fmt: skip

    async def _drop(self) -> None:
        nc, self.nc, self.store = self.nc, None, None
        if nc is not None:
            await nats_sink._abandon(nc, self.timeout)

    async def _ready(self) -> ObjectStore:
        if self.nc is None or self.nc.is_closed or self.store is None:
            await self._connect()
        assert self.nc is not None and self.store is not None
        if not self.nc.is_connected:
            # writing now would park chunks in the reconnect buffer: refuse instead
            why = f": {self.last_error}" if self.last_error else ""
            raise Retryable(f"not connected to {self._where()} (reconnecting{why})")
        return self.store

    # -- sending ------------------------------------------------------------------------------

    async def send(self, batch: Sequence[LogEntry]) -> list[Result]:
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
            raise Retryable(f"put {obj.name}: {self._text(exc) or type(exc).__name__}") from None
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
                                f"{self._text(exc) or 'timeout'}") from None  # fmt: skip
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
            raise Retryable(f"cannot read {name}: {self._text(exc) or 'timeout'}") from None
        return bytes(got.data or b"")

    # -- callbacks ----------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = self._text(exc) or type(exc).__name__
        log.debug("nats client error", extra={"sink": self.name, "error": self.last_error})

    async def _on_reconnected(self) -> None:
        self.last_error = ""

    # -- the rest -----------------------------------------------------------------------------

    async def close(self) -> None:
        await self._drop()

    async def health(self) -> Health:
        try:
            async with asyncio.timeout(min(self.timeout, 8.0)):
                await self._ready()
                assert self.nc is not None
                rtt = await self.nc.rtt(timeout=max(1, round(min(self.timeout, 5.0))))
        except Exception as exc:
            return Health(False, self._text(exc) or type(exc).__name__)
        return Health(True, f"object store {self.bucket!r} on {self._where()} reachable "
                            f"(round trip {rtt * 1000:.1f} ms)")  # fmt: skip

    def _where(self) -> str:
        return ",".join(nats_sink._USERINFO.sub("//", s) for s in self.servers)

    def _text(self, exc: BaseException) -> str:
        text = str(exc)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return nats_sink._USERINFO.sub("//***@", text)


def create(spec: SinkSpec) -> NatsObjectsSink:
    return NatsObjectsSink(spec)
