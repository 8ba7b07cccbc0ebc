"""The customer's message the notifier records, composed without I/O."""

from __future__ import annotations

from typing import Any

import pytest

from ordersaga.contracts.payloads import OrderCancelled, OrderConfirmed
from ordersaga.domain import CancelReason
from projections.notifier import compose

ORDER_ID = "3f2a9c1e-7b4d-4e8f-9a0b-1c2d3e4f5a6b"
CONFIRMED = OrderConfirmed(order_id=ORDER_ID, total=2500)


def order(**changes: Any) -> dict[str, Any]:
    """An order as `GET /orders/{id}` answers it (only what `compose` may read, and more)."""
    base: dict[str, Any] = {
        "order_id": ORDER_ID,
        "customer_id": "cust-1",
        "status": "CONFIRMED",
        "total": 2500,
        "currency": "EUR",
        "items": [
            {"sku": "sku-a", "quantity": 2, "unit_price": 1000},
            {"sku": "sku-b", "quantity": 1, "unit_price": 500},
        ],
        "failure_reason": None,
        "version": 5,
    }
    return {**base, **changes}


def test_a_confirmation_names_the_order_and_its_total() -> None:
    subject, body = compose(CONFIRMED, order())
    assert subject == "Your order 3f2a9c1e is confirmed (25.00 EUR)"
    assert body == {
        "order_id": ORDER_ID,
        "status": "CONFIRMED",
        "total": 2500,
        "currency": "EUR",
        # What the template needs of each line: no prices.
        "items": [{"sku": "sku-a", "quantity": 2}, {"sku": "sku-b", "quantity": 1}],
    }


@pytest.mark.parametrize(
    ("total", "currency", "shown"),
    [
        (2500, "EUR", "25.00 EUR"),
        (5, "EUR", "0.05 EUR"),
        (10, "USD", "0.10 USD"),
        (123456, "GBP", "1234.56 GBP"),
        (0, "EUR", "0.00 EUR"),
    ],
)
def test_money_is_shown_in_major_units_with_two_decimals(
    total: int, currency: str, shown: str
) -> None:
    subject, body = compose(CONFIRMED, order(total=total, currency=currency))
    assert subject == f"Your order 3f2a9c1e is confirmed ({shown})"
    assert (body["total"], body["currency"]) == (total, currency)  # the body keeps minor units


def test_a_cancellation_carries_the_reason_and_no_total_in_the_subject() -> None:
    cancelled = OrderCancelled(order_id=ORDER_ID, reason=CancelReason.PAYMENT_DECLINED)
    subject, body = compose(cancelled, order(status="CANCELLED", failure_reason=None))
    assert subject == "Your order 3f2a9c1e was cancelled"
    assert body == {
        "order_id": ORDER_ID,
        "status": "CANCELLED",
        "total": 2500,
        "currency": "EUR",
        "items": [{"sku": "sku-a", "quantity": 2}, {"sku": "sku-b", "quantity": 1}],
        # The event's own reason: the read model may not have caught up with it.
        "reason": "payment_declined",
    }
