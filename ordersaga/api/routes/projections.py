"""The read side's health: lag and dead letters per projection."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ordersaga.api.deps import Ctx
from ordersaga.projections.status import projection_status

router = APIRouter(prefix="/projections", tags=["projections"])


@router.get("")
async def projections(ctx: Ctx) -> list[dict[str, Any]]:
    """Per projection: events not applied yet (JetStream pending + unacked), per partition the
    last applied stream sequence and the age of the last applied event, open dead letters."""
    return await projection_status(ctx.nats.jetstream(), ctx.engine, ctx.settings)
