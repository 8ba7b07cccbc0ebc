"""The API's own table: accepted order requests, by order id and Idempotency-Key."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga.domain import OrderStatus


async def claim_request(
    pool: asyncpg.Pool,
    order_id: str,
    idempotency_key: str | None,
    request_hash: str,
    customer_id: str,
    body: dict[str, Any],
) -> tuple[str, str, bool]:
    """Store the request; with a key already used, return that order. -> (order id, hash, new).

    On the API's hot path, so on the plain asyncpg pool (one round trip, where the engine's
    checkout ping and transaction took six). Each statement stands alone, outside a
    transaction: an insert that meets a concurrent one with the same key waits for it to
    commit, and the read after it sees that row."""
    async with pool.acquire() as conn:
        inserted = await conn.fetchval(
            "INSERT INTO api.order_requests "
            "(order_id, idempotency_key, request_hash, customer_id, request) "
            "VALUES ($1, $2, $3, $4, $5::jsonb) "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING order_id",
            order_id, idempotency_key, request_hash, customer_id, json.dumps(body),
        )  # fmt: skip
        if inserted is not None:
            return order_id, request_hash, True
        row = await conn.fetchrow(
            "SELECT order_id, request_hash FROM api.order_requests WHERE idempotency_key = $1",
            idempotency_key,
        )
    if row is None:  # rows under a key are never deleted: the conflict's row is there
        raise RuntimeError("an Idempotency-Key conflicted, yet no request is stored under it")
    return str(row["order_id"]), str(row["request_hash"]), False


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
