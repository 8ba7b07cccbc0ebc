"""The saga's participants as the rest of the system sees them: small Protocols and the values they
return. The Postgres implementations live in `activities/participants.py`; a real HTTP participant
can replace one without anything else changing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ordersaga.domain import Address, OrderItem


class TransientParticipantError(Exception):
    """A failure worth retrying (timeouts, a provider's 5xx)."""


@dataclass(frozen=True)
class Reservation:
    order_id: str
    lines: dict[str, int]


@dataclass(frozen=True)
class Payment:
    order_id: str
    payment_id: str
    amount: int
    currency: str


@dataclass(frozen=True)
class Shipment:
    order_id: str
    shipment_id: str
    country: str


class Inventory(Protocol):
    async def reserve(self, order_id: str, items: list[OrderItem]) -> Reservation: ...
    async def release(self, order_id: str) -> Reservation | None: ...
    # The stock itself, for operators (the API's `/inventory` routes).
    async def set_stock(self, sku: str, available: int) -> dict[str, Any]: ...
    async def get_stock(self, sku: str) -> dict[str, Any] | None: ...


class Payments(Protocol):
    async def capture(self, order_id: str, token: str, amount: int, currency: str) -> Payment: ...
    async def refund(self, order_id: str) -> Payment | None: ...


class Shipping(Protocol):
    async def schedule(self, order_id: str, address: Address) -> Shipment: ...
    async def cancel(self, order_id: str) -> Shipment | None: ...
