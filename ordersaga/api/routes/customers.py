"""A customer's order history, from its own read model."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Path, Query

from ordersaga.api import orders_repo
from ordersaga.api.deps import Ctx
from ordersaga.api.errors import InvalidInput
from ordersaga.api.schemas import CustomerOrderOut, CustomerOrderPage

router = APIRouter(prefix="/customers", tags=["customers"])

_QUERY = sa.text(
    "SELECT order_id, status, total, currency, item_count, version, placed_at, updated_at "
    "FROM readmodel.customer_orders WHERE customer_id = :c "
    "AND (CAST(:after_at AS timestamptz) IS NULL "
    "     OR (placed_at, order_id) < (:after_at, :after_id)) "
    "ORDER BY placed_at DESC, order_id DESC LIMIT :limit"
)


@router.get("/{customer_id}/orders")
async def customer_orders(
    ctx: Ctx,
    customer_id: Annotated[str, Path(min_length=1, max_length=64)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> CustomerOrderPage:
    """The customer's orders, newest first; pass `next_cursor` back for the next page."""
    after: tuple[datetime | None, str | None] = (None, None)
    if cursor is not None:
        try:
            after = orders_repo.decode_cursor(cursor)
        except ValueError as error:
            raise InvalidInput("cursor is not one this API handed out") from error
    params: dict[str, Any] = {
        "c": customer_id, "after_at": after[0], "after_id": after[1], "limit": limit + 1,
    }  # fmt: skip
    async with ctx.engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(_QUERY, params)]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = orders_repo.encode_cursor(rows[-1]["placed_at"], rows[-1]["order_id"])
    return CustomerOrderPage(
        customer_id=customer_id,
        items=[CustomerOrderOut(**r) for r in rows],
        next_cursor=next_cursor,
    )
