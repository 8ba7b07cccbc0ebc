"""Domain vocabulary shared by workflows, activities, projections and the API.

Standard library and temporalio's own types only: the workflow sandbox imports this module, and
workflows import nothing else of the kernel. Money is an integer number of minor units (cents),
so sums are exact.

No `from __future__ import annotations` here: Temporal's converter resolves a dataclass's type
hints each time it decodes one (activity inputs, results, the saga's input), and string
annotations cost an `eval` per field on every call, three times the decode of real ones.
"""

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from temporalio.common import SearchAttributeKey


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    INVENTORY_RESERVED = "INVENTORY_RESERVED"
    PAYMENT_CAPTURED = "PAYMENT_CAPTURED"
    CONFIRMED = "CONFIRMED"
    COMPENSATING = "COMPENSATING"
    CANCELLED = "CANCELLED"
    REQUIRES_ATTENTION = "REQUIRES_ATTENTION"


# Search attributes of every saga, so that the Temporal Web UI and `temporal workflow list` filter
# by customer and status. The worker registers them; the embedded server starts with them.
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
SEARCH_ATTRIBUTES = (CUSTOMER_ID, ORDER_STATUS)


class EventType(StrEnum):
    PLACED = "order.placed"
    INVENTORY_RESERVED = "order.inventory_reserved"
    PAYMENT_CAPTURED = "order.payment_captured"
    SHIPMENT_SCHEDULED = "order.shipment_scheduled"
    CONFIRMED = "order.confirmed"
    INVENTORY_RESERVATION_FAILED = "order.inventory_reservation_failed"
    PAYMENT_DECLINED = "order.payment_declined"
    SHIPMENT_FAILED = "order.shipment_failed"
    SHIPMENT_CANCELLED = "order.shipment_cancelled"
    PAYMENT_REFUNDED = "order.payment_refunded"
    INVENTORY_RELEASED = "order.inventory_released"
    CANCELLED = "order.cancelled"
    REQUIRES_ATTENTION = "order.requires_attention"

    @property
    def short_name(self) -> str:
        """The last token of the NATS subject: `orders.<id>.<short_name>`."""
        return self.value.removeprefix("order.")


class CancelReason(StrEnum):
    OUT_OF_STOCK = "out_of_stock"
    PAYMENT_DECLINED = "payment_declined"
    SHIPPING_UNAVAILABLE = "shipping_unavailable"
    CUSTOMER_REQUEST = "customer_request"
    STEP_FAILED = "step_failed"


class Step(StrEnum):
    """Forward steps, in saga order; each has one compensation."""

    INVENTORY = "inventory"
    PAYMENT = "payment"
    SHIPPING = "shipping"


# Business failures: raised by participants, turned into non-retryable ApplicationErrors whose
# `type` is the class name, so the workflow can tell them from transient trouble.
class BusinessError(Exception):
    reason: CancelReason = CancelReason.STEP_FAILED


class OutOfStock(BusinessError):
    reason = CancelReason.OUT_OF_STOCK


class PaymentDeclined(BusinessError):
    reason = CancelReason.PAYMENT_DECLINED


class ShippingUnavailable(BusinessError):
    reason = CancelReason.SHIPPING_UNAVAILABLE


BUSINESS_ERRORS: dict[str, type[BusinessError]] = {
    cls.__name__: cls for cls in (OutOfStock, PaymentDeclined, ShippingUnavailable)
}


# What the saga client (`workflows.client.SagaClient`) raises, whatever Temporal said: the API
# maps these to HTTP in one handler, the CLI to one line and an exit code.
class SagaError(Exception):
    """A command or query to a saga did not go through."""


class SagaNotFound(SagaError):
    """No saga runs under this order's workflow id (it never started, or it has ended)."""


class SagaRefused(SagaError):
    """The saga refused the command in its present state (cancel after confirmation, ...)."""


class SagaUnavailable(SagaError):
    """Temporal or the worker did not answer in time: try again."""


# Limits of what an order may hold, chosen so that every column and sum downstream carries it:
# stock and quantities are Postgres integers (int32), money is bigint (int64) and JSON numbers
# stay below 2**53, so JavaScript consumers read them exactly.
MAX_QUANTITY = 10_000  # units of one line
MAX_ITEMS = 100  # lines of one order (so at most 1,000,000 units of a SKU in one reservation)
MAX_UNIT_PRICE = 1_000_000_000  # minor units: ten million of a currency's major unit
MAX_ORDER_TOTAL = 1_000_000_000_000  # minor units, per order
MAX_STOCK = 1_000_000_000  # available units of a SKU (available + reserved stay below 2**31)


@dataclass(frozen=True)
class OrderItem:
    sku: str
    quantity: int
    unit_price: int


@dataclass(frozen=True)
class Address:
    name: str
    line1: str
    city: str
    postal_code: str
    country: str
    line2: str | None = None


@dataclass(frozen=True)
class Order:
    order_id: str
    customer_id: str
    items: list[OrderItem]
    shipping_address: Address
    payment_token: str
    currency: str = "EUR"

    @property
    def total(self) -> int:
        return sum(item.quantity * item.unit_price for item in self.items)


@dataclass(frozen=True)
class SagaPolicy:
    """The saga's retry policy: the `saga` section of the settings, and part of each workflow's
    input, so a saga keeps the policy it started with (and tests can shorten it).

    Retry budgets are time budgets: an outage of any server within the budget only delays a
    step; only a participant's answer decides it. Past the budget the step's outcome is unknown
    and it is compensated; a compensation past its budget makes the order REQUIRES_ATTENTION.
    """

    step_budget_s: float = 3600.0
    compensation_budget_s: float = 3600.0
    initial_interval_s: float = 1.0
    max_interval_s: float = 30.0
    # Also how long a worker that died mid-activity holds the activity before a retry elsewhere.
    activity_timeout_s: float = 10.0
    # Optional caps on attempts (0: none, the budget alone bounds the retries). Sagas started
    # before the budgets existed carry their counts here, and keep them.
    step_max_attempts: int = 0
    compensation_max_attempts: int = 0


# The revision of the saga's behaviour that new sagas start with (`SagaInput.revision`).
SAGA_REVISION = 3


@dataclass(frozen=True)
class SagaInput:
    """A saga's input: the order, its policy, and the revision of the workflow's behaviour it
    keeps for life.

    `revision` keys a change that would alter the history of sagas already running, where
    `workflow.patched` would cost each saga a marker and a `TemporalChangeVersion` upsert (a
    visibility write) on the server. Sagas started before the field existed read as 1.
    1: the `OrderStatus` search attribute is upserted at every status change.
    2: not at a step's progress (INVENTORY_RESERVED, PAYMENT_CAPTURED): the search attribute
    holds PENDING, then COMPENSATING, REQUIRES_ATTENTION or the outcome.
    3: `order.placed` is recorded by the first step's activity (`StepInput.placed`), just before
    it calls the inventory, not by a local activity of its own: one activity execution and one
    workflow activation less per saga on the worker, one marker less in the history. A saga that
    ends before that activity recorded it records it as before, first.
    """

    order: Order
    policy: SagaPolicy = field(default_factory=SagaPolicy)
    revision: int = 1


@dataclass(frozen=True)
class StepInput:
    """One participant call plus the event that records its outcome at `expected_version + 1`.

    `placed`: record `order.placed` at `expected_version + 1` first, and the outcome after it
    (the saga's first step, from revision 3 on; every forward step honours it, compensations
    never get it)."""

    order: Order
    expected_version: int
    placed: bool = False


@dataclass(frozen=True)
class StepResult:
    version: int


@dataclass(frozen=True)
class RecordInput:
    """An event the workflow itself decides (placed, confirmed, cancelled, requires_attention)."""

    order_id: str
    expected_version: int
    event_type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class SagaState:
    """What the `status` query returns: the workflow's own view, ahead of the read model."""

    order_id: str
    status: OrderStatus
    version: int
    reason: str | None
    completed_steps: list[str]
    cancel_requested: bool
    attention_error: str | None


_EVENT_NAMESPACE = uuid.UUID("8f0c4d1e-5b7a-4c39-9a51-2f6e0d3b7a10")


def event_id(stream_id: str, version: int, event_type: str) -> str:
    """Deterministic id of the event at `version` of a stream: a retried append reuses it."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, f"{stream_id}/{version}/{event_type}"))


def workflow_id(order_id: str) -> str:
    return f"order-{order_id}"
