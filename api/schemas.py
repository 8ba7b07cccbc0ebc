"""Request and response models (separate from the tables). Unknown fields are rejected."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ordersaga.domain import OrderStatus

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemIn(Strict):
    sku: Sku
    quantity: int = Field(gt=0, le=10_000)
    unit_price: int = Field(ge=0, description="Price of one unit in minor units (cents).")


class AddressIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    line1: str = Field(min_length=1, max_length=200)
    line2: str | None = Field(default=None, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 code.")


class PaymentIn(Strict):
    token: str = Field(min_length=1, max_length=100)


class OrderIn(Strict):
    customer_id: str = Field(min_length=1, max_length=64)
    items: list[ItemIn] = Field(min_length=1, max_length=100)
    shipping_address: AddressIn
    payment: PaymentIn
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")


class CancelIn(Strict):
    reason: str | None = Field(default=None, max_length=500)


class StockIn(Strict):
    available: int = Field(ge=0)


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
