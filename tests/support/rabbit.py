"""A private RabbitMQ node for outage tests: its own port, data directory and node name, so a
test can stop and restart it without touching the machine's shared broker on 5672.

Started with RabbitMQ's own scripts under /usr/lib/rabbitmq/bin, not the /usr/sbin
wrappers: those switch to the `rabbitmq` user, who cannot write to a test's temp dir. The
machine's /etc/rabbitmq files are replaced by the node's own (an empty env file and a
config that moves the listener off 5672, which /etc/rabbitmq/rabbitmq.conf claims). The
Erlang cookie lives in the node's HOME, and `rabbitmqctl` is run with the same HOME.
A restart reuses the data directory: durable queues and persistent messages survive it.
Start takes about 4 s.

With `tls=ServerTls(...)` (tests/support/certs.py) the node also listens for amqps on
`tls_port`, with its certificate, and requires a client certificate signed by the CA
(`verify_peer`, `fail_if_no_peer_cert`); `amqp://` stays on `port` for the test's own use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from pathlib import Path

from tests.support.certs import ServerTls
from tests.support.relay_process import free_port

BIN = Path("/usr/lib/rabbitmq/bin")


class PrivateRabbit:
    def __init__(self, directory: Path, tls: ServerTls | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        self.dist_port = free_port()
        self.node = f"relaytest{uuid.uuid4().hex[:8]}@localhost"
        self.proc: asyncio.subprocess.Process | None = None
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "log.console = false\n"
            # the disk alarm would block publishers on a nearly full CI disk
            "disk_free_limit.absolute = 1MB\n"
            + (
                f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {tls.ca}\n"
                f"ssl_options.certfile = {tls.cert}\n"
                f"ssl_options.keyfile = {tls.key}\n"
                "ssl_options.verify = verify_peer\n"
                "ssl_options.fail_if_no_peer_cert = true\n"
                if tls
                else ""
            )
        )
        self.env = {
            **os.environ,
            "HOME": str(self.dir),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def start(self, timeout: float = 60.0) -> PrivateRabbit:
        log = open(self.dir / "server.out", "ab")  # owned by the child
        self.proc = await asyncio.create_subprocess_exec(
            str(BIN / "rabbitmq-server"),
            env=self.env, stdout=log, stderr=log, cwd=self.dir, start_new_session=True,
        )  # fmt: skip
        log.close()
        try:
            await self.ctl("await_startup", timeout=timeout)
        except Exception:
            await self.kill()
            raise
        return self

    def tls_url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqps://{user}:{password}@127.0.0.1:{self.tls_port}/"

    async def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """rabbitmqctl against this node, its output; `await_startup` needs the node
        registered in epmd first, so a failure is retried until the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ctl = await asyncio.create_subprocess_exec(
                str(BIN / "rabbitmqctl"), "-n", self.node, *args,
                env=self.env, cwd=self.dir,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await asyncio.wait_for(ctl.communicate(), timeout)
            if ctl.returncode == 0:
                return output.decode()
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError(f"RabbitMQ {self.node} exited:\n{self.server_log()}")
            if loop.time() > deadline:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed:\n{output.decode()}")
            await asyncio.sleep(0.3)

    async def stop(self) -> None:
        """Stop the node (it closes every connection) and wait until the process is gone."""
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            await self.ctl("stop", timeout=30)
            await asyncio.wait_for(self.proc.wait(), 30)
        except Exception:
            await self.kill()

    async def kill(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session this object started
        await self.proc.wait()

    def server_log(self) -> str:
        path = self.dir / "server.out"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""
