"""The API's own table: accepted order requests, by order id and Idempotency-Key."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga.domain import OrderStatus


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


async def pending_order(engine: AsyncEngine, order_id: str) -> dict[str, Any] | None:
    """An accepted order the read model does not have yet, shaped as its row: PENDING, version 0."""
    async with engine.connect() as conn:
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
