"""The order saga: reserve inventory -> capture payment -> schedule shipment, or compensate."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from ordersaga.contracts import payloads
    from ordersaga.contracts.payloads import Compensation, Payload
    from ordersaga.domain import (
        BUSINESS_ERRORS,
        ORDER_STATUS,
        CancelReason,
        Order,
        OrderStatus,
        RecordInput,
        SagaInput,
        SagaPolicy,
        SagaState,
        Step,
        StepInput,
        StepResult,
    )

# Activity names are verbs, so the Temporal Web UI tells the story of each saga.
FORWARD = {
    Step.INVENTORY: "reserve_inventory",
    Step.PAYMENT: "capture_payment",
    Step.SHIPPING: "schedule_shipment",
}
COMPENSATE: dict[Step, Compensation] = {
    Step.INVENTORY: "release_inventory",
    Step.PAYMENT: "refund_payment",
    Step.SHIPPING: "cancel_shipment",
}
STATUS_AFTER = {
    Step.INVENTORY: OrderStatus.INVENTORY_RESERVED,
    Step.PAYMENT: OrderStatus.PAYMENT_CAPTURED,
    Step.SHIPPING: OrderStatus.PAYMENT_CAPTURED,
}

# A step's progress: the `OrderStatus` search attribute does not follow it from revision 2 on.
# Each upsert is a history event and a visibility write on the Temporal server (bench/saga_e2e.py
# shows the server's CPU per saga); an operator filters on the outcome, on COMPENSATING and on
# REQUIRES_ATTENTION, and sees a step in progress as the pending activity, in the `status` query
# and in the read model.
STEP_STATUSES = frozenset({OrderStatus.INVENTORY_RESERVED, OrderStatus.PAYMENT_CAPTURED})

T = TypeVar("T")


@workflow.defn(name="OrderSaga")
class OrderSaga:
    """One workflow per order (id `order-<order_id>`), the single writer of the order's stream.

    Guarantees:
    - Every step is compensated if the order does not end CONFIRMED, in reverse order, including a
      step whose outcome is unknown (its time budget ran out): compensations are idempotent, and
      one that finds nothing held leaves a void marker, so an attempt of the step that is still
      running (Temporal gave up on it) takes nothing after its undo.
    - A cancel never abandons a running step: the `cancel` update, or a Temporal cancellation of
      the workflow (which arrives as `asyncio.CancelledError`), is noted, the step finishes, and
      then it is compensated.
    - Retries are time budgets (`SagaPolicy`): an outage within the budget only delays a step.
      Compensations that run out of theirs make the order REQUIRES_ATTENTION, and the workflow
      waits for the `retry_compensation` update. It never gives up on a compensation.
    - Each event is recorded at the version the workflow expects, with an id derived from it, so
      replays and activity retries store each fact once (the relay publishes it once); a
      recording that finds the stream ahead of it follows this saga's own facts.
    """

    def __init__(self) -> None:
        self._order_id = ""
        self._status = OrderStatus.PENDING
        self._version = 0
        self._reason: CancelReason | None = None
        self._completed: list[Step] = []
        self._cancel_requested = False
        self._cancel_detail: str | None = None
        self._confirming = False
        self._retry_requested = False
        self._attention_error: str | None = None
        self._policy = SagaPolicy()
        self._revision = 1
        self._placed = False

    @workflow.run
    async def run(self, saga: SagaInput) -> SagaState:
        order = saga.order
        self._order_id = order.order_id
        self._policy = saga.policy
        self._revision = saga.revision
        if self._revision < 3:
            await self._record_placed(order)

        attempted: list[Step] = []
        for step in Step:
            if self._cancel_requested:
                break
            attempted.append(step)
            # From revision 3 the first step's activity records `order.placed` before its call.
            placed = not self._placed
            try:
                p = self._policy
                step_call = self._start(
                    FORWARD[step], order, p.step_budget_s, p.step_max_attempts, placed=placed
                )
                result = await self._shielded(step_call)
            except ActivityError as error:
                refusal = business_refusal(error)
                if refusal is not None:
                    # The participant refused: nothing of this step is held, and its failure
                    # fact is recorded already (after `order.placed`, when the step recorded
                    # that too), at the version the error carries.
                    attempted.pop()
                    self._reason, self._version = refusal
                    self._placed = True
                else:
                    self._reason = CancelReason.STEP_FAILED
                break
            self._placed = True
            self._version = result.version
            self._completed.append(step)
            self._set_status(STATUS_AFTER[step])

        if self._reason is None and self._cancel_requested:
            self._reason = CancelReason.CUSTOMER_REQUEST
        if self._reason is None:
            self._confirming = True
            await self._record(payloads.confirmed(order))
            self._set_status(OrderStatus.CONFIRMED)
            return self.status()

        # Ended before its first step recorded `order.placed` (a cancel came first, or the step
        # ran out of time, maybe after recording it: recording follows the stream then).
        if not self._placed:
            await self._record_placed(order)
        self._set_status(OrderStatus.COMPENSATING)
        for step in reversed(attempted):
            await self._compensate(COMPENSATE[step], order)
        detail = None
        if self._reason == CancelReason.CUSTOMER_REQUEST and self._cancel_detail:
            detail = self._cancel_detail
        await self._record(payloads.cancelled(order.order_id, self._reason, detail))
        self._set_status(OrderStatus.CANCELLED)
        return self.status()

    # -- messages -----------------------------------------------------------------------------

    @workflow.query
    def status(self) -> SagaState:
        return SagaState(
            order_id=self._order_id,
            status=self._status,
            version=self._version,
            reason=self._reason.value if self._reason else None,
            completed_steps=[s.value for s in self._completed],
            cancel_requested=self._cancel_requested,
            attention_error=self._attention_error,
        )

    @workflow.update
    def cancel(self, reason: str) -> SagaState:
        self._cancel_requested = True
        self._cancel_detail = self._cancel_detail or reason
        return self.status()

    @cancel.validator
    def _validate_cancel(self, reason: str) -> None:
        if self._confirming or self._status == OrderStatus.CONFIRMED:
            raise ApplicationError("order is confirmed already", type="NotCancellable")
        if self._reason not in (None, CancelReason.CUSTOMER_REQUEST):
            raise ApplicationError(
                f"order is being cancelled already ({self._reason})", type="NotCancellable"
            )

    @workflow.update
    def retry_compensation(self) -> SagaState:
        self._retry_requested = True
        return self.status()

    @retry_compensation.validator
    def _validate_retry(self) -> None:
        if self._status != OrderStatus.REQUIRES_ATTENTION:
            raise ApplicationError(
                f"order is {self._status}, not REQUIRES_ATTENTION", type="NothingToRetry"
            )

    # -- internals ----------------------------------------------------------------------------

    async def _shielded(self, awaitable: Awaitable[T]) -> T:
        """Await to the end even if the workflow is cancelled meanwhile; note the cancel instead."""
        task = asyncio.ensure_future(awaitable)
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                # CancelledError is a BaseException: `except Exception` would let it skip every
                # compensation. Here it becomes a cancel request handled like the customer's.
                workflow.logger.info("workflow cancellation requested; compensating")
                self._cancel_requested = True
                self._cancel_detail = self._cancel_detail or "workflow cancellation requested"

    def _start(
        self, name: str, order: Order, budget_s: float, max_attempts: int, placed: bool = False
    ) -> Awaitable[StepResult]:
        """Start a participant activity at the current stream version, retried with the saga's
        capped backoff until it answers or its time budget runs out."""
        p = self._policy
        return workflow.start_activity(
            name,
            StepInput(order, self._version, placed),
            result_type=StepResult,
            start_to_close_timeout=timedelta(seconds=p.activity_timeout_s),
            schedule_to_close_timeout=timedelta(seconds=budget_s) if budget_s > 0 else None,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=p.initial_interval_s),
                maximum_interval=timedelta(seconds=p.max_interval_s),
                maximum_attempts=max_attempts,
                # Business refusals are raised non-retryable; naming them here guards the rest.
                non_retryable_error_types=list(BUSINESS_ERRORS),
            ),
        )

    async def _compensate(self, name: Compensation, order: Order) -> None:
        while True:
            try:
                p = self._policy
                undo = self._start(
                    name, order, p.compensation_budget_s, p.compensation_max_attempts
                )
                result = await self._shielded(undo)
            except ActivityError as error:
                cause = str(error.cause or error)
                self._attention_error = f"{name}: {cause}"
                await self._record(payloads.requires_attention(order.order_id, name, cause))
                self._set_status(OrderStatus.REQUIRES_ATTENTION)
                self._retry_requested = False
                await self._shielded(workflow.wait_condition(self._retry_is_requested))
                self._attention_error = None
                self._set_status(OrderStatus.COMPENSATING)
                continue
            self._version = result.version
            return

    def _retry_is_requested(self) -> bool:
        return self._retry_requested

    async def _record_placed(self, order: Order) -> None:
        await self._record(payloads.placed(order))
        self._placed = True

    async def _record(self, payload: Payload) -> None:
        # A local activity: recording rides in the current workflow task, with no extra round
        # trip to the server. It retries until the event store takes the event. The typed
        # payload crosses Temporal as its JSON; the activity validates it before storing.
        request = RecordInput(
            self._order_id, self._version, payload.event_type.value, payload.as_data()
        )
        result = await self._shielded(
            workflow.execute_local_activity(
                "record_event",
                request,
                result_type=StepResult,
                start_to_close_timeout=timedelta(seconds=self._policy.activity_timeout_s),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            )
        )
        self._version = result.version

    def _set_status(self, status: OrderStatus) -> None:
        if status == self._status:
            return  # each upsert is a visibility write on the server: only on a change
        self._status = status
        if self._revision >= 2 and status in STEP_STATUSES:
            return
        workflow.upsert_search_attributes([ORDER_STATUS.value_set(status.value)])


def business_refusal(error: ActivityError) -> tuple[CancelReason, int] | None:
    """(reason, stream version after the recorded failure fact) if a participant refused."""
    cause = error.cause
    if not isinstance(cause, ApplicationError) or cause.type not in BUSINESS_ERRORS:
        return None
    detail: dict[str, Any] = cause.details[0] if cause.details else {}
    return BUSINESS_ERRORS[cause.type].reason, int(detail["version"])
