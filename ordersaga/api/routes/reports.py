"""Reports over read models: sales per day and SKU."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError

from ordersaga.api.deps import Ctx
from ordersaga.api.schemas import SalesReport, SalesRow, SalesTotal

router = APIRouter(prefix="/reports", tags=["reports"])

MAX_DAYS = 366


@router.get("/sales")
async def sales(
    ctx: Ctx,
    from_: Annotated[date, Query(alias="from", description="First day (UTC), inclusive.")],
    to: Annotated[date, Query(description="Last day (UTC), inclusive.")],
    sku: Annotated[str | None, Query(max_length=64)] = None,
) -> SalesReport:
    """Units, orders and revenue of confirmed orders, per day of confirmation and SKU."""
    if to < from_:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "to"), "msg": "must not be before `from`",
              "input": to.isoformat()}]
        )  # fmt: skip
    if to - from_ >= timedelta(days=MAX_DAYS):
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "to"),
              "msg": f"a report spans at most {MAX_DAYS} days", "input": to.isoformat()}]
        )  # fmt: skip
    async with ctx.engine.connect() as conn:
        found = await conn.execute(
            sa.text(
                "SELECT day, sku, currency, orders, units, revenue FROM readmodel.sales_daily "
                "WHERE day BETWEEN :f AND :t AND (CAST(:sku AS text) IS NULL OR sku = :sku) "
                "ORDER BY day, sku, currency"
            ),
            {"f": from_, "t": to, "sku": sku},
        )
        rows = [SalesRow(**r._mapping) for r in found]
    totals: dict[tuple[str, str], SalesTotal] = {}
    for r in rows:
        t = totals.setdefault((r.sku, r.currency), SalesTotal(sku=r.sku, currency=r.currency))
        t.orders += r.orders
        t.units += r.units
        t.revenue += r.revenue
    return SalesReport(from_=from_, to=to, rows=rows, totals=[totals[k] for k in sorted(totals)])
