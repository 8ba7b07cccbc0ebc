"""A customer's order history, from its own read model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.deps import AUTH_RESPONSES, Ctx, requires
from api.errors import InvalidInput
from api.schemas import CustomerOrderOut, CustomerOrderPage
from ordersaga.bounds import CUSTOMER_ID_INPUT_PATTERN
from ordersaga.keys import Role
from projections import queries

router = APIRouter(
    prefix="/customers",
    tags=["customers"],
    dependencies=[requires(Role.CLIENT)],
    responses=AUTH_RESPONSES,
)


@router.get("/{customer_id}/orders")
async def customer_orders(
    ctx: Ctx,
    customer_id: Annotated[str, Path(pattern=CUSTOMER_ID_INPUT_PATTERN)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=queries.CURSOR_PATTERN, description="`next_cursor` of the page before."),
    ] = None,
) -> CustomerOrderPage:
    """The customer's orders, newest first; pass `next_cursor` back for the next page."""
    try:
        page = await queries.customer_orders(ctx.engine, customer_id, limit, cursor)
    except queries.InvalidCursor as error:
        raise InvalidInput(str(error)) from error
    return CustomerOrderPage(
        customer_id=customer_id,
        items=[CustomerOrderOut(**r) for r in page.rows],
        next_cursor=page.next_cursor,
    )
