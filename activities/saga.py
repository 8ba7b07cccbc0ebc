"""The saga's activities: call a participant, then record the outcome as the order's next event.

Activities write to the event store only: the store is the outbox, and the relay
(`ordersaga/relay.py`) publishes every stored event to JetStream. So an activity writes to one
system, and a NATS outage never fails a step.

Every activity is safe to retry as a whole: the participant is idempotent on the order id, and the
event id is derived from (order, version, type), so a second append stores nothing.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from ordersaga import events
from ordersaga.contracts import payloads, registry
from ordersaga.contracts.payloads import (
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    Payload,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    Refusal,
    ShipmentCancelled,
    ShipmentFailed,
    ShipmentScheduled,
    clip,
)
from ordersaga.domain import BusinessError, EventType, RecordInput, StepInput, StepResult
from ordersaga.eventstore import ConcurrencyError, EventIdConflict, EventStore
from ordersaga.participants import Inventory, Payments, Shipping, TransientParticipantError

log = logging.getLogger(__name__)

# A saga records nothing after these.
_FINAL = frozenset({EventType.CONFIRMED, EventType.CANCELLED})


class OrderActivities:
    def __init__(
        self,
        store: EventStore,
        inventory: Inventory,
        payments: Payments,
        shipping: Shipping,
    ) -> None:
        self._store = store
        self._inventory = inventory
        self._payments = payments
        self._shipping = shipping

    async def _record(self, expected_version: int, payload: Payload) -> int:
        """Append `payload` as the order's event after `expected_version`; returns the version it
        is stored at.

        The workflow is the stream's single writer, but it can be behind its stream: a step that
        recorded its fact and then failed (its retries ran out before it could report) leaves the
        workflow at the version before that fact. Such facts are this saga's own, so recording
        follows them instead of fighting them; the same fact with the same payload is this very
        call's, stored already (maybe by an earlier build of this code, at an older schema
        version: facts are compared at the current one). Nothing is ever recorded after the
        saga's final event: an attempt Temporal gave up on, finishing late, is refused (its
        participant call was voided by the compensation that ran meanwhile).
        """
        order_id, event_type = payload.order_id, payload.event_type
        while True:
            version = expected_version + 1
            try:
                await self._store.append(
                    order_id, [events.new_event(order_id, version, payload)], expected_version
                )
                return version
            except EventIdConflict as conflict:
                # The same id is the same (order, version, type): stored by an earlier build of
                # this code in an older schema version, it is still this fact.
                stored = await self._store.read_stream(order_id, version, version)
                if stored and events.payload(stored[0]) == payload:
                    return version
                # A bug to see, not to retry for an hour.
                raise ApplicationError(str(conflict), non_retryable=True) from conflict
            except ConcurrencyError as conflict:
                later = await self._store.read_stream(order_id, expected_version + 1)
                if not later:  # the stream is behind the saga: a bug to see, not to retry
                    raise ApplicationError(str(conflict), non_retryable=True) from conflict
                for event in later:
                    if event.event_type == event_type and events.payload(event) == payload:
                        return event.version
                    if event.event_type in _FINAL:
                        raise ApplicationError(
                            f"order {order_id} has ended ({event.event_type}); "
                            f"not recording {event_type} after it",
                            type="SagaEnded",
                            non_retryable=True,
                        ) from conflict
                log.info(
                    "order %s: the saga was at version %d, its stream at %d; recording %s after",
                    order_id, expected_version, later[-1].version, event_type.short_name,
                )  # fmt: skip
                expected_version = later[-1].version

    async def _failed(
        self, step: StepInput, refusal: type[Refusal], error: BusinessError
    ) -> ApplicationError:
        """Record a business failure, and build the non-retryable error that tells the workflow.

        A refusal is an expected outcome, not a fault: one info line here, and the error is
        BENIGN, so the SDK logs it at debug level without a traceback.
        """
        log.info(
            "order %s: %s (%s)",
            step.order.order_id, refusal.event_type.short_name, error.reason.value,
        )  # fmt: skip
        version = await self._record(
            step.expected_version,
            refusal(order_id=step.order.order_id, reason=error.reason, detail=clip(str(error))),
        )
        return ApplicationError(
            str(error),
            {"version": version, "reason": error.reason.value},
            type=type(error).__name__,
            non_retryable=True,
            category=ApplicationErrorCategory.BENIGN,
        )

    @activity.defn
    async def record_event(self, request: RecordInput) -> StepResult:
        """Record a fact the workflow decided. Its payload crosses Temporal as JSON and is
        validated here, before it is stored: a payload its own contract refuses is a bug, which
        is retried (visibly, in the Temporal UI) until a fixed build records it, rather than
        ending a saga that may hold stock or money."""
        payload = registry.current(request.event_type).model_validate(request.data)
        version = await self._record(request.expected_version, payload)
        return StepResult(version)

    async def _placed_first(self, step: StepInput) -> StepInput:
        """The step at the version after `order.placed`, recorded first when the saga asks
        (`StepInput.placed`, its first step from revision 3), before anything is asked of a
        participant. A retry finds it stored and follows it. Checked against its contract
        first, as `record_event` checks the facts the workflow records."""
        if not step.placed:
            return step
        built = payloads.placed(step.order)
        placed = registry.current(built.event_type).model_validate(built.as_data())
        return replace(step, expected_version=await self._record(step.expected_version, placed))

    @activity.defn
    async def reserve_inventory(self, step: StepInput) -> StepResult:
        step = await self._placed_first(step)
        order = step.order
        try:
            reservation = await self._inventory.reserve(order.order_id, order.items)
        except BusinessError as error:
            raise await self._failed(step, InventoryReservationFailed, error) from error
        reserved = InventoryReserved(order_id=order.order_id, lines=reservation.lines)
        return StepResult(await self._record(step.expected_version, reserved))

    @activity.defn
    async def capture_payment(self, step: StepInput) -> StepResult:
        step = await self._placed_first(step)
        order = step.order
        try:
            payment = await self._payments.capture(
                order.order_id, order.payment_token, order.total, order.currency
            )
        except BusinessError as error:
            raise await self._failed(step, PaymentDeclined, error) from error
        except TransientParticipantError as error:
            # Retryable: Temporal tries again with backoff; no event for a transient fault. One
            # warning line per attempt, without the traceback of an expected failure.
            log.warning("order %s: payment provider failed, retried: %s", order.order_id, error)
            raise ApplicationError(
                str(error),
                type="TransientParticipantError",
                category=ApplicationErrorCategory.BENIGN,
            ) from error
        captured = PaymentCaptured(
            order_id=order.order_id,
            payment_id=payment.payment_id,
            amount=payment.amount,
            currency=payment.currency,
        )
        return StepResult(await self._record(step.expected_version, captured))

    @activity.defn
    async def schedule_shipment(self, step: StepInput) -> StepResult:
        step = await self._placed_first(step)
        order = step.order
        try:
            shipment = await self._shipping.schedule(order.order_id, order.shipping_address)
        except BusinessError as error:
            raise await self._failed(step, ShipmentFailed, error) from error
        scheduled = ShipmentScheduled(
            order_id=order.order_id, shipment_id=shipment.shipment_id, country=shipment.country
        )
        return StepResult(await self._record(step.expected_version, scheduled))

    # Compensations: each undoes its step if the participant holds anything for the order, and
    # records that; when nothing is held (the step never took effect) there is no fact to record.

    @activity.defn
    async def cancel_shipment(self, step: StepInput) -> StepResult:
        order_id = step.order.order_id
        shipment = await self._shipping.cancel(order_id)
        if shipment is None:
            return StepResult(step.expected_version)
        undone = ShipmentCancelled(order_id=order_id, shipment_id=shipment.shipment_id)
        return StepResult(await self._record(step.expected_version, undone))

    @activity.defn
    async def refund_payment(self, step: StepInput) -> StepResult:
        order_id = step.order.order_id
        refund = await self._payments.refund(order_id)
        if refund is None:
            return StepResult(step.expected_version)
        undone = PaymentRefunded(
            order_id=order_id,
            payment_id=refund.payment_id,
            amount=refund.amount,
            currency=refund.currency,
        )
        return StepResult(await self._record(step.expected_version, undone))

    @activity.defn
    async def release_inventory(self, step: StepInput) -> StepResult:
        order_id = step.order.order_id
        released = await self._inventory.release(order_id)
        if released is None:
            return StepResult(step.expected_version)
        undone = InventoryReleased(order_id=order_id, lines=released.lines)
        return StepResult(await self._record(step.expected_version, undone))

    def all(self) -> list[Any]:
        return [
            self.record_event,
            self.reserve_inventory,
            self.capture_payment,
            self.schedule_shipment,
            self.cancel_shipment,
            self.refund_payment,
            self.release_inventory,
        ]
