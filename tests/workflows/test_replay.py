"""Sagas already running survive changes to the workflow: histories recorded with earlier code
replay against the current `OrderSaga` without a non-determinism error.

`histories/*.json`: a happy path and a declined payment, recorded at commit ac00f12 (the
attempt-count retry policy, before the relay). `histories/typed-payloads/`: every path of the
saga (each refusal, a customer's cancel, Temporal's cancel, a flaky payment, a step out of
retries, a compensation that required attention and was retried), recorded when the payloads
became typed (`python -m tests.workflows.record_histories <folder>`). `histories/step-status-off/`:
every path again at revision 2 of `SagaInput` (the search attribute no longer follows a step's
progress). `histories/placed-in-first-step/`: every path at revision 3 (the first step's activity
records `order.placed`), the revision new sagas start with, and one path more
(`first_step_failed`: the saga records `order.placed` itself, revision 3's fallback).

When a change to the workflow fails this test, guard it with `workflow.patched(...)`
(`changed_saga.py` and `test_patching.py` work one change through); record the new code's
paths into a folder of their own, and keep the old folders while sagas of their code may run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from ordersaga.runtime import DATA_CONVERTER
from tests.workflows.record_histories import ADDED_PATHS, PATHS
from workflows.order_saga import OrderSaga

FOLDER = Path(__file__).parent / "histories"
HISTORIES = {
    path.relative_to(FOLDER).with_suffix("").as_posix(): path.read_text()
    for path in sorted(FOLDER.rglob("*.json"))
}


def history(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"order-{name}", HISTORIES[name])


@pytest.mark.parametrize("name", sorted(HISTORIES))
async def test_a_recorded_saga_replays_on_the_current_workflow(name: str) -> None:
    # With the processes' converter: the histories were recorded with the SDK's default one,
    # so this also checks that sagas started before it replay (their payloads decode) with it.
    replayer = Replayer(workflows=[OrderSaga], data_converter=DATA_CONVERTER)
    result = await replayer.replay_workflow(history(name), raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


def test_the_recorded_paths_are_there() -> None:
    assert set(HISTORIES) >= {"happy", "declined"} | {
        f"{folder}/{p}"
        for folder in ("typed-payloads", "step-status-off", "placed-in-first-step")
        for p in PATHS
    } | {f"placed-in-first-step/{p}" for p in ADDED_PATHS}
