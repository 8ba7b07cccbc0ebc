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

# What `inventory.reserve` raises (migration 0008): a SKU short of stock, or a retry that finds
# the order's reservation released already.
_SHORTAGE = "OSI01"
_NOT_RESERVED = "OSR01"


def _raised(error: sa.exc.DBAPIError) -> str | None:
    """The SQLSTATE a database function raised."""
    return getattr(error.orig, "sqlstate", None)


def _message(error: sa.exc.DBAPIError) -> str:
    """The message a database function raised, without the driver's prefix."""
    cause = error.orig.__cause__ if error.orig is not None else None
    return str(getattr(cause, "message", None) or cause or error.orig)


class PostgresInventory:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

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
        # One call, atomic (`inventory.reserve`, migration 0008): the reservation row first, so a
        # concurrent retry of the order waits on it and then finds it; then each SKU, in sorted
        # order; a shortage raises and takes nothing. No transaction around it: one round trip.
        try:
            async with self._autocommit.connect() as conn:
                lines = (
                    await conn.execute(
                        sa.text("SELECT inventory.reserve(:o, CAST(:l AS jsonb))"),
                        {"o": order_id, "l": json.dumps(dict(wanted))},
                    )
                ).scalar_one()
        except sa.exc.DBAPIError as error:
            raised = _raised(error)
            if raised == _SHORTAGE:
                raise OutOfStock(_message(error)) from None
            if raised == _NOT_RESERVED:
                raise RuntimeError(_message(error)) from None
            raise
        return Reservation(order_id, dict(lines))

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
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

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
        # One call (`payments.capture`, migration 0008) under the order's payment lock: captured
        # once (a retry finds the capture and takes nothing more); a payment its refund voided
        # first is not captured at all.
        async with self._autocommit.connect() as conn:
            row = (
                await conn.execute(
                    sa.text("SELECT * FROM payments.capture(:o, :a, :c)"),
                    {"o": order_id, "a": amount, "c": currency},
                )
            ).one_or_none()
        if row is None:
            raise RuntimeError(f"payment of order {order_id} was voided by its refund already")
        return Payment(order_id, row.payment_id, row.amount, row.currency)

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
