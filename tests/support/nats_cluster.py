"""A 3-node NATS JetStream cluster of our own on loopback, for the replicated log's tests.

Each node is a `nats-server` child (tests/support/servers.PrivateServer) with its own
`server_name`, client, cluster and monitoring ports and store directory, all routes listed in
every node's config; the meta leader is elected in under a second. A node stopped with
SIGKILL and started again keeps its store and rejoins, as after a real crash. `leader_of`
asks a node's monitoring endpoint (`/jsz`) which node leads a stream.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import HOST, PrivateServer, free_port

CLUSTER_NAME = "relay-test"

NODE_CONFIG = """\
server_name: {name}
listen: {host}:{port}
http: {host}:{http_port}
jetstream {{ store_dir: "{store}", max_file_store: 1GB, max_memory_store: 128MB }}
cluster {{
  name: {cluster}
  listen: {host}:{cluster_port}
  routes: [ {routes} ]
}}
"""


@dataclass
class Node:
    name: str
    server: PrivateServer
    http_port: int

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.server.port}"

    def jsz(self, query: str = "") -> dict[str, object]:
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/jsz{query}", timeout=2) as r:
            body: dict[str, object] = json.loads(r.read())
            return body


@dataclass
class Cluster:
    nodes: list[Node]

    @property
    def urls(self) -> str:
        """What a client (and RELAY_LOG) is given: every node."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.server.running]

    def wait_meta_leader(self, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for node in self.running():
                try:
                    meta = node.jsz().get("meta_cluster") or {}
                except OSError:
                    continue
                leader = meta.get("leader") if isinstance(meta, dict) else None
                if leader:
                    return str(leader)
            if time.monotonic() > deadline:
                raise AssertionError("the JetStream cluster elected no meta leader")
            time.sleep(0.1)

    def leader_of(self, stream: str, timeout: float = 15.0) -> str:
        """The name of the node that leads `stream` now."""
        deadline = time.monotonic() + timeout
        while True:
            for node in self.running():
                try:
                    info = node.jsz("?streams=true")
                except OSError:
                    continue
                for account in info.get("account_details", []) or []:  # type: ignore[union-attr]
                    for detail in account.get("stream_detail", []) or []:
                        cluster = detail.get("cluster") or {}
                        if detail.get("name") == stream and cluster.get("leader"):
                            return str(cluster["leader"])
            if time.monotonic() > deadline:
                raise AssertionError(f"no node leads stream {stream}")
            time.sleep(0.1)


@contextmanager
def nats_cluster(tmp_path: Path, size: int = 3, started: int | None = None) -> Iterator[Cluster]:
    """`started` nodes at first (all by default; fewer than a quorum: no meta leader, and
    the test starts the rest with `node(name).server.start()`)."""
    base = tmp_path / "nats-cluster"
    ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
    routes = ", ".join(f"nats-route://{HOST}:{cluster}" for _, cluster, _ in ports)
    nodes = []
    for index, (port, cluster_port, http_port) in enumerate(ports, 1):
        name = f"n{index}"
        workdir = base / name
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "server.conf"
        text = NODE_CONFIG.format(
            name=name, host=HOST, port=port, http_port=http_port, store=workdir / "js",
            cluster=CLUSTER_NAME, cluster_port=cluster_port, routes=routes,
        )  # fmt: skip
        config.write_text(text)
        server = PrivateServer(name, "nats-server", ["-c", str(config)], port, workdir)
        nodes.append(Node(name, server, http_port))
    with ExitStack() as stack:
        for node in nodes:
            stack.callback(node.server.stop)
        for node in nodes[:started]:
            node.server.start()
        cluster = Cluster(nodes)
        if started is None:
            cluster.wait_meta_leader()
        yield cluster


async def drop_log(urls: str, prefix: str) -> None:
    """Delete the streams and buckets of the replicated log named `prefix` (each reserves
    RELAY_MAX_BYTES on every node: a test leaves none behind)."""
    import nats
    import nats.js.errors

    from relay.queue.jetstream.connect import Names

    names = Names(prefix)
    nc = await nats.connect(urls.split(","))
    try:
        js = nc.jetstream()
        for stream in (names.events, names.quarantine, names.ids):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
        for bucket in (names.sinks, names.leases, names.dead):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_key_value(bucket)
    finally:
        await nc.close()
