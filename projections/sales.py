"""Read model: units and revenue per day of confirmation and SKU (`GET /reports/sales`).

The lines of an order wait in `sales_pending_lines` from `order.placed` until the order is
confirmed (counted, and the lines deleted) or cancelled (deleted). Deleting the lines is what
makes the count happen once: a replayed confirmation finds nothing left to count.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import date

import asyncpg

from ordersaga import db
from ordersaga.domain import EventType
from projections.base import OrderEvent, item_rows, placed


class SalesProjection:
    name = "sales"
    event_types: frozenset[str] = frozenset(
        {EventType.PLACED, EventType.CONFIRMED, EventType.CANCELLED}
    )

    _hold = (
        "INSERT INTO readmodel.sales_pending_lines (order_id, currency, items) "
        "VALUES ($1, $2, $3::jsonb) ON CONFLICT (order_id) DO NOTHING"
    )
    _take = (
        "DELETE FROM readmodel.sales_pending_lines WHERE order_id = ANY($1::text[]) "
        "RETURNING order_id, currency, items"
    )
    _add = """
        INSERT INTO readmodel.sales_daily (day, sku, currency, orders, units, revenue)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (day, sku, currency) DO UPDATE SET
            orders = sales_daily.orders + excluded.orders,
            units = sales_daily.units + excluded.units,
            revenue = sales_daily.revenue + excluded.revenue
        """

    async def apply(self, conn: asyncpg.Connection, events: Sequence[OrderEvent]) -> None:
        # Per order, placed comes before its confirmation or cancellation: taking every hold
        # first, then every settlement, keeps that order within a batch.
        holds = [
            (e.order_id, order.total.currency, json.dumps(item_rows(order)))
            for e in events
            if e.event_type == EventType.PLACED
            for order in [placed(e)]
        ]
        if holds:
            await conn.executemany(self._hold, holds)
        settled = {e.order_id: e for e in events if e.event_type != EventType.PLACED}
        if not settled:
            return
        taken = await conn.fetch(self._take, sorted(settled))
        totals: dict[tuple[date, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        for row in taken:
            event = settled[row["order_id"]]
            if event.event_type != EventType.CONFIRMED:
                continue  # cancelled: the lines are dropped, nothing was sold
            day = event.occurred_at.date()
            currency = row["currency"]
            skus = set()
            for item in db.jsonb(row["items"]):
                total = totals[(day, item["sku"], currency)]
                total[1] += int(item["quantity"])
                total[2] += int(item["quantity"]) * int(item["unit_price"])
                skus.add(item["sku"])
            for sku in skus:  # an order counts once per SKU, however many lines it has
                totals[(day, sku, currency)][0] += 1
        if totals:
            # In key order: two partitions adding to the same rows lock them in the same order.
            await conn.executemany(
                self._add, [(*key, *sums) for key, sums in sorted(totals.items())]
            )
