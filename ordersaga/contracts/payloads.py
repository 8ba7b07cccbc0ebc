"""The data of every order event: one frozen model per event type and schema version.

These models are the contract. The activities and the workflow build them, the event store keeps
their JSON, the projections and the notifier read them back, and `schemas/` holds the JSON Schema
generated from each (`ordersaga schemas generate`). They share the bounds of the API's requests
(`ordersaga.bounds`), so an event never carries what the API would refuse.

Reading is tolerant: a field this code does not know is ignored, so a producer may add optional
fields without a new version. Anything else (a field removed, renamed, retyped, made required or
bounded differently) is a new version, with an upcaster from the one before (`registry`).

Standard library, pydantic and the kernel's domain and bounds only: the workflow sandbox imports
this module.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ordersaga.bounds import (
    MAX_ITEMS,
    AddressLine,
    City,
    CustomerId,
    IsoCountry,
    IsoCurrency,
    Money,
    Name,
    PostalCode,
    Quantity,
    Sku,
    Storable,
    UnitPrice,
    Whole,
)
from ordersaga.domain import MAX_QUANTITY, CancelReason, EventType, Order

# Free text from a participant's refusal or a failed compensation: storable and bounded.
MAX_DETAIL = 1000

OrderId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9-]+$",
        description="The order's id (a UUID for orders the API accepted); also the CloudEvent's "
        "`subject` and a token of the NATS subject.",
    ),
]
ProviderRef = Annotated[
    str,
    Field(min_length=1, max_length=200, description="The participant's own reference."),
    Storable,
]
Detail = Annotated[str, Field(max_length=MAX_DETAIL), Storable]
ReservedUnits = Annotated[int, Field(ge=1, le=MAX_ITEMS * MAX_QUANTITY), Whole]
Lines = Annotated[
    dict[Sku, ReservedUnits],
    Field(description="Units per SKU (the order's lines of one SKU added up)."),
]
Compensation = Literal["cancel_shipment", "refund_payment", "release_inventory"]


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    """Free text made storable: no NUL, no unpaired surrogate, at most `limit` characters."""
    return "".join(c for c in text if c != "\x00" and not "\ud800" <= c <= "\udfff")[:limit]


class Part(BaseModel):
    """A value inside an event's data."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Payload(Part):
    """The data of one event type at one schema version."""

    event_type: ClassVar[EventType]
    schema_version: ClassVar[int]

    order_id: OrderId

    def as_data(self) -> dict[str, Any]:
        """The JSON the store keeps and the bus carries (an optional field without a value is
        left out, not null)."""
        return self.model_dump(mode="json", exclude_none=True)


# -- order.placed -------------------------------------------------------------------------------


class ShippingAddress(Part):
    """Where the order goes."""

    name: Name
    line1: Name
    line2: AddressLine = None
    city: City
    postal_code: PostalCode
    country: IsoCountry


class OrderLineV1(Part):
    """A line of the order: units of a SKU at a unit price in minor units."""

    sku: Sku
    quantity: Quantity
    unit_price: UnitPrice


class OrderPlacedV1(Payload):
    """`order.placed` version 1: the whole order, amounts as bare integers of minor units in the
    order's one `currency`. Superseded by version 2; stores and the bus still hold it."""

    event_type = EventType.PLACED
    schema_version = 1

    customer_id: CustomerId
    items: Annotated[list[OrderLineV1], Field(min_length=1, max_length=MAX_ITEMS)]
    shipping_address: ShippingAddress
    currency: IsoCurrency
    total: Money


class Price(Part):
    """An amount of money: integer minor units (cents) of an ISO 4217 currency."""

    amount: UnitPrice
    currency: IsoCurrency


class Amount(Part):
    """An amount of money: integer minor units (cents) of an ISO 4217 currency."""

    amount: Money
    currency: IsoCurrency


class OrderLineV2(Part):
    """A line of the order: units of a SKU at a unit price."""

    sku: Sku
    quantity: Quantity
    unit_price: Price


class OrderPlacedV2(Payload):
    """`order.placed` version 2: the whole order (no payment token); every amount carries its
    currency (`{"amount": 1250, "currency": "EUR"}`), so a line or a total forwarded alone keeps
    its unit."""

    event_type = EventType.PLACED
    schema_version = 2

    customer_id: CustomerId
    items: Annotated[list[OrderLineV2], Field(min_length=1, max_length=MAX_ITEMS)]
    shipping_address: ShippingAddress
    total: Amount


# -- the steps ----------------------------------------------------------------------------------


class InventoryReservedV1(Payload):
    """The order's units are held for it."""

    event_type = EventType.INVENTORY_RESERVED
    schema_version = 1

    lines: Lines


class PaymentCapturedV1(Payload):
    """The order's total is captured."""

    event_type = EventType.PAYMENT_CAPTURED
    schema_version = 1

    payment_id: ProviderRef
    amount: Money
    currency: IsoCurrency


class ShipmentScheduledV1(Payload):
    """A carrier will ship the order."""

    event_type = EventType.SHIPMENT_SCHEDULED
    schema_version = 1

    shipment_id: ProviderRef
    country: IsoCountry


class OrderConfirmedV1(Payload):
    """The saga has ended: every step is done. Nothing follows it."""

    event_type = EventType.CONFIRMED
    schema_version = 1

    total: Money


class Refusal(Payload):
    """A participant refused a step: the order will be cancelled, for `reason`."""

    reason: CancelReason
    detail: Detail


class InventoryReservationFailedV1(Refusal):
    """Inventory refused the reservation (`out_of_stock`): nothing is held."""

    event_type = EventType.INVENTORY_RESERVATION_FAILED
    schema_version = 1


class PaymentDeclinedV1(Refusal):
    """The payment provider declined (`payment_declined`): nothing is captured."""

    event_type = EventType.PAYMENT_DECLINED
    schema_version = 1


class ShipmentFailedV1(Refusal):
    """No carrier takes the shipment (`shipping_unavailable`): nothing is scheduled."""

    event_type = EventType.SHIPMENT_FAILED
    schema_version = 1


# -- compensations and the end ------------------------------------------------------------------


class ShipmentCancelledV1(Payload):
    """The shipment is cancelled (a compensation)."""

    event_type = EventType.SHIPMENT_CANCELLED
    schema_version = 1

    shipment_id: ProviderRef


class PaymentRefundedV1(Payload):
    """The captured payment is refunded (a compensation)."""

    event_type = EventType.PAYMENT_REFUNDED
    schema_version = 1

    payment_id: ProviderRef
    amount: Money
    currency: IsoCurrency


class InventoryReleasedV1(Payload):
    """The held units are back in stock (a compensation)."""

    event_type = EventType.INVENTORY_RELEASED
    schema_version = 1

    lines: Lines


class OrderCancelledV1(Payload):
    """The saga has ended: what was done is compensated. Nothing follows it."""

    event_type = EventType.CANCELLED
    schema_version = 1

    reason: CancelReason
    detail: Detail | None = Field(
        default=None, description="The customer's words, when the customer cancelled."
    )


class OrderRequiresAttentionV1(Payload):
    """A compensation ran out of retries; the saga waits for an operator to retry it."""

    event_type = EventType.REQUIRES_ATTENTION
    schema_version = 1

    compensation: Compensation
    error: Detail


# The current version of each type: what is written now, and what every reader gets (older
# versions are upcast on read). When a type gets a new version, move its name here; mypy then
# shows every reader that has to follow.
OrderPlaced = OrderPlacedV2
InventoryReserved = InventoryReservedV1
PaymentCaptured = PaymentCapturedV1
ShipmentScheduled = ShipmentScheduledV1
OrderConfirmed = OrderConfirmedV1
InventoryReservationFailed = InventoryReservationFailedV1
PaymentDeclined = PaymentDeclinedV1
ShipmentFailed = ShipmentFailedV1
ShipmentCancelled = ShipmentCancelledV1
PaymentRefunded = PaymentRefundedV1
InventoryReleased = InventoryReleasedV1
OrderCancelled = OrderCancelledV1
OrderRequiresAttention = OrderRequiresAttentionV1


# -- what the workflow builds -------------------------------------------------------------------
#
# Built without validation, on purpose: the workflow runs these again on every replay, and a
# bound tightened after a saga started must not stop that saga in the middle of its replay. The
# `record_event` activity validates the payload before it is stored.


def placed(order: Order) -> OrderPlaced:
    currency = order.currency
    return OrderPlacedV2.model_construct(
        order_id=order.order_id,
        customer_id=order.customer_id,
        items=[
            OrderLineV2.model_construct(
                sku=item.sku,
                quantity=item.quantity,
                unit_price=Price.model_construct(amount=item.unit_price, currency=currency),
            )
            for item in order.items
        ],
        shipping_address=ShippingAddress.model_construct(**asdict(order.shipping_address)),
        total=Amount.model_construct(amount=order.total, currency=currency),
    )


def confirmed(order: Order) -> OrderConfirmed:
    return OrderConfirmedV1.model_construct(order_id=order.order_id, total=order.total)


def cancelled(order_id: str, reason: CancelReason, detail: str | None) -> OrderCancelled:
    clipped = None if detail is None else clip(detail)
    return OrderCancelledV1.model_construct(order_id=order_id, reason=reason, detail=clipped)


def requires_attention(
    order_id: str, compensation: Compensation, error: str
) -> OrderRequiresAttention:
    return OrderRequiresAttentionV1.model_construct(
        order_id=order_id, compensation=compensation, error=clip(error)
    )
