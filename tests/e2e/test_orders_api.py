"""Every saga path, driven through the HTTP API against the real embedded stack."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers import (
    HAPPY_PATH,
    event_types,
    eventually,
    order_body,
    place,
    stocked_sku,
    unique,
    wait_terminal,
    waiting_on_lock,
)

pytestmark = pytest.mark.e2e


async def test_happy_path_confirms_and_records_every_fact(api: httpx.AsyncClient) -> None:
    sku = await stocked_sku(api, 10)
    response = await api.post("/orders", json=order_body(sku, quantity=3, unit_price=1250))
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "PENDING"
    assert response.headers["location"] == f"/orders/{accepted['order_id']}"

    order = await wait_terminal(api, accepted["order_id"])
    assert order["status"] == "CONFIRMED"
    assert order["total"] == 3750
    assert order["failure_reason"] is None
    assert [t["type"] for t in order["timeline"]] == await event_types(api, order["order_id"])
    assert await event_types(api, order["order_id"]) == list(HAPPY_PATH)
    events = (await api.get(f"/orders/{order['order_id']}/events")).json()
    assert [e["streamversion"] for e in events] == [1, 2, 3, 4, 5]
    assert all(e["specversion"] == "1.0" and e["subject"] == order["order_id"] for e in events)
    assert "payment" not in events[0]["data"]  # the card token never enters the event stream
    stock = (await api.get(f"/inventory/{sku}")).json()
    assert stock == {"sku": sku, "available": 7, "reserved": 3}


async def test_out_of_stock_takes_no_payment(api: httpx.AsyncClient, engine: AsyncEngine) -> None:
    sku = await stocked_sku(api, 1)
    order_id = await place(api, order_body(sku, quantity=2))
    order = await wait_terminal(api, order_id)
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "out_of_stock")
    assert await event_types(api, order_id) == [
        "order.placed",
        "order.inventory_reservation_failed",
        "order.cancelled",
    ]
    async with engine.connect() as conn:
        payments = await conn.execute(
            sa.text("SELECT count(*) FROM payments.ledger WHERE order_id = :o"), {"o": order_id}
        )
        assert payments.scalar_one() == 0
    assert (await api.get(f"/inventory/{sku}")).json()["available"] == 1


async def test_declined_payment_releases_the_stock(api: httpx.AsyncClient) -> None:
    sku = await stocked_sku(api, 5)
    order_id = await place(api, order_body(sku, quantity=2, token="tok_decline"))
    order = await wait_terminal(api, order_id)
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "payment_declined")
    assert await event_types(api, order_id) == [
        "order.placed",
        "order.inventory_reserved",
        "order.payment_declined",
        "order.inventory_released",
        "order.cancelled",
    ]
    assert (await api.get(f"/inventory/{sku}")).json() == {
        "sku": sku,
        "available": 5,
        "reserved": 0,
    }


async def test_shipping_unavailable_refunds_then_releases(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sku = await stocked_sku(api, 5)
    order_id = await place(api, order_body(sku, quantity=1, unit_price=999, country="ZZ"))
    order = await wait_terminal(api, order_id)
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "shipping_unavailable")
    assert await event_types(api, order_id) == [
        "order.placed",
        "order.inventory_reserved",
        "order.payment_captured",
        "order.shipment_failed",
        "order.payment_refunded",
        "order.inventory_released",
        "order.cancelled",
    ]
    async with engine.connect() as conn:
        ledger: dict[str, int] = dict(
            (
                await conn.execute(
                    sa.text("SELECT kind, amount FROM payments.ledger WHERE order_id = :o"),
                    {"o": order_id},
                )
            ).all()
        )
    assert ledger == {"CAPTURE": 999, "REFUND": 999}


async def test_flaky_payment_is_retried_and_confirmed(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sku = await stocked_sku(api, 5)
    order_id = await place(api, order_body(sku, token="tok_flaky"))
    order = await wait_terminal(api, order_id)
    assert order["status"] == "CONFIRMED"
    async with engine.connect() as conn:
        attempts = await conn.execute(
            sa.text("SELECT attempts FROM payments.attempts WHERE order_id = :o"), {"o": order_id}
        )
        assert attempts.scalar_one() == 3  # two transient failures, then the capture
    # Transient faults are retried, not recorded as facts.
    assert "order.payment_declined" not in await event_types(api, order_id)


async def test_customer_cancel_mid_saga_compensates(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sku = await stocked_sku(api, 5)
    # Hold the payment ledger so the saga is surely inside its capture step when we cancel.
    async with engine.connect() as blocker:
        await blocker.execute(sa.text("LOCK TABLE payments.ledger IN EXCLUSIVE MODE"))
        order_id = await place(api, order_body(sku, quantity=2))

        # Seeing `inventory_reserved` is not enough: the workflow may not have scheduled the
        # capture yet, and a cancel then (rightly) skips it. Wait for the capture itself to be
        # queued behind our lock.
        await eventually(
            waiting_on_lock(engine, "payments.ledger"),
            what="the capture to wait on the payment ledger",
        )
        response = await api.post(f"/orders/{order_id}/cancel", json={"reason": "changed my mind"})
        assert response.status_code == 202, response.text
        assert response.json()["cancel_requested"] is True
        await blocker.rollback()  # the capture goes through now, and is then refunded

    order = await wait_terminal(api, order_id)
    assert (order["status"], order["failure_reason"]) == ("CANCELLED", "customer_request")
    assert await event_types(api, order_id) == [
        "order.placed",
        "order.inventory_reserved",
        "order.payment_captured",
        "order.payment_refunded",
        "order.inventory_released",
        "order.cancelled",
    ]
    events = (await api.get(f"/orders/{order_id}/events")).json()
    assert events[-1]["data"]["detail"] == "changed my mind"
    assert (await api.get(f"/inventory/{sku}")).json()["reserved"] == 0


async def test_cancel_after_confirmation_is_a_conflict(api: httpx.AsyncClient) -> None:
    sku = await stocked_sku(api, 5)
    order_id = await place(api, order_body(sku))
    await wait_terminal(api, order_id)
    response = await api.post(f"/orders/{order_id}/cancel", json={})
    assert response.status_code == 409
    assert "CONFIRMED" in response.json()["detail"]
    retry = await api.post(f"/orders/{order_id}/retry-compensation")
    assert retry.status_code == 409


async def test_same_idempotency_key_gives_the_same_order(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sku = await stocked_sku(api, 10)
    body = order_body(sku)
    key = unique("key")
    first, second = await asyncio.gather(
        api.post("/orders", json=body, headers={"Idempotency-Key": key}),
        api.post("/orders", json=body, headers={"Idempotency-Key": key}),
    )
    assert first.status_code == second.status_code == 202
    assert first.json()["order_id"] == second.json()["order_id"]
    order_id = first.json()["order_id"]
    await wait_terminal(api, order_id)
    third = await api.post("/orders", json=body, headers={"Idempotency-Key": key})
    assert third.status_code == 202
    assert third.json()["order_id"] == order_id
    assert third.headers["idempotent-replayed"] == "true"
    assert third.json()["status"] == "CONFIRMED"

    other = await api.post(
        "/orders", json=order_body(sku, quantity=2), headers={"Idempotency-Key": key}
    )
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    async with engine.connect() as conn:
        count = await conn.execute(
            sa.text("SELECT count(*) FROM api.order_requests WHERE idempotency_key = :k"),
            {"k": key},
        )
        assert count.scalar_one() == 1
    assert (await api.get(f"/inventory/{sku}")).json()["reserved"] == 1  # one order, not two


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.update(items=[]), "items"),
        (lambda b: b["items"][0].update(quantity=0), "quantity"),
        (lambda b: b["items"][0].update(unit_price=-1), "unit_price"),
        (lambda b: b.update(coupon="FREE"), "coupon"),
        (lambda b: b["shipping_address"].update(country="Germany"), "country"),
        (lambda b: b.pop("payment"), "payment"),
    ],
)
async def test_invalid_orders_are_rejected_naming_the_field(
    api: httpx.AsyncClient, mutate: Callable[[dict[str, Any]], object], field: str
) -> None:
    body = order_body("sku-x")
    mutate(body)
    response = await api.post("/orders", json=body)
    assert response.status_code == 422
    locations = [error["loc"] for error in response.json()["errors"]]
    assert any(loc[-1] == field for loc in locations), locations


async def test_unknown_ids_are_404_and_malformed_ones_422(api: httpx.AsyncClient) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert (await api.get(f"/orders/{missing}")).status_code == 404
    assert (await api.get(f"/orders/{missing}/events")).status_code == 404
    assert (await api.post(f"/orders/{missing}/cancel", json={})).status_code == 404
    assert (await api.get("/orders/not-a-uuid")).status_code == 422
    assert (await api.get(f"/inventory/{unique('nosku')}")).status_code == 404
    assert (await api.put("/inventory/abc", json={"available": -1})).status_code == 422


async def test_orders_page_by_customer_and_status(api: httpx.AsyncClient) -> None:
    sku = await stocked_sku(api, 10)
    customer = unique("cust")
    ids = [await place(api, order_body(sku, customer_id=customer)) for _ in range(3)]
    declined = await place(api, order_body(sku, customer_id=customer, token="tok_decline"))
    for order_id in [*ids, declined]:
        await wait_terminal(api, order_id)

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"customer_id": customer, "status": "CONFIRMED", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/orders", params=params)).json()
        seen += [o["order_id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert (await api.get("/orders", params={"cursor": "garbage"})).status_code == 422


async def test_an_accepted_order_is_never_a_404(api: httpx.AsyncClient) -> None:
    sku = await stocked_sku(api, 5)
    order_id = await place(api, order_body(sku))
    response = await api.get(f"/orders/{order_id}")  # straight away: the projector may lag
    assert response.status_code == 200
    assert response.json()["status"] in {
        "PENDING",
        "INVENTORY_RESERVED",
        "PAYMENT_CAPTURED",
        "CONFIRMED",
    }
    await wait_terminal(api, order_id)


async def test_health_and_readiness(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "nats": "ok", "temporal": "ok"}
