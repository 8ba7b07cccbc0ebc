"""Small helpers the integration and end-to-end tests share."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

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
