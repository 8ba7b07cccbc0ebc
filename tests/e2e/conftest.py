"""After every end-to-end scenario, stock and money must add up."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers import eventually


async def _all_api_orders_finished(engine: AsyncEngine) -> bool | None:
    async with engine.connect() as conn:
        unfinished = (
            await conn.execute(
                sa.text(
                    "SELECT count(*) FROM api.order_requests r "
                    "LEFT JOIN readmodel.orders o USING (order_id) "
                    "WHERE o.status IS NULL OR o.status NOT IN ('CONFIRMED', 'CANCELLED')"
                )
            )
        ).scalar_one()
    return True if unfinished == 0 else None


async def assert_books_balance(engine: AsyncEngine) -> None:
    await eventually(lambda: _all_api_orders_finished(engine), 60, "every saga to finish")
    async with engine.connect() as conn:
        money = (
            await conn.execute(
                sa.text(
                    """
                    WITH ours AS (SELECT order_id FROM api.order_requests)
                    SELECT
                      (SELECT coalesce(sum(CASE kind WHEN 'CAPTURE' THEN amount
                                                     ELSE -amount END), 0)
                         FROM payments.ledger WHERE order_id IN (SELECT order_id FROM ours)),
                      (SELECT coalesce(sum(total), 0) FROM readmodel.orders
                         WHERE status = 'CONFIRMED' AND order_id IN (SELECT order_id FROM ours))
                    """
                )
            )
        ).one()
        held = Counter[str]()
        for (lines,) in await conn.execute(
            sa.text(
                "SELECT lines FROM inventory.reservations WHERE status = 'RESERVED' "
                "AND order_id IN (SELECT order_id FROM api.order_requests)"
            )
        ):
            held.update(lines)
        confirmed = Counter[str]()
        for (items,) in await conn.execute(
            # Orders of the API only: read-side tests also publish events of made-up orders.
            sa.text(
                "SELECT items FROM readmodel.orders WHERE status = 'CONFIRMED' "
                "AND order_id IN (SELECT order_id FROM api.order_requests)"
            )
        ):
            for item in items:
                confirmed[item["sku"]] += item["quantity"]
        # The participant's own books: reserved stock is exactly what live reservations hold.
        drift = (
            await conn.execute(
                sa.text(
                    """
                    SELECT s.sku, s.reserved, coalesce(r.held, 0) AS held
                    FROM inventory.stock s LEFT JOIN (
                        SELECT l.key AS sku, sum(l.value::int) AS held
                        FROM inventory.reservations, jsonb_each_text(lines) AS l
                        WHERE status = 'RESERVED' GROUP BY l.key) r USING (sku)
                    WHERE s.reserved <> coalesce(r.held, 0)
                    """
                )
            )
        ).all()
    captured_minus_refunded, confirmed_total = money
    assert captured_minus_refunded == confirmed_total, "money taken != total of confirmed orders"
    assert held == confirmed, "reserved stock != what confirmed orders hold"
    assert drift == [], f"inventory.stock.reserved disagrees with reservations: {drift}"


@pytest.fixture(autouse=True)
async def books_balance(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    await assert_books_balance(engine)
