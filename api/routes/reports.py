"""Reports over read models: sales per day and SKU."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError

from api.deps import AUTH_RESPONSES, Ctx, requires
from api.schemas import SalesReport, SalesRow, SalesTotal
from ordersaga.bounds import IsoDay, Storable
from ordersaga.keys import Role
from projections import queries

router = APIRouter(
    prefix="/reports",
    tags=["reports"],
    dependencies=[requires(Role.OPERATOR)],
    responses=AUTH_RESPONSES,
)


@router.get("/sales")
async def sales(
    ctx: Ctx,
    from_: Annotated[date, Query(alias="from", description="First day (UTC), inclusive."), IsoDay],
    to: Annotated[date, Query(description="Last day (UTC), inclusive."), IsoDay],
    sku: Annotated[str | None, Query(max_length=64), Storable] = None,
) -> SalesReport:
    """Units, orders and revenue of confirmed orders, per day of confirmation and SKU."""
    if to < from_:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "to"), "msg": "must not be before `from`",
              "input": to.isoformat()}]
        )  # fmt: skip
    rows = [SalesRow(**r) for r in await queries.sales(ctx.engine, from_, to, sku)]
    totals: dict[tuple[str, str], SalesTotal] = {}
    for r in rows:
        t = totals.setdefault((r.sku, r.currency), SalesTotal(sku=r.sku, currency=r.currency))
        t.orders += r.orders
        t.units += r.units
        t.revenue += r.revenue
    return SalesReport(from_=from_, to=to, rows=rows, totals=[totals[k] for k in sorted(totals)])
