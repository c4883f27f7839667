"""Two `relay serve` replicas on one replicated log (RELAY_LOG=nats://…) on a 3-node JetStream
cluster of the test's own (tests/support/nats_cluster.py): the acceptance list of the
replicated log. Each test has a log of its own (RELAY_LOG_NAME); the figures measured (503s
during a failover, its gap, duplicates, the takeover time) are printed, not asserted."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from tests.support.bodies import minio_body
from tests.support.load import Load
from tests.support.nats_cluster import Cluster, nats_cluster
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
TOKEN = "replicated-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE = 3.0  # RELAY_LOG_LEASE of these tests: the bound on a dead replica's sinks


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with nats_cluster(tmp_path_factory.mktemp("js")) as c:
        yield c


@pytest.fixture
async def replicas(
    cluster: Cluster, receiver: Receiver, tmp_path: Path
) -> AsyncIterator[Callable[..., list[RelayProcess]]]:
    made: list[RelayProcess] = []
    name = "t" + uuid.uuid4().hex[:10]

    def make(count: int = 2, **extra: str) -> list[RelayProcess]:
        env = {
            "RELAY_LOG": cluster.urls, "RELAY_LOG_NAME": name, "RELAY_LOG_LEASE": f"{LEASE:g}s",
            "RELAY_LOG_PUBLISH_TIMEOUT": "2s", "RELAY_MAX_BYTES": "64MiB", "RELAY_WORKERS": "1",
            "RELAY_AUTH_TOKENS": TOKEN, "RELAY_ADMIN_TOKENS": "admin-token",
            "RUSTFS_NOTIFY_WEBHOOK_ENABLE_HOOK": "on",
            "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_HOOK": receiver.url,
            "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_HOOK": "300ms",
            **extra,
        }  # fmt: skip
        out = []
        for _ in range(count):
            workdir = tmp_path / f"replica-{len(made)}"
            workdir.mkdir()
            process = RelayProcess(workdir, env)
            made.append(process)
            out.append(process)
        return out

    yield make
    for process in made:
        process.kill()


def keys(receiver: Receiver) -> Counter[str]:
    """bucket/key of every delivered event, with how often it came."""
    return Counter(r.json()["Key"] for r in receiver.received)


def stats(relay: RelayProcess) -> tuple[int, int]:
    """The sink's (dead letters, parked events), as `relay queue stats` reads them."""
    sink = json.loads(relay.cli("queue", "stats", "--json").stdout)["sinks"][0]
    return sink["dead_letters"], sink["parked"]


def taken_at(relay: RelayProcess) -> float:
    """When (unix time) the replica last took the sink."""
    stamps = [json.loads(line)["ts"] for line in relay.logs().splitlines() if '"sink taken' in line]
    assert stamps, "the replica never took the sink"
    return datetime.fromisoformat(stamps[-1].replace("Z", "+00:00")).timestamp()


def holder(relays: list[RelayProcess]) -> RelayProcess:
    """The running replica whose log says it took the sink last."""
    taken = []
    for relay in relays:
        if relay.proc is None or relay.proc.poll() is not None:
            continue
        for line in relay.logs().splitlines():
            if '"sink taken' in line:
                taken.append((json.loads(line)["ts"], relay))
    assert taken, "no replica took the sink"
    return max(taken, key=lambda t: t[0])[1]


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_the_same_event_posted_to_two_replicas_is_stored_once(
    replicas: Callable[..., list[RelayProcess]], receiver: Receiver, workers: str
) -> None:
    """With RELAY_WORKERS=2 each replica is a supervisor, ingest workers that publish and a
    delivery worker."""
    a, b = replicas(RELAY_WORKERS=workers)
    await asyncio.gather(a.start(timeout=60), b.start(timeout=60))
    body = minio_body("photos", "cat.jpg", 1)
    async with aiohttp.ClientSession() as session:
        async with session.post(a.url + "/", data=body, headers=AUTH) as first:
            assert first.status == 200
            assert json.loads(await first.read()) == {"accepted": 1, "duplicates": 0}
        async with session.post(b.url + "/", data=body, headers=AUTH) as second:
            assert second.status == 200
            assert json.loads(await second.read()) == {"accepted": 0, "duplicates": 1}
        # a different event afterwards: once it arrives, the duplicate had its chance
        async with session.post(b.url + "/", data=minio_body("photos", "dog.jpg", 2),
                                headers=AUTH) as third:  # fmt: skip
            assert third.status == 200
    await eventually(lambda: keys(receiver)["photos/dog.jpg"] == 1)
    assert keys(receiver)["photos/cat.jpg"] == 1


async def test_a_replica_started_before_its_cluster_has_a_leader_waits_for_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Relay and cluster started together (one compose file): the relay's first requests to
    the log go unanswered until a quorum of nodes runs, and it waits for them rather than
    exit."""
    with nats_cluster(tmp_path / "js", started=1) as young:
        relay = RelayProcess(tmp_path / "relay", {
            "RELAY_LOG": young.urls, "RELAY_LOG_NAME": "early", "RELAY_MAX_BYTES": "64MiB",
            "RELAY_AUTH_TOKENS": TOKEN,
            "RUSTFS_NOTIFY_WEBHOOK_ENABLE_HOOK": "on",
            "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_HOOK": receiver.url,
        })  # fmt: skip
        (tmp_path / "relay").mkdir()
        await relay.start(probe=False)
        try:
            await eventually(lambda: "does not answer yet" in relay.logs(), timeout=30)
            assert relay.proc is not None and relay.proc.poll() is None
            for node in young.nodes[1:]:
                node.server.start()
            await relay.wait_ready(timeout=60)
            async with aiohttp.ClientSession() as session:
                async with session.post(relay.url + "/", headers=AUTH,
                                        data=minio_body("photos", "early.jpg", 1)) as answer:  # fmt: skip
                    assert answer.status == 200
            await eventually(lambda: keys(receiver)["photos/early.jpg"] == 1)
        finally:
            relay.kill()


async def _load_until(load: Load, done: Callable[[], bool]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop, concurrency=8))
    try:
        await eventually(done, timeout=60)
    finally:
        stop.set()
        await task


class Gap:
    """When answers stopped being 2xx and when they came back, from a probe that posts a
    fresh event every 20 ms to each replica."""

    def __init__(self) -> None:
        self.first_failure: float | None = None
        self.last_failure: float | None = None
        self.failures = 0
        self.acked: set[str] = set()

    async def probe(self, urls: list[str], stop: asyncio.Event) -> None:
        n = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            while not stop.is_set():
                n += 1
                key = f"probe-{n}"
                ok = False
                try:
                    async with session.post(urls[n % len(urls)] + "/",
                                            data=minio_body("probe", key, n),
                                            headers=AUTH) as response:  # fmt: skip
                        ok = response.status == 200
                        if response.status == 503:
                            assert response.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError):
                    pass
                now = time.monotonic()
                if ok:
                    self.acked.add(f"probe/{key}")
                else:
                    self.failures += 1
                    self.first_failure = self.first_failure or now
                    self.last_failure = now
                await asyncio.sleep(0.02)

    @property
    def seconds(self) -> float:
        if self.first_failure is None or self.last_failure is None:
            return 0.0
        return self.last_failure - self.first_failure


async def test_kill_9_of_the_stream_leader_loses_no_acknowledged_event(
    cluster: Cluster, replicas: Callable[..., list[RelayProcess]], receiver: Receiver
) -> None:
    relays = replicas()
    await asyncio.gather(*(r.start(timeout=60) for r in relays))
    name = relays[0].env["RELAY_LOG_NAME"]
    loads = [Load(r.url + "/", TOKEN, bucket=f"load{i}") for i, r in enumerate(relays)]
    gap = Gap()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(load.run(stop, concurrency=4)) for load in loads]
    tasks.append(asyncio.create_task(gap.probe([r.url for r in relays], stop)))
    try:
        await eventually(lambda: sum(len(x.acked) for x in loads) >= 300, timeout=60)
        leader = cluster.node(cluster.leader_of(f"{name}_events"))
        leader.server.stop()  # SIGKILL
        await eventually(lambda: gap.failures > 0 or sum(len(x.acked) for x in loads) > 3000,
                         timeout=30)  # fmt: skip
        before = len(gap.acked)
        # answers are 2xx again once a new leader is elected
        await eventually(lambda: len(gap.acked) > before + 20, timeout=60)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        leader.server.start()
    acked = set().union(*(x.acked for x in loads), gap.acked)
    await eventually(lambda: acked <= set(keys(receiver)), timeout=90)
    refused = sum(x.refused for x in loads) + gap.failures
    print(f"\nstream leader {leader.name} killed: {len(acked)} events acknowledged, all "
          f"delivered; {refused} answers not 2xx (503 or cut), gap {gap.seconds:.1f} s; "
          f"{sum(keys(receiver).values()) - len(set(keys(receiver)))} duplicates delivered")  # fmt: skip


async def test_kill_9_of_the_replica_holding_the_sink_moves_it_within_the_lease(
    replicas: Callable[..., list[RelayProcess]], receiver: Receiver
) -> None:
    relays = replicas()
    await asyncio.gather(*(r.start(timeout=60) for r in relays))
    await eventually(lambda: any('"sink taken' in r.logs() for r in relays))
    loads = [Load(r.url + "/", TOKEN, bucket=f"load{i}") for i, r in enumerate(relays)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(load.run(stop, concurrency=4)) for load in loads]
    try:
        await eventually(lambda: len(receiver.received) >= 200, timeout=60)
        victim = holder(relays)
        survivor = next(r for r in relays if r is not victim)
        victim.kill()
        killed_at = time.time()
        delivered = len(receiver.received)
        await eventually(lambda: len(receiver.received) > delivered + 50, timeout=60)
        resumed = taken_at(survivor)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    acked = loads[0].acked | loads[1].acked
    await eventually(lambda: acked <= set(keys(receiver)), timeout=90)
    assert '"sink taken' in survivor.logs()
    counts = keys(receiver)
    duplicates = sum(counts.values()) - len(counts)
    assert resumed > killed_at
    print(f"\nreplica holding the sink killed: the other took the sink after "
          f"{resumed - killed_at:.1f} s (lease {LEASE:g} s); {len(acked)} acknowledged, "
          f"0 lost; {duplicates} duplicates delivered")  # fmt: skip


async def test_dead_letters_parked_keys_and_retries_survive_the_replica_that_delivered(
    replicas: Callable[..., list[RelayProcess]], receiver: Receiver
) -> None:
    # the receiver rejects the object `bad` (400: dead-lettered at once) until told
    # otherwise, and refuses `slow` (500: retried on a schedule, its next event parked)
    rejecting, refusing = {"fails/bad"}, {"fails/slow"}
    receiver.reject = lambda body: body["Key"] in rejecting
    receiver.refuse = lambda body: body["Key"] in refusing
    relays = replicas(RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_HOOK="1s")
    await asyncio.gather(*(r.start(timeout=60) for r in relays))
    await eventually(lambda: any('"sink taken' in r.logs() for r in relays))
    async with aiohttp.ClientSession() as session:
        for n, key in enumerate(["bad", "ok-1", "slow", "slow", "ok-2"]):
            async with session.post(relays[n % 2].url + "/", data=minio_body("fails", key, n),
                                    headers=AUTH) as response:  # fmt: skip
                assert response.status == 200
    await eventually(lambda: {"fails/ok-1", "fails/ok-2"} <= set(keys(receiver)))
    victim = holder(relays)
    survivor = next(r for r in relays if r is not victim)
    # `bad` is dead-lettered after 3 attempts; `slow` keeps failing with a schedule, the
    # second `slow` parked behind the first
    await eventually(lambda: stats(victim) == (1, 2), timeout=30)
    victim.kill()
    assert stats(survivor) == (1, 2)  # (dead letters, parked: both `slow`), from JetStream
    listed = survivor.cli("dlq", "list").stdout
    assert "fails" in listed and "bad" in listed, listed
    refusing.discard("fails/slow")  # the target recovers: the other replica delivers both
    await eventually(lambda: keys(receiver)["fails/slow"] >= 2, timeout=60)
    slow = [r.json()["Records"][0]["s3"]["object"]["sequencer"] for r in receiver.received
            if r.json()["Key"] == "fails/slow"]  # fmt: skip
    assert slow == sorted(slow), "the parked event went before the one it waited for"
    assert '"sink taken' in survivor.logs()
    # the dead letter, retried from the survivor, is delivered once the target takes it
    rejecting.clear()
    survivor.cli("dlq", "retry", "--all")
    await eventually(lambda: keys(receiver)["fails/bad"] >= 1, timeout=60)
    await eventually(lambda: "bad" not in survivor.cli("dlq", "list").stdout, timeout=30)


async def test_an_event_over_the_servers_max_payload_is_refused_with_413_and_nothing_stored(
    replicas: Callable[..., list[RelayProcess]],
) -> None:
    """RELAY_MAX_BODY above what a NATS server takes in a message (max_payload, 1 MiB by
    default): the event can never be stored, so the answer is 413 (a 503 would have the
    sender retry for ever), saying which limit to change; the body's other events are not
    stored either."""
    [relay] = replicas(1, RELAY_MAX_BODY="4MiB")
    await relay.start(timeout=60)
    assert "RELAY_MAX_BODY is above the NATS servers' max_payload" in relay.logs()
    record = json.loads(minio_body("photos", "big.jpg", 1))["Records"][0]
    record["s3"]["object"]["userMetadata"] = {"X-Amz-Meta-Pad": "x" * (1536 * 1024)}
    small = json.loads(minio_body("photos", "small.jpg", 2))["Records"][0]
    body = json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": "photos/big.jpg",
                       "Records": [small, record]}).encode()  # fmt: skip
    async with aiohttp.ClientSession() as session:
        async with session.post(relay.url + "/", data=body, headers=AUTH) as answer:
            assert answer.status == 413
            assert "max_payload" in (await answer.json())["error"]
    trace = relay.cli("trace", "photos/small.jpg", check=False)
    assert trace.returncode == 1 and trace.stdout.startswith("no event of photos/small.jpg")
