"""Stock per SKU: set it, and see what is available and reserved."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import AUTH_RESPONSES, Ctx, requires
from api.errors import NotFound
from api.schemas import StockIn, StockOut
from ordersaga.keys import Role

router = APIRouter(
    prefix="/inventory",
    tags=["inventory"],
    dependencies=[requires(Role.OPERATOR)],
    responses=AUTH_RESPONSES,
)

SkuPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


@router.put("/{sku}")
async def put_stock(sku: SkuPath, body: StockIn, ctx: Ctx) -> StockOut:
    """Set the available quantity of a SKU (creating it); reserved stock is left as it is."""
    return StockOut(**await ctx.inventory.set_stock(sku, body.available))


@router.get("/{sku}", responses={404: {"description": "unknown SKU"}})
async def get_stock(sku: SkuPath, ctx: Ctx) -> StockOut:
    row = await ctx.inventory.get_stock(sku)
    if row is None:
        raise NotFound(f"sku {sku} not found")
    return StockOut(**row)
