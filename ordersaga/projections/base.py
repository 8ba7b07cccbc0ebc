"""What every projection shares: the event shape it folds, its interface, its error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from ordersaga.eventstore import StoredEvent


@dataclass(frozen=True)
class OrderEvent:
    """What a projection needs of an event, whether it came from JetStream or the store."""

    order_id: str
    version: int
    event_type: str
    data: dict[str, Any]
    occurred_at: datetime
    event_id: str = ""

    @classmethod
    def from_cloudevent(cls, doc: dict[str, Any]) -> OrderEvent:
        return cls(
            order_id=str(doc["subject"]),
            version=int(doc["streamversion"]),
            event_type=str(doc["type"]),
            data=dict(doc["data"]),
            occurred_at=datetime.fromisoformat(doc["time"]),
            event_id=str(doc["id"]),
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
        )


class ProjectionError(Exception):
    """An event that cannot be applied (out of order, unknown type): never silently skipped."""


class Projection(Protocol):
    """A read model fed by the projector runtime.

    The runtime calls `apply` inside the transaction that also moves the projection's
    checkpoints, with only events not applied before, each order's in version order (orders may
    interleave). A projection should still tolerate seeing an event twice (a rebuild swapped in
    ahead of the checkpoints), which a per-row version makes easy.
    """

    name: str
    event_types: frozenset[str]

    async def apply(self, conn: AsyncConnection, events: Sequence[OrderEvent]) -> None: ...
