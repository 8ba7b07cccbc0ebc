"""Order commands (place, cancel, retry a compensation) and queries (read model, event history)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status
from temporalio.client import (
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from ordersaga import events
from ordersaga.api import orders_repo
from ordersaga.api.deps import AppContext, Ctx
from ordersaga.api.errors import (
    Conflict,
    IdempotencyKeyReused,
    InvalidInput,
    NotFound,
    Unavailable,
)
from ordersaga.api.schemas import (
    CancelIn,
    OrderAccepted,
    OrderIn,
    OrderOut,
    OrderPage,
    SagaStateOut,
)
from ordersaga.domain import (
    Address,
    Order,
    OrderItem,
    OrderStatus,
    SagaInput,
    SagaPolicy,
    SagaState,
    workflow_id,
)
from ordersaga.workflows.order_saga import CUSTOMER_ID, ORDER_STATUS

router = APIRouter(prefix="/orders", tags=["orders"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Retries with the same key and body return the same order.",
    ),
]


def _to_domain(order_id: str, body: OrderIn) -> Order:
    return Order(
        order_id=order_id,
        customer_id=body.customer_id,
        items=[OrderItem(i.sku, i.quantity, i.unit_price) for i in body.items],
        shipping_address=Address(**body.shipping_address.model_dump()),
        payment_token=body.payment.token,
        currency=body.currency,
    )


def _accepted(order_id: str, current: OrderStatus) -> OrderAccepted:
    base = f"/orders/{order_id}"
    return OrderAccepted(
        order_id=order_id,
        status=current,
        workflow_id=workflow_id(order_id),
        links={"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"},
    )


async def _start_saga(ctx: AppContext, order: Order) -> None:
    # The policy travels in the workflow input: a saga keeps the policy it started with.
    policy = SagaPolicy(**ctx.settings.saga.model_dump())
    try:
        await ctx.temporal.start_workflow(
            "OrderSaga",
            SagaInput(order, policy),
            id=workflow_id(order.order_id),
            task_queue=ctx.settings.temporal.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(CUSTOMER_ID, order.customer_id),
                    SearchAttributePair(ORDER_STATUS, OrderStatus.PENDING.value),
                ]
            ),
        )
    except WorkflowAlreadyStartedError:
        pass  # a retry of a request whose saga runs already


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "conflict"}, 503: {"description": "Temporal unavailable"}},
)
async def place_order(
    body: OrderIn, response: Response, ctx: Ctx, idempotency_key: IdempotencyKey = None
) -> OrderAccepted:
    """Accept an order and start its saga; poll `GET /orders/{id}` or watch its events."""
    raw = body.model_dump(mode="json")
    request_hash = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
    order_id, stored_hash, new = await orders_repo.claim_request(
        ctx.engine, str(uuid.uuid4()), idempotency_key, request_hash, body.customer_id, raw
    )
    if stored_hash != request_hash:
        raise IdempotencyKeyReused("this Idempotency-Key was used for a different request body")
    response.headers["Location"] = f"/orders/{order_id}"
    try:
        await _start_saga(ctx, _to_domain(order_id, body))
    except RPCError as error:
        if new:
            # Nothing runs for this order: forget it, so it is not shown as PENDING forever.
            await orders_repo.forget_request(ctx.engine, order_id)
        raise Unavailable(f"could not start the saga: {error.message}") from error
    if not new:
        response.headers["Idempotent-Replayed"] = "true"
        current = await orders_repo.get_order(ctx.engine, order_id)
        return _accepted(
            order_id, OrderStatus(current["status"]) if current else OrderStatus.PENDING
        )
    return _accepted(order_id, OrderStatus.PENDING)


@router.get("")
async def list_orders(
    ctx: Ctx,
    customer_id: Annotated[str | None, Query(max_length=64)] = None,
    status_: Annotated[OrderStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> OrderPage:
    """Orders from the read model, newest first; pass `next_cursor` back for the next page."""
    after = None
    if cursor is not None:
        try:
            after = orders_repo.decode_cursor(cursor)
        except ValueError as error:
            raise InvalidInput("cursor is not one this API handed out") from error
    rows, next_cursor = await orders_repo.list_orders(
        ctx.engine, customer_id, status_, limit, after
    )
    return OrderPage(items=[OrderOut(**r) for r in rows], next_cursor=next_cursor)


STALE_HEADER = "Read-Model-Stale"
VERSION_HEADER = "Read-Model-Version"


@router.get("/{order_id}", responses={404: {"description": "unknown order"}})
async def get_order(
    order_id: uuid.UUID,
    ctx: Ctx,
    response: Response,
    min_version: Annotated[
        int | None,
        Query(
            ge=1,
            le=100_000,
            description="Read your writes: wait (bounded) until the read model has applied this "
            "stream version. If the bound passes, the answer is what it has, marked "
            f"`{STALE_HEADER}: true`.",
        ),
    ] = None,
) -> OrderOut:
    """The order read model (PENDING with version 0 until the projector has its first event)."""
    found = await orders_repo.get_order(ctx.engine, str(order_id))
    if found is None:
        raise NotFound(f"order {order_id} not found")
    row: dict[str, Any] = found
    if min_version is not None and row["version"] < min_version:

        async def reached() -> bool:
            nonlocal row
            row = await orders_repo.get_order(ctx.engine, str(order_id)) or row
            return bool(row["version"] >= min_version)

        if not await ctx.watch.wait_for("orders", reached, ctx.settings.api.min_version_timeout):
            response.headers[STALE_HEADER] = "true"
    response.headers[VERSION_HEADER] = str(row["version"])
    return OrderOut(**row)


@router.get("/{order_id}/events", responses={404: {"description": "unknown order"}})
async def get_events(order_id: uuid.UUID, ctx: Ctx) -> list[dict[str, Any]]:
    """The order's stream from the event store, in version order, as CloudEvents."""
    stored = await ctx.store.read_stream(str(order_id))
    if not stored and not await orders_repo.request_exists(ctx.engine, str(order_id)):
        raise NotFound(f"order {order_id} not found")
    return [events.to_cloudevent(e) for e in stored]


@router.get(
    "/{order_id}/saga",
    responses={404: {"description": "unknown order"}, 503: {"description": "no worker answered"}},
)
async def saga_state(order_id: uuid.UUID, ctx: Ctx) -> SagaStateOut:
    """Live status from the workflow itself (ahead of the read model; needs a running worker)."""
    if not await orders_repo.request_exists(ctx.engine, str(order_id)):
        raise NotFound(f"order {order_id} not found")
    handle = ctx.temporal.get_workflow_handle(workflow_id(str(order_id)))
    try:
        state = await handle.query(
            "status",
            result_type=SagaState,
            rpc_timeout=timedelta(seconds=ctx.settings.api.update_timeout),
        )
    except (RPCError, WorkflowQueryFailedError) as error:
        raise Unavailable(f"the saga did not answer: {error}") from error
    return SagaStateOut(**vars(state))


async def _update(ctx: AppContext, order_id: str, name: str, *args: Any) -> SagaState:
    if not await orders_repo.request_exists(ctx.engine, order_id):
        raise NotFound(f"order {order_id} not found")
    handle = ctx.temporal.get_workflow_handle(workflow_id(order_id))
    try:
        state: SagaState = await handle.execute_update(
            name,
            args=args,
            result_type=SagaState,
            rpc_timeout=timedelta(seconds=ctx.settings.api.update_timeout),
        )
        return state
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(error)
        raise Conflict(message) from error
    except WorkflowUpdateRPCTimeoutOrCancelledError as error:
        raise Unavailable("the saga did not answer in time; try again") from error
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            row = await orders_repo.get_order(ctx.engine, order_id)
            current = row["status"] if row else "finished"
            raise Conflict(f"the saga of this order has ended: it is {current}") from error
        raise Unavailable(f"Temporal: {error.message}") from error


@router.post(
    "/{order_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"description": "unknown order"}, 409: {"description": "not cancellable"}},
)
async def cancel_order(order_id: uuid.UUID, ctx: Ctx, body: CancelIn | None = None) -> SagaStateOut:
    """Cancel before confirmation: whatever the saga did is compensated, in reverse order."""
    reason = body.reason if body and body.reason else "customer_request"
    state = await _update(ctx, str(order_id), "cancel", reason)
    return SagaStateOut(**vars(state))


@router.post(
    "/{order_id}/retry-compensation",
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"description": "unknown order"}, 409: {"description": "nothing to retry"}},
)
async def retry_compensation(order_id: uuid.UUID, ctx: Ctx) -> SagaStateOut:
    """Operator action for a REQUIRES_ATTENTION order: try its failed compensation again."""
    state = await _update(ctx, str(order_id), "retry_compensation")
    return SagaStateOut(**vars(state))
