"""Every input the API accepts is one the whole system can carry; everything else is a 422 that
names the field. Regressions of what a fuzzer driven by our OpenAPI document found: 500s on a
stock count past int32 and on a NUL in a string, and accepted orders whose totals overflowed
the read models (dead letters)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga.bounds import CUSTOMER_ID_INPUT_PATTERN
from ordersaga.domain import MAX_ITEMS, MAX_ORDER_TOTAL, MAX_QUANTITY, MAX_STOCK, MAX_UNIT_PRICE
from ordersaga.settings import Settings
from tests.helpers import order_body, place, stocked_sku, unique, wait_terminal

pytestmark = pytest.mark.e2e


def locations(response: httpx.Response) -> list[list[str | int]]:
    assert response.status_code == 422, response.text
    return [error["loc"] for error in response.json()["errors"]]


async def test_a_stock_count_past_what_postgres_holds_is_a_422(api: httpx.AsyncClient) -> None:
    sku = unique("sku")
    too_many = await api.put(f"/inventory/{sku}", json={"available": 161575857550651})
    assert locations(too_many) == [["body", "available"]]
    most = await api.put(f"/inventory/{sku}", json={"available": MAX_STOCK})
    assert most.status_code == 200, most.text


@pytest.mark.parametrize(
    ("path", "value"),
    [(("customer_id",), "cust\x00"), (("shipping_address", "name"), "Ada\x00Lovelace"),
     (("shipping_address", "city"), "Lon\ud800don"), (("payment", "token"), "tok\x00")],
)  # fmt: skip
async def test_text_postgres_cannot_store_is_a_422_naming_the_field(
    api: httpx.AsyncClient, path: tuple[str, ...], value: str
) -> None:
    body = order_body("sku-any")
    target: dict[str, Any] = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    # Sent as JSON escapes: a lone surrogate cannot be encoded as UTF-8 otherwise.
    response = await api.post(
        "/orders", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert locations(response) == [["body", *path]]


async def test_codes_come_from_the_iso_lists(api: httpx.AsyncClient) -> None:
    bad_currency = {**order_body("sku-any"), "currency": "XXQ"}
    assert locations(await api.post("/orders", json=bad_currency)) == [["body", "currency"]]
    bad_country = order_body("sku-any", country="QQ")
    assert locations(await api.post("/orders", json=bad_country)) == [
        ["body", "shipping_address", "country"]
    ]


async def test_a_total_past_the_limit_is_refused_before_any_saga(api: httpx.AsyncClient) -> None:
    overflow = order_body("sku-any", quantity=MAX_QUANTITY, unit_price=MAX_UNIT_PRICE)
    overflow["items"] = overflow["items"] * MAX_ITEMS  # 10**15 minor units: more than an order
    assert locations(await api.post("/orders", json=overflow)) == [["body", "items"]]
    too_dear = order_body("sku-any", unit_price=MAX_UNIT_PRICE + 1)
    assert locations(await api.post("/orders", json=too_dear)) == [
        ["body", "items", 0, "unit_price"]
    ]


# Any text Postgres can store, at the documented lengths.
storable = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=64,
)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    customer=st.from_regex(CUSTOMER_ID_INPUT_PATTERN, fullmatch=True),
    name=storable,
    quantity=st.integers(1, MAX_QUANTITY),
    lines=st.integers(1, 3),
    unit_price=st.integers(0, MAX_UNIT_PRICE),
)
async def test_any_order_the_api_accepts_projects_into_every_read_model(
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    customer: str,
    name: str,
    quantity: int,
    lines: int,
    unit_price: int,
) -> None:
    sku = await stocked_sku(api, MAX_STOCK)
    body = order_body(sku, quantity=quantity, unit_price=unit_price, customer_id=customer)
    body["items"] = body["items"] * lines
    body["shipping_address"]["name"] = name
    total = quantity * unit_price * lines
    response = await api.post("/orders", json=body)
    if total > MAX_ORDER_TOTAL:
        assert locations(response) == [["body", "items"]]
        return
    assert response.status_code == 202, response.text
    order_id = response.json()["order_id"]
    final = await wait_terminal(api, order_id, 60)
    assert (final["status"], final["total"]) == ("CONFIRMED", total)
    history = await api.get(f"/customers/{customer}/orders")
    assert order_id in [o["order_id"] for o in history.json()["items"]]
    async with engine.connect() as conn:
        dead = await conn.execute(
            sa.text("SELECT projection, error FROM projections.dead_letters WHERE order_id = :o"),
            {"o": order_id},
        )
        assert dead.all() == []


async def test_a_body_past_the_limit_is_a_413_read_or_not(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    big = json.dumps({"customer_id": "c", "padding": "x" * settings.api.max_body_bytes})
    announced = await api.post("/orders", content=big, headers={"content-type": "application/json"})
    assert announced.status_code == 413, announced.text
    assert announced.headers["content-type"] == "application/problem+json"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096].encode()

    streamed = await api.post(
        "/orders", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413, streamed.text


async def test_read_your_writes_waits_are_bounded(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    order_id = await place(api, order_body(await stocked_sku(api)))
    await wait_terminal(api, order_id)
    many = settings.api.max_min_version_waits + 4
    # Version 99 never comes: each wait lasts the API's whole bound.
    answers = await asyncio.gather(
        *(api.get(f"/orders/{order_id}", params={"min_version": 99}) for _ in range(many))
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(503) >= 4, statuses
    assert statuses.count(200) >= 1, statuses
    busy = next(a for a in answers if a.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["code"] == "busy"


async def test_a_day_is_an_iso_date_not_a_timestamp(api: httpx.AsyncClient) -> None:
    # Found by the fuzzer: `to=0` was read as the Unix epoch and answered 200.
    odd = await api.get("/reports/sales", params={"from": "2026-01-01", "to": "0"})
    assert locations(odd) == [["query", "to"]]
