"""The order read model's fold, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ordersaga.contracts import registry
from ordersaga.contracts.examples import example
from ordersaga.domain import Address, Order, OrderItem
from projections.base import OrderEvent, ProjectionError
from projections.orders import apply

ORDER = Order(
    order_id="o-1",
    customer_id="c-1",
    items=[OrderItem("sku-a", 2, 300), OrderItem("sku-b", 1, 50)],
    shipping_address=Address("Ada", "1 Main St", "Berlin", "10115", "DE"),
    payment_token="tok_secret",
)


def ev(version: int, event_type: str, **data: Any) -> OrderEvent:
    """The event of ORDER, a valid payload of the current version but for what `data` says."""
    known = event_type in registry.CURRENT
    full = {**example(event_type, ORDER).as_data(), **data} if known else data
    schema_version = registry.current(event_type).schema_version if known else 1
    at = datetime(2026, 1, 1, 0, 0, version, tzinfo=UTC)
    return OrderEvent("o-1", version, event_type, full, at, schema_version=schema_version)


def fold(*events: OrderEvent) -> dict[str, Any]:
    row: dict[str, Any] | None = None
    for event in events:
        row = apply(row, event)
    assert row is not None
    return row


def placed() -> OrderEvent:
    return ev(1, "order.placed")


def test_placed_carries_the_order_but_not_the_card_token() -> None:
    data = placed().data
    assert data["total"] == {"amount": 650, "currency": "EUR"}
    assert "payment_token" not in data and "tok_secret" not in str(data)
    row = fold(placed())
    assert (row["status"], row["total"], row["customer_id"]) == ("PENDING", 650, "c-1")


def test_statuses_follow_the_happy_path() -> None:
    row = fold(
        placed(),
        ev(2, "order.inventory_reserved", lines={"sku-a": 2}),
        ev(3, "order.payment_captured", amount=650),
        ev(4, "order.shipment_scheduled", shipment_id="s"),
    )
    assert row["status"] == "PAYMENT_CAPTURED"
    row = apply(row, ev(5, "order.confirmed", total=650))
    assert (row["status"], row["version"], row["failure_reason"]) == ("CONFIRMED", 5, None)
    assert [t["type"] for t in row["timeline"]][-2:] == [
        "order.shipment_scheduled",
        "order.confirmed",
    ]
    assert row["updated_at"].second == 5


def test_failure_compensation_and_attention() -> None:
    row = fold(
        placed(),
        ev(2, "order.inventory_reserved", lines={"sku-a": 2}),
        ev(3, "order.payment_declined", reason="payment_declined"),
    )
    assert (row["status"], row["failure_reason"]) == ("COMPENSATING", "payment_declined")
    row = apply(row, ev(4, "order.requires_attention", compensation="release_inventory", error="x"))
    assert row["status"] == "REQUIRES_ATTENTION"
    row = apply(row, ev(5, "order.inventory_released", lines={"sku-a": 2}))
    row = apply(row, ev(6, "order.cancelled", reason="payment_declined"))
    assert (row["status"], row["failure_reason"]) == ("CANCELLED", "payment_declined")
    assert row["timeline"][3]["compensation"] == "release_inventory"


def test_the_fold_does_not_change_its_input() -> None:
    row = fold(placed())
    apply(row, ev(2, "order.inventory_reserved", lines={}))
    assert (row["version"], len(row["timeline"])) == (1, 1)


@pytest.mark.parametrize(
    "events",
    [
        [ev(1, "order.inventory_reserved")],  # first event must be placed
        [placed(), ev(1, "order.placed")],  # a repeat
        [placed(), ev(2, "order.teleported")],  # unknown type
    ],
)
def test_backwards_or_unknown_events_fail_loudly(events: list[OrderEvent]) -> None:
    with pytest.raises(ProjectionError):
        fold(*events)
