"""A real Ceph RADOS Gateway on loopback: an S3 server that really sends bucket notifications.

Ceph 16 ("pacific", the Debian bookworm packages) has no standalone RGW backend, so
`start_ceph` builds the smallest real cluster, all of it under one directory and on
127.0.0.1: one monitor (auth disabled), one OSD on the in-memory "memstore" object store
(no disk; its data dies with it) and radosgw with the beast frontend on a free port. No
ceph-mgr is needed for I/O or notifications. Cold start takes ~12-18 s on 2 cores, so the
e2e suite starts it once per session (tests/e2e/conftest.py). `Ceph.stop()` signals exactly
the processes `start_ceph` started.

With `tls=ServerTls(...)` (tests/support/certs.py) radosgw also serves HTTPS with that
certificate on `Ceph.tls_endpoint` (beast's `ssl_endpoint`); `endpoint` stays plain HTTP for
the test's own requests. RGW does not ask clients for certificates.

`S3` is a minimal SigV4-signing client on aiohttp for the S3 and the SNS-compatible topic API
(CreateTopic) of RGW: no pinned dependency signs arbitrary requests (obstore covers object
I/O only, and its paths drop a trailing `/` and refuse empty segments). It percent-encodes
every key byte except the RFC 3986 unreserved ones, so a key with spaces, `+`, `%`, `?`, a
trailing `/` or non-ASCII characters is stored exactly as given.

Traps found on the way (Ceph 16.2.15):
- radosgw defaults `ms_mon_client_mode` to "secure"; with auth disabled that leaves it no
  usable connection mode and it loops on "get_initial_auth_request returned -13". Forcing
  `ms mon client mode = crc` and `ms client mode = crc` fixes it.
- `ceph-mon --mkfs` wants a keyring even with auth disabled.
- Pools must be size 1 with few PGs and a high per-OSD PG cap, or RGW cannot create its pools
  on a single OSD.
- An OSD whose monitor is already gone waits ~5 s trying to report its shutdown: stop in the
  order rgw, osd, mon.

Persistent topics (`persistent=true`), as radosgw 16.2.15 runs them:
- An event is committed to a RADOS queue (pool default.rgw.log, namespace notif, one object
  per topic) during the S3 request. A manager thread takes ownership of queues it does not
  own yet every ~30 s (hard-coded; the lock lasts 90 s and is renewed on every run), so the
  first push of a new topic comes 0-30 s after its creation; an owned queue is then polled
  every 100 ms.
- A failed push (non-2xx, connection refused) is retried at once, in a loop with no pause
  (~4 000 requests/s against an endpoint answering 503).
- When the endpoint refuses connections while two or more events are queued, the queue can
  stall for good: a push never completes (perf counter pubsub_push_pending stays > 0) and
  nothing is delivered until radosgw restarts, and then only once the old lock has expired
  (~60 s later). `Ceph.queue_run_at` lets a test keep its endpoint down only while the queue
  is not owned yet.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from tests.support.certs import ServerTls

BINARIES = (
    "ceph-mon",
    "ceph-osd",
    "radosgw",
    "radosgw-admin",
    "ceph",
    "ceph-authtool",
    "monmaptool",
    "rados",
)
INSTALL_HINT = "run scripts/install-ceph.sh"
HOST = "127.0.0.1"
ACCESS_KEY = "RELAYTESTACCESSKEY"
SECRET_KEY = "relay-test-secret-key-0123456789abcdef"
REGION = "default"  # RGW's default zonegroup; SigV4 scopes name it
QUEUE_LOCK_SECONDS = 90  # how long a persistent-notification queue lock lasts (Ceph 16)
QUEUE_RUN_SECONDS = 30  # how often the manager looks for queues to own (Ceph 16)


class CephError(RuntimeError):
    pass


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Ceph:
    """A running one-node cluster. `endpoint` is the S3 (and SNS topic API) URL of RGW."""

    directory: Path
    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    started_in: float = 0.0  # seconds from the first command to the S3 user existing
    tls_endpoint: str = ""  # https://…, when started with TLS
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CEPH_CONF": str(self.directory / "ceph.conf")}

    def run(self, *args: str, timeout: float = 60.0) -> str:
        """Run a Ceph tool (`ceph`, `radosgw-admin`, ...) against this cluster; its stdout."""
        result = subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=timeout,
            cwd=self.directory,
        )  # fmt: skip
        if result.returncode != 0:
            raise CephError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def queue_run_at(self, topic: str) -> float | None:
        """When radosgw's persistent-notification manager last ran over this persistent
        topic's queue (Unix time), or None while no radosgw owns the queue yet.

        The manager (hard-coded in Ceph 16) takes the queues it does not own yet every
        ~30 s and then renews each queue's lock for 90 s on every run, so the lock's
        expiration minus 90 s is the time of its latest run. A queue is pushed only once it
        is owned; from then on it is polled every 100 ms.
        """
        try:
            out = self.run("rados", "-p", "default.rgw.log", "-N", "notif", "lock", "info",
                           topic, f"{topic}_lock", timeout=20)  # fmt: skip
        except CephError:
            return None  # no lock taken yet
        lockers = json.loads(out).get("lockers") or []
        if not lockers:
            return None
        expiration = dt.datetime.fromisoformat(lockers[0]["expiration"])
        return expiration.timestamp() - QUEUE_LOCK_SECONDS

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.directory / "log" / name
        if not path.exists():
            return f"({path} does not exist)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop what start_ceph started, rgw first and the monitor last; idempotent."""
        for name in ("rgw", "osd", "mon"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _conf(directory: Path, mon_v2: int, mon_v1: int, rgw_port: int, fsid: str,
          memstore_bytes: int, tls: ServerTls | None = None, tls_port: int = 0) -> str:  # fmt: skip
    frontend = f"beast endpoint={HOST}:{rgw_port}"
    if tls:
        frontend += (f" ssl_endpoint={HOST}:{tls_port} ssl_certificate={tls.cert}"
                     f" ssl_private_key={tls.key}")  # fmt: skip
    return f"""[global]
fsid = {fsid}
mon host = [v2:{HOST}:{mon_v2},v1:{HOST}:{mon_v1}]
public addr = {HOST}
cluster addr = {HOST}
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms client mode = crc
run dir = {directory}/run
admin socket = {directory}/run/$name.asok
log file = {directory}/log/$name.log
keyring = {directory}/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
[mon]
mon data = {directory}/mon.$id
[osd]
osd data = {directory}/osd.$id
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
[client.rgw]
rgw frontends = {frontend}
rgw data = {directory}/rgw
"""


def start_ceph(
    directory: Path, timeout: float = 120.0, memstore_bytes: int = 1024**3,
    tls: ServerTls | None = None,
) -> Ceph:  # fmt: skip
    """Start mon, OSD and radosgw under `directory` and create an S3 user with known keys.
    `memstore_bytes`: the OSD's capacity, held in memory (a full OSD refuses writes). With
    `tls`, radosgw serves HTTPS too, on `tls_endpoint`.

    Raises CephError (with the daemons' log tails) when something does not come up within
    `timeout`; whatever was started is stopped again before it raises.
    """
    missing = missing_binaries()
    if missing:
        raise CephError(f"Ceph is not installed ({', '.join(missing)} missing): {INSTALL_HINT}")
    t0 = time.monotonic()
    deadline = t0 + timeout
    directory = directory.resolve()
    for sub in ("run", "log", "rgw"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    mon_v2, mon_v1, rgw_port = free_port(), free_port(), free_port()
    tls_port = free_port() if tls else 0
    fsid = str(uuid.uuid4())
    (directory / "ceph.conf").write_text(
        _conf(directory, mon_v2, mon_v1, rgw_port, fsid, memstore_bytes, tls, tls_port)
    )
    ceph = Ceph(directory=directory, endpoint=f"http://{HOST}:{rgw_port}",
                tls_endpoint=f"https://{HOST}:{tls_port}" if tls else "")  # fmt: skip
    atexit.register(ceph.stop)  # in case the session dies before the fixture's finalizer

    def start(name: str, *command: str) -> None:
        out = open(directory / "log" / f"{name}.out", "ab")
        ceph.processes[name] = subprocess.Popen(
            command, env=ceph.env, stdout=out, stderr=subprocess.STDOUT, cwd=directory,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        out.close()

    def wait(what: str, ready: Callable[[], bool], log: str) -> None:
        while not ready():
            for name, process in ceph.processes.items():
                if process.poll() is not None:
                    raise CephError(f"{name} exited with {process.returncode} while waiting for "
                                    f"{what}:\n{ceph.log_tail(name + '.out')}\n"
                                    f"{ceph.log_tail(log)}")  # fmt: skip
            if time.monotonic() > deadline:
                raise CephError(f"{what} not ready after {timeout:.0f} s:\n{ceph.log_tail(log)}")
            time.sleep(0.1)

    try:
        keyring = str(directory / "keyring")
        ceph.run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.",
                 "--cap", "mon", "allow *")  # fmt: skip
        ceph.run("ceph-authtool", keyring, "--gen-key", "-n", "client.admin",
                 "--cap", "mon", "allow *", "--cap", "osd", "allow *")  # fmt: skip
        monmap = str(directory / "monmap")
        ceph.run("monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                 f"[v2:{HOST}:{mon_v2},v1:{HOST}:{mon_v1}]", monmap)  # fmt: skip
        ceph.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", keyring)
        start("mon", "ceph-mon", "-i", "a", "-f")
        wait("ceph-mon", lambda: _port_open(mon_v2), "mon.a.log")

        osd_uuid = str(uuid.uuid4())
        osd_id = ceph.run("ceph", "osd", "new", osd_uuid).strip()
        (directory / f"osd.{osd_id}").mkdir(exist_ok=True)
        ceph.run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        start("osd", "ceph-osd", "-i", osd_id, "-f")
        # radosgw creates its pools on first start; it only needs the OSD to be up for that,
        # and waits for it by itself, so both boot at the same time.
        start("rgw", "radosgw", "-n", "client.rgw", "-f")
        wait("radosgw", lambda: _port_open(rgw_port) and (not tls or _port_open(tls_port)),
             "client.rgw.log")  # fmt: skip

        ceph.run("radosgw-admin", "-n", "client.admin", "user", "create", "--uid=relay",
                 "--display-name=relay tests", f"--access-key={ACCESS_KEY}",
                 f"--secret-key={SECRET_KEY}")  # fmt: skip
    except BaseException:
        ceph.stop()
        raise
    ceph.started_in = time.monotonic() - t0
    return ceph


# ---------------------------------------------------------------------------------------------
# A minimal S3 / SNS client with AWS Signature Version 4

_UNRESERVED = "-_.~"  # RFC 3986 unreserved characters besides letters and digits


def _uri(text: str, keep_slash: bool = False) -> str:
    return quote(text, safe=_UNRESERVED + ("/" if keep_slash else ""))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def xml(self) -> ET.Element:
        return ET.fromstring(self.body)

    def find(self, name: str) -> str:
        """Text of the first element with this local name, anywhere in an XML body."""
        for element in self.xml().iter():
            if element.tag.rsplit("}", 1)[-1] == name:
                return element.text or ""
        raise AssertionError(f"no <{name}> in {self.body[:500]!r}")


@dataclass
class Written:
    """What the S3 client did to one object, as S3 answered it."""

    key: str
    size: int
    etag: str  # without quotes
    version_id: str  # "" when the bucket is not versioned


class S3:
    """`async with S3(ceph) as s3:` -- path-style requests, every one SigV4 signed."""

    def __init__(self, ceph: Ceph) -> None:
        self.ceph = ceph
        self.host = URL(ceph.endpoint).raw_authority
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> S3:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    def _sign(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
              service: str) -> None:  # fmt: skip
        now = dt.datetime.now(dt.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        headers["host"] = self.host
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = _sha256(body)
        signed = sorted(
            k
            for k in headers
            if k in ("host", "content-type", "content-md5") or k.startswith("x-amz-")
        )
        canonical_headers = "".join(f"{k}:{' '.join(headers[k].split())}\n" for k in signed)
        canonical = "\n".join((method, path, query, canonical_headers, ";".join(signed),
                               headers["x-amz-content-sha256"]))  # fmt: skip
        scope = f"{day}/{self.ceph.region}/{service}/aws4_request"
        to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope, _sha256(canonical.encode())))
        key = ("AWS4" + self.ceph.secret_key).encode()
        for part in (day, self.ceph.region, service, "aws4_request"):
            key = _hmac(key, part)
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.ceph.access_key}/{scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={signature}"
        )

    async def request(
        self,
        method: str,
        bucket: str = "",
        key: str | None = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        service: str = "s3",
        expect: Sequence[int] = (200,),
    ) -> Response:
        assert self.session is not None, "use `async with S3(ceph)`"
        path = "/" + _uri(bucket) if bucket else "/"
        if key is not None:
            path += "/" + _uri(key, keep_slash=True)
        canonical_query = "&".join(f"{_uri(k)}={_uri(v)}" for k, v in sorted((query or {}).items()))
        all_headers = {k.lower(): v for k, v in (headers or {}).items()}
        self._sign(method, path, canonical_query, all_headers, body, service)
        url = URL(self.ceph.endpoint + path + ("?" + canonical_query if canonical_query else ""),
                  encoded=True)  # fmt: skip
        async with self.session.request(
            method, url, data=body, headers=all_headers, skip_auto_headers=("Content-Type",)
        ) as response:
            got = Response(response.status, CIMultiDict(response.headers), await response.read())
        if got.status not in expect:
            raise AssertionError(f"{method} {path}?{canonical_query} -> {got.status}: "
                                 f"{got.body[:1000]!r}")  # fmt: skip
        return got

    # -- buckets ---------------------------------------------------------------------------

    async def create_bucket(self, bucket: str, versioned: bool = False) -> None:
        await self.request("PUT", bucket)
        if versioned:
            xml = (b'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                   b"<Status>Enabled</Status></VersioningConfiguration>")  # fmt: skip
            await self.request("PUT", bucket, query={"versioning": ""}, body=xml)

    async def put_notification(self, bucket: str, xml: str) -> None:
        await self.request("PUT", bucket, query={"notification": ""}, body=xml.encode())

    async def list_keys(self, bucket: str) -> list[str]:
        got = await self.request("GET", bucket, query={"list-type": "2", "max-keys": "1000"})
        return [e.text or "" for e in got.xml().iter() if e.tag.rsplit("}", 1)[-1] == "Key"]

    # -- objects ---------------------------------------------------------------------------

    @staticmethod
    def _object_headers(
        metadata: Mapping[str, str] | None, tags: Mapping[str, str] | None,
        content_type: str | None,
    ) -> dict[str, str]:  # fmt: skip
        headers = {f"x-amz-meta-{k}": v for k, v in (metadata or {}).items()}
        if tags:
            headers["x-amz-tagging"] = "&".join(f"{_uri(k)}={_uri(v)}" for k, v in tags.items())
        if content_type:
            headers["content-type"] = content_type
        return headers

    @staticmethod
    def _written(key: str, size: int, response: Response) -> Written:
        etag = response.headers.get("ETag", "").strip('"')
        return Written(key, size, etag, response.headers.get("x-amz-version-id", ""))

    async def put_object(
        self, bucket: str, key: str, body: bytes, metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None, content_type: str | None = None,
    ) -> Written:  # fmt: skip
        headers = self._object_headers(metadata, tags, content_type)
        response = await self.request("PUT", bucket, key, headers=headers, body=body)
        return self._written(key, len(body), response)

    async def copy_object(
        self, bucket: str, source_key: str, key: str, source_bucket: str | None = None
    ) -> Written:
        source = f"/{_uri(source_bucket or bucket)}/{_uri(source_key, keep_slash=True)}"
        response = await self.request("PUT", bucket, key, headers={"x-amz-copy-source": source})
        head = await self.head_object(bucket, key)
        return Written(
            key,
            int(head.headers["Content-Length"]),
            response.find("ETag").strip('"'),
            response.headers.get("x-amz-version-id", ""),
        )

    async def multipart_upload(
        self, bucket: str, key: str, parts: Sequence[bytes],
        metadata: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None,
    ) -> Written:  # fmt: skip
        headers = self._object_headers(metadata, tags, None)
        started = await self.request("POST", bucket, key, query={"uploads": ""}, headers=headers)
        upload_id = started.find("UploadId")
        etags = []
        for number, part in enumerate(parts, 1):
            response = await self.request(
                "PUT", bucket, key, query={"partNumber": str(number), "uploadId": upload_id},
                body=part,
            )  # fmt: skip
            etags.append(response.headers["ETag"])
        xml = (
            "<CompleteMultipartUpload>"
            + "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                for n, etag in enumerate(etags, 1)
            )
            + "</CompleteMultipartUpload>"
        )
        response = await self.request(
            "POST", bucket, key, query={"uploadId": upload_id}, body=xml.encode()
        )
        return Written(
            key,
            sum(len(p) for p in parts),
            response.find("ETag").strip('"'),
            response.headers.get("x-amz-version-id", ""),
        )

    async def head_object(self, bucket: str, key: str) -> Response:
        return await self.request("HEAD", bucket, key)

    async def delete_object(self, bucket: str, key: str, version_id: str = "") -> Response:
        query = {"versionId": version_id} if version_id else None
        return await self.request("DELETE", bucket, key, query=query, expect=(204,))

    # -- topics (RGW's SNS-compatible API) -------------------------------------------------

    async def _sns(self, action: str, params: Mapping[str, str]) -> Response:
        form = {"Action": action, "Version": "2010-03-31", **params}
        body = "&".join(f"{_uri(k)}={_uri(v)}" for k, v in form.items()).encode()
        return await self.request(
            "POST", headers={"content-type": "application/x-www-form-urlencoded"}, body=body,
            service="sns",
        )  # fmt: skip

    async def create_topic(self, name: str, attributes: Mapping[str, str]) -> str:
        params = {"Name": name}
        for n, (k, v) in enumerate(attributes.items(), 1):
            params[f"Attributes.entry.{n}.key"] = k
            params[f"Attributes.entry.{n}.value"] = v
        return (await self._sns("CreateTopic", params)).find("TopicArn")
