"""Faults never stick a saga or lose an event: the stream adopts what a step recorded before it
failed, and a NATS outage delays the bus, never a saga (the relay publishes from the store)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.participants import PostgresInventory, PostgresPayments, PostgresShipping
from activities.saga import OrderActivities
from ordersaga.devstack import DevStack
from ordersaga.domain import (
    Address,
    CancelReason,
    Order,
    OrderItem,
    OrderStatus,
    SagaPolicy,
    StepInput,
    StepResult,
    workflow_id,
)
from ordersaga.eventstore import EventStore
from ordersaga.runtime import connect_temporal
from ordersaga.settings import Settings
from tests.e2e.test_failures import published
from tests.helpers import (
    HAPPY_PATH,
    event_types,
    eventually,
    order_body,
    place,
    stocked_sku,
    unique,
    wait_terminal,
)
from workflows.client import SagaClient
from workflows.order_saga import OrderSaga

pytestmark = pytest.mark.e2e


class ReservationLostAfterRecording(OrderActivities):
    """The reservation records its fact, then fails as if its worker died before reporting, on
    every attempt: the step's budget runs out with its fact stored (the stuck saga of issue 8)."""

    @activity.defn(name="reserve_inventory")
    async def reserve_inventory(self, step: StepInput) -> StepResult:
        try:
            await super().reserve_inventory(step)
        except ApplicationError:
            pass  # the refusal is recorded at version 2; the workflow never hears of it
        raise ApplicationError("lost after recording (test)", type="WorkerLost")


async def test_a_fact_recorded_before_the_budget_ran_out_is_adopted(
    settings: Settings, pool: asyncpg.Pool, store: EventStore, nc: NATS, api: httpx.AsyncClient
) -> None:
    sku = await stocked_sku(api, 0)  # out of stock: the participant refuses
    order = Order(
        order_id=str(uuid.uuid4()),
        customer_id=unique("cust"),
        items=[OrderItem(sku, 1, 500)],
        shipping_address=Address("Ada", "1 Main St", "Berlin", "10115", "DE"),
        payment_token="tok_visa",
    )
    task_queue = unique("stuck")
    activities = ReservationLostAfterRecording(
        store, PostgresInventory(pool), PostgresPayments(pool), PostgresShipping(pool)
    )
    client = await connect_temporal(settings)
    policy = SagaPolicy(
        step_budget_s=2.0, compensation_budget_s=10.0, initial_interval_s=0.2, max_interval_s=0.5
    )
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[OrderSaga],
        activities=activities.all(),
    ):
        sagas = SagaClient(client, task_queue)
        assert await sagas.start(order, policy)
        handle = client.get_workflow_handle_for(OrderSaga.run, workflow_id(order.order_id))
        state = await asyncio.wait_for(handle.result(), 60)
    assert (state.status, state.reason) == (OrderStatus.CANCELLED, CancelReason.STEP_FAILED)
    stored = await store.read_stream(order.order_id)
    assert [(e.version, e.event_type) for e in stored] == [
        (1, "order.placed"),
        (2, "order.inventory_reservation_failed"),
        (3, "order.cancelled"),
    ]

    async def each_published_once() -> dict[str, int] | None:
        counts = await published(nc, settings, order.order_id)
        return counts if sum(counts.values()) >= 3 else None

    counts = await eventually(each_published_once, 30, "the relay to publish the order")
    prefix = f"{settings.nats.subject_prefix}.{order.order_id}"
    assert counts == {
        f"{prefix}.placed": 1,
        f"{prefix}.inventory_reservation_failed": 1,
        f"{prefix}.cancelled": 1,
    }


async def test_a_nats_outage_delays_the_bus_never_a_saga(
    stack: DevStack,
    settings: Settings,
    api: httpx.AsyncClient,
    nc: NATS,
) -> None:
    sku = await stocked_sku(api, 50)
    nats_server = stack.parts["nats"]
    assert nats_server.process is not None
    pid = nats_server.process.pid
    client = await connect_temporal(settings)
    # Frozen, nats-server neither answers nor closes connections: publishes time out. Longer than
    # the old budget of a step that published (5 attempts of at most 1 s in these tests).
    os.kill(pid, signal.SIGSTOP)
    try:
        order_ids = [await place(api, order_body(sku)) for _ in range(5)]
        for order_id in order_ids:
            handle = client.get_workflow_handle_for(OrderSaga.run, workflow_id(order_id))
            result = await asyncio.wait_for(handle.result(), 60)
            assert result.status == OrderStatus.CONFIRMED, result
        assert nats_server.process is not None and nats_server.process.pid == pid
    finally:
        os.kill(pid, signal.SIGCONT)
    for order_id in order_ids:
        await wait_terminal(api, order_id, timeout=60)
        assert await event_types(api, order_id) == list(HAPPY_PATH)

        async def all_five(order_id: str = order_id) -> dict[str, int] | None:
            counts = await published(nc, settings, order_id)
            return counts if len(counts) == len(HAPPY_PATH) else None

        counts = await eventually(all_five, 30, f"order {order_id} on JetStream")
        assert set(counts.values()) == {1}, counts


async def test_an_order_placed_while_temporal_is_down_starts_once_on_retry(
    stack: DevStack, settings: Settings, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sku = await stocked_sku(api, 5)
    body = order_body(sku)
    key = unique("key")
    await stack.pause("temporal")
    try:
        refused = await api.post("/orders", json=body, headers={"Idempotency-Key": key})
        assert refused.status_code == 503, refused.text
    finally:
        await stack.resume("temporal")
    # Whether the saga started was unknown, so the request is kept: the retry with the same key
    # is the same order, and starts its one saga.
    async with engine.connect() as conn:
        order_id = (
            await conn.execute(
                sa.text("SELECT order_id FROM api.order_requests WHERE idempotency_key = :k"),
                {"k": key},
            )
        ).scalar_one()

    async def accepted() -> httpx.Response | None:
        again = await api.post("/orders", json=body, headers={"Idempotency-Key": key})
        return again if again.status_code == 202 else None

    again = await eventually(accepted, 60, "Temporal to be back and the order accepted")
    assert again.json()["order_id"] == order_id
    assert (await wait_terminal(api, order_id, 60))["status"] == "CONFIRMED"
    async with engine.connect() as conn:
        captures = (
            await conn.execute(
                sa.text("SELECT count(*) FROM payments.ledger WHERE order_id = :o"),
                {"o": order_id},
            )
        ).scalar_one()
    assert captures == 1
