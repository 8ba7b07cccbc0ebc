"""Stopping the whole dev stack mid-saga and starting it again loses nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ordersaga.devstack import DevStack, isolated_settings
from ordersaga.domain import SagaPolicy
from tests.helpers import (
    HAPPY_PATH,
    TERMINAL,
    event_types,
    eventually,
    order_body,
    place,
    stocked_sku,
    wait_terminal,
)

pytestmark = pytest.mark.e2e


async def test_a_saga_in_flight_survives_a_full_restart(tmp_path: Path) -> None:
    # A long first retry: the flaky payment's saga is surely waiting on its timer when the
    # stack stops.
    settings = isolated_settings(
        tmp_path / "stack", SagaPolicy(initial_interval_s=4.0, max_interval_s=4.0)
    )
    base = f"http://{settings.api.host}:{settings.api.port}"
    stack = DevStack(settings, ui=False)
    await stack.start()
    try:
        key = {"Authorization": f"Bearer {stack.api_key}"}  # the same key after the restart
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=key) as api:
            sku = await stocked_sku(api, 5)
            order_id = await place(api, order_body(sku, token="tok_flaky"))

            async def waiting_for_retry() -> bool | None:
                types = await event_types(api, order_id)
                return True if "order.inventory_reserved" in types else None

            await eventually(waiting_for_retry, what="the saga to reach its payment step")
            status = (await api.get(f"/orders/{order_id}")).json()["status"]
            assert status not in TERMINAL  # two 4 s retries still lie ahead of the capture
    finally:
        await stack.stop()

    stack = DevStack(settings, ui=False)
    await stack.start()
    try:
        key = {"Authorization": f"Bearer {stack.api_key}"}  # the same key after the restart
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=key) as api:
            order = await wait_terminal(api, order_id, timeout=60)
            assert order["status"] == "CONFIRMED"
            assert await event_types(api, order_id) == list(HAPPY_PATH)
            assert (await api.get(f"/inventory/{sku}")).json()["reserved"] == 1
    finally:
        await stack.stop()
