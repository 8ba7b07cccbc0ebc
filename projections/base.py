"""What every projection shares: the event shape it folds, its interface, its error."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, Protocol

import asyncpg

from ordersaga import db
from ordersaga.contracts import registry
from ordersaga.contracts.payloads import OrderPlaced, Payload
from ordersaga.domain import EventType, OrderStatus
from ordersaga.eventstore import StoredEvent


@dataclass(frozen=True)
class OrderEvent:
    """What a projection needs of an event, whether it came from JetStream or the store.

    `data` is the event's JSON as it arrived, at its `schema_version`; projections read
    `payload`, the typed payload at the current version. It is validated and upcast when first
    read, so an event whose data breaks its contract fails in the projection that reads it, and
    is dead-lettered there (its order's other read models, which do not read it, carry on).
    """

    order_id: str
    version: int
    event_type: str
    data: dict[str, Any]
    occurred_at: datetime
    event_id: str = ""
    schema_version: int = 1

    @cached_property
    def payload(self) -> Payload:
        return registry.read(self.event_type, self.schema_version, self.data)

    @classmethod
    def from_cloudevent(cls, doc: dict[str, Any]) -> OrderEvent:
        return cls(
            order_id=str(doc["subject"]),
            version=int(doc["streamversion"]),
            event_type=str(doc["type"]),
            data=dict(doc["data"]),
            occurred_at=datetime.fromisoformat(doc["time"]),
            event_id=str(doc["id"]),
            schema_version=int(doc.get("schemaversion", 1)),
        )

    @classmethod
    def from_stored(cls, event: StoredEvent) -> OrderEvent:
        return cls(
            event.stream_id,
            event.version,
            event.event_type,
            event.data,
            event.occurred_at,
            event.event_id,
            event.schema_version,
        )


def placed(event: OrderEvent) -> OrderPlaced:
    """The payload of an order's first event, which every read model starts from."""
    payload = event.payload
    if not isinstance(payload, OrderPlaced):
        raise ProjectionError(f"order {event.order_id}: first event is {event.event_type}")
    return payload


def item_rows(order: OrderPlaced) -> list[dict[str, Any]]:
    """The order's lines as the read models keep them (the `items` of `GET /orders/{id}`): the
    unit price in minor units of the order's currency."""
    return [
        {"sku": line.sku, "quantity": line.quantity, "unit_price": line.unit_price.amount}
        for line in order.items
    ]


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


class ProjectionError(Exception):
    """An event that cannot be applied (out of order, unknown type): never silently skipped."""


class Projection(Protocol):
    """A read model fed by the projector runtime.

    The runtime calls `apply` inside the transaction that also moves the projection's
    checkpoints (on the projector's plain asyncpg pool: the README's benchmark section says
    why), with only events not applied before, each order's in version order (orders may
    interleave). A projection should still tolerate seeing an event twice (a rebuild swapped in
    ahead of the checkpoints), which a per-row version makes easy.
    """

    name: str
    event_types: frozenset[str]

    async def apply(self, conn: asyncpg.Connection, events: Sequence[OrderEvent]) -> None: ...


Row = dict[str, Any]
Fold = Callable[[Row | None, OrderEvent], Row]


def check(row: Row | None, event: OrderEvent, known: Collection[str]) -> None:
    """What every fold refuses: a type it does not know, and an order that starts otherwise
    than with `order.placed`."""
    if event.event_type not in known:
        raise ProjectionError(f"unknown event type {event.event_type!r} (version {event.version})")
    if row is None and event.event_type != "order.placed":
        raise ProjectionError(f"order {event.order_id}: first event is {event.event_type}")


async def apply_rows(
    conn: asyncpg.Connection,
    events: Sequence[OrderEvent],
    select: str,
    upsert: str,
    columns: Sequence[str],
    fold: Fold,
    json_columns: Collection[str] = (),
) -> None:
    """A read model of one row per order: read the batch's rows (`select` takes the order ids as
    `$1`), fold the events in, write the changed rows back (`upsert` takes `columns` in order).
    The row's version guards it: an event at or below it (a rebuilt table ahead of the
    checkpoints) is skipped."""
    found = await conn.fetch(select, sorted({e.order_id for e in events}))
    rows: dict[str, Row] = {r["order_id"]: db.record(r, json_columns) for r in found}
    changed: set[str] = set()
    for event in events:
        row = rows.get(event.order_id)
        if row is not None and event.version <= row["version"]:
            continue
        rows[event.order_id] = fold(row, event)
        changed.add(event.order_id)
    if changed:
        await conn.executemany(
            upsert,
            [
                tuple(json.dumps(rows[o][k]) if k in json_columns else rows[o][k] for k in columns)
                for o in sorted(changed)
            ],
        )
