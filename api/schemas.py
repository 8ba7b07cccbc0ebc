"""Request and response models (separate from the tables). Unknown fields are rejected."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ordersaga.bounds import (
    MAX_ITEMS,
    MAX_ORDER_TOTAL,
    AddressLine,
    City,
    CountryCode,
    CurrencyCode,
    CustomerIdInput,
    Name,
    PostalCode,
    Quantity,
    Sku,
    Stock,
    Storable,
    UnitPrice,
)
from ordersaga.domain import OrderStatus

# The order's own text types are the kernel's (`ordersaga.bounds`): the events carry the same.
Token = Annotated[str, Field(min_length=1, max_length=100), Storable]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemIn(Strict):
    sku: Sku
    quantity: Quantity
    unit_price: UnitPrice


class AddressIn(Strict):
    name: Name
    line1: Name
    line2: AddressLine = None
    city: City
    postal_code: PostalCode
    country: CountryCode


class PaymentIn(Strict):
    token: Token


class OrderIn(Strict):
    customer_id: CustomerIdInput
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS)
    shipping_address: AddressIn
    payment: PaymentIn
    currency: CurrencyCode = "EUR"

    @field_validator("items")
    @classmethod
    def _total_fits(cls, items: list[ItemIn]) -> list[ItemIn]:
        total = sum(i.quantity * i.unit_price for i in items)
        if total > MAX_ORDER_TOTAL:
            raise ValueError(
                f"the order's total ({total} minor units) is above the most one order may hold "
                f"({MAX_ORDER_TOTAL})"
            )
        return items


class CancelIn(Strict):
    reason: Annotated[str | None, Field(max_length=500), Storable] = None


class StockIn(Strict):
    available: Stock


class StockOut(BaseModel):
    sku: str
    available: int
    reserved: int


class TimelineEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: int
    type: str
    at: datetime


class OrderOut(BaseModel):
    order_id: str
    status: OrderStatus
    customer_id: str
    items: list[dict[str, Any]]
    shipping_address: dict[str, Any]
    total: int
    currency: str
    version: int = Field(description="Stream version of the last event the read model applied.")
    failure_reason: str | None
    timeline: list[TimelineEntry]
    placed_at: datetime
    updated_at: datetime


class OrderAccepted(BaseModel):
    order_id: str
    status: OrderStatus
    workflow_id: str
    links: dict[str, str]


class OrderPage(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None


class SagaStateOut(BaseModel):
    order_id: str
    status: OrderStatus
    version: int
    reason: str | None
    completed_steps: list[str]
    cancel_requested: bool
    attention_error: str | None


class CustomerOrderOut(BaseModel):
    order_id: str
    status: OrderStatus
    total: int
    currency: str
    item_count: int
    version: int
    placed_at: datetime
    updated_at: datetime


class CustomerOrderPage(BaseModel):
    customer_id: str
    items: list[CustomerOrderOut]
    next_cursor: str | None


class SalesRow(BaseModel):
    day: date
    sku: str
    currency: str
    orders: int
    units: int
    revenue: int = Field(description="Minor units (cents).")


class SalesTotal(BaseModel):
    sku: str
    currency: str
    orders: int = 0
    units: int = 0
    revenue: int = 0


class SalesReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: date = Field(alias="from")
    to: date
    rows: list[SalesRow]
    totals: list[SalesTotal]
