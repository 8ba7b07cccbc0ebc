"""The chaos soak, short: about 60 sagas of every scenario while every part of the stack is
killed once and one server is held down for a few seconds; nothing may be violated.

`make soak` runs the long form (1000 sagas, a server down for more than a minute).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# bench/ holds scripts, not a package (mypy knows bench/soak.py as the module `soak`): import it
# the way the benchmarks import their neighbours.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from soak import SoakConfig, run_soak

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def books_balance() -> Iterator[None]:
    # Overrides the e2e fixture of the same name: the soak kills things, so it runs a stack of
    # its own and audits the books on it itself; the shared session stack is not needed.
    yield


async def test_a_short_soak_violates_nothing(tmp_path: Path) -> None:
    config = SoakConfig(
        sagas=60, seed=7, duration_s=30.0, down_s=5.0, settle_s=120.0, data_dir=tmp_path
    )
    result = await run_soak(config)
    assert result.violations == 0, result.table()
    assert result.terminal == 60
    # Every fault kind was injected: each server and each service process killed, one held down.
    killed = {f.part for f in result.faults if f.kind == "kill"}
    assert killed == set(result.parts), result.table()
    assert result.parts[:3] == ["postgres", "nats", "temporal"]
    held = [f for f in result.faults if f.kind.startswith("hold")]
    assert [f.part for f in held] == [result.held]
    assert result.max_down_s >= config.down_s
