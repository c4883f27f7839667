from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

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
