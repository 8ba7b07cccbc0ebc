"""A change to the workflow, worked through (`changed_saga.py`): unguarded it breaks the running
sagas; behind `workflow.patched` old and new sagas both replay; with `deprecate_patch` only the
sagas that took the new branch do, which is why a patch is retired only after the old sagas end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio import activity
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from ordersaga.domain import OrderStatus
from tests.workflows.changed_saga import Patched, Retired, Unguarded
from tests.workflows.record_histories import PATHS, record
from tests.workflows.standins import start_env
from tests.workflows.test_replay import HISTORIES, history

# Sagas that started before the change: every path, with the code of today.
BEFORE = sorted(name for name in HISTORIES if name.startswith("typed-payloads/"))


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with start_env() as environment:
        yield environment


async def replays(workflow: type, recorded: WorkflowHistory) -> bool:
    result = await Replayer(workflows=[workflow]).replay_workflow(
        recorded, raise_on_replay_failure=False
    )
    return result.replay_failure is None


@pytest.mark.parametrize("name", BEFORE)
async def test_an_unguarded_change_breaks_the_sagas_already_running(name: str) -> None:
    assert not await replays(Unguarded, history(name))


@pytest.mark.parametrize("name", BEFORE)
async def test_behind_patched_the_sagas_already_running_replay(name: str) -> None:
    assert await replays(Patched, history(name))


async def test_a_new_saga_takes_the_new_branch_and_replays_until_the_patch_is_gone(
    env: WorkflowEnvironment,
) -> None:
    screened: list[str] = []

    @activity.defn(name="screen_order")
    async def screen_order(order_id: str) -> None:
        screened.append(order_id)

    recorded, state = await record(env, "happy", Patched, extra=[screen_order])
    assert state.status == OrderStatus.CONFIRMED and len(screened) == 1
    new = WorkflowHistory.from_json("order-new", recorded)
    assert await replays(Patched, new)
    # Retired: the sagas that took the new branch replay, the ones from before do not.
    assert await replays(Retired, new)
    assert not await replays(Retired, history(BEFORE[0]))


def test_every_path_is_worked_through() -> None:
    assert {name.removeprefix("typed-payloads/") for name in BEFORE} == set(PATHS)
