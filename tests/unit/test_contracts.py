"""The event contracts without I/O: the registry, the committed schemas, the upcasters' golden
examples, and version 1 of `order.placed` read as version 2 everywhere."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from pydantic import ValidationError

from ordersaga import events
from ordersaga.contracts import examples, payloads, registry, schemas
from ordersaga.domain import EventType
from ordersaga.eventstore import StoredEvent, UnknownEventError
from projections import customers, orders
from projections.base import OrderEvent, item_rows, placed

KEYS = sorted(registry.BY_KEY)
GOLDEN = sorted(schemas.UPCAST_EXAMPLES_DIR.glob("*/*-to-*.json"))


def committed_schema(event_type: str, version: int) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schemas.schema_file(event_type, version).read_text())
    return loaded


def test_every_event_type_has_a_current_model_and_versions_count_from_one() -> None:
    assert set(registry.CURRENT) == {e.value for e in EventType}
    for event_type in registry.CURRENT:
        versions = sorted(v for t, v in KEYS if t == event_type)
        assert versions == list(range(1, len(versions) + 1))
        assert registry.current(event_type).schema_version == versions[-1]
    assert registry.current("order.placed") is payloads.OrderPlacedV2


def test_the_committed_registry_matches_the_models_and_changed_only_additively() -> None:
    # What `ordersaga schemas check` runs, in `make test`.
    report = schemas.check()
    assert report.ok, "\n".join(report.problems)


@pytest.mark.parametrize(("event_type", "version"), KEYS)
def test_each_example_is_valid_against_its_committed_schema(event_type: str, version: int) -> None:
    data = examples.example(event_type, version=version).as_data()
    Draft202012Validator(committed_schema(event_type, version)).validate(data)


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_upcaster_turns_its_golden_example_into_the_next_version(path: Path) -> None:
    golden = json.loads(path.read_text())
    event_type = path.parent.name
    old, new = (int(v) for v in path.stem.split("-to-"))
    Draft202012Validator(committed_schema(event_type, old)).validate(golden["from"])
    Draft202012Validator(committed_schema(event_type, new)).validate(golden["to"])
    model = registry.model_for(event_type, old)
    step = registry.UPCASTS[(event_type, old)]
    assert step(model.model_validate(golden["from"])).as_data() == golden["to"]


def test_there_is_a_golden_example_for_every_upcaster() -> None:
    assert {(p.parent.name, int(p.stem.split("-to-")[0])) for p in GOLDEN} == set(registry.UPCASTS)


def test_unknown_types_and_versions_are_refused_not_guessed() -> None:
    with pytest.raises(registry.UnknownPayload, match="versions \\[1, 2\\]"):
        registry.read("order.placed", 3, {})
    with pytest.raises(registry.UnknownPayload):
        registry.read("order.teleported", 1, {})
    with pytest.raises(ValidationError):
        registry.read("order.confirmed", 1, {"order_id": "o-1", "total": -1})


def test_payloads_are_frozen_and_ignore_unknown_fields() -> None:
    confirmed = payloads.OrderConfirmed.model_validate({"order_id": "o-1", "total": 5, "new": 1})
    assert confirmed.as_data() == {"order_id": "o-1", "total": 5}
    with pytest.raises(ValidationError):
        confirmed.total = 6  # type: ignore[misc]


def test_what_the_workflow_builds_is_what_the_activity_validates() -> None:
    # The workflow builds without validation (replays must not trip on a bound tightened
    # later); the activity validates the JSON before storing it. Both agree on a valid order.
    built = payloads.placed(examples.ORDER)
    assert payloads.OrderPlaced.model_validate(built.as_data()) == built
    long = payloads.requires_attention("o-1", "refund_payment", "x\x00" * 5000)
    checked = payloads.OrderRequiresAttention.model_validate(long.as_data())
    assert len(checked.error) == payloads.MAX_DETAIL and "\x00" not in checked.error


def _stored(event_type: str, version: int, data: dict[str, Any]) -> StoredEvent:
    return StoredEvent(
        position=7,
        stream_id="0c9f6f5e-8a4b-4f7e-9a51-3b2d1c0e9f8a",
        version=1,
        event_id="5e7f7a9e-0b49-4a8e-8f47-6c1d2e3f4a5b",
        event_type=event_type,
        schema_version=version,
        data=data,
        metadata={},
        occurred_at=datetime(2026, 11, 28, 7, 1, 50, tzinfo=UTC),
    )


def test_a_stored_version_1_comes_out_of_the_store_as_version_2() -> None:
    golden = json.loads(GOLDEN[0].read_text())
    read = events.order_upcasters().upcast(_stored("order.placed", 1, golden["from"]))
    assert (read.schema_version, read.data) == (2, golden["to"])
    cloudevent = events.to_cloudevent(read)
    assert cloudevent["dataschema"] == "/schemas/order.placed/2"
    with pytest.raises(UnknownEventError):
        events.order_upcasters().upcast(_stored("order.placed", 3, {}))


def test_a_version_1_cloudevent_off_the_bus_is_read_as_version_2() -> None:
    golden = json.loads(GOLDEN[0].read_text())
    as_published = events.to_cloudevent(_stored("order.placed", 1, golden["from"]))
    assert (as_published["schemaversion"], as_published["dataschema"]) == (
        1,
        "/schemas/order.placed/1",
    )
    doc, typed = events.current(as_published)
    assert (doc["schemaversion"], doc["dataschema"], doc["data"]) == (
        2,
        "/schemas/order.placed/2",
        golden["to"],
    )
    assert isinstance(typed, payloads.OrderPlacedV2)
    assert doc["id"] == as_published["id"]


def test_the_read_models_fold_version_1_exactly_as_version_2() -> None:
    golden = json.loads(GOLDEN[0].read_text())
    v1 = OrderEvent.from_cloudevent(
        events.to_cloudevent(_stored("order.placed", 1, golden["from"]))
    )
    v2 = replace(v1, data=golden["to"], schema_version=2)
    assert orders.apply(None, v1) == orders.apply(None, v2)
    assert customers.fold(None, v1) == customers.fold(None, v2)
    assert item_rows(placed(v1)) == [
        {"sku": "sku-mug", "quantity": 2, "unit_price": 1250},
        {"sku": "sku-tea", "quantity": 3, "unit_price": 0},
    ]
    row = orders.apply(None, v1)
    assert (row["total"], row["currency"]) == (2500, "GBP")
    assert row["shipping_address"]["line2"] is None  # as the read model kept it before


def test_every_cloudevent_names_the_schema_of_its_data() -> None:
    for event_type, version in KEYS:
        data = examples.example(event_type, version=version).as_data()
        doc = events.to_cloudevent(_stored(event_type, version, data))
        assert doc["dataschema"] == f"/schemas/{event_type}/{version}"
        assert committed_schema(event_type, version)["$id"] == doc["dataschema"]


def test_a_stored_fact_is_held_to_its_schema_not_to_todays_code_lists() -> None:
    """A code pycountry no longer knows (here one it never knew, of the right shape) refuses a
    new event but still reads a stored one: a library upgrade cannot make history unreadable."""
    data = examples.example("order.shipment_scheduled").as_data() | {"country": "QQ"}
    with pytest.raises(ValidationError, match="country"):
        payloads.ShipmentScheduledV1.model_validate(data)  # written today: refused
    read = registry.read("order.shipment_scheduled", 1, data)  # stored earlier: read
    assert isinstance(read, payloads.ShipmentScheduledV1) and read.country == "QQ"
    with pytest.raises(ValidationError):  # the schema's own pattern still holds
        registry.read("order.shipment_scheduled", 1, data | {"country": "q"})
