from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.support import pipeline
from tests.support.nats_cluster import Cluster, drop_log, nats_cluster
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def relay_factory(tmp_path: Path) -> AsyncIterator[Callable[..., RelayProcess]]:
    made: list[RelayProcess] = []

    def make(env: dict[str, str], workdir: Path | None = None) -> RelayProcess:
        process = RelayProcess(workdir or tmp_path, env)
        made.append(process)
        return process

    yield make
    for process in made:
        process.kill()


@pytest.fixture(scope="session")
def log_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-node JetStream cluster for the replicated log, started on first use."""
    with nats_cluster(tmp_path_factory.mktemp("log-cluster")) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "jetstream"])
async def log_backend(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Runs a test once per log: the pipelines it makes (tests/support/pipeline.py) use
    SQLite, then a replicated JetStream log on a 3-node cluster (dropped after the test)."""
    if request.param == "jetstream":
        cluster: Cluster = request.getfixturevalue("log_cluster")
        pipeline.LOG_SERVERS = cluster.urls
    try:
        yield request.param
    finally:
        servers, pipeline.LOG_SERVERS = pipeline.LOG_SERVERS, ""
        for name in sorted(pipeline.MADE):
            await drop_log(servers, name)
        pipeline.MADE.clear()
