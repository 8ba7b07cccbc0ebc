"""A worked example of changing the workflow safely, used by `test_patching.py`.

The change: screen every order for fraud (a new activity, `screen_order`) right after it is
placed. A new activity is a new command in the history, so a saga that was running before the
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

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ordersaga.contracts.payloads import OrderPlaced, Payload
    from ordersaga.domain import SagaInput, SagaState
    from workflows.order_saga import OrderSaga

PATCH = "screen-order"


async def _screen(payload: Payload) -> None:
    if isinstance(payload, OrderPlaced):
        await workflow.execute_activity(
            "screen_order", payload.order_id, start_to_close_timeout=timedelta(seconds=10)
        )


@workflow.defn(name="OrderSaga")
class Unguarded(OrderSaga):
    @workflow.run
    async def run(self, saga: SagaInput) -> SagaState:
        return await super().run(saga)

    async def _record(self, payload: Payload) -> None:
        await super()._record(payload)
        await _screen(payload)


@workflow.defn(name="OrderSaga")
class Patched(OrderSaga):
    @workflow.run
    async def run(self, saga: SagaInput) -> SagaState:
        return await super().run(saga)

    async def _record(self, payload: Payload) -> None:
        await super()._record(payload)
        if workflow.patched(PATCH):
            await _screen(payload)


@workflow.defn(name="OrderSaga")
class Retired(OrderSaga):
    @workflow.run
    async def run(self, saga: SagaInput) -> SagaState:
        return await super().run(saga)

    async def _record(self, payload: Payload) -> None:
        await super()._record(payload)
        workflow.deprecate_patch(PATCH)
        await _screen(payload)
