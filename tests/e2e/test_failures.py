"""Crashes and redeliveries: the saga completes, and every fact is stored and published once."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga import events
from ordersaga.devstack import DevStack
from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings
from tests.helpers import (
    HAPPY_PATH,
    event_types,
    eventually,
    order_body,
    place,
    read_side_caught_up,
    stocked_sku,
    unique,
    wait_terminal,
)

pytestmark = pytest.mark.e2e


async def published(nc: NATS, settings: Settings, order_id: str) -> dict[str, int]:
    """How many messages JetStream holds per subject of this order."""
    prefix = settings.nats.subject_prefix
    info = await nc.jetstream().stream_info(
        settings.nats.stream, subjects_filter=f"{prefix}.{order_id}.>"
    )
    return dict(info.state.subjects or {})


async def test_worker_killed_mid_saga_completes_once(
    stack: DevStack,
    settings: Settings,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    nc: NATS,
) -> None:
    worker = stack.parts["worker"]
    restarts = worker.restarts
    sku = await stocked_sku(api, 5)
    async with engine.connect() as blocker:
        # Lock the SKU's stock row: the reservation (one `inventory.reserve` call) blocks on it.
        await blocker.execute(
            sa.text("SELECT 1 FROM inventory.stock WHERE sku = :s FOR UPDATE"), {"s": sku}
        )
        order_id = await place(api, order_body(sku, quantity=2))

        async def reservation_blocked() -> bool | None:
            # A fresh connection each time: pg_stat_activity is a snapshot per transaction.
            async with engine.connect() as probe:
                waiting = await probe.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%inventory.reserve(%'"
                    )
                )
                return True if waiting.scalar_one() > 0 else None

        await eventually(reservation_blocked, what="the reservation to block on the lock")
        # SIGKILL: no cleanup and no report to Temporal. The orphaned call may still complete
        # once the lock is freed (Postgres notices the closed socket only when it answers), so
        # the retry on the restarted worker must find that reservation and take no stock again.
        worker.kill()
        await eventually(
            lambda: _restarted(worker.restarts, restarts), what="the supervisor to restart it"
        )
        await blocker.rollback()

    order = await wait_terminal(api, order_id, timeout=60)
    assert order["status"] == "CONFIRMED"
    assert await event_types(api, order_id) == list(HAPPY_PATH)
    subjects = await published(nc, settings, order_id)
    assert subjects == {events.subject_for("orders", order_id, t): 1 for t in HAPPY_PATH}
    async with engine.connect() as conn:
        captures = await conn.execute(
            sa.text("SELECT count(*) FROM payments.ledger WHERE order_id = :o"), {"o": order_id}
        )
        assert captures.scalar_one() == 1
    assert (await api.get(f"/inventory/{sku}")).json() == {
        "sku": sku,
        "available": 3,
        "reserved": 2,
    }


async def _restarted(now: int, before: int) -> bool | None:
    return True if now > before else None


async def test_redelivered_events_leave_the_read_models_unchanged(
    settings: Settings,
    api: httpx.AsyncClient,
    store: EventStore,
    nc: NATS,
) -> None:
    sku = await stocked_sku(api, 5)
    customer = unique("redelivery")
    confirmed = await place(api, order_body(sku, quantity=2, customer_id=customer))
    declined = await place(api, order_body(sku, token="tok_decline", customer_id=customer))
    await wait_terminal(api, confirmed)
    await wait_terminal(api, declined)
    js = nc.jetstream()
    await read_side_caught_up(api, js, settings)
    today = datetime.now(UTC).date().isoformat()

    async def snapshot() -> str:
        views = [
            (await api.get(f"/orders/{confirmed}")).json(),
            (await api.get(f"/orders/{declined}")).json(),
            (await api.get(f"/customers/{customer}/orders")).json(),
            (
                await api.get("/reports/sales", params={"from": today, "to": today, "sku": sku})
            ).json(),
        ]
        return json.dumps(views, sort_keys=True)

    before = await snapshot()
    assert json.loads(before)[3]["totals"][0]["units"] == 2

    # Publish the orders' events again under fresh message ids, so JetStream does not drop them:
    # to the projections they are the same events delivered a second time, and out of order.
    for order_id in (confirmed, declined):
        for event in reversed(await store.read_stream(order_id)):
            await js.publish(
                events.subject_for(settings.nats.subject_prefix, order_id, event.event_type),
                events.encode(event),
                headers={"Nats-Msg-Id": f"redelivery-{event.event_id}"},
            )
    await read_side_caught_up(api, js, settings)
    assert await snapshot() == before


async def test_a_failing_refund_waits_for_an_operator_and_then_completes(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # The payment provider's refunds are down for this customer: a trigger rejects them.
    customer = unique("attention")
    outage = (
        "CREATE FUNCTION payments.refund_outage() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.kind = 'REFUND' AND NEW.order_id IN (SELECT order_id FROM api.order_requests "
        f"WHERE customer_id = '{customer}') THEN RAISE EXCEPTION 'refunds are down'; END IF; "
        "RETURN NEW; END $$"
    )
    async with engine.begin() as conn:
        await conn.execute(sa.text(outage))
        await conn.execute(
            sa.text(
                "CREATE TRIGGER refund_outage BEFORE INSERT ON payments.ledger "
                "FOR EACH ROW EXECUTE FUNCTION payments.refund_outage()"
            )
        )
    try:
        sku = await stocked_sku(api, 5)
        order_id = await place(api, order_body(sku, country="ZZ", customer_id=customer))

        async def attention() -> dict[str, object] | None:
            body: dict[str, object] = (await api.get(f"/orders/{order_id}")).json()
            return body if body["status"] == "REQUIRES_ATTENTION" else None

        await eventually(attention, what="the order to require attention")
        live = (await api.get(f"/orders/{order_id}/saga")).json()
        assert live["status"] == "REQUIRES_ATTENTION"
        assert "refunds are down" in live["attention_error"]
        # Nothing was skipped ahead of the failed refund: the stock is still held.
        assert (await api.get(f"/inventory/{sku}")).json()["reserved"] == 1
        early = await api.post(f"/orders/{order_id}/cancel", json={})
        assert early.status_code == 409
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text("DROP TRIGGER refund_outage ON payments.ledger"))
            await conn.execute(sa.text("DROP FUNCTION payments.refund_outage()"))

    retry = await api.post(f"/orders/{order_id}/retry-compensation")
    assert retry.status_code == 202, retry.text
    order = await wait_terminal(api, order_id)
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "shipping_unavailable")
    assert (await event_types(api, order_id))[-5:] == [
        "order.shipment_failed",
        "order.requires_attention",
        "order.payment_refunded",
        "order.inventory_released",
        "order.cancelled",
    ]
    again = await api.post(f"/orders/{order_id}/retry-compensation")
    assert again.status_code == 409
