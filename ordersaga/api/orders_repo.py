"""Queries of the API: accepted order requests and the order read model."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga.domain import OrderStatus

_ORDER_COLUMNS = (
    "order_id, customer_id, status, items, shipping_address, total, currency, version, "
    "failure_reason, timeline, placed_at, updated_at"
)


async def claim_request(
    engine: AsyncEngine,
    order_id: str,
    idempotency_key: str | None,
    request_hash: str,
    customer_id: str,
    body: dict[str, Any],
) -> tuple[str, str, bool]:
    """Store the request; with a key already used, return that order. -> (order id, hash, new)."""
    async with engine.begin() as conn:
        inserted = (
            await conn.execute(
                sa.text(
                    "INSERT INTO api.order_requests "
                    "(order_id, idempotency_key, request_hash, customer_id, request) "
                    "VALUES (:o, :k, :h, :c, CAST(:r AS jsonb)) "
                    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING order_id"
                ),
                {
                    "o": order_id,
                    "k": idempotency_key,
                    "h": request_hash,
                    "c": customer_id,
                    "r": json.dumps(body),
                },
            )
        ).one_or_none()
        if inserted is not None:
            return order_id, request_hash, True
        row = (
            await conn.execute(
                sa.text(
                    "SELECT order_id, request_hash FROM api.order_requests "
                    "WHERE idempotency_key = :k"
                ),
                {"k": idempotency_key},
            )
        ).one()
        return row.order_id, row.request_hash, False


async def forget_request(engine: AsyncEngine, order_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("DELETE FROM api.order_requests WHERE order_id = :o"), {"o": order_id}
        )


async def request_exists(engine: AsyncEngine, order_id: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text("SELECT 1 FROM api.order_requests WHERE order_id = :o"), {"o": order_id}
        )
        return found.one_or_none() is not None


async def get_order(engine: AsyncEngine, order_id: str) -> dict[str, Any] | None:
    """The read model row; before the projector has it, the accepted request as PENDING."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.text(f"SELECT {_ORDER_COLUMNS} FROM readmodel.orders WHERE order_id = :o"),
                {"o": order_id},
            )
        ).one_or_none()
        if row is not None:
            return dict(row._mapping)
        req = (
            await conn.execute(
                sa.text(
                    "SELECT order_id, customer_id, request, created_at FROM api.order_requests "
                    "WHERE order_id = :o"
                ),
                {"o": order_id},
            )
        ).one_or_none()
    if req is None:
        return None
    body = req.request
    return {
        "order_id": req.order_id,
        "customer_id": req.customer_id,
        "status": OrderStatus.PENDING.value,
        "items": body["items"],
        "shipping_address": body["shipping_address"],
        "total": sum(i["quantity"] * i["unit_price"] for i in body["items"]),
        "currency": body["currency"],
        "version": 0,
        "failure_reason": None,
        "timeline": [],
        "placed_at": req.created_at,
        "updated_at": req.created_at,
    }


def encode_cursor(placed_at: datetime, order_id: str) -> str:
    return base64.urlsafe_b64encode(f"{placed_at.isoformat()}|{order_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    placed_at, order_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
    return datetime.fromisoformat(placed_at), order_id


async def list_orders(
    engine: AsyncEngine,
    customer_id: str | None,
    status: OrderStatus | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, keyset-paged on (placed_at, order_id), so pages stay stable under inserts."""
    where = ["true"]
    params: dict[str, Any] = {"limit": limit + 1}
    if customer_id is not None:
        where.append("customer_id = :customer_id")
        params["customer_id"] = customer_id
    if status is not None:
        where.append("status = :status")
        params["status"] = status.value
    if after is not None:
        where.append("(placed_at, order_id) < (:after_at, :after_id)")
        params["after_at"], params["after_id"] = after
    query = (
        f"SELECT {_ORDER_COLUMNS} FROM readmodel.orders WHERE {' AND '.join(where)} "
        "ORDER BY placed_at DESC, order_id DESC LIMIT :limit"
    )
    async with engine.connect() as conn:
        rows = [dict(r._mapping) for r in (await conn.execute(sa.text(query), params)).all()]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["placed_at"], rows[-1]["order_id"])
    return rows, next_cursor
