"""The AsyncAPI document of the stream: valid against the official AsyncAPI 3.0.0 JSON Schema
(vendored from `@asyncapi/specs`, offline), true to the registry, and its examples valid."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from jsonschema import (  # type: ignore[import-untyped]
    Draft7Validator,
    Draft202012Validator,
)
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from ordersaga.contracts import asyncapi, registry, schemas
from ordersaga.domain import EventType

OFFICIAL = schemas.SCHEMAS_DIR / "vendor" / "asyncapi" / "3.0.0.json"


@cache
def official() -> Draft7Validator:
    spec = json.loads(OFFICIAL.read_text())
    # A `referencing` registry retrieves nothing it is not given: no network. The vendored
    # schema holds every definition it refers to (the draft-07 meta-schema too).
    return Draft7Validator(spec, registry=Registry())


@cache
def committed() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((schemas.SCHEMAS_DIR / schemas.ASYNCAPI).read_text())
    return loaded


def test_the_vendored_schema_is_the_official_one_with_its_licence() -> None:
    spec = json.loads(OFFICIAL.read_text())
    assert spec["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    assert spec["properties"]["asyncapi"]["const"] == "3.0.0"
    assert "Apache License" in (OFFICIAL.parent / "LICENSE").read_text()


def test_the_committed_document_is_valid_asyncapi_3() -> None:
    errors = [
        f"{list(e.absolute_path)}: {e.message[:200]}" for e in official().iter_errors(committed())
    ]
    assert errors == []


def test_the_validation_does_fail_on_an_invalid_document() -> None:
    broken = json.loads(json.dumps(committed()))
    broken["operations"]["publishOrderPlaced"]["action"] = "publish"  # 2.x wording
    del broken["info"]["version"]
    assert len(list(official().iter_errors(broken))) >= 2


def test_the_committed_document_is_what_the_registry_makes() -> None:
    assert committed() == asyncapi.document()


def test_every_event_type_has_its_channel_and_every_version_its_message() -> None:
    doc = committed()
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {f"orders.{{order_id}}.{e.short_name}" for e in EventType} <= addresses
    assert set(doc["components"]["messages"]) == {f"{t}.v{v}" for t, v in registry.BY_KEY}
    placed = doc["channels"]["orderPlaced"]["messages"]
    assert sorted(placed) == ["order_placed_v1", "order_placed_v2"]
    internal = doc["channels"]["ordersPartitioned"]
    assert internal["x-internal"] is True and internal["address"].startswith("orders-p.")
    headers = doc["components"]["messages"]["order.placed.v2"]["headers"]
    assert headers["required"] == ["Nats-Msg-Id"]


@pytest.mark.parametrize(("event_type", "version"), sorted(registry.BY_KEY))
def test_each_message_carries_its_schema_and_a_valid_example(event_type: str, version: int) -> None:
    doc = committed()
    key = f"{event_type}.v{version}"
    message = doc["components"]["messages"][key]
    # The data schema is the registry's, inlined (AsyncAPI schemas are draft-07: no $defs).
    data_schema = doc["components"]["schemas"][key]
    assert "$defs" not in json.dumps(data_schema)
    document = Resource.from_contents(doc, default_specification=DRAFT7)
    refs = Registry().with_resource("urn:asyncapi", document)
    payload = Draft7Validator(
        {"$ref": f"urn:asyncapi#/components/messages/{key}/payload"}, registry=refs
    )
    [example] = message["examples"]
    payload.validate(example["payload"])
    assert example["headers"]["Nats-Msg-Id"] == example["payload"]["id"]
    # ... and the same data passes the registry's own schema.
    Draft202012Validator(registry.json_schema(registry.model_for(event_type, version))).validate(
        example["payload"]["data"]
    )
    wrong = {**example["payload"], "schemaversion": version + 1}
    assert not payload.is_valid(wrong)
