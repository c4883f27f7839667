"""A real Ceph RADOS Gateway for the end-to-end tests that need a real S3 server and a real
notification sender: started once per session, on first use (~12-18 s), stopped at the end."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.ceph import INSTALL_HINT, S3, Ceph, CephError, missing_binaries, start_ceph

# Wall-clock time of each module that used the cluster, for the terminal summary.
_RUNTIMES: dict[str, float] = {}
_STARTUP: list[float] = []


@pytest.fixture(scope="session")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ceph]:
    missing = missing_binaries()
    if missing:  # a missing installation fails the run, it never skips
        pytest.fail(f"Ceph is not installed ({', '.join(missing)} missing): {INSTALL_HINT}",
                    pytrace=False)  # fmt: skip
    try:
        cluster = start_ceph(tmp_path_factory.mktemp("ceph"))
    except CephError as exc:
        pytest.fail(f"could not start the Ceph test cluster: {exc}", pytrace=False)
    _STARTUP.append(cluster.started_in)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def s3(ceph: Ceph) -> AsyncIterator[S3]:
    async with S3(ceph) as client:
        yield client


@pytest.fixture(scope="module")
def suite_timer(request: pytest.FixtureRequest) -> Iterator[None]:
    """Records how long a module's tests took, cluster start included (printed at the end)."""
    started = time.monotonic()
    yield
    _RUNTIMES[request.module.__name__.rsplit(".", 1)[-1]] = time.monotonic() - started


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    startup = _STARTUP[0] if _STARTUP else 0.0
    for module, seconds in _RUNTIMES.items():
        terminalreporter.write_line(
            f"{module}: {startup + seconds:.1f} s in all (Ceph cluster start {startup:.1f} s, "
            f"tests {seconds:.1f} s)"
        )
