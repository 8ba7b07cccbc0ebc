"""The wire format: CloudEvents 1.0 structured JSON, one per stored event."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ordersaga.domain import EventType
from ordersaga.eventstore import StoredEvent, Upcasters

SOURCE = "/ordersaga/orders"


def subject_for(prefix: str, order_id: str, event_type: str) -> str:
    """`orders.<order_id>.<event name>`, so both `orders.*.placed` and `orders.<id>.>` filter."""
    return f"{prefix}.{order_id}.{EventType(event_type).short_name}"


def order_upcasters() -> Upcasters:
    """Every order event type at its current schema version (1 for all, so far).

    When an event's shape changes: bump its version here, register the step from the old one,
    and keep writing only the new shape.
    """
    registry = Upcasters()
    for event_type in EventType:
        registry.current(event_type.value, 1)
    return registry


def traceparent(order_id: str, event_id: str) -> str:
    """A W3C traceparent whose trace id is derived from the order: one trace per saga."""
    trace_id = hashlib.blake2b(order_id.encode(), digest_size=16).hexdigest()
    span_id = event_id.replace("-", "")[:16]
    return f"00-{trace_id}-{span_id}-01"


def to_cloudevent(event: StoredEvent) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event.event_id,
        "source": SOURCE,
        "type": event.event_type,
        "subject": event.stream_id,
        "time": event.occurred_at.isoformat(),
        "datacontenttype": "application/json",
        "data": event.data,
        # Extension attributes (lower-case alphanumerics, as the spec requires).
        "streamversion": event.version,
        "position": event.position,
        "schemaversion": event.schema_version,
        "traceparent": event.metadata.get("traceparent")
        or traceparent(event.stream_id, event.event_id),
    }


def encode(event: StoredEvent) -> bytes:
    return json.dumps(to_cloudevent(event), separators=(",", ":")).encode()


def decode(payload: bytes) -> dict[str, Any]:
    doc = json.loads(payload)
    if not isinstance(doc, dict) or doc.get("specversion") != "1.0":
        raise ValueError("not a CloudEvents 1.0 structured event")
    for key in ("id", "type", "subject", "streamversion", "data"):
        if key not in doc:
            raise ValueError(f"CloudEvent lacks {key!r}")
    return doc
