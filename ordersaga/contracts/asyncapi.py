"""The AsyncAPI 3.0 document of the order stream, generated from the registry.

Committed as `schemas/asyncapi.json` (`ordersaga schemas generate`; `ordersaga schemas check`
fails when it is stale) and served at `/asyncapi.json`. One channel per event type
(`orders.{order_id}.<event>`), each with one message per schema version it may carry; a message's
payload is the CloudEvents 1.0 envelope whose `data` references the event's schema (the same
JSON Schema as `/schemas/<type>/<version>`, inlined, since AsyncAPI schemas are draft-07). The
partitioned copy of the stream is described too, marked internal.
"""

from __future__ import annotations

import copy
from typing import Any

from ordersaga.contracts import registry
from ordersaga.contracts.examples import ORDER, example
from ordersaga.contracts.payloads import Payload
from ordersaga.domain import EventType, event_id
from ordersaga.events import traceparent

VERSION = "1.0.0"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"

_ABOUT = """\
Every fact of an order's saga, published by ordersaga's relay from its event store (the outbox)
to the JetStream stream `{stream}`, in each order's version order, at least once.

**Envelope.** Each message is a CloudEvents 1.0 event in structured JSON mode: `id` (the event
id, a UUID), `source`, `type` (`order.<event>`), `subject` (the order id), `time`,
`datacontenttype` (`application/json`), `dataschema` (the path of the data's JSON Schema on the
ordersaga API, for example `/schemas/order.placed/2`), `data`, and the extension attributes
`streamversion` (1, 2, ... within the order), `position` (the event store's global position),
`schemaversion` (the version of `data`'s schema) and `traceparent` (W3C; one trace per order).

**Duplicates.** The NATS header `Nats-Msg-Id` is the event id: JetStream drops a republished
duplicate within its duplicate window (24 h). Delivery is still at least once: a consumer keeps
what it has applied, per order, by `streamversion` (or by `id`).

**Versions.** The bus carries each event as it was stored, at the schema version it was written
with; a type can therefore arrive in more than one version (`order.placed` as 1 from events
stored before version 2 shipped, then as 2). Read `schemaversion` (or `dataschema`) before
`data`, and ignore properties you do not know: a new optional property is added to a version in
place. Any other change is a new version, listed here as another message of the channel; the
version it supersedes is marked deprecated, and ordersaga's own readers upcast it on read.
"""


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema with its local `$defs` references replaced by their targets (no recursion
    in our models), and without `$schema` / `$id`: embeddable in an AsyncAPI document."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target = defs[node["$ref"].removeprefix("#/$defs/")]
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return walk({**copy.deepcopy(target), **rest})
            return {k: walk(v) for k, v in node.items() if k not in ("$defs", "$schema", "$id")}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


def _key(model: type[Payload]) -> str:
    return f"{model.event_type.value}.v{model.schema_version}"


def _channel_id(event_type: EventType) -> str:
    words = event_type.short_name.split("_")
    return "order" + "".join(w.capitalize() for w in words)


_ATTRIBUTES = (
    "specversion id source type subject time datacontenttype dataschema data streamversion "
    "position schemaversion traceparent"
).split()


def _envelope(source: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "A CloudEvents 1.0 event, structured JSON mode.",
        "required": [*_ATTRIBUTES],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "format": "uuid", "description": "The event id."},
            "source": {"const": source},
            "type": {"type": "string", "pattern": r"^order\.[a-z_]+$"},
            "subject": {"type": "string", "description": "The order id."},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            "dataschema": {
                "type": "string",
                "description": "The path of the data's JSON Schema on the ordersaga API.",
            },
            "data": {"type": "object"},
            "streamversion": {
                "type": "integer",
                "minimum": 1,
                "description": "The event's version in its order's stream.",
            },
            "position": {
                "type": "integer",
                "minimum": 1,
                "description": "The event's position in the event store.",
            },
            "schemaversion": {
                "type": "integer",
                "minimum": 1,
                "description": "The version of `data`'s schema.",
            },
            "traceparent": {
                "type": "string",
                "pattern": r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "W3C Trace Context; one trace per order.",
            },
        },
    }


_HEADERS = {
    "type": "object",
    "required": ["Nats-Msg-Id"],
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "format": "uuid",
            "description": "The event id (the CloudEvent's `id`): JetStream drops a message "
            "published again with the same id within the stream's duplicate window.",
        }
    },
}


def _example_event(model: type[Payload], source: str) -> dict[str, Any]:
    """A whole CloudEvent of the model's example payload, as the bus carries it."""
    payload = example(model.event_type.value, ORDER, model.schema_version)
    version = list(EventType).index(model.event_type) + 1
    identifier = event_id(ORDER.order_id, version, model.event_type.value)
    return {
        "specversion": "1.0",
        "id": identifier,
        "source": source,
        "type": model.event_type.value,
        "subject": ORDER.order_id,
        "time": "2026-11-28T07:01:50.123456+00:00",
        "datacontenttype": "application/json",
        "dataschema": registry.dataschema(model.event_type.value, model.schema_version),
        "data": payload.as_data(),
        "streamversion": version,
        "position": 1000 + version,
        "schemaversion": model.schema_version,
        "traceparent": traceparent(ORDER.order_id, identifier),
    }


def document(
    *,
    subject_prefix: str = "orders",
    stream: str = "ORDERS",
    partitioned_prefix: str = "orders-p",
    source: str = "/ordersaga/orders",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document (the committed one has the default names)."""
    schemas: dict[str, Any] = {"CloudEvent": _envelope(source)}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    order_id = {"description": "The order's id (the CloudEvent's `subject`)."}
    for event_type in EventType:
        current = registry.current(event_type.value).schema_version
        versions = [m for (t, _), m in sorted(registry.BY_KEY.items()) if t == event_type.value]
        channel = _channel_id(event_type)
        refs = {}
        for model in versions:
            key = _key(model)
            superseded = model.schema_version != current
            data_schema = _inline(registry.json_schema(model))
            schemas[key] = data_schema
            status = f" Superseded by version {current}." if superseded else ""
            messages[key] = {
                "name": event_type.value,
                "title": f"{event_type.value} version {model.schema_version}",
                "summary": " ".join((model.__doc__ or "").split("\n\n")[0].split()) + status,
                "contentType": CLOUDEVENTS_CONTENT_TYPE,
                "headers": _HEADERS,
                "payload": {
                    "allOf": [
                        {"$ref": "#/components/schemas/CloudEvent"},
                        {
                            "properties": {
                                "type": {"const": event_type.value},
                                "schemaversion": {"const": model.schema_version},
                                "dataschema": {
                                    "const": registry.dataschema(
                                        event_type.value, model.schema_version
                                    )
                                },
                                "data": {"$ref": f"#/components/schemas/{key}"},
                            },
                            **({"deprecated": True} if superseded else {}),
                        },
                    ]
                },
                "examples": [
                    {
                        "name": key.replace(".", "-"),
                        "headers": {"Nats-Msg-Id": _example_event(model, source)["id"]},
                        "payload": _example_event(model, source),
                    }
                ],
                "x-dataschema": registry.dataschema(event_type.value, model.schema_version),
            }
            refs[key.replace(".", "_")] = {"$ref": f"#/components/messages/{key}"}
        channels[channel] = {
            "address": f"{subject_prefix}.{{order_id}}.{event_type.short_name}",
            "title": event_type.value,
            "description": f"Every `{event_type.value}` event, of every order, on stream "
            f"`{stream}` (subscribe to `{subject_prefix}.*.{event_type.short_name}`, or to "
            f"`{subject_prefix}.<order id>.>` for one order's story).",
            "parameters": {"order_id": order_id},
            "messages": refs,
        }
        operations[f"publish{channel[0].upper()}{channel[1:]}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"The relay publishes each stored `{event_type.value}` event.",
            "messages": [
                {"$ref": f"#/channels/{channel}/messages/{name}"} for name in sorted(refs)
            ],
        }

    all_messages = {k.replace(".", "_"): {"$ref": f"#/components/messages/{k}"} for k in messages}
    channels["ordersPartitioned"] = {
        "address": f"{partitioned_prefix}.{{partition}}.{{order_id}}.{{event}}",
        "title": "internal: the stream keyed by partition",
        "description": "INTERNAL: the same messages, copied by JetStream into the stream of "
        "ordersaga's projectors with a partition of the order id in front. Not a contract: "
        "its name, subjects and partition count change without notice; consume the channels "
        f"`{subject_prefix}.{{order_id}}.<event>` instead.",
        "parameters": {
            "partition": {"description": "A partition of the order id (0 to partitions-1)."},
            "order_id": order_id,
            "event": {
                "description": "The event name.",
                "enum": [e.short_name for e in EventType],
            },
        },
        "messages": all_messages,
        "tags": [{"name": "internal"}],
        "x-internal": True,
    }
    operations["copyToPartitions"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/ordersPartitioned"},
        "summary": "Internal: JetStream sources the partitioned stream from the public one.",
        "tags": [{"name": "internal"}],
        "x-internal": True,
    }
    return {
        "asyncapi": "3.0.0",
        "id": "urn:ordersaga:order-events",
        "info": {
            "title": "ordersaga order events",
            "version": VERSION,
            "description": _ABOUT.format(stream=stream),
            "tags": [{"name": "internal", "description": "Not for consumers outside ordersaga."}],
        },
        "defaultContentType": CLOUDEVENTS_CONTENT_TYPE,
        "servers": {
            "dev": {
                "host": "127.0.0.1:14222",
                "protocol": "nats",
                "description": "The embedded stack of `make dev`; in production, the NATS "
                "cluster ordersaga's relay publishes to.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }
