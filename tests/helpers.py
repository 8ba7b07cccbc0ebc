"""Small helpers the integration and end-to-end tests share."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa

from ordersaga import events
from ordersaga.contracts.examples import example
from ordersaga.domain import Address, Order, OrderItem
from ordersaga.eventstore import EventStore, NewEvent, StoredEvent

T = TypeVar("T")

TERMINAL = {"CONFIRMED", "CANCELLED"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def order_body(
    sku: str,
    quantity: int = 1,
    unit_price: int = 1000,
    token: str = "tok_visa",
    country: str = "DE",
    customer_id: str | None = None,
) -> dict[str, Any]:
    return {
        "customer_id": customer_id or unique("cust"),
        "items": [{"sku": sku, "quantity": quantity, "unit_price": unit_price}],
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 St James's Square",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": country,
        },
        "payment": {"token": token},
    }


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float = 30.0, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something other than None, within a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.02
    while True:
        result = await probe()
        if result is not None:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(delay)  # poll backoff within the deadline
        delay = min(delay * 1.5, 0.25)


async def stocked_sku(api: httpx.AsyncClient, available: int = 100) -> str:
    sku = unique("sku")
    response = await api.put(f"/inventory/{sku}", json={"available": available})
    assert response.status_code == 200, response.text
    return sku


async def place(api: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> str:
    response = await api.post("/orders", json=body, headers=headers)
    assert response.status_code == 202, response.text
    order_id: str = response.json()["order_id"]
    return order_id


async def wait_terminal(
    api: httpx.AsyncClient, order_id: str, timeout: float = 30.0
) -> dict[str, Any]:
    """The read model once the order is CONFIRMED or CANCELLED (and the projector caught up)."""

    async def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/orders/{order_id}")).json()
        return body if body["status"] in TERMINAL else None

    return await eventually(probe, timeout, f"order {order_id} to finish")


async def event_types(api: httpx.AsyncClient, order_id: str) -> list[str]:
    response = await api.get(f"/orders/{order_id}/events")
    assert response.status_code == 200, response.text
    return [e["type"] for e in response.json()]


async def read_side_caught_up(
    api: httpx.AsyncClient, js: Any, settings: Any, timeout: float = 30.0
) -> None:
    """Every projection has applied everything on the bus (JetStream's own count, not a sleep)."""

    async def probe() -> bool | None:
        source = await js.stream_info(settings.nats.stream)
        partitioned = await js.stream_info(settings.nats.partitioned_stream)
        if partitioned.state.messages < source.state.messages:
            return None  # the partitioned stream has not sourced everything yet
        status = (await api.get("/projections")).json()
        return True if all(p["lag"] == 0 for p in status) else None

    await eventually(probe, timeout, "the read side to catch up")


HAPPY_PATH = (
    "order.placed",
    "order.inventory_reserved",
    "order.payment_captured",
    "order.shipment_scheduled",
    "order.confirmed",
)


def fake_events(
    order_id: str,
    customer_id: str,
    sku: str,
    quantity: int = 1,
    unit_price: int = 100,
    types: Sequence[str] = HAPPY_PATH,
    overrides: dict[int, dict[str, Any]] | None = None,
) -> list[StoredEvent]:
    """An order's events as a producer would publish them (not written to the event store): each
    a valid payload of the current version, but for what `overrides` puts in (per version)."""
    order = Order(
        order_id=order_id,
        customer_id=customer_id,
        items=[OrderItem(sku, quantity, unit_price)],
        shipping_address=Address("Ada", "1 Main St", "Berlin", "10115", "DE"),
        payment_token="tok_visa",
    )
    now = datetime.now(UTC)
    out = []
    for version, event_type in enumerate(types, start=1):
        payload = example(event_type, order)
        data = {**payload.as_data(), **(overrides or {}).get(version, {})}
        out.append(
            StoredEvent(
                position=0,
                stream_id=order_id,
                version=version,
                event_id=str(uuid.uuid4()),
                event_type=event_type,
                schema_version=payload.schema_version,
                data=data,
                metadata={},
                occurred_at=now,
            )
        )
    return out


async def publish(js: Any, settings: Any, stored: Sequence[StoredEvent]) -> None:
    for event in stored:
        await js.publish(
            events.subject_for(settings.nats.subject_prefix, event.stream_id, event.event_type),
            events.encode(event),
            headers={"Nats-Msg-Id": event.event_id},
        )


def cli(settings: Any, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `ordersaga ARGS` against the test stack, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**os.environ, **settings.as_child_env()},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def append(store: EventStore, stored: Sequence[StoredEvent]) -> list[StoredEvent]:
    """Write made-up events to the event store first, as the saga's activities do."""
    out: list[StoredEvent] = []
    by_order: dict[str, list[StoredEvent]] = {}
    for event in stored:
        by_order.setdefault(event.stream_id, []).append(event)
    for order_id, evs in by_order.items():
        out += await store.append(
            order_id,
            [
                NewEvent(e.event_id, e.event_type, e.data, schema_version=e.schema_version)
                for e in evs
            ],
            0,
        )
    return out


def waiting_on_lock(engine: Any, relation: str) -> Callable[[], Awaitable[bool | None]]:
    """A probe for `eventually`: someone waits for a lock on `relation` (a test holds it)."""

    async def probe() -> bool | None:
        # A fresh connection each time: the lock table is a snapshot per transaction.
        async with engine.connect() as conn:
            waiting = await conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks "
                    "WHERE relation = CAST(:r AS regclass) AND NOT granted"
                ),
                {"r": relation},
            )
            return True if waiting.scalar_one() > 0 else None

    return probe
