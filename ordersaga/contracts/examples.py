"""A valid payload of every event type and version, for one order: the examples of the AsyncAPI
document, and made-up streams in tests and benchmarks (which must meet the contract as the
saga's own events do)."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import asdict

from ordersaga.contracts import registry
from ordersaga.contracts.payloads import (
    InventoryReleasedV1,
    InventoryReservationFailedV1,
    InventoryReservedV1,
    OrderCancelledV1,
    OrderConfirmedV1,
    OrderPlacedV1,
    OrderPlacedV2,
    OrderRequiresAttentionV1,
    Payload,
    PaymentCapturedV1,
    PaymentDeclinedV1,
    PaymentRefundedV1,
    ShipmentCancelledV1,
    ShipmentFailedV1,
    ShipmentScheduledV1,
    placed,
)
from ordersaga.domain import Address, CancelReason, Order, OrderItem

ORDER = Order(
    order_id="5b0f4c7e-2d1a-4e8b-9c3f-7a6d5e4c3b2a",
    customer_id="cust-42",
    items=[OrderItem("sku-mug", 2, 1250), OrderItem("sku-tea", 1, 450)],
    shipping_address=Address("Ada Lovelace", "12 St James's Square", "London", "SW1Y 4JH", "GB"),
    payment_token="tok_visa",
)


def _ref(kind: str, order: Order) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}/{order.order_id}"))


def example(event_type: str, order: Order = ORDER, version: int | None = None) -> Payload:
    """The payload `event_type` (at `version`, by default the current one) would have for
    `order`, validated against its model."""
    model = (
        registry.current(event_type) if version is None else registry.model_for(event_type, version)
    )
    o, lines = order.order_id, Counter[str]()
    for item in order.items:
        lines[item.sku] += item.quantity
    payment = {"payment_id": _ref("payment", order), "amount": order.total}
    shipment = _ref("shipment", order)
    made: Payload
    if model is OrderPlacedV1:
        made = OrderPlacedV1.model_validate(
            {
                "order_id": o,
                "customer_id": order.customer_id,
                "items": [asdict(item) for item in order.items],
                "shipping_address": asdict(order.shipping_address),
                "currency": order.currency,
                "total": order.total,
            }
        )
    elif model is OrderPlacedV2:
        made = OrderPlacedV2.model_validate(placed(order).as_data())
    elif model in (InventoryReservedV1, InventoryReleasedV1):
        made = model(order_id=o, lines=dict(lines))
    elif model in (PaymentCapturedV1, PaymentRefundedV1):
        made = model(order_id=o, currency=order.currency, **payment)
    elif model is ShipmentScheduledV1:
        made = model(order_id=o, shipment_id=shipment, country=order.shipping_address.country)
    elif model is ShipmentCancelledV1:
        made = model(order_id=o, shipment_id=shipment)
    elif model is OrderConfirmedV1:
        made = model(order_id=o, total=order.total)
    elif model is InventoryReservationFailedV1:
        detail = f"{order.items[0].sku}: {order.items[0].quantity} wanted, 0 available"
        made = model(order_id=o, reason=CancelReason.OUT_OF_STOCK, detail=detail)
    elif model is PaymentDeclinedV1:
        made = model(order_id=o, reason=CancelReason.PAYMENT_DECLINED, detail="card declined")
    elif model is ShipmentFailedV1:
        made = model(
            order_id=o, reason=CancelReason.SHIPPING_UNAVAILABLE, detail="no carrier ships there"
        )
    elif model is OrderCancelledV1:
        made = model(order_id=o, reason=CancelReason.PAYMENT_DECLINED)
    elif model is OrderRequiresAttentionV1:
        made = model(
            order_id=o, compensation="refund_payment", error="payment provider unavailable"
        )
    else:  # pragma: no cover - a model added without an example fails the contract tests
        raise registry.UnknownPayload(f"no example of {model.__name__}")
    return made
