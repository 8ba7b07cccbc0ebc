"""Two projector processes share the partitions, and one takes over when the other dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid

import httpx
import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings
from projections.claims import PARTITION_CLASS
from tests.helpers import append, eventually, fake_events, publish, read_side_caught_up, unique

pytestmark = pytest.mark.e2e

TEN = (
    "order.placed",
    "order.inventory_reserved",
    "order.payment_captured",
    "order.shipment_scheduled",
    "order.shipment_failed",
    "order.shipment_cancelled",
    "order.requires_attention",
    "order.payment_refunded",
    "order.inventory_released",
    "order.cancelled",
)


async def _leases(engine: AsyncEngine) -> dict[int, int]:
    """Projector process (backend pid) -> partitions it holds."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT pid, count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = CAST(:c AS bigint)::oid AND objsubid = 2 GROUP BY pid"
            ),
            {"c": PARTITION_CLASS},
        )
        return {int(pid): int(n) for pid, n in rows}


async def test_two_projectors_share_four_partitions_and_survive_losing_one(
    settings: Settings, api: httpx.AsyncClient, engine: AsyncEngine, nc: NATS, store: EventStore
) -> None:
    assert settings.nats.partitions == 4
    second = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "projector",
        env={**os.environ, **settings.as_child_env()},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:

        async def shared() -> dict[int, int] | None:
            leases = await _leases(engine)
            return leases if sorted(leases.values()) == [2, 2] else None

        await eventually(shared, 30, "the two processes to hold two partitions each")

        customer = unique("scale")
        orders = [str(uuid.uuid4()) for _ in range(200)]
        sku = unique("sku")
        stored = await append(
            store, [e for o in orders for e in fake_events(o, customer, sku, types=TEN)]
        )
        # Accepted by the API, as every real order is: the notifier asks the API about each
        # order's terminal event, and the API answers for an order its read model does not have
        # yet (a partition of the killed process, not yet taken over) from its request (pending,
        # version 0: a wait, then stale, which the notifier waits out). An order it has never
        # accepted is a quick 404 instead, which the notifier dead-letters once its few attempts
        # are spent. (The stack's relay publishes these stored events too, so the terminal
        # events can reach the notifier well before this test publishes them.)
        body = {
            "items": [{"sku": sku, "quantity": 1, "unit_price": 100}],
            "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Berlin",
                                 "postal_code": "10115", "country": "DE"},
            "currency": "EUR",
        }  # fmt: skip
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO api.order_requests (order_id, request_hash, customer_id, request) "
                    "VALUES (:o, 'scale-out', :c, CAST(:b AS jsonb))"
                ),
                [{"o": o, "c": customer, "b": json.dumps(body)} for o in orders],
            )
        js = nc.jetstream()
        # Interleave the orders on the bus, as concurrent sagas would: version 1 of every order,
        # then version 2 of every order, ...
        by_version = sorted(stored, key=lambda e: (e.version, e.stream_id))
        await publish(js, settings, by_version[:1000])

        async def some_applied() -> bool | None:
            async with engine.connect() as conn:
                n = await conn.execute(
                    sa.text("SELECT count(*) FROM readmodel.orders WHERE order_id = ANY(:ids)"),
                    {"ids": orders},
                )
                return True if n.scalar_one() > 0 else None

        await eventually(some_applied, 30, "the projectors to be applying")
        second.send_signal(signal.SIGKILL)
        await second.wait()
        await publish(js, settings, by_version[1000:])

        async def taken_over() -> dict[int, int] | None:
            leases = await _leases(engine)
            return leases if sorted(leases.values()) == [4] else None

        await eventually(taken_over, 30, "the survivor to claim every partition")
        await read_side_caught_up(api, js, settings, timeout=90)

        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT order_id, version, timeline FROM readmodel.orders "
                        "WHERE order_id = ANY(:ids)"
                    ),
                    {"ids": orders},
                )
            ).all()
            dead = await conn.execute(
                sa.text("SELECT count(*) FROM projections.dead_letters WHERE order_id = ANY(:ids)"),
                {"ids": orders},
            )
            assert dead.scalar_one() == 0
        assert len(rows) == 200
        for row in rows:
            # The timeline is the order in which the projection applied the events.
            assert [t["version"] for t in row.timeline] == list(range(1, 11)), row.order_id
            assert [t["type"] for t in row.timeline] == list(TEN)
    finally:
        if second.returncode is None:
            second.kill()
            await second.wait()
