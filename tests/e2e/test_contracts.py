"""The event contracts as a consumer meets them, on the whole stack.

- Every event type, read off JetStream as the relay published it, is a CloudEvent the official
  `cloudevents` SDK parses, and its `data` is valid against the schema its `dataschema` names,
  fetched from the API.
- A store that holds events of `order.placed` version 1 (written before version 2 shipped) keeps
  working: the bus carries them as stored, and the API, the read models, a rebuild and
  `events tail` all see version 2.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC
from typing import Any

import httpx
import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from ordersaga import events
from ordersaga.contracts import asyncapi, registry, schemas
from ordersaga.contracts.examples import example
from ordersaga.domain import Address, EventType, Order, OrderItem
from ordersaga.eventstore import EventStore, NewEvent
from ordersaga.settings import Settings
from tests.helpers import cli, eventually, order_body, place, stocked_sku, unique, wait_terminal

pytestmark = pytest.mark.e2e

# An order's facts in an order no saga takes, to meet every type at least once.
EVERY_TYPE = [
    EventType.PLACED,
    EventType.INVENTORY_RESERVED,
    EventType.PAYMENT_CAPTURED,
    EventType.SHIPMENT_SCHEDULED,
    EventType.SHIPMENT_FAILED,
    EventType.SHIPMENT_CANCELLED,
    EventType.REQUIRES_ATTENTION,
    EventType.PAYMENT_REFUNDED,
    EventType.INVENTORY_RELEASED,
    EventType.CANCELLED,
]


def made_up_order(sku: str) -> Order:
    return Order(
        order_id=str(uuid.uuid4()),
        customer_id=unique("cust"),
        items=[OrderItem(sku, 2, 1250), OrderItem(unique("sku"), 1, 450)],
        shipping_address=Address("Ada", "1 Main St", "Berlin", "10115", "DE"),
        payment_token="tok_visa",
        currency="EUR",
    )


async def store_stream(store: EventStore, order: Order, stream: Sequence[NewEvent]) -> None:
    await store.append(order.order_id, list(stream), 0)


def as_the_saga_writes(
    order: Order, types: Sequence[str], versions: dict[str, int]
) -> list[NewEvent]:
    """Each type's example payload for `order`, at the version given (else the current)."""
    out = []
    for version, event_type in enumerate(types, start=1):
        payload = example(event_type, order, versions.get(event_type))
        out.append(events.new_event(order.order_id, version, payload))
    return out


async def read_off_jetstream(nc: NATS, settings: Settings, order_id: str, count: int) -> list[Msg]:
    js = nc.jetstream()
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    sub = await js.subscribe(
        f"{settings.nats.subject_prefix}.{order_id}.>",
        stream=settings.nats.stream,
        ordered_consumer=True,
        config=config,
    )
    try:
        return [await sub.next_msg(timeout=30) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_every_event_type_off_jetstream_is_a_cloudevent_whose_data_meets_its_schema(
    settings: Settings, api: httpx.AsyncClient, nc: NATS, store: EventStore
) -> None:
    sku = await stocked_sku(api, 10)
    sagas = [
        await place(api, order_body(sku)),  # placed .. confirmed
        await place(api, order_body(sku, token="tok_decline")),  # payment_declined
        await place(api, order_body(sku, quantity=11)),  # inventory_reservation_failed
    ]
    for order_id in sagas:
        await wait_terminal(api, order_id)
    old, made_up = made_up_order(sku), made_up_order(sku)
    await store_stream(store, old, as_the_saga_writes(old, ["order.placed"], {"order.placed": 1}))
    await store_stream(store, made_up, as_the_saga_writes(made_up, EVERY_TYPE, {}))

    seen: dict[tuple[str, int], int] = {}
    schemas: dict[str, Any] = {}
    streams = [(o, len(await store.read_stream(o))) for o in sagas]
    streams += [(old.order_id, 1), (made_up.order_id, len(EVERY_TYPE))]
    for order_id, count in streams:
        for msg in await read_off_jetstream(nc, settings, order_id, count):
            # The official SDK parses it and checks the attributes (required ones, types,
            # extension names).
            event = JSONFormat().read(CloudEvent, msg.data)
            assert isinstance(event, CloudEvent)
            assert event.get_specversion() == "1.0" and event.get_subject() == order_id
            assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == event.get_id()
            assert msg.subject == events.subject_for(
                settings.nats.subject_prefix, order_id, event.get_type()
            )
            dataschema = event.get_dataschema()
            assert dataschema is not None
            if dataschema not in schemas:
                response = await api.get(dataschema)
                assert response.status_code == 200, dataschema
                assert response.headers["content-type"] == "application/schema+json"
                schemas[dataschema] = response.json()
            data = event.get_data()
            assert isinstance(data, dict)
            Draft202012Validator(
                schemas[dataschema], format_checker=Draft202012Validator.FORMAT_CHECKER
            ).validate(data)
            version = int(event.get_extension("schemaversion"))
            assert dataschema == f"/schemas/{event.get_type()}/{version}"
            seen[(event.get_type(), version)] = seen.get((event.get_type(), version), 0) + 1
    assert set(seen) == set(registry.BY_KEY), "every type and version met on the bus"


async def test_a_store_with_version_1_events_keeps_working(
    settings: Settings, api: httpx.AsyncClient, nc: NATS, store: EventStore
) -> None:
    sku = unique("sku")
    order = made_up_order(sku)
    # As the code before version 2 wrote the stream: every event at schema version 1, and
    # order.placed in its old shape (the currency at the top, bare amounts, line2 null).
    happy = [t.value for t in EventType][:5]
    stream = as_the_saga_writes(order, happy, {"order.placed": 1})
    v1_placed = {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "items": [asdict(item) for item in order.items],
        "shipping_address": asdict(order.shipping_address),
        "currency": order.currency,
        "total": order.total,
    }
    stream[0] = NewEvent(stream[0].event_id, "order.placed", v1_placed, schema_version=1)
    await store_stream(store, order, stream)

    # The bus carries what was stored: version 1, as written.
    [first] = await read_off_jetstream(nc, settings, order.order_id, 1)
    on_the_bus = json.loads(first.data)
    assert (on_the_bus["schemaversion"], on_the_bus["dataschema"]) == (1, "/schemas/order.placed/1")
    assert on_the_bus["data"] == v1_placed

    # The read models apply it as version 2.
    async def confirmed() -> dict[str, Any] | None:
        response = await api.get(f"/orders/{order.order_id}")
        row: dict[str, Any] = response.json()
        return row if response.status_code == 200 and row["version"] == 5 else None

    row = await eventually(confirmed, 60, "the version 1 order on the read side")
    assert (row["status"], row["total"], row["currency"]) == ("CONFIRMED", order.total, "EUR")
    assert row["items"][0] == {"sku": sku, "quantity": 2, "unit_price": 1250}
    history = (await api.get(f"/customers/{order.customer_id}/orders")).json()
    assert [(o["order_id"], o["total"]) for o in history["items"]] == [
        (order.order_id, order.total)
    ]
    confirmed_at = (await store.read_stream(order.order_id))[-1].occurred_at
    day = confirmed_at.astimezone(UTC).date().isoformat()
    sales = (await api.get("/reports/sales", params={"from": day, "to": day, "sku": sku})).json()
    assert [(r["units"], r["revenue"]) for r in sales["rows"]] == [(2, 2500)]

    # The API's stream: version 2, and its schema.
    stored = (await api.get(f"/orders/{order.order_id}/events")).json()
    placed = stored[0]
    assert (placed["schemaversion"], placed["dataschema"]) == (2, "/schemas/order.placed/2")
    assert placed["data"]["total"] == {"amount": order.total, "currency": "EUR"}
    assert placed["data"] == example("order.placed", order).as_data()

    # events tail: version 2.
    tail = cli(settings, "events", "tail", "--order", order.order_id, "--since", "1h", "--json",
               "--count", "5")  # fmt: skip
    assert tail.returncode == 0, tail.stderr
    tailed = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [d["schemaversion"] for d in tailed] == [2, 1, 1, 1, 1]
    assert tailed[0]["data"] == placed["data"] and tailed[0]["id"] == on_the_bus["id"]

    # A rebuild replays the store (version 1 upcast on read) into the same row.
    rebuilt = cli(settings, "projections", "rebuild", "orders", timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    after = (await api.get(f"/orders/{order.order_id}")).json()
    assert {k: after[k] for k in row if k != "updated_at"} == {
        k: row[k] for k in row if k != "updated_at"
    }


async def test_the_api_serves_the_committed_registry_and_the_asyncapi_document(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    keyless = httpx.AsyncClient(base_url=str(api.base_url))  # contracts need no key
    async with keyless:
        index = (await keyless.get("/schemas")).json()
        assert index["types"]["order.placed"]["current"] == 2
        assert index["types"]["order.placed"]["versions"]["1"]["deprecated"] is True
        for event_type, version in registry.BY_KEY:
            response = await keyless.get(f"/schemas/{event_type}/{version}")
            assert response.status_code == 200
            assert response.json() == json.loads(
                schemas.schema_file(event_type, version).read_text()
            )
        missing = await keyless.get("/schemas/order.placed/3")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert "versions [1, 2]" in missing.json()["detail"]
        served = (await keyless.get("/asyncapi.json")).json()
    ns = settings.nats
    assert served == asyncapi.document(
        subject_prefix=ns.subject_prefix, stream=ns.stream, partitioned_prefix=ns.partitioned_prefix
    )
    if (ns.subject_prefix, ns.stream) == ("orders", "ORDERS"):
        assert served == json.loads((schemas.SCHEMAS_DIR / schemas.ASYNCAPI).read_text())
