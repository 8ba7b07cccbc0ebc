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

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersaga.domain import EventType
from projections.base import OrderEvent, item_rows, placed


class SalesProjection:
    name = "sales"
    event_types: frozenset[str] = frozenset(
        {EventType.PLACED, EventType.CONFIRMED, EventType.CANCELLED}
    )

    _hold = sa.text(
        "INSERT INTO readmodel.sales_pending_lines (order_id, currency, items) "
        "VALUES (:order_id, :currency, CAST(:items AS jsonb)) ON CONFLICT (order_id) DO NOTHING"
    )
    _take = sa.text(
        "DELETE FROM readmodel.sales_pending_lines WHERE order_id = ANY(:ids) "
        "RETURNING order_id, currency, items"
    )
    _add = sa.text(
        """
        INSERT INTO readmodel.sales_daily (day, sku, currency, orders, units, revenue)
        VALUES (:day, :sku, :currency, :orders, :units, :revenue)
        ON CONFLICT (day, sku, currency) DO UPDATE SET
            orders = sales_daily.orders + excluded.orders,
            units = sales_daily.units + excluded.units,
            revenue = sales_daily.revenue + excluded.revenue
        """
    )

    async def apply(self, conn: AsyncConnection, events: Sequence[OrderEvent]) -> None:
        # Per order, placed comes before its confirmation or cancellation: taking every hold
        # first, then every settlement, keeps that order within a batch.
        holds = [
            {
                "order_id": e.order_id,
                "currency": order.total.currency,
                "items": json.dumps(item_rows(order)),
            }
            for e in events
            if e.event_type == EventType.PLACED
            for order in [placed(e)]
        ]
        if holds:
            await conn.execute(self._hold, holds)
        settled = {e.order_id: e for e in events if e.event_type != EventType.PLACED}
        if not settled:
            return
        taken = await conn.execute(self._take, {"ids": sorted(settled)})
        totals: dict[tuple[date, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        for row in taken:
            event = settled[row.order_id]
            if event.event_type != EventType.CONFIRMED:
                continue  # cancelled: the lines are dropped, nothing was sold
            day = event.occurred_at.date()
            skus = set()
            for item in row.items:
                total = totals[(day, item["sku"], row.currency)]
                total[1] += int(item["quantity"])
                total[2] += int(item["quantity"]) * int(item["unit_price"])
                skus.add(item["sku"])
            for sku in skus:  # an order counts once per SKU, however many lines it has
                totals[(day, sku, row.currency)][0] += 1
        if totals:
            # In key order: two partitions adding to the same rows lock them in the same order.
            await conn.execute(
                self._add,
                [
                    {"day": d, "sku": s, "currency": c, "orders": o, "units": u, "revenue": r}
                    for (d, s, c), (o, u, r) in sorted(totals.items())
                ],
            )
