"""Read model: each customer's order history (`GET /customers/{id}/orders`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from projections.base import STATUS_ON, OrderEvent, apply_rows, check, placed

_COLUMNS = (
    "order_id", "customer_id", "status", "total", "currency", "item_count", "version",
    "placed_at", "updated_at",
)  # fmt: skip
_LIST = ", ".join(_COLUMNS)


class CustomerOrdersProjection:
    """One row per order under its customer: what a "my orders" page lists."""

    name = "customer_orders"
    event_types = frozenset(STATUS_ON)

    _select = (
        f"SELECT {_LIST} FROM readmodel.customer_orders WHERE order_id = ANY($1::text[]) "
        "ORDER BY order_id FOR UPDATE"
    )
    _upsert = f"""
        INSERT INTO readmodel.customer_orders ({_LIST})
        VALUES ({", ".join(f"${n}" for n in range(1, len(_COLUMNS) + 1))})
        ON CONFLICT (order_id) DO UPDATE SET
            status = excluded.status, version = excluded.version,
            updated_at = excluded.updated_at
        WHERE readmodel.customer_orders.version < excluded.version
        """

    async def apply(self, conn: asyncpg.Connection, events: Sequence[OrderEvent]) -> None:
        await apply_rows(conn, events, self._select, self._upsert, _COLUMNS, fold)


def fold(row: dict[str, Any] | None, event: OrderEvent) -> dict[str, Any]:
    check(row, event, STATUS_ON)
    if row is None:
        order = placed(event)
        row = {
            "order_id": event.order_id,
            "customer_id": order.customer_id,
            "total": order.total.amount,
            "currency": order.total.currency,
            "item_count": sum(line.quantity for line in order.items),
            "placed_at": event.occurred_at,
        }
    else:
        row = dict(row)
    status = STATUS_ON[event.event_type]
    if status is not None:
        row["status"] = status.value
    row["version"] = event.version
    row["updated_at"] = event.occurred_at
    return row
