"""The read side's health: lag and dead letters per projection."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import AUTH_RESPONSES, Ctx, requires
from ordersaga.keys import Role
from projections import queries

router = APIRouter(
    prefix="/projections",
    tags=["projections"],
    dependencies=[requires(Role.OPERATOR)],
    responses=AUTH_RESPONSES,
)


@router.get("")
async def projections(ctx: Ctx) -> list[dict[str, Any]]:
    """Per projection: events not applied yet (JetStream pending + unacked), per partition the
    last applied stream sequence and the age of the last applied event, open dead letters."""
    return await queries.projection_status(ctx.nats.jetstream(), ctx.engine, ctx.settings)
