"""Which model is which event type at which schema version, and the upcasters between versions.

A stored or published event is read with the model of its own (type, version), then upcast one
version at a time to the current one, so every reader of ours sees the current shape whatever the
store or the stream holds. An unknown type or version raises `UnknownPayload`, never a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ordersaga.bounds import STORED
from ordersaga.contracts.payloads import (
    Amount,
    InventoryReleasedV1,
    InventoryReservationFailedV1,
    InventoryReservedV1,
    OrderCancelledV1,
    OrderConfirmedV1,
    OrderLineV2,
    OrderPlacedV1,
    OrderPlacedV2,
    OrderRequiresAttentionV1,
    Payload,
    PaymentCapturedV1,
    PaymentDeclinedV1,
    PaymentRefundedV1,
    Price,
    ShipmentCancelledV1,
    ShipmentFailedV1,
    ShipmentScheduledV1,
)
from ordersaga.domain import EventType

MODELS: tuple[type[Payload], ...] = (
    OrderPlacedV1,
    OrderPlacedV2,
    InventoryReservedV1,
    PaymentCapturedV1,
    ShipmentScheduledV1,
    OrderConfirmedV1,
    InventoryReservationFailedV1,
    PaymentDeclinedV1,
    ShipmentFailedV1,
    ShipmentCancelledV1,
    PaymentRefundedV1,
    InventoryReleasedV1,
    OrderCancelledV1,
    OrderRequiresAttentionV1,
)

BY_KEY: dict[tuple[str, int], type[Payload]] = {
    (m.event_type.value, m.schema_version): m for m in MODELS
}
# The highest version of each type.
CURRENT: dict[str, type[Payload]] = {
    m.event_type.value: m for m in sorted(MODELS, key=lambda m: m.schema_version)
}


class UnknownPayload(ValueError):
    """An event type or schema version this code has no model for."""


# -- upcasters: one step from each old version to the next ------------------------------------


def placed_v1_to_v2(old: OrderPlacedV1) -> OrderPlacedV2:
    """Version 1 gave every amount in the order's one `currency`: each amount takes it along."""
    currency = old.currency
    return OrderPlacedV2(
        order_id=old.order_id,
        customer_id=old.customer_id,
        items=[
            OrderLineV2(
                sku=line.sku,
                quantity=line.quantity,
                unit_price=Price(amount=line.unit_price, currency=currency),
            )
            for line in old.items
        ],
        shipping_address=old.shipping_address,
        total=Amount(amount=old.total, currency=currency),
    )


Step = Callable[[Any], Payload]

# (event type, version) -> the function from that version to the next. Every step needs a
# golden example under tests/contracts/upcasts/ (`ordersaga schemas check` asks for it).
UPCASTS: dict[tuple[str, int], Step] = {
    (EventType.PLACED.value, 1): placed_v1_to_v2,
}


def dataschema(event_type: str, version: int) -> str:
    """Where the JSON Schema of (type, version) is served: a URI reference, relative to the API
    (the CloudEvents' `dataschema`, the schema's `$id`)."""
    return f"/schemas/{event_type}/{version}"


def model_for(event_type: str, version: int) -> type[Payload]:
    model = BY_KEY.get((event_type, version))
    if model is None:
        known = sorted(v for (t, v) in BY_KEY if t == event_type)
        what = f"versions {known}" if known else "no version"
        raise UnknownPayload(
            f"no model of {event_type!r} version {version} (this code knows {what})"
        )
    return model


def current(event_type: str) -> type[Payload]:
    model = CURRENT.get(event_type)
    if model is None:
        raise UnknownPayload(f"unknown event type {event_type!r}")
    return model


def upcast(payload: Payload) -> Payload:
    """The payload at the current version of its type."""
    target = current(payload.event_type).schema_version
    while payload.schema_version < target:
        step = UPCASTS.get((payload.event_type.value, payload.schema_version))
        if step is None:
            raise UnknownPayload(
                f"no upcaster from {payload.event_type.value!r} version {payload.schema_version}"
            )
        payload = step(payload)
    return payload


def read(event_type: str, version: int, data: Mapping[str, Any]) -> Payload:
    """An event's data, validated against the model of its own version, then upcast to the
    current one. Raises `UnknownPayload` or pydantic's `ValidationError`. A stored fact is held
    to its schema, not to today's code lists (`bounds.STORED`)."""
    return upcast(model_for(event_type, version).model_validate(data, context=STORED))


def dump(payload: Payload) -> dict[str, Any]:
    """The payload as the JSON the store keeps and the bus carries."""
    return payload.as_data()


def upcast_step(event_type: str, from_version: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """One step as the event store's `Upcasters` take it: JSON of a version to JSON of the next."""
    model, step = model_for(event_type, from_version), UPCASTS[(event_type, from_version)]

    def on_json(data: dict[str, Any]) -> dict[str, Any]:
        return dump(step(model.model_validate(data, context=STORED)))

    return on_json


DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(model: type[Payload]) -> dict[str, Any]:
    """The model's JSON Schema (draft 2020-12), with its id and a title a reader can place."""
    generated = model.model_json_schema()
    latest = current(model.event_type.value).schema_version
    status = "current" if model.schema_version == latest else f"superseded by {latest}"
    document = {
        "$schema": DIALECT,
        "$id": dataschema(model.event_type.value, model.schema_version),
        **generated,
        "title": f"{model.event_type.value} version {model.schema_version} ({status})",
    }
    if model.schema_version != latest:
        document["deprecated"] = True
    return document
