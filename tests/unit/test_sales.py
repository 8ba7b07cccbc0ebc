"""The sales report's projection, without a database.

`SalesProjection` has no pure fold: its `apply` holds an order's lines at `order.placed` and
counts them at `order.confirmed`, through three statements on the connection it is given. These
tests give it an in-memory stand-in for its two tables that does what those statements do, and
check what ends up in `sales_daily`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import asyncpg

from projections.base import OrderEvent
from projections.sales import SalesProjection
from tests.helpers import HAPPY_PATH, fake_events

DAY = datetime(2026, 3, 1, 23, 59, 58, tzinfo=UTC)
CANCELLED = ("order.placed", "order.payment_declined", "order.cancelled")

Key = tuple[date, str, str]


class SalesTables:
    """`readmodel.sales_pending_lines` and `readmodel.sales_daily`, in memory."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self.daily: dict[Key, dict[str, int]] = {}

    async def executemany(self, statement: str, args: Sequence[tuple[Any, ...]]) -> None:
        sql = " ".join(statement.split())
        if sql.startswith("INSERT INTO readmodel.sales_pending_lines"):
            for order_id, currency, items in args:  # ON CONFLICT (order_id) DO NOTHING
                self.pending.setdefault(order_id, (currency, json.loads(items)))
            return
        if sql.startswith("INSERT INTO readmodel.sales_daily"):
            for day, sku, currency, *sums in args:
                row = self.daily.setdefault(
                    (day, sku, currency), {"orders": 0, "units": 0, "revenue": 0}
                )
                for column, amount in zip(("orders", "units", "revenue"), sums, strict=True):
                    row[column] += amount
            return
        raise AssertionError(f"a statement the stand-in does not know: {sql}")

    async def fetch(self, statement: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        sql = " ".join(statement.split())
        if sql.startswith("DELETE FROM readmodel.sales_pending_lines"):
            taken = [(o, self.pending.pop(o)) for o in ids if o in self.pending]
            # jsonb as the plain asyncpg pool returns it: text.
            return [{"order_id": o, "currency": c, "items": json.dumps(i)} for o, (c, i) in taken]
        raise AssertionError(f"a statement the stand-in does not know: {sql}")

    async def apply(self, events: Sequence[OrderEvent]) -> None:
        await SalesProjection().apply(cast(asyncpg.Connection, self), events)


def order(
    order_id: str,
    types: Sequence[str] = HAPPY_PATH,
    quantity: int = 1,
    unit_price: int = 100,
    items: list[dict[str, Any]] | None = None,
    at: datetime = DAY,
) -> list[OrderEvent]:
    """An order's events the sales projection takes (placed and how it ended), `at` a time."""
    overrides = None
    if items is not None:  # lines as the read models keep them; order.placed carries Money
        lines = [{**i, "unit_price": {"amount": i["unit_price"], "currency": "EUR"}} for i in items]
        overrides = {1: {"items": lines}}
    stored = fake_events(order_id, "c", "sku-a", quantity, unit_price, types, overrides)
    wanted = SalesProjection.event_types
    return [
        replace(OrderEvent.from_stored(e), occurred_at=at) for e in stored if e.event_type in wanted
    ]


async def test_a_confirmed_order_is_counted_on_the_day_of_its_confirmation() -> None:
    tables = SalesTables()
    placed, confirmed = order("o-1", quantity=3, unit_price=250)
    await tables.apply([replace(placed, occurred_at=DAY - timedelta(days=3))])
    assert tables.daily == {}  # placed: only held
    assert list(tables.pending) == ["o-1"]
    await tables.apply([confirmed])
    assert tables.daily == {
        (date(2026, 3, 1), "sku-a", "EUR"): {"orders": 1, "units": 3, "revenue": 750}
    }
    assert tables.pending == {}


async def test_an_order_counts_once_per_sku_however_many_lines_it_has() -> None:
    tables = SalesTables()
    lines = [
        {"sku": "sku-a", "quantity": 2, "unit_price": 100},
        {"sku": "sku-b", "quantity": 1, "unit_price": 999},
        {"sku": "sku-a", "quantity": 1, "unit_price": 90},
    ]
    await tables.apply(order("o-1", items=lines))  # placed and confirmed in one batch
    assert tables.daily == {
        (date(2026, 3, 1), "sku-a", "EUR"): {"orders": 1, "units": 3, "revenue": 290},
        (date(2026, 3, 1), "sku-b", "EUR"): {"orders": 1, "units": 1, "revenue": 999},
    }


async def test_orders_of_one_day_and_sku_add_up() -> None:
    tables = SalesTables()
    await tables.apply(order("o-1", quantity=2, unit_price=100) + order("o-2", unit_price=100))
    await tables.apply(order("o-3", quantity=4, unit_price=50))
    assert tables.daily == {
        (date(2026, 3, 1), "sku-a", "EUR"): {"orders": 3, "units": 7, "revenue": 500}
    }


async def test_a_cancelled_order_sells_nothing_and_its_lines_are_dropped() -> None:
    tables = SalesTables()
    await tables.apply(order("o-1", types=CANCELLED, quantity=5))
    assert tables.daily == {}
    assert tables.pending == {}


async def test_a_replayed_confirmation_counts_nothing_twice() -> None:
    tables = SalesTables()
    placed, confirmed = order("o-1", quantity=2, unit_price=300)
    await tables.apply([placed, confirmed])
    await tables.apply([confirmed])
    assert tables.daily == {
        (date(2026, 3, 1), "sku-a", "EUR"): {"orders": 1, "units": 2, "revenue": 600}
    }


async def test_days_are_counted_apart() -> None:
    tables = SalesTables()
    await tables.apply(order("o-1") + order("o-2", at=DAY + timedelta(seconds=2)))
    assert tables.daily == {
        (date(2026, 3, 1), "sku-a", "EUR"): {"orders": 1, "units": 1, "revenue": 100},
        (date(2026, 3, 2), "sku-a", "EUR"): {"orders": 1, "units": 1, "revenue": 100},
    }
