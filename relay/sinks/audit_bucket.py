"""Audit bucket sink: writes each batch as NDJSON objects to an S3 bucket (AWS, Ceph RGW,
MinIO, RustFS), one object per source bucket, named after its events so that a retried
upload overwrites itself.

Objects are `<prefix>/<bucket>/YYYY/MM/DD/HH-MM-SS-<first seq>-<last seq>.ndjson[.gz]`, one
line per event: the normalised fields and the record as the store sent it (see
relay/sinks/auditlog.py, also for how each event is written once). Uploads are single-part
PUTs with no SDK checksum headers (obstore's defaults), path-style unless VIRTUAL_HOSTED is
on. An event is acknowledged only once its object is written. Events about the audit bucket
itself are not written (a bucket that notifies the relay about its own audit objects would
feed itself forever).

Errors: connection failures, timeouts and 5xx are retried; 403 (access denied, credentials
refused) and 404 NoSuchBucket are retried too, with a message saying what to fix, so the
events wait for the operator instead of going to the dead letters; other 4xx are permanent.

TLS: the endpoint's certificate is verified against the system's CAs and TLS_CA. obstore
takes the CA bundle's bytes, not an SSLContext: when the file changes the next request builds
a new client that trusts the new bundle (relay/sinks/tls.py CaBundle). obstore cannot present
a client certificate (its client options have none), so this sink has no such option; the S3
servers it writes to do not ask for one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

import obstore
import obstore.exceptions as obx
from obstore.store import S3Store

from relay.config import ConfigError, Key, SinkSpec
from relay.queue.log import LogEntry
from relay.sinks import auditlog
from relay.sinks.base import DeliveryError, Health, Permanent, Result, Retryable, exc_text
from relay.sinks.tls import CaBundle

TYPE = "audit_bucket"


class Config(auditlog.AuditConfig, kw_only=True, frozen=True):
    endpoint: Annotated[
        str,
        Key(
            "S3 endpoint URL, e.g. `http://rgw:7480` or `https://minio.example:9000`; empty "
            "for AWS (the REGION's endpoint). An `http://` endpoint needs ALLOW_HTTP=on."
        ),
    ] = ""
    region: Annotated[str, Key("Region the requests are signed for.")] = "us-east-1"
    bucket: Annotated[str, Key("Bucket the audit objects are written to.", required=True)] = ""
    access_key: Annotated[
        str,
        Key("Access key; empty: the standard AWS_ACCESS_KEY_ID (or the AWS credential chain)."),
    ] = ""
    secret_key: Annotated[
        str, Key("Secret key of ACCESS_KEY; empty: AWS_SECRET_ACCESS_KEY.", secret=True)
    ] = ""
    virtual_hosted: Annotated[
        bool,
        Key(
            "Virtual-hosted-style requests (`bucket.host`); off: path-style (`host/bucket`), "
            "what Ceph, MinIO and RustFS expect."
        ),
    ] = False
    allow_http: Annotated[bool, Key("Allow a plain `http://` ENDPOINT (no TLS).")] = False
    tls_ca: Annotated[
        str,
        Key(
            "PEM CA bundle that signs the endpoint's certificate (trusted besides the system's "
            "CAs; reloaded when the file changes)."
        ),
    ] = ""


_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_CERTIFICATE = re.compile(r"InvalidCertificate\(\s*(\w+)")  # rustls, in obstore's debug dump
# 4xx answers that say the relay's configuration (or the store's) is wrong, not the object:
# the events wait until an operator fixes it, rather than going to the dead letters.
_CONFIG_CODES = {
    "AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "AuthorizationHeaderMalformed", "InvalidToken", "ExpiredToken",
    "TokenRefreshRequired", "RequestTimeTooSkewed", "NoSuchBucket", "PermanentRedirect",
    "TemporaryRedirect", "IllegalLocationConstraintException", "InvalidRegion",
    "InvalidBucketState", "OperationAborted", "QuotaExceeded", "UserSuspended",
    "InvalidBucketName", "MissingSecurityHeader", "InvalidRequest", "KeyTooLongError",
}  # fmt: skip
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                     "ExpiredToken", "TokenRefreshRequired"}  # fmt: skip


class AuditBucketSink:
    def __init__(self, spec: SinkSpec) -> None:
        self.name = spec.name
        config = spec.typed(Config)
        self.bucket = config.bucket
        self.endpoint = config.endpoint.rstrip("/")
        self.timeout = config.timeout
        self.prefix = auditlog.normalise_prefix(config.prefix, spec.variable("prefix"))
        if self.endpoint:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{spec.variable('endpoint')}: not an http(s) URL")
            if parts.scheme == "http" and not config.allow_http:
                raise ConfigError(
                    f"{spec.variable('endpoint')}: an http:// endpoint sends every object "
                    f"unencrypted; set {spec.variable('allow_http')}=on to allow it"
                )
            if parts.username or parts.password:
                raise ConfigError(
                    f"{spec.variable('endpoint')}: put credentials in ACCESS_KEY/SECRET_KEY, "
                    "not in the URL"
                )
        if bool(config.access_key) != bool(config.secret_key):
            missing = "secret_key" if config.access_key else "access_key"
            raise ConfigError(f"{spec.variable(missing)}: required with the other key")
        self.store_config: dict[str, Any] = {
            "region": config.region,
            "virtual_hosted_style_request": config.virtual_hosted,
        }
        if self.endpoint:
            # AWS_ENDPOINT_URL_S3 in the environment would win over `endpoint`: ours rules
            self.store_config["endpoint"] = self.endpoint
            self.store_config["aws_endpoint_url_s3"] = self.endpoint
        if config.access_key:
            self.store_config["access_key_id"] = config.access_key
            self.store_config["secret_access_key"] = config.secret_key
        self.client_options: dict[str, Any] = {
            "allow_http": config.allow_http,
            "timeout": timedelta(seconds=self.timeout),
            "connect_timeout": timedelta(seconds=min(self.timeout, 5.0)),
            "user_agent": "s3-notify-relay",
        }
        self.ca = CaBundle(spec, config) if config.tls_ca else None
        self.ca_version = -1  # of the bundle the store was built with
        self.writer = auditlog.AuditWriter(
            self.name, self.prefix, config.compression, config.concurrency,
            auditlog.expected_principals(spec.relay), auditlog.remembered(config),
        )  # fmt: skip
        self.store: S3Store | None = None

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._client()

    def _client(self) -> S3Store:
        """The S3 client; a new one once the CA bundle changed on disk."""
        options = dict(self.client_options)
        version = -1
        if self.ca is not None:
            version, options["root_certificate"] = self.ca.current
        if self.store is not None and version == self.ca_version:
            return self.store
        try:
            self.store = S3Store(
                self.bucket,
                config=self.store_config,  # type: ignore[arg-type]
                client_options=options,  # type: ignore[arg-type]
                # one attempt per send: the dispatcher retries, with its own backoff
                retry_config={"max_retries": 0,
                              "retry_timeout": timedelta(seconds=self.timeout)},
            )  # fmt: skip
        except Exception as exc:  # obstore refuses a configuration it cannot use
            raise Retryable(f"cannot set up the S3 client: {_message(exc)}") from None
        self.ca_version = version
        return self.store

    async def close(self) -> None:
        if self.store is None:
            return
        self.store = None
        # obstore's Rust runtime is never shut down (PyO3/pyo3-async-runtimes#40): a
        # connection it is still dropping when the interpreter exits can abort the process
        # (SIGABRT, measured here in ~4% of short CLI runs). Dropping the client while the
        # loop runs and giving its tasks a moment avoids that (0 in 100 runs).
        await asyncio.sleep(0.1)

    # -- sending ------------------------------------------------------------------------------

    async def send_batch(self, batch: Sequence[LogEntry]) -> list[Result]:
        store = self._client()

        async def put(obj: auditlog.AuditObject) -> None:
            await self._put(store, obj)

        return await self.writer.send(batch, put, self._is_self)

    def _is_self(self, entry: LogEntry) -> bool:
        return entry.event.bucket == self.bucket

    async def _put(self, store: S3Store, obj: auditlog.AuditObject) -> None:
        try:
            async with asyncio.timeout(self.timeout + 5):
                await obstore.put_async(
                    store, obj.name, obj.body, use_multipart=False,
                    attributes={"Content-Type": obj.content_type},
                )  # fmt: skip
        except TimeoutError:
            raise Retryable(f"PUT {obj.name}: no answer within {self.timeout:g}s") from None
        except Exception as exc:
            raise self._classify(exc, f"PUT {obj.name}") from None

    # -- reading (relay audit verify) ---------------------------------------------------------

    async def list_objects(self, prefix: str) -> list[str]:
        """Names of the objects under `prefix` (segment-wise). Needs s3:ListBucket."""
        store = self._client()
        try:
            async with asyncio.timeout(self.timeout * 6):
                metas = await obstore.list(store, prefix=prefix).collect_async()
        except TimeoutError:
            raise Retryable(f"LIST {prefix}: no answer within {self.timeout * 6:g}s") from None
        except Exception as exc:
            raise self._classify(exc, f"LIST {prefix}", reading=True) from None
        return [m["path"] for m in metas]

    async def read_object(self, name: str) -> bytes:
        """An object's bytes. Needs s3:GetObject."""
        store = self._client()
        try:
            async with asyncio.timeout(self.timeout * 6):
                got = await obstore.get_async(store, name)
                return bytes(await got.bytes_async())
        except TimeoutError:
            raise Retryable(f"GET {name}: no answer within {self.timeout * 6:g}s") from None
        except Exception as exc:
            raise self._classify(exc, f"GET {name}", reading=True) from None

    # -- the rest -----------------------------------------------------------------------------

    async def health(self) -> Health:
        """GET of a name that does not exist: NoSuchKey (or AccessDenied, for a writer that
        may only PUT) proves the endpoint, the bucket and the credentials."""
        store = self._client()
        probe = f"{self.prefix}/.relay-probe" if self.prefix else ".relay-probe"
        where = f"bucket {self.bucket!r} on {self._where()}"
        try:
            async with asyncio.timeout(min(self.timeout, 8.0)):
                got = await obstore.get_async(store, probe)
                await got.bytes_async()
        except TimeoutError:
            return Health(False, f"{where}: no answer")
        except Exception as exc:
            code = _code(_message(exc))
            if isinstance(exc, FileNotFoundError) and code != "NoSuchBucket":
                return Health(True, f"{where} reachable, credentials accepted")
            if code == "AccessDenied":
                # a writer without s3:GetObject/s3:ListBucket is refused even a missing key
                return Health(True, f"{where} reachable, credentials accepted (reading was "
                                    "denied: fine for writing; `relay audit verify` needs "
                                    "s3:GetObject and s3:ListBucket)")  # fmt: skip
            return Health(False, exc_text(self._classify(exc, "GET")))
        return Health(True, f"{where} reachable, credentials accepted")

    def _where(self) -> str:
        return self.endpoint or f"AWS S3 ({self.store_config['region']})"

    def _classify(self, exc: BaseException, what: str, reading: bool = False) -> DeliveryError:
        text = _message(exc)
        if isinstance(exc, ValueError) and not isinstance(exc, obx.BaseError):
            return Permanent(f"{what}: {text}")  # obstore refused the object name
        status_match = _STATUS.search(text)
        status = int(status_match.group(1)) if status_match else None
        code = _code(text)
        where = f"bucket {self.bucket!r} on {self._where()}"
        if code == "NoSuchBucket":
            return Retryable(f"{what}: {where} does not exist (NoSuchBucket); create it or "
                             "fix BUCKET/ENDPOINT. Events wait.")  # fmt: skip
        if code in _CREDENTIAL_CODES or isinstance(exc, obx.UnauthenticatedError):
            return Retryable(f"{what}: {self._where()} refused the credentials ({code or status}"
                             "); fix ACCESS_KEY/SECRET_KEY. Events wait.")  # fmt: skip
        if code == "RequestTimeTooSkewed":
            return Retryable(f"{what}: the relay's clock is too far from the server's "
                             "(RequestTimeTooSkewed). Events wait.")  # fmt: skip
        if code == "AccessDenied" or isinstance(exc, obx.PermissionDeniedError) or status == 403:
            need = "s3:GetObject and s3:ListBucket" if reading else "s3:PutObject"
            resource = f"arn:aws:s3:::{self.bucket}" + (f"/{self.prefix}/*" if self.prefix
                                                         else "/*")  # fmt: skip
            return Retryable(f"{what}: access denied by {where} ({code or status}); the "
                             f"relay's user needs {need} on {resource}. Events wait.")  # fmt: skip
        if status is None or status >= 500 or status in (408, 429) or status < 400:
            # connection refused or reset, timeout, 5xx, throttling, a redirect (wrong
            # region or endpoint)
            short = text if len(text) <= 300 else text[:300] + "…"
            return Retryable(f"{what}: {short}")
        if code in _CONFIG_CODES or status in (401, 404, 405, 409):
            return Retryable(f"{what}: {where} answered {status} {code or ''}".rstrip()
                             + "; check the sink's configuration. Events wait.")  # fmt: skip
        return Permanent(f"{what}: {where} refused the object: {status} {code or ''}".rstrip())


def _message(exc: BaseException) -> str:
    """obstore's error without the Rust debug dump it appends; a refused TLS certificate,
    which only that dump names, first."""
    text, _, debug = str(exc).partition("\n\nDebug source")
    refused = _CERTIFICATE.search(debug)
    if refused:
        return (f"TLS: the endpoint's certificate was refused ({refused.group(1)}; trusted: "
                f"TLS_CA and the system's CAs): {text.strip()}")  # fmt: skip
    return text.strip()


def _code(text: str) -> str | None:
    found = _CODE.search(text)
    return found.group(1) if found else None


def create(spec: SinkSpec) -> AuditBucketSink:
    return AuditBucketSink(spec)
