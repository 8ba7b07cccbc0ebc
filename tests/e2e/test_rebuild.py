"""`ordersaga projections rebuild orders` while the service runs: the swapped-in table is what
the events say, row for row, and the projector carries on against it."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings
from projections.base import OrderEvent
from projections.orders import apply
from tests.helpers import order_body, place, stocked_sku, wait_terminal

pytestmark = pytest.mark.e2e


async def index_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT indexname FROM pg_indexes "
                "WHERE schemaname = 'readmodel' AND tablename = 'orders'"
            )
        )
        return {r[0] for r in rows}


async def table_oid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        oid = await conn.execute(sa.text("SELECT 'readmodel.orders'::regclass::oid::bigint"))
        return int(oid.scalar_one())


async def test_rebuild_while_running_equals_a_replay_of_the_store(
    settings: Settings, api: httpx.AsyncClient, engine: AsyncEngine, store: EventStore
) -> None:
    sku = await stocked_sku(api, 20)
    before = await table_oid(engine)
    indexes = await index_names(engine)
    assert "orders_pkey" in indexes
    done = [await place(api, order_body(sku)) for _ in range(3)]
    for order_id in done:
        await wait_terminal(api, order_id)

    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "projections", "rebuild", "orders",
        env={**os.environ, **settings.as_child_env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    # Orders keep flowing while it rebuilds.
    during = [await place(api, order_body(sku, token=t)) for t in ("tok_visa", "tok_decline")]
    output, _ = await asyncio.wait_for(cli.communicate(), timeout=120)
    assert cli.returncode == 0, output.decode()
    assert b"rebuilt orders:" in output
    for order_id in during:
        await wait_terminal(api, order_id)

    assert await table_oid(engine) != before, "the table was not replaced"
    assert await index_names(engine) == indexes  # the names the migrations know
    async with engine.connect() as conn:
        rows = {
            r.order_id: dict(r._mapping)
            for r in await conn.execute(
                sa.text(
                    "SELECT o.* FROM readmodel.orders o JOIN api.order_requests USING (order_id)"
                )
            )
        }
        accepted = (await conn.execute(sa.text("SELECT count(*) FROM api.order_requests"))).scalar()
    assert len(rows) == accepted
    for order_id, row in rows.items():
        expected: dict[str, Any] | None = None
        for event in await store.read_stream(order_id):
            expected = apply(expected, OrderEvent.from_stored(event))
        assert row == expected, order_id
