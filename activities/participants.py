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

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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


class PostgresInventory:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def set_stock(self, sku: str, available: int) -> dict[str, Any]:
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.text(
                        "INSERT INTO inventory.stock (sku, available) VALUES (:sku, :a) "
                        "ON CONFLICT (sku) DO UPDATE SET available = :a, updated_at = now() "
                        "RETURNING sku, available, reserved"
                    ),
                    {"sku": sku, "a": available},
                )
            ).one()
        return dict(row._mapping)

    async def get_stock(self, sku: str) -> dict[str, Any] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.text("SELECT sku, available, reserved FROM inventory.stock WHERE sku = :s"),
                    {"s": sku},
                )
            ).one_or_none()
        return None if row is None else dict(row._mapping)

    async def reserve(self, order_id: str, items: list[OrderItem]) -> Reservation:
        wanted = Counter[str]()
        for item in items:
            wanted[item.sku] += item.quantity
        async with self._engine.begin() as conn:
            # The reservation row goes first: a concurrent retry for the same order waits on it
            # and then finds it, instead of taking the stock a second time.
            inserted = (
                await conn.execute(
                    sa.text(
                        "INSERT INTO inventory.reservations (order_id, lines, status) "
                        "VALUES (:o, CAST(:l AS jsonb), 'RESERVED') "
                        "ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
                    ),
                    {"o": order_id, "l": json.dumps(dict(wanted))},
                )
            ).one_or_none()
            if inserted is None:
                return await self._existing(conn, order_id)
            # Sorted, so two orders touching the same SKUs lock them in the same order.
            for sku in sorted(wanted):
                taken = (
                    await conn.execute(
                        sa.text(
                            "UPDATE inventory.stock SET available = available - :q, "
                            "reserved = reserved + :q, updated_at = now() "
                            "WHERE sku = :s AND available >= :q RETURNING sku"
                        ),
                        {"s": sku, "q": wanted[sku]},
                    )
                ).one_or_none()
                if taken is None:
                    have = (
                        await conn.execute(
                            sa.text("SELECT available FROM inventory.stock WHERE sku = :s"),
                            {"s": sku},
                        )
                    ).scalar_one_or_none()
                    raise OutOfStock(f"sku {sku}: {wanted[sku]} requested, {have or 0} available")
        return Reservation(order_id, dict(wanted))

    async def _existing(self, conn: AsyncConnection, order_id: str) -> Reservation:
        row = (
            await conn.execute(
                sa.text("SELECT lines, status FROM inventory.reservations WHERE order_id = :o"),
                {"o": order_id},
            )
        ).one()
        if row.status != "RESERVED":
            raise RuntimeError(f"reservation of order {order_id} was {row.status} already")
        return Reservation(order_id, dict(row.lines))

    async def release(self, order_id: str) -> Reservation | None:
        async with self._engine.begin() as conn:
            # Nothing reserved: leave a void marker in its place, so a late reservation (an
            # attempt Temporal gave up on, still running) finds it and takes no stock after this.
            voided = (
                await conn.execute(
                    sa.text(
                        "INSERT INTO inventory.reservations "
                        "(order_id, lines, status, released_at, voided) "
                        "VALUES (:o, '{}', 'RELEASED', now(), true) "
                        "ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
                    ),
                    {"o": order_id},
                )
            ).one_or_none()
            if voided is not None:
                return None
            row = (
                await conn.execute(
                    sa.text(
                        "UPDATE inventory.reservations SET status = 'RELEASED', "
                        "released_at = now() WHERE order_id = :o AND status = 'RESERVED' "
                        "RETURNING lines"
                    ),
                    {"o": order_id},
                )
            ).one_or_none()
            if row is None:
                # Released before (a retry), or never reserved: nothing is held either way.
                released = (
                    await conn.execute(
                        sa.text(
                            "SELECT lines FROM inventory.reservations "
                            "WHERE order_id = :o AND status = 'RELEASED' AND NOT voided"
                        ),
                        {"o": order_id},
                    )
                ).scalar_one_or_none()
                return None if released is None else Reservation(order_id, dict(released))
            lines: dict[str, int] = dict(row.lines)
            for sku in sorted(lines):
                await conn.execute(
                    sa.text(
                        "UPDATE inventory.stock SET available = available + :q, "
                        "reserved = reserved - :q, updated_at = now() WHERE sku = :s"
                    ),
                    {"s": sku, "q": lines[sku]},
                )
        return Reservation(order_id, lines)


class PostgresPayments:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def _find(self, conn: AsyncConnection, order_id: str, kind: str) -> Payment | None:
        row = (
            await conn.execute(
                sa.text(
                    "SELECT payment_id::text AS payment_id, amount, currency "
                    "FROM payments.ledger WHERE order_id = :o AND kind = :k"
                ),
                {"o": order_id, "k": kind},
            )
        ).one_or_none()
        return None if row is None else Payment(order_id, row.payment_id, row.amount, row.currency)

    async def capture(self, order_id: str, token: str, amount: int, currency: str) -> Payment:
        if token in (TOKEN_DECLINE, TOKEN_FLAKY):
            # The test tokens' rules apply to a payment not captured yet.
            async with self._engine.begin() as conn:
                done = await self._find(conn, order_id, "CAPTURE")
            if done is not None:
                return done
        if token == TOKEN_DECLINE:
            raise PaymentDeclined(f"card declined (test token {TOKEN_DECLINE})")
        if token == TOKEN_FLAKY:
            async with self._engine.begin() as conn:
                attempt = (
                    await conn.execute(
                        sa.text(
                            "INSERT INTO payments.attempts (order_id, attempts) VALUES (:o, 1) "
                            "ON CONFLICT (order_id) DO UPDATE "
                            "SET attempts = payments.attempts.attempts + 1 RETURNING attempts"
                        ),
                        {"o": order_id},
                    )
                ).scalar_one()
            if attempt <= FLAKY_FAILURES:
                raise TransientParticipantError(
                    f"payment provider timed out (test token {TOKEN_FLAKY}, attempt {attempt})"
                )
        async with self._engine.begin() as conn:
            await self._lock(conn, order_id)
            # Captured once: a retry finds the capture (ON CONFLICT) and takes nothing more; a
            # payment its refund voided first is not captured at all.
            await conn.execute(
                sa.text(
                    "INSERT INTO payments.ledger (order_id, kind, amount, currency) "
                    "SELECT :o, 'CAPTURE', :a, :c WHERE NOT EXISTS (SELECT 1 FROM payments.ledger "
                    "WHERE order_id = :o AND kind = 'VOID') "
                    "ON CONFLICT (order_id, kind) DO NOTHING"
                ),
                {"o": order_id, "a": amount, "c": currency},
            )
            captured = await self._find(conn, order_id, "CAPTURE")
        if captured is None:
            raise RuntimeError(f"payment of order {order_id} was voided by its refund already")
        return captured

    @staticmethod
    async def _lock(conn: AsyncConnection, order_id: str) -> None:
        """Capture and refund of one order serialise: a refund either sees the capture, or voids
        the payment first, so a late capture (an attempt Temporal gave up on) takes nothing."""
        await conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended('payments:' || :o, 0))"),
            {"o": order_id},
        )

    async def refund(self, order_id: str) -> Payment | None:
        async with self._engine.begin() as conn:
            await self._lock(conn, order_id)
            await conn.execute(
                sa.text(
                    "INSERT INTO payments.ledger (order_id, kind, amount, currency) "
                    "SELECT :o, 'VOID', 0, '' WHERE NOT EXISTS (SELECT 1 FROM payments.ledger "
                    "WHERE order_id = :o AND kind = 'CAPTURE') "
                    "ON CONFLICT (order_id, kind) DO NOTHING"
                ),
                {"o": order_id},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO payments.ledger (order_id, kind, amount, currency) "
                    "SELECT order_id, 'REFUND', amount, currency FROM payments.ledger "
                    "WHERE order_id = :o AND kind = 'CAPTURE' "
                    "ON CONFLICT (order_id, kind) DO NOTHING"
                ),
                {"o": order_id},
            )
            return await self._find(conn, order_id, "REFUND")


class PostgresShipping:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def schedule(self, order_id: str, address: Address) -> Shipment:
        if address.country.upper() == UNSHIPPABLE_COUNTRY:
            raise ShippingUnavailable(f"no carrier ships to country {address.country}")
        # One statement, so no transaction around it: scheduled now, or the order's shipment as
        # it stands (a retry's, or a void marker its cancel left), locked and read after any
        # concurrent writer of it has committed.
        async with self._autocommit.connect() as conn:
            row = (
                await conn.execute(
                    sa.text(
                        "INSERT INTO shipping.shipments AS s (order_id, country, status) "
                        "VALUES (:o, :c, 'SCHEDULED') "
                        "ON CONFLICT (order_id) DO UPDATE SET status = s.status "
                        "RETURNING shipment_id::text AS shipment_id, country, status"
                    ),
                    {"o": order_id, "c": address.country},
                )
            ).one()
        if row.status != "SCHEDULED":
            raise RuntimeError(f"shipment of order {order_id} was {row.status} already")
        return Shipment(order_id, row.shipment_id, row.country)

    async def cancel(self, order_id: str) -> Shipment | None:
        async with self._engine.begin() as conn:
            # Nothing scheduled: a void marker in its place, so a late scheduling attempt finds
            # it cancelled and ships nothing.
            await conn.execute(
                sa.text(
                    "INSERT INTO shipping.shipments (order_id, country, status, cancelled_at, "
                    "voided) VALUES (:o, '', 'CANCELLED', now(), true) "
                    "ON CONFLICT (order_id) DO NOTHING"
                ),
                {"o": order_id},
            )
            row = (
                await conn.execute(
                    sa.text(
                        "UPDATE shipping.shipments SET status = 'CANCELLED', "
                        "cancelled_at = coalesce(cancelled_at, now()) WHERE order_id = :o "
                        "RETURNING shipment_id::text AS shipment_id, country, voided"
                    ),
                    {"o": order_id},
                )
            ).one()
        return None if row.voided else Shipment(order_id, row.shipment_id, row.country)
