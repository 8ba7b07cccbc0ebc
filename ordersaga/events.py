"""The wire format: CloudEvents 1.0 structured JSON, one per stored event.

Each event goes out as it was stored, at the schema version it was written with
(`schemaversion`, and `dataschema` = the path of that version's JSON Schema on the API). Our own
readers (the projections, `events tail`, the API through the upcasting event store) take it to the
current version with `current`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ordersaga.contracts import registry
from ordersaga.contracts.payloads import Payload
from ordersaga.domain import EventType
from ordersaga.domain import event_id as derive_event_id
from ordersaga.eventstore import NewEvent, StoredEvent, Upcasters

SOURCE = "/ordersaga/orders"


def subject_for(prefix: str, order_id: str, event_type: str) -> str:
    """`orders.<order_id>.<event name>`, so both `orders.*.placed` and `orders.<id>.>` filter."""
    return f"{prefix}.{order_id}.{EventType(event_type).short_name}"


def order_upcasters() -> Upcasters:
    """Every order event type at its current schema version, with a step from each older one
    (`ordersaga.contracts.registry`)."""
    upcasters = Upcasters()
    for kind in EventType:
        upcasters.current(kind.value, registry.current(kind.value).schema_version)
    for event_type, from_version in registry.UPCASTS:
        upcasters.register(event_type, from_version, registry.upcast_step(event_type, from_version))
    return upcasters


def new_event(order_id: str, version: int, payload: Payload) -> NewEvent:
    """The event that records `payload` at `version` of the order's stream, with the id derived
    from (order, version, type), so a retried append stores nothing twice."""
    event_type = payload.event_type.value
    return NewEvent(
        derive_event_id(order_id, version, event_type),
        event_type,
        registry.dump(payload),
        schema_version=payload.schema_version,
    )


def payload(event: StoredEvent) -> Payload:
    """A stored event's data as its typed payload, at the current version of its type."""
    return registry.read(event.event_type, event.schema_version, event.data)


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
        "dataschema": registry.dataschema(event.event_type, event.schema_version),
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


def current(doc: dict[str, Any]) -> tuple[dict[str, Any], Payload]:
    """A decoded CloudEvent taken to the current version of its type: the document (its `data`,
    `schemaversion` and `dataschema` those of the current version) and the typed payload.

    Raises `registry.UnknownPayload` for a type or version this code does not know, and pydantic's
    `ValidationError` for data its schema refuses."""
    event_type, version = str(doc["type"]), int(doc.get("schemaversion", 1))
    typed = registry.read(event_type, version, doc["data"])
    if typed.schema_version == version:
        return doc, typed
    upcast = {
        **doc,
        "data": registry.dump(typed),
        "schemaversion": typed.schema_version,
        "dataschema": registry.dataschema(event_type, typed.schema_version),
    }
    return upcast, typed
