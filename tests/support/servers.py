"""Private broker instances for outage tests, and the check that a shared server is up.

Each private server runs in the foreground as a child of the test process, on a free
loopback port, with its state under the test's tmp dir. `stop()` kills only that child;
`start()` brings it back on the same port with the same state dir, so a restart looks to
a client exactly like the outage of a real server. The machine's shared servers are never
touched (see docs: reference/infra.md).

Start and stop block for at most a few seconds (a bounded wait for the port); from an
async test call them through `asyncio.to_thread` so the relay's loop keeps running.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.certs import ServerTls

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, *, up: bool = True, timeout: float = 10.0) -> None:
    """Wait until the port accepts connections (or, with up=False, refuses them)."""
    deadline = time.monotonic() + timeout
    while port_open(port) != up:
        if time.monotonic() > deadline:
            state = "accept" if up else "refuse"
            raise AssertionError(f"127.0.0.1:{port} did not {state} connections in {timeout}s")
        time.sleep(0.05)


def require_server(port: int, name: str, start_command: str) -> None:
    """Fail (never skip) when a shared server the test needs is not running."""
    if not port_open(port, timeout=2.0):
        pytest.fail(
            f"{name} is not reachable on 127.0.0.1:{port}; these tests need it. "
            f"Start it with: {start_command}  (or run scripts/ensure-servers.sh)",
            pytrace=False,
        )


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @property
    def server(self) -> ServerTls:
        return ServerTls(self.ca, self.server_cert, self.server_key)


def tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client
    certificate, made with openssl (valid for two days)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True,
                       timeout=30)  # fmt: skip

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=relay-test-ca")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    d = directory
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
                    d / "client.key")  # fmt: skip


class PrivateServer:
    """One server process of our own; restartable on the same port and state dir. With
    `group`, it runs in a process group of its own, and stop() signals the whole group (a
    server that forks a child per connection)."""

    def __init__(
        self, name: str, binary: str, args: list[str], port: int, workdir: Path,
        group: bool = False,
    ):  # fmt: skip
        self.name = name
        self.binary = binary
        self.args = args
        self.port = port
        self.workdir = workdir
        self.group = group
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        path = shutil.which(self.binary) or f"/usr/sbin/{self.binary}"
        if not os.path.exists(path):
            pytest.fail(f"{self.binary} is not installed (see reference/infra.md)", pytrace=False)
        log = open(self.workdir / f"{self.name}.log", "ab")
        with log:
            self.process = subprocess.Popen(
                [path, *self.args], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                start_new_session=self.group,
            )  # fmt: skip
        try:
            wait_port(self.port)
        except AssertionError:
            self.stop()
            raise AssertionError(f"{self.name} did not start; see {self.workdir}") from None

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop our child (SIGKILL by default: an outage, not a clean shutdown)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server must be able to exit
        if self.group:
            os.killpg(process.pid, sig)  # the group this object started
        else:
            process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        wait_port(self.port, up=False)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open, nothing answers — a hung
        server, the case timeouts exist for."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


S = TypeVar("S", bound=PrivateServer)


@contextmanager
def _owned(server: S, start: bool) -> Iterator[S]:
    try:
        if start:
            server.start()
        yield server
    finally:
        server.stop()


class NatsServer(PrivateServer):
    """nats-server with its monitoring port, which tells who is connected."""

    def __init__(self, args: list[str], port: int, workdir: Path) -> None:
        self.monitor = free_port()
        super().__init__("nats-server", "nats-server",
                         [*args, "-m", str(self.monitor)], port, workdir)  # fmt: skip

    def connections(self) -> list[dict[str, Any]]:
        """/connz: each client connection, with its name and TLS certificates (blocks)."""
        url = f"http://{HOST}:{self.monitor}/connz?auth=1"
        with urllib.request.urlopen(url, timeout=5) as response:
            connections: list[dict[str, Any]] = json.load(response)["connections"]
        return connections

    def client_certificates(self, name: str) -> set[str]:
        """The subject of the certificate of each connection named `name`."""
        return {c["tls_peer_certs"][0]["subject"] for c in self.connections()
                if c.get("name") == name and c.get("tls_peer_certs")}  # fmt: skip


@contextmanager
def nats_server(
    tmp_path: Path, *, tls: TlsFiles | ServerTls | None = None, token: str = "",
    start: bool = True,
) -> Iterator[NatsServer]:  # fmt: skip
    """`nats-server -js` on a free port; JetStream state in tmp_path/nats/js. With `tls`,
    TLS is required and clients must present a certificate signed by its CA; with `token`,
    clients must present that token."""
    workdir = tmp_path / "nats"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = ["-a", HOST, "-p", str(port), "-js", "-sd", str(workdir / "js")]
    if token:
        args += ["--auth", token]
    if isinstance(tls, TlsFiles):
        tls = tls.server
    if tls:
        args += ["--tls", "--tlscert", str(tls.cert), "--tlskey", str(tls.key),
                 "--tlsverify", "--tlscacert", str(tls.ca)]  # fmt: skip
    with _owned(NatsServer(args, port, workdir), start) as s:
        yield s


@contextmanager
def nats_server_with_config(
    tmp_path: Path, config: str, *, start: bool = True
) -> Iterator[PrivateServer]:
    """nats-server with a config file; `config` may use {port} and {store}."""
    workdir = tmp_path / "nats-conf"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    path = workdir / "server.conf"
    path.write_text(config.format(port=port, store=workdir / "js"))
    with _owned(
        PrivateServer("nats-server", "nats-server", ["-c", str(path)], port, workdir), start
    ) as s:
        yield s


@contextmanager
def redis_server(
    tmp_path: Path, *, password: str = "", tls: TlsFiles | None = None, start: bool = True
) -> Iterator[PrivateServer]:
    """redis-server on a free port with an fsync-always AOF in tmp_path/redis, so what was
    written before a SIGKILL is still there after the restart. With `tls`, the port speaks
    only TLS and clients must present a certificate signed by its CA."""
    workdir = tmp_path / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = ["--bind", HOST, "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--dir", str(workdir)]  # fmt: skip
    if tls:
        args += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.server_cert),
                 "--tls-key-file", str(tls.server_key), "--tls-ca-cert-file", str(tls.ca)]  # fmt: skip
    else:
        args += ["--port", str(port)]
    if password:
        args += ["--requirepass", password]
    with _owned(PrivateServer("redis-server", "redis-server", args, port, workdir), start) as s:
        yield s


@contextmanager
def mosquitto(
    tmp_path: Path,
    *,
    password_file: Path | None = None,
    tls: TlsFiles | None = None,
    start: bool = True,
) -> Iterator[PrivateServer]:
    """mosquitto on a free port with persistence in tmp_path/mosquitto (so a persistent
    subscriber's session and queued QoS 1 messages survive a clean stop). Anonymous unless
    a `password_file` (made with mosquitto_passwd) is given; TLS with a required client
    certificate when `tls` is given."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(
        f"listener {port} {HOST}\n"
        + (
            f"cafile {tls.ca}\ncertfile {tls.server_cert}\nkeyfile {tls.server_key}\n"
            "require_certificate true\n"
            if tls
            else ""
        )
        + f"allow_anonymous {'false' if password_file else 'true'}\n"
        + (f"password_file {password_file}\n" if password_file else "")
        + "persistence true\n"
        f"persistence_location {workdir}/\n"
        # as root, mosquitto would switch to the `mosquitto` user, who cannot write here
        f"user {getpass.getuser()}\n"
        "log_dest stderr\n"
    )
    with _owned(
        PrivateServer("mosquitto", "mosquitto", ["-c", str(config)], port, workdir), start
    ) as s:
        yield s
