"""The order read model: one row per order, folded from the order's events in version order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersaga.domain import EventType, OrderStatus
from ordersaga.eventstore import EventStore, StoredEvent


@dataclass(frozen=True)
class OrderEvent:
    """What the projection needs of an event, whether it came from JetStream or the store."""

    order_id: str
    version: int
    event_type: str
    data: dict[str, Any]
    occurred_at: datetime

    @classmethod
    def from_cloudevent(cls, doc: dict[str, Any]) -> OrderEvent:
        return cls(
            order_id=str(doc["subject"]),
            version=int(doc["streamversion"]),
            event_type=str(doc["type"]),
            data=dict(doc["data"]),
            occurred_at=datetime.fromisoformat(doc["time"]),
        )

    @classmethod
    def from_stored(cls, event: StoredEvent) -> OrderEvent:
        return cls(event.stream_id, event.version, event.event_type, event.data, event.occurred_at)


# The status an event moves the order to; None: the event leaves the status as it is.
STATUS_ON: dict[str, OrderStatus | None] = {
    EventType.PLACED: OrderStatus.PENDING,
    EventType.INVENTORY_RESERVED: OrderStatus.INVENTORY_RESERVED,
    EventType.PAYMENT_CAPTURED: OrderStatus.PAYMENT_CAPTURED,
    EventType.SHIPMENT_SCHEDULED: None,
    EventType.CONFIRMED: OrderStatus.CONFIRMED,
    EventType.INVENTORY_RESERVATION_FAILED: OrderStatus.COMPENSATING,
    EventType.PAYMENT_DECLINED: OrderStatus.COMPENSATING,
    EventType.SHIPMENT_FAILED: OrderStatus.COMPENSATING,
    EventType.SHIPMENT_CANCELLED: OrderStatus.COMPENSATING,
    EventType.PAYMENT_REFUNDED: OrderStatus.COMPENSATING,
    EventType.INVENTORY_RELEASED: OrderStatus.COMPENSATING,
    EventType.CANCELLED: OrderStatus.CANCELLED,
    EventType.REQUIRES_ATTENTION: OrderStatus.REQUIRES_ATTENTION,
}

# What of each event's data the timeline keeps (the order id is the row's already).
_TIMELINE_KEYS = ("reason", "detail", "amount", "lines", "shipment_id", "compensation", "error")


class ProjectionError(Exception):
    """An event that cannot be applied (out of order, unknown type): never silently skipped."""


def apply(row: dict[str, Any] | None, event: OrderEvent) -> dict[str, Any]:
    """Fold one event into the order's row; pure, so it is tested without I/O."""
    if event.event_type not in STATUS_ON:
        raise ProjectionError(f"unknown event type {event.event_type!r} (version {event.version})")
    expected = 1 if row is None else row["version"] + 1
    if event.version != expected:
        raise ProjectionError(
            f"order {event.order_id}: event version {event.version}, expected {expected}"
        )
    if row is None:
        if event.event_type != EventType.PLACED:
            raise ProjectionError(f"order {event.order_id}: first event is {event.event_type}")
        d = event.data
        row = {
            "order_id": event.order_id,
            "customer_id": d["customer_id"],
            "items": d["items"],
            "shipping_address": d["shipping_address"],
            "total": d["total"],
            "currency": d["currency"],
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
    if "reason" in event.data and event.event_type != EventType.PLACED:
        row["failure_reason"] = event.data["reason"]
    entry: dict[str, Any] = {
        "version": event.version,
        "type": event.event_type,
        "at": event.occurred_at.isoformat(),
    }
    entry.update({k: event.data[k] for k in _TIMELINE_KEYS if k in event.data})
    row["timeline"].append(entry)
    return row


_COLUMNS = (
    "order_id, customer_id, status, items, shipping_address, total, currency, version, "
    "failure_reason, timeline, placed_at, updated_at"
)
_JSON_COLUMNS = ("items", "shipping_address", "timeline")

LIVE_TABLE = "readmodel.orders"


def _upsert(table: str) -> sa.TextClause:
    return sa.text(
        f"""
        INSERT INTO {table} ({_COLUMNS})
        VALUES (:order_id, :customer_id, :status, CAST(:items AS jsonb),
                CAST(:shipping_address AS jsonb), :total, :currency, :version, :failure_reason,
                CAST(:timeline AS jsonb), :placed_at, :updated_at)
        ON CONFLICT (order_id) DO UPDATE SET
            status = excluded.status, version = excluded.version,
            failure_reason = excluded.failure_reason, timeline = excluded.timeline,
            updated_at = excluded.updated_at
        WHERE {table}.version < excluded.version
        """
    )


class OrderProjection:
    """Applies events to the orders table idempotently: the row's version is the checkpoint."""

    name = "orders"
    event_types = tuple(STATUS_ON)

    def __init__(self, store: EventStore, table: str = LIVE_TABLE) -> None:
        self._store = store
        self._table = table
        self._select = sa.text(f"SELECT {_COLUMNS} FROM {table} WHERE order_id = :o FOR UPDATE")
        self._upsert = _upsert(table)

    async def handle(self, conn: AsyncConnection, event: OrderEvent) -> bool:
        """Apply `event` (and any earlier ones it skipped ahead of); False if seen already."""
        found = (
            await conn.execute(
                self._select,
                {"o": event.order_id},
            )
        ).one_or_none()
        row = None if found is None else dict(found._mapping)
        applied = 0 if row is None else int(row["version"])
        if event.version <= applied:
            return False  # a redelivery: the row has it already
        pending = [event]
        if event.version > applied + 1:
            # An earlier event has not arrived (yet): the store is the source of truth, so take
            # the missing ones from it rather than wait or skip.
            stored = await self._store.read_stream(event.order_id, applied + 1, event.version)
            pending = [OrderEvent.from_stored(e) for e in stored]
        for item in pending:
            row = apply(row, item)
        assert row is not None
        params = {k: json.dumps(v) if k in _JSON_COLUMNS else v for k, v in row.items()}
        await conn.execute(self._upsert, params)
        return True
