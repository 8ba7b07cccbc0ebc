"""Sagas already running survive changes to the workflow: histories recorded with earlier code
(`histories/`, the saga as it stood at commit ac00f12, with the attempt-count retry policy)
replay against the current `OrderSaga` without a non-determinism error.

When a change to the workflow fails this test, guard it with `workflow.patched(...)`; add the
history of every new path here once it is recorded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.order_saga import OrderSaga

HISTORIES = {
    path.stem: path.read_text()
    for path in sorted((Path(__file__).parent / "histories").glob("*.json"))
}


@pytest.mark.parametrize("name", sorted(HISTORIES))
async def test_a_recorded_saga_replays_on_the_current_workflow(name: str) -> None:
    history = WorkflowHistory.from_json(f"order-{name}", HISTORIES[name])
    result = await Replayer(workflows=[OrderSaga]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, result.replay_failure


def test_the_recorded_paths_are_there() -> None:
    assert set(HISTORIES) >= {"happy", "declined"}
