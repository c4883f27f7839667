"""Private PostgreSQL and MariaDB servers on free loopback ports, for outage tests: a test stops
and starts its own instance (same data directory, same port) and never touches the shared
servers on 5432/3306.

    with private_postgres() as pg:       # initdb + pg_ctl start, as user postgres
        pg.dsn                           # "host=127.0.0.1 port=… user=postgres dbname=postgres"
        pg.stop(); pg.start()
    with private_mariadb() as db:        # mariadb-install-db + mariadbd, as user mysql
        db.dsn                           # "root:@tcp(127.0.0.1:…)/test"

With `tls=ServerTls(...)` (tests/support/certs.py) either server accepts TCP connections only
over TLS, with its certificate, and requires a client certificate signed by the given CA
(PostgreSQL: `hostssl … clientcert=verify-ca`; MariaDB: `require_secure_transport`, and
`REQUIRE X509`/`SUBJECT` on the users a test creates). The test's own statements go over the
server's Unix socket (`admin_dsn` / `admin_args`).

Start and stop block until the server answers (or is gone), in bounded polling loops; the
context managers always stop the server and remove its directory, even when a test fails.
The methods block: from async code call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.certs import ServerTls

PG_BIN = Path("/usr/lib/postgresql/15/bin")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _owned_dir(prefix: str, user: str) -> Path:
    """A fresh directory under the system temp dir (pytest's tmp_path is 0700 root: the
    server's user could not reach it), owned by `user`."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def _as(user: str, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], what: str, timeout: float = 60.0) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr or done.stdout}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _tls_copy(tls: ServerTls, directory: Path, user: str) -> ServerTls:
    """The server's TLS files copied where its user can read them (and only it the key)."""
    directory.mkdir(exist_ok=True)
    copies = []
    for source in (tls.ca, tls.cert, tls.key):
        target = directory / source.name
        shutil.copyfile(source, target)
        os.chmod(target, 0o600)
        copies.append(target)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        for path in (directory, *copies):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return ServerTls(*copies)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


# -- PostgreSQL -----------------------------------------------------------------------------


class PrivatePostgres:
    def __init__(self, root: Path, port: int, tls: ServerTls | None = None) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.logfile = root / "postgres.log"
        self.tls = _tls_copy(tls, root / "tls", "postgres") if tls else None

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def admin_dsn(self) -> str:
        """Over the Unix socket: no TLS, no client certificate."""
        return f"host={self.root} port={self.port} user=postgres dbname=postgres"

    def init(self) -> None:
        argv = [str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]
        _run(_as("postgres", [*argv, "--no-sync"]), "initdb")
        if self.tls:
            # TCP only over TLS with a client certificate signed by the CA; the socket trusts
            (self.data / "pg_hba.conf").write_text(
                "local all all trust\nhostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n"
            )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        if self.tls:
            options += (f" -c ssl=on -c ssl_ca_file={self.tls.ca} -c ssl_cert_file={self.tls.cert}"
                        f" -c ssl_key_file={self.tls.key}")  # fmt: skip
        argv = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
                "-l", str(self.logfile), "-w", "-t", str(int(READY_TIMEOUT)), "start"]  # fmt: skip
        _run(_as("postgres", argv), f"pg_ctl start\n{_tail(self.logfile)}")
        deadline = time.monotonic() + READY_TIMEOUT
        ready = [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        while subprocess.run(ready, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL on {self.port} not ready:\n{_tail(self.logfile)}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """`fast` (clean shutdown, sessions cut) or `immediate` (like a crash)."""
        argv = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                "-t", str(int(STOP_TIMEOUT)), "stop"]  # fmt: skip
        _run(_as("postgres", argv), "pg_ctl stop")

    def running(self) -> bool:
        argv = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]
        return (
            subprocess.run(_as("postgres", argv), capture_output=True, check=False).returncode == 0
        )


@contextlib.contextmanager
def private_postgres(
    *, started: bool = True, tls: ServerTls | None = None
) -> Iterator[PrivatePostgres]:
    root = _owned_dir("relay-pg-", "postgres")
    server = PrivatePostgres(root, free_port(), tls)
    try:
        server.init()
        if started:
            server.start()
        yield server
    finally:
        try:
            if server.data.exists() and server.running():
                server.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)


# -- MariaDB --------------------------------------------------------------------------------


class PrivateMariaDB:
    def __init__(self, root: Path, port: int, tls: ServerTls | None = None) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.logfile = root / "mariadbd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.tls = _tls_copy(tls, root / "tls", "mysql") if tls else None

    @property
    def dsn(self) -> str:
        return f"root:@tcp(127.0.0.1:{self.port})/test"

    @property
    def admin_args(self) -> dict[str, object]:
        """asyncmy arguments over the Unix socket: no TLS, no client certificate."""
        return {"unix_socket": str(self.root / "s.sock"), "user": "root", "database": "test",
                "autocommit": True, "connect_timeout": 5}  # fmt: skip

    def init(self) -> None:
        argv = ["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={self.data}",
                "--auth-root-authentication-method=normal", "--skip-test-db"]  # fmt: skip
        _run(argv, "mariadb-install-db")

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        argv = ["mariadbd", "--no-defaults", "--user=mysql", f"--datadir={self.data}",
                "--bind-address=127.0.0.1", f"--port={self.port}",
                f"--socket={self.root / 's.sock'}", f"--pid-file={self.root / 'p.pid'}",
                "--skip-name-resolve", "--innodb-buffer-pool-size=32M"]  # fmt: skip
        if self.tls:
            argv += [f"--ssl-ca={self.tls.ca}", f"--ssl-cert={self.tls.cert}",
                     f"--ssl-key={self.tls.key}", "--require-secure-transport=ON"]  # fmt: skip
        with open(self.logfile, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        where = (["--socket", str(self.root / "s.sock")] if self.tls
                 else ["-h", "127.0.0.1", "-P", str(self.port)])  # fmt: skip
        ping = ["mariadb", "--no-defaults", *where, "-u", "root", "-e",
                "CREATE DATABASE IF NOT EXISTS test"]  # fmt: skip
        while subprocess.run(ping, capture_output=True, check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"MariaDB on {self.port} not ready:\n{_tail(self.logfile)}")
            time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (clean shutdown) or SIGKILL (like a crash); returns once the server is gone
        and its port is free."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)


@contextlib.contextmanager
def private_mariadb(
    *, started: bool = True, tls: ServerTls | None = None
) -> Iterator[PrivateMariaDB]:
    root = _owned_dir("relay-mariadb-", "mysql")  # the datadir's parent must be mysql's
    server = PrivateMariaDB(root, free_port(), tls)
    try:
        server.init()
        if started:
            server.start()
        yield server
    finally:
        try:
            server.stop(kill=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
