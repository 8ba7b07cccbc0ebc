"""Participants against the real Postgres: idempotent on the order id, test-mode rules; and the
saga's step activities recording `order.placed` first when asked."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from activities.participants import (
    PostgresInventory,
    PostgresPayments,
    PostgresShipping,
    TransientParticipantError,
)
from activities.saga import OrderActivities
from ordersaga.db import create_pool
from ordersaga.domain import (
    Address,
    Order,
    OrderItem,
    OutOfStock,
    PaymentDeclined,
    ShippingUnavailable,
    StepInput,
    StepResult,
)
from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings


def oid() -> str:
    return f"test-{uuid.uuid4()}"


async def test_reserve_is_idempotent_and_all_or_nothing(pool: asyncpg.Pool) -> None:
    inventory = PostgresInventory(pool)
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    await inventory.set_stock(a, 5)
    await inventory.set_stock(b, 1)
    order = oid()
    items = [OrderItem(a, 2, 100), OrderItem(a, 1, 100)]
    first, second = await asyncio.gather(
        inventory.reserve(order, items), inventory.reserve(order, items)
    )
    assert first.lines == second.lines == {a: 3}
    assert await inventory.get_stock(a) == {"sku": a, "available": 2, "reserved": 3}

    with pytest.raises(OutOfStock) as shortage:
        await inventory.reserve(oid(), [OrderItem(a, 1, 1), OrderItem(b, 2, 1)])
    assert str(shortage.value) == f"sku {b}: 2 requested, 1 available"
    # Nothing of the failed reservation stayed behind.
    stock = await inventory.get_stock(a)
    assert stock is not None and stock["available"] == 2

    released = await inventory.release(order)
    assert released is not None and released.lines == {a: 3}
    assert await inventory.release(order) == released  # again: same answer, no double release
    assert await inventory.get_stock(a) == {"sku": a, "available": 5, "reserved": 0}
    assert await inventory.release(oid()) is None  # never reserved: nothing to release


async def test_concurrent_reservations_of_shared_skus_take_exactly_the_stock(
    settings: Settings,
) -> None:
    """Orders naming the same SKUs in either order, all at once: SKUs are locked in one order
    (no deadlock), and the stock taken is exactly what the successful reservations hold."""
    # A connection for every reservation, so all 20 contend for the locks at once.
    pool = await create_pool(settings, size=20)
    try:
        await _reserve_all_at_once(PostgresInventory(pool))
    finally:
        await pool.close()


async def _reserve_all_at_once(inventory: PostgresInventory) -> None:
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"B-{uuid.uuid4().hex[:8]}"
    await inventory.set_stock(a, 30)
    await inventory.set_stock(b, 12)
    orders = [
        [OrderItem(a, 2, 1), OrderItem(b, 1, 1)]
        if i % 2
        else [OrderItem(b, 1, 1), OrderItem(a, 2, 1)]
        for i in range(20)
    ]
    outcomes = await asyncio.gather(
        *(inventory.reserve(oid(), items) for items in orders), return_exceptions=True
    )
    held = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(r, OutOfStock) for r in refused), refused
    assert len(held) == 12  # b runs out first
    assert await inventory.get_stock(a) == {"sku": a, "available": 6, "reserved": 24}
    assert await inventory.get_stock(b) == {"sku": b, "available": 0, "reserved": 12}


async def test_payments_follow_the_test_mode_rules(pool: asyncpg.Pool) -> None:
    payments = PostgresPayments(pool)
    order = oid()
    captured = await payments.capture(order, "tok_visa", 1234, "EUR")
    assert await payments.capture(order, "tok_visa", 1234, "EUR") == captured
    refund = await payments.refund(order)
    assert refund is not None and refund.amount == 1234
    assert await payments.refund(order) == refund
    assert await payments.refund(oid()) is None

    with pytest.raises(PaymentDeclined):
        await payments.capture(oid(), "tok_decline", 1, "EUR")

    flaky = oid()
    for _ in range(2):
        with pytest.raises(TransientParticipantError):
            await payments.capture(flaky, "tok_flaky", 500, "EUR")
    assert (await payments.capture(flaky, "tok_flaky", 500, "EUR")).amount == 500


async def test_shipping_refuses_country_zz_and_cancels_idempotently(pool: asyncpg.Pool) -> None:
    shipping = PostgresShipping(pool)
    address = Address("Ada", "1 Main St", "Berlin", "10115", "DE")
    order = oid()
    shipment = await shipping.schedule(order, address)
    assert await shipping.schedule(order, address) == shipment
    cancelled = await shipping.cancel(order)
    assert cancelled is not None and cancelled.shipment_id == shipment.shipment_id
    assert await shipping.cancel(order) == cancelled
    assert await shipping.cancel(oid()) is None
    with pytest.raises(ShippingUnavailable):
        await shipping.schedule(oid(), Address("Ada", "1 Main St", "Nowhere", "0", "ZZ"))


async def test_an_undo_before_its_step_voids_the_late_step(pool: asyncpg.Pool) -> None:
    """A step attempt Temporal gave up on can still be running when the saga compensates it:
    the undo leaves a void marker, and the late step then takes nothing."""
    inventory, payments, shipping = (
        PostgresInventory(pool), PostgresPayments(pool), PostgresShipping(pool)
    )  # fmt: skip
    sku = f"v-{uuid.uuid4().hex[:8]}"
    await inventory.set_stock(sku, 5)
    order = oid()
    assert await inventory.release(order) is None
    with pytest.raises(RuntimeError, match="RELEASED"):
        await inventory.reserve(order, [OrderItem(sku, 2, 100)])
    assert await inventory.get_stock(sku) == {"sku": sku, "available": 5, "reserved": 0}
    assert await inventory.release(order) is None  # a retried undo still undoes nothing

    assert await payments.refund(order) is None
    with pytest.raises(RuntimeError, match="voided"):
        await payments.capture(order, "tok_visa", 700, "EUR")
    assert await payments.refund(order) is None

    assert await shipping.cancel(order) is None
    with pytest.raises(RuntimeError, match="CANCELLED"):
        await shipping.schedule(order, Address("Ada", "1 Main St", "Berlin", "10115", "DE"))
    assert await shipping.cancel(order) is None


async def test_a_first_step_asked_to_records_the_order_placed_once_before_its_fact(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    """Revision 3: whichever forward step comes first records `order.placed` before its own
    fact; a retry of the step (its first attempt's report lost) records neither again."""
    activities = OrderActivities(
        store, PostgresInventory(pool), PostgresPayments(pool), PostgresShipping(pool)
    )
    order = Order(
        order_id=oid(),
        customer_id="c-placed",
        items=[OrderItem(f"p-{uuid.uuid4().hex[:8]}", 1, 700)],
        shipping_address=Address("Ada", "1 Main St", "Berlin", "10115", "DE"),
        payment_token="tok_visa",
    )
    first = StepInput(order, 0, placed=True)
    assert await activities.capture_payment(first) == StepResult(2)
    assert await activities.capture_payment(first) == StepResult(2)  # the retry
    assert [e.event_type for e in await store.read_stream(order.order_id)] == [
        "order.placed",
        "order.payment_captured",
    ]
    # A step not asked to records its fact only.
    assert await activities.schedule_shipment(StepInput(order, 2)) == StepResult(3)
    assert [e.event_type for e in await store.read_stream(order.order_id)][2:] == [
        "order.shipment_scheduled"
    ]
