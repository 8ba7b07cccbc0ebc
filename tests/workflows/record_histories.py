"""Record the history of every saga path with the current workflow, for the replay test.

    .venv/bin/python -m tests.workflows.record_histories tests/workflows/histories/<name>

Each path runs once against stand-in participants on Temporal's test server, and its history is
written as `<path>.json`. Record a new set into a folder of its own when the workflow changes
(keep the old sets: they are the sagas still running on the old code), then run
`pytest tests/workflows/test_replay.py`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from ordersaga.domain import CancelReason, OrderStatus, SagaState
from tests.workflows.standins import POLICY, Handle, Participants, start_saga, until
from workflows.order_saga import OrderSaga

Body = Callable[[WorkflowEnvironment, Handle, Participants], Awaitable[None]]


@dataclass(frozen=True)
class SagaPath:
    participants: Callable[[], Participants]
    ends: tuple[OrderStatus, CancelReason | None]
    body: Body | None = None


async def _customer_cancels_while_paying(
    env: WorkflowEnvironment, handle: Handle, p: Participants
) -> None:
    await p.started.setdefault("capture_payment", asyncio.Event()).wait()
    await handle.execute_update(OrderSaga.cancel, "changed my mind")
    p.hold["capture_payment"].set()


async def _operator_retries(env: WorkflowEnvironment, handle: Handle, p: Participants) -> None:
    await until(env, handle, lambda s: s.status == OrderStatus.REQUIRES_ATTENTION, "attention")
    await handle.execute_update(OrderSaga.retry_compensation)


async def _cancelled_by_temporal(env: WorkflowEnvironment, handle: Handle, p: Participants) -> None:
    await p.started.setdefault("schedule_shipment", asyncio.Event()).wait()
    await handle.cancel()
    await until(env, handle, lambda s: s.cancel_requested, "the cancellation to arrive")
    p.hold["schedule_shipment"].set()


PATHS: dict[str, SagaPath] = {
    "happy": SagaPath(Participants, (OrderStatus.CONFIRMED, None)),
    "out_of_stock": SagaPath(
        lambda: Participants(business_failure={"reserve_inventory": "OutOfStock"}),
        (OrderStatus.CANCELLED, CancelReason.OUT_OF_STOCK),
    ),
    "payment_declined": SagaPath(
        lambda: Participants(business_failure={"capture_payment": "PaymentDeclined"}),
        (OrderStatus.CANCELLED, CancelReason.PAYMENT_DECLINED),
    ),
    "shipping_unavailable": SagaPath(
        lambda: Participants(business_failure={"schedule_shipment": "ShippingUnavailable"}),
        (OrderStatus.CANCELLED, CancelReason.SHIPPING_UNAVAILABLE),
    ),
    "customer_cancel": SagaPath(
        lambda: Participants(hold={"capture_payment": asyncio.Event()}),
        (OrderStatus.CANCELLED, CancelReason.CUSTOMER_REQUEST),
        _customer_cancels_while_paying,
    ),
    "flaky_payment": SagaPath(
        lambda: Participants(transient_failures={"capture_payment": 2}),
        (OrderStatus.CONFIRMED, None),
    ),
    "step_failed": SagaPath(
        lambda: Participants(transient_failures={"schedule_shipment": 99}),
        (OrderStatus.CANCELLED, CancelReason.STEP_FAILED),
    ),
    "requires_attention_then_retry": SagaPath(
        lambda: Participants(
            business_failure={"schedule_shipment": "ShippingUnavailable"},
            transient_failures={"refund_payment": POLICY.compensation_max_attempts},
        ),
        (OrderStatus.CANCELLED, CancelReason.SHIPPING_UNAVAILABLE),
        _operator_retries,
    ),
    "cancelled_by_temporal": SagaPath(
        lambda: Participants(hold={"schedule_shipment": asyncio.Event()}),
        (OrderStatus.CANCELLED, CancelReason.CUSTOMER_REQUEST),
        _cancelled_by_temporal,
    ),
}

# Paths added after the older folders were recorded: each folder recorded since holds them too.
# first_step_failed: the first step fails before recording anything until its attempts run out,
# so the saga records `order.placed` itself before compensating (revision 3's fallback).
ADDED_PATHS: dict[str, SagaPath] = {
    "first_step_failed": SagaPath(
        lambda: Participants(transient_failures={"reserve_inventory": 99}),
        (OrderStatus.CANCELLED, CancelReason.STEP_FAILED),
    ),
}


async def record(
    env: WorkflowEnvironment,
    name: str,
    workflow: type = OrderSaga,
    extra: Sequence[Callable[..., object]] = (),
) -> tuple[str, SagaState]:
    """One path's history as JSON, and how the saga ended."""
    path = {**PATHS, **ADDED_PATHS}[name]
    participants = path.participants()
    body = path.body

    async def act(handle: Handle) -> None:
        if body is not None:
            await body(env, handle, participants)

    handle, state = await start_saga(env.client, participants, act, workflow, extra)
    assert (state.status, state.reason) == path.ends, (name, state)
    history = await handle.fetch_history()
    return history.to_json(), state


async def record_all() -> dict[str, str]:
    from tests.workflows.standins import start_env

    histories = {}
    async with start_env() as env:
        for name in [*PATHS, *ADDED_PATHS]:
            histories[name], state = await record(env, name)
            print(f"{name}: {state.status} ({state.reason}), version {state.version}")
    return histories


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    for name, history in asyncio.run(record_all()).items():
        (folder / f"{name}.json").write_text(history)
