"""The event contracts, for whoever consumes the stream: the JSON Schema of each event type and
version (every CloudEvent's `dataschema` points here) and the AsyncAPI document.

Like `/openapi.json`, they describe and reveal no data: no key is needed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from api.deps import Ctx
from api.errors import NotFound
from ordersaga.contracts import asyncapi, registry

router = APIRouter(tags=["contracts"])

SCHEMA_JSON = "application/schema+json"

EventTypeName = Annotated[
    str,
    Path(
        pattern=r"^order\.[a-z_]+$",
        max_length=64,
        description="The CloudEvent `type`, e.g. `order.placed`.",
        examples=["order.placed"],
    ),
]
Version = Annotated[
    int, Path(ge=1, le=1000, description="The schema version (`schemaversion`).", examples=[2])
]


@router.get("/schemas")
async def schema_index() -> dict[str, Any]:
    """Every event type: its current schema version, and where each version's schema is."""
    types: dict[str, Any] = {}
    for (event_type, version), model in sorted(registry.BY_KEY.items()):
        entry = types.setdefault(
            event_type, {"current": registry.current(event_type).schema_version, "versions": {}}
        )
        entry["versions"][str(version)] = {
            "dataschema": registry.dataschema(event_type, version),
            "deprecated": model.schema_version != entry["current"],
        }
    return {"types": types, "asyncapi": "/asyncapi.json"}


@router.get(
    "/schemas/{event_type}/{version}",
    response_class=JSONResponse,
    responses={
        200: {
            "description": "The JSON Schema (draft 2020-12) of the event's `data`.",
            "content": {SCHEMA_JSON: {"schema": {"type": "object"}}},
        },
        404: {"description": "no such event type or version"},
    },
)
async def event_schema(event_type: EventTypeName, version: Version) -> JSONResponse:
    """The JSON Schema of `data` of `event_type` at `version`: what `dataschema` names."""
    try:
        model = registry.model_for(event_type, version)
    except registry.UnknownPayload as error:
        raise NotFound(str(error)) from error
    return JSONResponse(registry.json_schema(model), media_type=SCHEMA_JSON)


@router.get("/asyncapi.json")
async def asyncapi_document(ctx: Ctx) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the order stream (subjects as this deployment names them)."""
    ns = ctx.settings.nats
    return asyncapi.document(
        subject_prefix=ns.subject_prefix,
        stream=ns.stream,
        partitioned_prefix=ns.partitioned_prefix,
    )
