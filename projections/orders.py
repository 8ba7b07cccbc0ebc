"""The order read model: one row per order, folded from the order's events in version order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from ordersaga.contracts.payloads import OrderCancelled, Refusal
from projections.base import (
    STATUS_ON,
    OrderEvent,
    ProjectionError,
    apply_rows,
    check,
    item_rows,
    placed,
)

# What of each event's data the timeline keeps (the order id is the row's already).
_TIMELINE_KEYS = ("reason", "detail", "amount", "lines", "shipment_id", "compensation", "error")


def apply(row: dict[str, Any] | None, event: OrderEvent) -> dict[str, Any]:
    """Fold one event into the order's row; pure, so it is tested without I/O.

    The runtime hands events over in version order and fills gaps from the store; a gap that
    reaches here is an event an operator discarded. Going backwards is a bug, and raises.
    """
    check(row, event, STATUS_ON)
    if row is not None and event.version <= row["version"]:
        raise ProjectionError(
            f"order {event.order_id}: event version {event.version} after {row['version']}"
        )
    if row is None:
        order = placed(event)
        row = {
            "order_id": event.order_id,
            "customer_id": order.customer_id,
            "items": item_rows(order),
            "shipping_address": order.shipping_address.model_dump(mode="json"),
            "total": order.total.amount,
            "currency": order.total.currency,
            "failure_reason": None,
            "timeline": [],
            "placed_at": event.occurred_at,
        }
    else:
        row = dict(row, timeline=list(row["timeline"]))
    status = STATUS_ON[event.event_type]
    if status is not None:
        row["status"] = status.value
    row["version"] = event.version
    row["updated_at"] = event.occurred_at
    payload = event.payload
    if isinstance(payload, Refusal | OrderCancelled):
        row["failure_reason"] = payload.reason.value
    entry: dict[str, Any] = {
        "version": event.version,
        "type": event.event_type,
        "at": event.occurred_at.isoformat(),
    }
    entry.update((k, v) for k, v in payload.as_data().items() if k in _TIMELINE_KEYS)
    row["timeline"].append(entry)
    return row


COLUMNS = (
    "order_id, customer_id, status, items, shipping_address, total, currency, version, "
    "failure_reason, timeline, placed_at, updated_at"
)
_NAMES = tuple(c.strip() for c in COLUMNS.split(","))
JSON_COLUMNS = ("items", "shipping_address", "timeline")

LIVE_TABLE = "readmodel.orders"


def _upsert(table: str) -> str:
    values = ", ".join(
        f"${n}::jsonb" if c in JSON_COLUMNS else f"${n}" for n, c in enumerate(_NAMES, 1)
    )
    return f"""
        INSERT INTO {table} ({COLUMNS}) VALUES ({values})
        ON CONFLICT (order_id) DO UPDATE SET
            status = excluded.status, version = excluded.version,
            failure_reason = excluded.failure_reason, timeline = excluded.timeline,
            updated_at = excluded.updated_at
        WHERE {table}.version < excluded.version
        """


class OrderProjection:
    """One row per order; the row's version guards it, so a replayed event changes nothing."""

    name = "orders"
    event_types = frozenset(STATUS_ON)

    def __init__(self, table: str = LIVE_TABLE) -> None:
        self._table = table
        self._select = (
            f"SELECT {COLUMNS} FROM {table} WHERE order_id = ANY($1::text[]) "
            "ORDER BY order_id FOR UPDATE"
        )
        self._upsert = _upsert(table)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[OrderEvent]) -> None:
        await apply_rows(conn, events, self._select, self._upsert, _NAMES, apply, JSON_COLUMNS)
