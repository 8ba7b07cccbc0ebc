"""The read side as the API sees it: every query over the read models, in one module.

The API imports nothing else of `projections/`: tables and folds can change behind these
functions. Pages are keyset-paged, newest first, with an opaque cursor.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga.db import record
from ordersaga.domain import OrderStatus
from projections.orders import COLUMNS as ORDER_COLUMNS
from projections.orders import JSON_COLUMNS as ORDER_JSON_COLUMNS
from projections.orders import LIVE_TABLE as ORDERS_TABLE
from projections.status import projection_status

__all__ = [
    "APPLIED_CHANNEL",
    "CURSOR_PATTERN",
    "InvalidCursor",
    "Page",
    "applied_orders",
    "applied_payload",
    "customer_orders",
    "dead_lettered",
    "get_order",
    "list_orders",
    "projection_status",
    "sales",
]

# The projector sends `NOTIFY projection_applied, '<projection> <order id>,<order id>,...'` in the
# transaction that applies a batch, naming the orders it changed, so that a read-your-writes
# waiter wakes only for its own order; a payload of the projection's name alone (a batch with
# too many orders to name, an operator's retry) wakes every waiter of the projection. (An API
# older than these payloads matches none of them and falls back to its periodic look: upgrade
# the API before the projector.)
APPLIED_CHANNEL = "projection_applied"
# Postgres refuses a NOTIFY payload of 8000 bytes or more.
_PAYLOAD_MAX = 7900


def applied_payload(projection: str, order_ids: Collection[str]) -> str:
    """The NOTIFY payload for a batch of the projection that changed these orders."""
    named = f"{projection} {','.join(sorted(order_ids))}"
    return named if order_ids and len(named.encode()) <= _PAYLOAD_MAX else projection


def applied_orders(payload: str) -> tuple[str, list[str] | None]:
    """The projection and the orders a NOTIFY payload names (None: every order)."""
    projection, _, ids = payload.partition(" ")
    return projection, ids.split(",") if ids else None


Row = dict[str, Any]


class InvalidCursor(ValueError):
    """A cursor this API did not hand out."""


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    next_cursor: str | None


# A cursor is the keyset position of a page's last row, `<microseconds since 1970 UTC>_<order
# id>`: any string of this pattern is a position, so the API's document can state exactly which
# cursors it takes (a page after any position is well defined).
CURSOR_PATTERN = r"^[0-9]{1,16}_[A-Za-z0-9-]{1,64}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _encode_cursor(placed_at: datetime, order_id: str) -> str:
    micros = (placed_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{order_id}"


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    if re.fullmatch(CURSOR_PATTERN, cursor) is None:
        raise InvalidCursor("cursor is not one this API handed out")
    micros, order_id = cursor.split("_", 1)
    return _EPOCH + timedelta(microseconds=int(micros)), order_id


async def _page(
    engine: AsyncEngine, table: str, columns: str, where: list[str], params: dict[str, Any],
    limit: int, cursor: str | None,
) -> Page:  # fmt: skip
    """Newest first on (placed_at, order_id), so pages stay stable while orders arrive."""
    where = list(where)
    params = {**params, "limit": limit + 1}
    if cursor is not None:
        where.append("(placed_at, order_id) < (:after_at, :after_id)")
        params["after_at"], params["after_id"] = _decode_cursor(cursor)
    query = sa.text(
        f"SELECT {columns} FROM {table} WHERE {' AND '.join(where) or 'true'} "
        "ORDER BY placed_at DESC, order_id DESC LIMIT :limit"
    )
    async with engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(query, params)]
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    return Page(rows, _encode_cursor(rows[-1]["placed_at"], rows[-1]["order_id"]))


_ORDER = f"SELECT {ORDER_COLUMNS} FROM {ORDERS_TABLE} WHERE order_id = $1"


async def get_order(pool: asyncpg.Pool, order_id: str) -> Row | None:
    """The API's hottest read (a min_version GET reads it twice), so on the plain asyncpg pool:
    one statement, no transaction."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_ORDER, order_id)
    return None if row is None else record(row, ORDER_JSON_COLUMNS)


async def list_orders(
    engine: AsyncEngine,
    customer_id: str | None,
    status: OrderStatus | None,
    limit: int,
    cursor: str | None,
) -> Page:
    where: list[str] = []
    params: dict[str, Any] = {}
    if customer_id is not None:
        where.append("customer_id = :customer_id")
        params["customer_id"] = customer_id
    if status is not None:
        where.append("status = :status")
        params["status"] = status.value
    return await _page(engine, ORDERS_TABLE, ORDER_COLUMNS, where, params, limit, cursor)


_CUSTOMER_COLUMNS = "order_id, status, total, currency, item_count, version, placed_at, updated_at"


async def customer_orders(
    engine: AsyncEngine, customer_id: str, limit: int, cursor: str | None
) -> Page:
    """A customer's history, from its own read model."""
    return await _page(
        engine, "readmodel.customer_orders", _CUSTOMER_COLUMNS, ["customer_id = :c"],
        {"c": customer_id}, limit, cursor,
    )  # fmt: skip


async def dead_lettered(engine: AsyncEngine, projection: str, order_id: str) -> bool:
    """Whether the order has an open dead letter in the projection (its later events wait)."""
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text(
                "SELECT 1 FROM projections.dead_letters WHERE projection = :p AND order_id = :o "
                "AND resolved_at IS NULL LIMIT 1"
            ),
            {"p": projection, "o": order_id},
        )
        return found.first() is not None


async def sales(engine: AsyncEngine, first: date, last: date, sku: str | None) -> list[Row]:
    """Rows of `readmodel.sales_daily` from `first` to `last` (inclusive), by day, SKU, currency."""
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text(
                "SELECT day, sku, currency, orders, units, revenue FROM readmodel.sales_daily "
                "WHERE day BETWEEN :f AND :t AND (CAST(:sku AS text) IS NULL OR sku = :sku) "
                "ORDER BY day, sku, currency"
            ),
            {"f": first, "t": last, "sku": sku},
        )
        return [dict(r._mapping) for r in found]
