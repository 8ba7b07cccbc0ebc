"""The one way into a saga from outside: start, status, cancel, retry a compensation.

It calls the workflow through its typed references (`OrderSaga.run`, `OrderSaga.status`, ...), so a
renamed handler or a changed argument fails the type check rather than a request, and it turns
Temporal's errors into the domain's `SagaError`s once, for the API and the CLI alike. It runs in
the caller's process, never in the workflow sandbox.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from ordersaga.domain import (
    CUSTOMER_ID,
    ORDER_STATUS,
    SAGA_REVISION,
    Order,
    OrderStatus,
    SagaInput,
    SagaNotFound,
    SagaPolicy,
    SagaRefused,
    SagaState,
    SagaUnavailable,
    workflow_id,
)
from workflows.order_saga import OrderSaga


class SagaClient:
    def __init__(self, client: Client, task_queue: str, rpc_timeout: float = 10.0) -> None:
        self._client = client
        self._task_queue = task_queue
        self._rpc_timeout = timedelta(seconds=rpc_timeout)

    async def start(self, order: Order, policy: SagaPolicy) -> bool:
        """Start the order's saga; False if it runs already (a retried request). The policy
        travels in the workflow input: a saga keeps the policy it started with."""
        try:
            await self._client.start_workflow(
                OrderSaga.run,
                SagaInput(order, policy, SAGA_REVISION),
                id=workflow_id(order.order_id),
                task_queue=self._task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(CUSTOMER_ID, order.customer_id),
                        SearchAttributePair(ORDER_STATUS, OrderStatus.PENDING.value),
                    ]
                ),
                rpc_timeout=self._rpc_timeout,
            )
        except WorkflowAlreadyStartedError:
            return False
        except RPCError as error:
            raise SagaUnavailable(f"could not start the saga: {error.message}") from error
        return True

    async def exists(self, order_id: str) -> bool | None:
        """Whether the order's saga was started: None when Temporal cannot tell right now."""
        try:
            await self._handle(order_id).describe(rpc_timeout=self._rpc_timeout)
        except RPCError as error:
            return False if error.status == RPCStatusCode.NOT_FOUND else None
        return True

    def _handle(self, order_id: str) -> WorkflowHandle[OrderSaga, SagaState]:
        return self._client.get_workflow_handle_for(OrderSaga.run, workflow_id(order_id))

    async def status(self, order_id: str) -> SagaState:
        """The workflow's own view, ahead of the read model (needs a running worker)."""
        with _temporal_errors():
            return await self._handle(order_id).query(
                OrderSaga.status, rpc_timeout=self._rpc_timeout
            )

    async def cancel(self, order_id: str, reason: str) -> SagaState:
        """Ask the saga to cancel: the running step finishes, then all is compensated."""
        with _temporal_errors():
            return await self._handle(order_id).execute_update(
                OrderSaga.cancel, reason, rpc_timeout=self._rpc_timeout
            )

    async def retry_compensation(self, order_id: str) -> SagaState:
        """Operator action for a REQUIRES_ATTENTION saga: run its failed compensation again."""
        with _temporal_errors():
            return await self._handle(order_id).execute_update(
                OrderSaga.retry_compensation, rpc_timeout=self._rpc_timeout
            )


@contextmanager
def _temporal_errors() -> Iterator[None]:
    """Temporal's errors, as the domain's."""
    try:
        yield
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(error)
        raise SagaRefused(message) from error
    except WorkflowUpdateRPCTimeoutOrCancelledError as error:
        raise SagaUnavailable("the saga did not answer in time; try again") from error
    except WorkflowQueryFailedError as error:
        raise SagaUnavailable(f"the saga did not answer: {error}") from error
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise SagaNotFound("the saga of this order has ended or never started") from error
        raise SagaUnavailable(f"Temporal: {error.message}") from error
