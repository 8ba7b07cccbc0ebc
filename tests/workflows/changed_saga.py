"""A worked example of changing the workflow safely, used by `test_patching.py`.

The change: screen every order for fraud (a new activity, `screen_order`) before its first
step. A new activity is a new command in the history, so a saga that was running before the
change would no longer replay. Three stages of the same change, each registered as `OrderSaga`:

1. `Unguarded`: the change as one would first write it. It breaks every running saga.
2. `Patched`: the change behind `workflow.patched("screen-order")`. A saga that started before
   the deploy replays down the old branch (its history has no marker); a new one records the
   marker and takes the new branch. Ship this.
3. `Retired`: once no saga that started before the patch is running (they all ended: check with
   `temporal workflow list --query 'WorkflowType="OrderSaga" AND ExecutionStatus="Running"
   AND StartTime < "<deploy time>"'`), `workflow.deprecate_patch("screen-order")` keeps the
   new branch only; sagas that took it still replay (they have the marker). After every saga
   with the marker has ended too, remove the `deprecate_patch` call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ordersaga.domain import Order, SagaInput, SagaState, Step, StepResult
    from workflows.order_saga import FORWARD, OrderSaga

PATCH = "screen-order"
FIRST_STEP = FORWARD[Step.INVENTORY]


async def _screen(order: Order) -> None:
    await workflow.execute_activity(
        "screen_order", order.order_id, start_to_close_timeout=timedelta(seconds=10)
    )


async def _screened(order: Order, step: Callable[[], Awaitable[StepResult]]) -> StepResult:
    """Screen the order, then start its first step."""
    await _screen(order)
    return await step()


@workflow.defn(name="OrderSaga")
class Unguarded(OrderSaga):
    @workflow.run
    async def run(self, saga: SagaInput) -> SagaState:
        return await super().run(saga)

    def _start(
        self, name: str, order: Order, budget_s: float, max_attempts: int, placed: bool = False
    ) -> Awaitable[StepResult]:
        if name != FIRST_STEP:
            return super()._start(name, order, budget_s, max_attempts, placed)
        start = super()._start
        return _screened(order, lambda: start(name, order, budget_s, max_attempts, placed))


@workflow.defn(name="OrderSaga")
class Patched(OrderSaga):
    @workflow.run
    async def run(self, saga: SagaInput) -> SagaState:
        return await super().run(saga)

    def _start(
        self, name: str, order: Order, budget_s: float, max_attempts: int, placed: bool = False
    ) -> Awaitable[StepResult]:
        if name != FIRST_STEP or not workflow.patched(PATCH):
            return super()._start(name, order, budget_s, max_attempts, placed)
        start = super()._start
        return _screened(order, lambda: start(name, order, budget_s, max_attempts, placed))


@workflow.defn(name="OrderSaga")
class Retired(OrderSaga):
    @workflow.run
    async def run(self, saga: SagaInput) -> SagaState:
        return await super().run(saga)

    def _start(
        self, name: str, order: Order, budget_s: float, max_attempts: int, placed: bool = False
    ) -> Awaitable[StepResult]:
        if name != FIRST_STEP:
            return super()._start(name, order, budget_s, max_attempts, placed)
        workflow.deprecate_patch(PATCH)
        start = super()._start
        return _screened(order, lambda: start(name, order, budget_s, max_attempts, placed))
