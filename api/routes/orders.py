"""Order commands (place, cancel, retry a compensation) and queries (read model, event history)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status

from api import requests
from api.deps import AUTH_RESPONSES, AppContext, Ctx, requires
from api.errors import Busy, Conflict, IdempotencyKeyReused, InvalidInput, NotFound
from api.progress import TooManyWaits
from api.schemas import (
    CancelIn,
    OrderAccepted,
    OrderIn,
    OrderOut,
    OrderPage,
    SagaStateOut,
)
from ordersaga import events
from ordersaga.bounds import CUSTOMER_ID_INPUT_PATTERN
from ordersaga.domain import (
    Address,
    Order,
    OrderItem,
    OrderStatus,
    SagaNotFound,
    SagaState,
    SagaUnavailable,
    workflow_id,
)
from ordersaga.keys import Role
from projections import queries

router = APIRouter(
    prefix="/orders",
    tags=["orders"],
    dependencies=[requires(Role.CLIENT)],
    responses=AUTH_RESPONSES,
)

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
    order_id, stored_hash, new = await requests.claim_request(
        ctx.pool, str(uuid.uuid4()), idempotency_key, request_hash, body.customer_id, raw
    )
    if stored_hash != request_hash:
        raise IdempotencyKeyReused("this Idempotency-Key was used for a different request body")
    response.headers["Location"] = f"/orders/{order_id}"
    try:
        await ctx.sagas.start(_to_domain(order_id, body), ctx.settings.saga)
    except SagaUnavailable:
        # A start that timed out may have started the saga all the same. With an
        # Idempotency-Key the request is kept: a retry with the key is this order, and either
        # starts its saga or finds it running, never a second one that would charge twice.
        # Without a key no retry can find it, so it is forgotten unless the saga did start.
        started = await ctx.sagas.exists(order_id)
        if new and idempotency_key is None and started is not True:
            await requests.forget_request(ctx.engine, order_id)
        if started is not True:
            raise
    if not new:
        response.headers["Idempotent-Replayed"] = "true"
        current = await _order(ctx, order_id)
        return _accepted(
            order_id, OrderStatus(current["status"]) if current else OrderStatus.PENDING
        )
    return _accepted(order_id, OrderStatus.PENDING)


@router.get("")
async def list_orders(
    ctx: Ctx,
    customer_id: Annotated[str | None, Query(pattern=CUSTOMER_ID_INPUT_PATTERN)] = None,
    status_: Annotated[OrderStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=queries.CURSOR_PATTERN, description="`next_cursor` of the page before."),
    ] = None,
) -> OrderPage:
    """Orders from the read model, newest first; pass `next_cursor` back for the next page."""
    try:
        page = await queries.list_orders(ctx.engine, customer_id, status_, limit, cursor)
    except queries.InvalidCursor as error:
        raise InvalidInput(str(error)) from error
    return OrderPage(items=[OrderOut(**r) for r in page.rows], next_cursor=page.next_cursor)


async def _order(ctx: AppContext, order_id: str) -> dict[str, Any] | None:
    """The read model's row; before the projector has the order, the accepted request."""
    return await queries.get_order(ctx.pool, order_id) or await requests.pending_order(
        ctx.engine, order_id
    )


STALE_HEADER = "Read-Model-Stale"
VERSION_HEADER = "Read-Model-Version"
# With a stale answer: the order's read model waits behind a dead letter, so waiting longer will
# not help until an operator acts (`ordersaga deadletters`).
BLOCKED_HEADER = "Read-Model-Blocked"


@router.get(
    "/{order_id}",
    responses={
        404: {"description": "unknown order"},
        503: {"description": "too many min_version waits at once: retry after Retry-After"},
    },
)
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
            f"`{STALE_HEADER}: true` (and `{BLOCKED_HEADER}: true` when the order waits behind "
            "a dead letter of the read model).",
        ),
    ] = None,
) -> OrderOut:
    """The order read model (PENDING with version 0 until the projector has its first event)."""
    oid = str(order_id)
    async with contextlib.AsyncExitStack() as stack:
        # With min_version, the order's changes are watched before the first read, so that a
        # commit between that read and the wait is not missed.
        changes = None
        if min_version is not None:
            changes = await stack.enter_async_context(ctx.watch.watching("orders", oid))
        found = await _order(ctx, oid)
        if found is None:
            raise NotFound(f"order {order_id} not found")
        row: dict[str, Any] = found
        if changes is not None and min_version is not None and row["version"] < min_version:
            wanted = min_version

            async def reached() -> bool:
                nonlocal row
                row = await _order(ctx, oid) or row
                return int(row["version"]) >= wanted

            try:
                await changes.wait_for(reached, ctx.settings.api.min_version_timeout)
            except TooManyWaits as error:
                raise Busy(str(error)) from error
            # Judged on the row answered, so the two headers never disagree.
            if row["version"] < wanted:
                response.headers[STALE_HEADER] = "true"
                if await queries.dead_lettered(ctx.engine, "orders", oid):
                    response.headers[BLOCKED_HEADER] = "true"
    response.headers[VERSION_HEADER] = str(row["version"])
    return OrderOut(**row)


@router.get("/{order_id}/events", responses={404: {"description": "unknown order"}})
async def get_events(order_id: uuid.UUID, ctx: Ctx) -> list[dict[str, Any]]:
    """The order's stream from the event store, in version order, as CloudEvents."""
    stored = await ctx.store.read_stream(str(order_id))
    if not stored and not await requests.request_exists(ctx.engine, str(order_id)):
        raise NotFound(f"order {order_id} not found")
    return [events.to_cloudevent(e) for e in stored]


@router.get(
    "/{order_id}/saga",
    responses={404: {"description": "unknown order"}, 503: {"description": "no worker answered"}},
)
async def saga_state(order_id: uuid.UUID, ctx: Ctx) -> SagaStateOut:
    """Live status from the workflow itself (ahead of the read model; needs a running worker)."""
    await _known(ctx, str(order_id))
    try:
        state = await ctx.sagas.status(str(order_id))
    except SagaNotFound as error:
        raise SagaUnavailable(str(error)) from error
    return SagaStateOut(**vars(state))


async def _known(ctx: AppContext, order_id: str) -> None:
    if not await requests.request_exists(ctx.engine, order_id):
        raise NotFound(f"order {order_id} not found")


async def _ended(ctx: AppContext, order_id: str) -> Conflict:
    row = await _order(ctx, order_id)
    return Conflict(f"the saga of this order has ended: it is {row['status'] if row else 'gone'}")


@router.post(
    "/{order_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"description": "unknown order"}, 409: {"description": "not cancellable"}},
)
async def cancel_order(order_id: uuid.UUID, ctx: Ctx, body: CancelIn | None = None) -> SagaStateOut:
    """Cancel before confirmation: whatever the saga did is compensated, in reverse order."""
    reason = body.reason if body and body.reason else "customer_request"
    await _known(ctx, str(order_id))
    try:
        state: SagaState = await ctx.sagas.cancel(str(order_id), reason)
    except SagaNotFound as error:
        raise await _ended(ctx, str(order_id)) from error
    return SagaStateOut(**vars(state))


@router.post(
    "/{order_id}/retry-compensation",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[requires(Role.OPERATOR)],
    responses={404: {"description": "unknown order"}, 409: {"description": "nothing to retry"}},
)
async def retry_compensation(order_id: uuid.UUID, ctx: Ctx) -> SagaStateOut:
    """Operator action for a REQUIRES_ATTENTION order: try its failed compensation again."""
    await _known(ctx, str(order_id))
    try:
        state = await ctx.sagas.retry_compensation(str(order_id))
    except SagaNotFound as error:
        raise await _ended(ctx, str(order_id)) from error
    return SagaStateOut(**vars(state))
