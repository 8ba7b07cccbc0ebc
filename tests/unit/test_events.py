"""Event ids and the CloudEvents wire format."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ordersaga import events
from ordersaga.domain import event_id
from ordersaga.eventstore import StoredEvent


def stored() -> StoredEvent:
    return StoredEvent(
        position=7,
        stream_id="4f1c2d3e-0000-4000-8000-000000000001",
        version=2,
        event_id=event_id("4f1c2d3e-0000-4000-8000-000000000001", 2, "order.inventory_reserved"),
        event_type="order.inventory_reserved",
        schema_version=1,
        data={"lines": {"sku-a": 2}},
        metadata={},
        occurred_at=datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
    )


def test_event_ids_are_deterministic_per_stream_version_and_type() -> None:
    assert event_id("s", 1, "order.placed") == event_id("s", 1, "order.placed")
    variants = [("s", 1, "order.placed"), ("s", 2, "order.placed"), ("s", 1, "order.confirmed")]
    variants.append(("t", 1, "order.placed"))
    assert len({event_id(*v) for v in variants}) == 4


def test_subjects_put_the_order_before_the_event_name() -> None:
    assert events.subject_for("orders", "o-1", "order.payment_captured") == (
        "orders.o-1.payment_captured"
    )
    with pytest.raises(ValueError):
        events.subject_for("orders", "o-1", "order.unknown")


def test_cloudevent_round_trip() -> None:
    event = stored()
    doc = events.decode(events.encode(event))
    assert doc["specversion"] == "1.0"
    assert (doc["id"], doc["type"], doc["subject"]) == (
        event.event_id,
        "order.inventory_reserved",
        event.stream_id,
    )
    assert (doc["streamversion"], doc["position"], doc["data"]) == (2, 7, {"lines": {"sku-a": 2}})
    assert doc["time"] == "2026-11-28T12:00:00+00:00"
    version, trace, span, flags = doc["traceparent"].split("-")
    assert (version, len(trace), len(span), flags) == ("00", 32, 16, "01")


def test_decode_rejects_what_is_not_a_cloudevent() -> None:
    with pytest.raises(ValueError):
        events.decode(b'{"hello": "world"}')
    with pytest.raises(ValueError):
        events.decode(b'{"specversion": "1.0", "id": "x"}')
