"""The three participants of the saga, implemented on Postgres (their interfaces:
`ordersaga/participants.py`).

Each participant keeps its own schema and is idempotent on the order id, the way a real payment
provider is idempotent on its idempotency key: a retried call returns what the first one did.
The test-mode rules (DESIGN.md) let every saga path be driven from the API.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import asyncpg

from ordersaga.db import jsonb
from ordersaga.domain import (
    Address,
    OrderItem,
    OutOfStock,
    PaymentDeclined,
    ShippingUnavailable,
)
from ordersaga.participants import (
    Payment,
    Reservation,
    Shipment,
    TransientParticipantError,
)

__all__ = [
    "PostgresInventory",
    "PostgresPayments",
    "PostgresShipping",
    "TransientParticipantError",
]

TOKEN_DECLINE = "tok_decline"
TOKEN_FLAKY = "tok_flaky"
FLAKY_FAILURES = 2
UNSHIPPABLE_COUNTRY = "ZZ"

# What `inventory.reserve` raises (migration 0008): a SKU short of stock, or a retry that finds
# the order's reservation released already.
_SHORTAGE = "OSI01"
_NOT_RESERVED = "OSR01"


def _lines(value: str | dict[str, int]) -> dict[str, int]:
    """A reservation's lines, as read (jsonb)."""
    return dict(jsonb(value))


class PostgresInventory:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def set_stock(self, sku: str, available: int) -> dict[str, Any]:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "INSERT INTO inventory.stock (sku, available) VALUES ($1, $2) "
                "ON CONFLICT (sku) DO UPDATE SET available = $2, updated_at = now() "
                "RETURNING sku, available, reserved",
                sku, available,
            )  # fmt: skip
        return dict(row)

    async def get_stock(self, sku: str) -> dict[str, Any] | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT sku, available, reserved FROM inventory.stock WHERE sku = $1", sku
            )
        return None if row is None else dict(row)

    async def reserve(self, order_id: str, items: list[OrderItem]) -> Reservation:
        wanted = Counter[str]()
        for item in items:
            wanted[item.sku] += item.quantity
        # One call, atomic (`inventory.reserve`, migration 0008): the reservation row first, so a
        # concurrent retry of the order waits on it and then finds it; then each SKU, in sorted
        # order; a shortage raises and takes nothing. No transaction around it: one round trip.
        try:
            async with self._pool.acquire() as conn:
                lines = await conn.fetchval(
                    "SELECT inventory.reserve($1, $2::jsonb)", order_id, json.dumps(dict(wanted))
                )
        except asyncpg.PostgresError as error:
            if error.sqlstate == _SHORTAGE:
                raise OutOfStock(error.message) from None
            if error.sqlstate == _NOT_RESERVED:
                raise RuntimeError(error.message) from None
            raise
        return Reservation(order_id, _lines(lines))

    async def release(self, order_id: str) -> Reservation | None:
        async with self._pool.acquire() as conn, conn.transaction():
            # Nothing reserved: leave a void marker in its place, so a late reservation (an
            # attempt Temporal gave up on, still running) finds it and takes no stock after this.
            voided = await conn.fetchval(
                "INSERT INTO inventory.reservations "
                "(order_id, lines, status, released_at, voided) "
                "VALUES ($1, '{}', 'RELEASED', now(), true) "
                "ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
                order_id,
            )
            if voided is not None:
                return None
            row = await conn.fetchrow(
                "UPDATE inventory.reservations SET status = 'RELEASED', "
                "released_at = now() WHERE order_id = $1 AND status = 'RESERVED' "
                "RETURNING lines",
                order_id,
            )
            if row is None:
                # Released before (a retry), or never reserved: nothing is held either way.
                released = await conn.fetchval(
                    "SELECT lines FROM inventory.reservations "
                    "WHERE order_id = $1 AND status = 'RELEASED' AND NOT voided",
                    order_id,
                )
                return None if released is None else Reservation(order_id, _lines(released))
            lines = _lines(row["lines"])
            for sku in sorted(lines):
                await conn.execute(
                    "UPDATE inventory.stock SET available = available + $2, "
                    "reserved = reserved - $2, updated_at = now() WHERE sku = $1",
                    sku, lines[sku],
                )  # fmt: skip
        return Reservation(order_id, lines)


class PostgresPayments:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @staticmethod
    async def _find(conn: asyncpg.Connection, order_id: str, kind: str) -> Payment | None:
        row = await conn.fetchrow(
            "SELECT payment_id::text AS payment_id, amount, currency "
            "FROM payments.ledger WHERE order_id = $1 AND kind = $2",
            order_id, kind,
        )  # fmt: skip
        if row is None:
            return None
        return Payment(order_id, row["payment_id"], row["amount"], row["currency"])

    async def capture(self, order_id: str, token: str, amount: int, currency: str) -> Payment:
        if token in (TOKEN_DECLINE, TOKEN_FLAKY):
            # The test tokens' rules apply to a payment not captured yet.
            async with self._pool.acquire() as conn:
                done = await self._find(conn, order_id, "CAPTURE")
            if done is not None:
                return done
        if token == TOKEN_DECLINE:
            raise PaymentDeclined(f"card declined (test token {TOKEN_DECLINE})")
        if token == TOKEN_FLAKY:
            async with self._pool.acquire() as conn:
                attempt = await conn.fetchval(
                    "INSERT INTO payments.attempts (order_id, attempts) VALUES ($1, 1) "
                    "ON CONFLICT (order_id) DO UPDATE "
                    "SET attempts = payments.attempts.attempts + 1 RETURNING attempts",
                    order_id,
                )
            if attempt <= FLAKY_FAILURES:
                raise TransientParticipantError(
                    f"payment provider timed out (test token {TOKEN_FLAKY}, attempt {attempt})"
                )
        # One call (`payments.capture`, migration 0008) under the order's payment lock: captured
        # once (a retry finds the capture and takes nothing more); a payment its refund voided
        # first is not captured at all.
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM payments.capture($1, $2, $3)", order_id, amount, currency
            )
        if row is None:
            raise RuntimeError(f"payment of order {order_id} was voided by its refund already")
        return Payment(order_id, row["payment_id"], row["amount"], row["currency"])

    @staticmethod
    async def _lock(conn: asyncpg.Connection, order_id: str) -> None:
        """Capture and refund of one order serialise: a refund either sees the capture, or voids
        the payment first, so a late capture (an attempt Temporal gave up on) takes nothing."""
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('payments:' || $1, 0))", order_id
        )

    async def refund(self, order_id: str) -> Payment | None:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._lock(conn, order_id)
            await conn.execute(
                "INSERT INTO payments.ledger (order_id, kind, amount, currency) "
                "SELECT $1, 'VOID', 0, '' WHERE NOT EXISTS (SELECT 1 FROM payments.ledger "
                "WHERE order_id = $1 AND kind = 'CAPTURE') "
                "ON CONFLICT (order_id, kind) DO NOTHING",
                order_id,
            )
            await conn.execute(
                "INSERT INTO payments.ledger (order_id, kind, amount, currency) "
                "SELECT order_id, 'REFUND', amount, currency FROM payments.ledger "
                "WHERE order_id = $1 AND kind = 'CAPTURE' "
                "ON CONFLICT (order_id, kind) DO NOTHING",
                order_id,
            )
            return await self._find(conn, order_id, "REFUND")


class PostgresShipping:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def schedule(self, order_id: str, address: Address) -> Shipment:
        if address.country.upper() == UNSHIPPABLE_COUNTRY:
            raise ShippingUnavailable(f"no carrier ships to country {address.country}")
        # One statement, so no transaction around it: scheduled now, or the order's shipment as
        # it stands (a retry's, or a void marker its cancel left), locked and read after any
        # concurrent writer of it has committed.
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "INSERT INTO shipping.shipments AS s (order_id, country, status) "
                "VALUES ($1, $2, 'SCHEDULED') "
                "ON CONFLICT (order_id) DO UPDATE SET status = s.status "
                "RETURNING shipment_id::text AS shipment_id, country, status",
                order_id, address.country,
            )  # fmt: skip
        if row["status"] != "SCHEDULED":
            raise RuntimeError(f"shipment of order {order_id} was {row['status']} already")
        return Shipment(order_id, row["shipment_id"], row["country"])

    async def cancel(self, order_id: str) -> Shipment | None:
        async with self._pool.acquire() as conn, conn.transaction():
            # Nothing scheduled: a void marker in its place, so a late scheduling attempt finds
            # it cancelled and ships nothing.
            await conn.execute(
                "INSERT INTO shipping.shipments (order_id, country, status, cancelled_at, "
                "voided) VALUES ($1, '', 'CANCELLED', now(), true) "
                "ON CONFLICT (order_id) DO NOTHING",
                order_id,
            )
            row = await conn.fetchrow(
                "UPDATE shipping.shipments SET status = 'CANCELLED', "
                "cancelled_at = coalesce(cancelled_at, now()) WHERE order_id = $1 "
                "RETURNING shipment_id::text AS shipment_id, country, voided",
                order_id,
            )
        if row["voided"]:
            return None
        return Shipment(order_id, row["shipment_id"], row["country"])
