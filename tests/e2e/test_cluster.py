"""The local cluster of `make dev-cluster` (three nats-server nodes, the streams at R3, two of
each service process) loses, while orders flow: the NATS node that leads the ORDERS stream, a
worker, a projector, and for a while one of the two APIs. Then the soak's audit: every saga
terminal with the outcome its scenario says, each stored event exactly once on JetStream and in
version order per order, every read model equal to a fold of the store, stock and money
conserved, no dead letters, no workflow left running."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from soak import SoakConfig, run_soak

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def books_balance() -> Iterator[None]:
    # A stack of its own, audited by the soak itself (as in test_soak.py).
    yield


async def test_a_cluster_loses_its_stream_leader_a_worker_a_projector_and_an_api(
    tmp_path: Path,
) -> None:
    config = SoakConfig(
        sagas=50,
        seed=11,
        duration_s=40.0,
        down_s=8.0,
        settle_s=150.0,
        data_dir=tmp_path,
        cluster=True,
        plan=(
            ("kill", "nats-leader"),
            ("hold", "api-1"),
            ("kill", "worker-1"),
            ("kill", "projector-1"),
        ),
    )
    result = await run_soak(config)
    assert result.violations == 0, result.table()
    assert result.terminal == 50
    # Every fault struck while orders were still being placed.
    assert all(f.at_s < 0.9 * config.window_s for f in result.faults), result.table()
    assert {"nats-1", "nats-2", "nats-3", "api-1", "api-2"} <= set(result.parts)

    leader_kill, api, worker, projector = result.faults
    # The node that led ORDERS died; another was elected, and everything after was published
    # (the audit found every stored event on the stream exactly once).
    assert leader_kill.leader is not None, result.table()
    old, new = leader_kill.leader
    assert leader_kill.part == old and new is not None
    assert not new.endswith(old.removeprefix("nats")), leader_kill.leader
    assert (worker.part, projector.part) == ("worker-1", "projector-1")
    assert all(f.back_after_s is not None for f in result.faults), result.table()
    # While api-1 was down, api-2 answered the requests.
    assert (api.part, api.kind) == ("api-1", "hold-kill")
    assert api.answered_meanwhile, result.table()
    assert set(api.answered_meanwhile) == {result.api_urls[1]}, api.answered_meanwhile
