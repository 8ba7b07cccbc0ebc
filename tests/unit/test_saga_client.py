"""The client is what writes a saga's input: new sagas start at the current revision, which
decides what the workflow records (`SagaInput.revision`). A stand-in Temporal client records the
start call; the workflow's behaviour per revision is tested in tests/workflows."""

from __future__ import annotations

from typing import Any

from ordersaga.domain import SAGA_REVISION, Address, Order, OrderItem, SagaInput, SagaPolicy
from workflows.client import SagaClient


class RecordingClient:
    def __init__(self) -> None:
        self.started: list[Any] = []

    async def start_workflow(self, _run: object, arg: object, **_options: object) -> None:
        self.started.append(arg)


async def test_new_sagas_start_at_the_current_revision() -> None:
    temporal = RecordingClient()
    order = Order("o-1", "c-1", [OrderItem("sku", 1, 100)], Address("N", "L", "C", "1", "DE"), "t")
    assert await SagaClient(temporal, "orders").start(order, SagaPolicy())  # type: ignore[arg-type]
    [saga] = temporal.started
    assert isinstance(saga, SagaInput)
    assert saga.revision == SAGA_REVISION == 3
