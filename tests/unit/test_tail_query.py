"""`ordersaga events tail`: its options parsed into a subject and a start time, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ordersaga.domain import EventType
from ordersaga.settings import NatsSettings, Settings
from projections.tail import TailQuery

ORDER_ID = "3f2a9c1e-7b4d-4e8f-9a0b-1c2d3e4f5a6b"


@pytest.fixture
def settings() -> Settings:
    return Settings()


def test_without_options_it_follows_every_order_and_type_from_now(settings: Settings) -> None:
    assert TailQuery.parse(settings, None, None, None) == TailQuery("orders.*.*", None)


def test_order_and_type_narrow_the_subject(settings: Settings) -> None:
    assert TailQuery.parse(settings, ORDER_ID, None, None).subject == f"orders.{ORDER_ID}.*"
    assert TailQuery.parse(settings, None, "confirmed", None).subject == "orders.*.confirmed"
    both = TailQuery.parse(settings, ORDER_ID, "inventory_reserved", None)
    assert both.subject == f"orders.{ORDER_ID}.inventory_reserved"


def test_a_type_may_be_given_with_its_order_prefix(settings: Settings) -> None:
    full = TailQuery.parse(settings, None, "order.payment_captured", None)
    assert full.subject == "orders.*.payment_captured"


def test_the_subject_uses_the_configured_prefix() -> None:
    shop = Settings(nats=NatsSettings(subject_prefix="shop"))
    assert TailQuery.parse(shop, ORDER_ID, "cancelled", None).subject == (
        f"shop.{ORDER_ID}.cancelled"
    )


def test_an_unknown_type_is_refused_with_the_known_ones(settings: Settings) -> None:
    with pytest.raises(ValueError, match="unknown event type 'teleported'") as refused:
        TailQuery.parse(settings, None, "teleported", None)
    known = str(refused.value).split("known: ", 1)[1].split(", ")
    assert known == [e.value for e in EventType]
    assert {"order.placed", "order.confirmed", "order.cancelled"} <= set(known)


@pytest.mark.parametrize("bad", ["orders.*", "a b", "*", ">", "x/y", ""])
def test_an_order_id_that_would_change_the_subject_is_refused(settings: Settings, bad: str) -> None:
    with pytest.raises(ValueError, match="not an order id"):
        TailQuery.parse(settings, bad, None, None)


@pytest.mark.parametrize(
    ("since", "ago"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("2d", timedelta(days=2)),
        ("0s", timedelta(0)),
    ],
)
def test_since_starts_that_long_ago(settings: Settings, since: str, ago: timedelta) -> None:
    before = datetime.now(UTC)
    query = TailQuery.parse(settings, None, None, since)
    after = datetime.now(UTC)
    assert query.start is not None
    assert before - ago <= query.start <= after - ago


@pytest.mark.parametrize("bad", ["1w", "90", "h1", "1.5h", "-1h", "1 h", "1H", "15min"])
def test_since_needs_a_number_and_a_known_unit(settings: Settings, bad: str) -> None:
    with pytest.raises(ValueError, match=r"--since takes a number and a unit") as refused:
        TailQuery.parse(settings, None, None, bad)
    assert repr(bad) in str(refused.value)
