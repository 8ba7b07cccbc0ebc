"""The customer order history's fold (`projections.customers.fold`), without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from projections.base import OrderEvent, ProjectionError
from projections.customers import fold
from tests.helpers import HAPPY_PATH, fake_events

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def order_events(
    types: tuple[str, ...] = HAPPY_PATH, quantity: int = 3, unit_price: int = 250
) -> list[OrderEvent]:
    """The order's events, a second apart from T0 (version 1 at T0)."""
    stored = fake_events("o-1", "c-1", "sku-a", quantity, unit_price, types=types)
    return [
        replace(OrderEvent.from_stored(e), occurred_at=T0 + timedelta(seconds=e.version - 1))
        for e in stored
    ]


def fold_all(events: list[OrderEvent]) -> dict[str, Any]:
    row: dict[str, Any] | None = None
    for event in events:
        row = fold(row, event)
    assert row is not None
    return row


def test_placed_starts_the_row_with_the_order_summary() -> None:
    [placed] = order_events(types=HAPPY_PATH[:1])
    assert fold(None, placed) == {
        "order_id": "o-1",
        "customer_id": "c-1",
        "status": "PENDING",
        "total": 750,
        "currency": "EUR",
        "item_count": 3,
        "version": 1,
        "placed_at": T0,
        "updated_at": T0,
    }


def test_item_count_adds_the_quantities_of_every_line() -> None:
    [placed] = order_events(types=HAPPY_PATH[:1])
    lines = [
        {"sku": "sku-a", "quantity": 2, "unit_price": {"amount": 100, "currency": "EUR"}},
        {"sku": "sku-b", "quantity": 5, "unit_price": {"amount": 10, "currency": "EUR"}},
    ]
    total = {"amount": 250, "currency": "EUR"}
    row = fold(None, replace(placed, data={**placed.data, "items": lines, "total": total}))
    assert (row["item_count"], row["total"]) == (7, 250)


def test_the_happy_path_ends_confirmed_with_the_last_version_and_time() -> None:
    events = order_events()
    assert [e.event_type for e in events] == list(HAPPY_PATH)
    statuses = []
    row: dict[str, Any] | None = None
    for event in events:
        row = fold(row, event)
        statuses.append(row["status"])
    # order.shipment_scheduled leaves the status as it was.
    assert statuses == [
        "PENDING",
        "INVENTORY_RESERVED",
        "PAYMENT_CAPTURED",
        "PAYMENT_CAPTURED",
        "CONFIRMED",
    ]
    assert row is not None
    assert (row["version"], row["placed_at"], row["updated_at"]) == (
        5,
        T0,
        T0 + timedelta(seconds=4),
    )
    # Later events change neither what was ordered nor by whom.
    assert (row["customer_id"], row["total"], row["item_count"]) == ("c-1", 750, 3)


def test_a_cancelled_order_ends_cancelled() -> None:
    row = fold_all(
        order_events(
            types=(
                "order.placed",
                "order.inventory_reserved",
                "order.payment_declined",
                "order.inventory_released",
                "order.cancelled",
            )
        )
    )
    assert (row["status"], row["version"]) == ("CANCELLED", 5)


def test_the_fold_leaves_the_row_it_was_given_alone() -> None:
    placed, reserved, *_ = order_events()
    first = fold(None, placed)
    kept = dict(first)
    second = fold(first, reserved)
    assert first == kept
    assert second is not first and second["status"] == "INVENTORY_RESERVED"


def test_an_order_must_start_with_placed() -> None:
    _, reserved, *_ = order_events()
    with pytest.raises(ProjectionError, match=r"first event is order\.inventory_reserved"):
        fold(None, reserved)


def test_an_unknown_event_type_is_refused() -> None:
    placed, *_ = order_events()
    row = fold(None, placed)
    alien = replace(placed, version=2, event_type="order.teleported")
    with pytest.raises(ProjectionError, match=r"unknown event type 'order\.teleported'"):
        fold(row, alien)
