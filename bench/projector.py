"""Benchmark: the projector catching up on stored events, against a bare consumer; live lag.

1. Catch-up. Seeds N events (N/5 orders on the happy path) into the event store and onto
   JetStream, then alternates, each from zero:
   - bare: nats-py pull consume + ack on one durable (as ../shared/anchors/nats_bare.py does),
     with a batched asyncpg upsert of the same order rows (same fold) per fetched batch;
   - ours: the projector runtime with the orders projection (4 partitions, so 4 consumers
     where the baseline has one; `--partitions 1` compares one with one), with per-order
     checkpoints, progress and NOTIFY, in this process.
   Prints events/s and the ratio of the medians.
2. Live lag. Worker and API run as processes, sagas come in through the API as in
   bench/saga_e2e.py, and the projector runs here; for every applied event it records commit
   time minus the event's time in the store. Prints p50/p99.
The last lines are JSON objects. Usage: python bench/projector.py [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import nats.js.errors
import sqlalchemy as sa
from nats.js.api import AckPolicy, ConsumerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ordersaga import bus, db, events
from ordersaga.contracts.examples import example
from ordersaga.db import create_engine, create_pool
from ordersaga.devstack import DevStack, isolated_settings
from ordersaga.domain import Address, EventType, Order, OrderItem
from ordersaga.eventstore import EventStore, NewEvent, StoredEvent
from ordersaga.settings import Settings
from projections import runner
from projections.base import OrderEvent
from projections.orders import COLUMNS, JSON_COLUMNS, LIVE_TABLE, apply

CATCH_UP_GOAL = 0.5
LAG_GOAL_MS = 250.0
HAPPY = [
    EventType.PLACED,
    EventType.INVENTORY_RESERVED,
    EventType.PAYMENT_CAPTURED,
    EventType.SHIPMENT_SCHEDULED,
    EventType.CONFIRMED,
]
BARE_TABLE = "readmodel.orders_bare"


async def seed(settings: Settings, n_events: int) -> None:
    """Store and publish n_events events of n_events/5 orders, interleaved as live sagas are."""
    pool = await create_pool(settings, size=16)
    store = EventStore(pool)
    nc = await bus.connect(settings, "bench-seed")
    js = nc.jetstream()
    await bus.setup(js, settings)
    orders = [str(uuid.uuid4()) for _ in range(n_events // len(HAPPY))]
    gate = asyncio.Semaphore(16)
    stored: list[StoredEvent] = []

    async def write(order_id: str) -> None:
        order = Order(order_id, "bench", [OrderItem("sku-1", 1, 100)],
                      Address("B", "1 Loop", "Localhost", "127", "DE"), "tok_visa")  # fmt: skip
        # Valid payloads, as the saga's own: the projections read every event's payload.
        new = [
            NewEvent(str(uuid.uuid4()), t, p.as_data(), schema_version=p.schema_version)
            for t in HAPPY
            for p in [example(t, order)]
        ]
        async with gate:
            stored.extend(await store.append(order_id, new, 0))

    t = time.perf_counter()
    await asyncio.gather(*(write(o) for o in orders))
    print(f"seed: {len(stored)} events stored in {time.perf_counter() - t:.1f}s", flush=True)
    stored.sort(key=lambda e: (e.version, e.stream_id))
    t = time.perf_counter()
    prefix = settings.nats.subject_prefix
    for i in range(0, len(stored), 256):
        await asyncio.gather(
            *(
                js.publish(
                    events.subject_for(prefix, e.stream_id, e.event_type),
                    events.encode(e),
                    headers={"Nats-Msg-Id": e.event_id},
                )
                for e in stored[i : i + 256]
            )
        )
    # The server's own count, polled: sourcing has no completion event to wait on.
    while (await js.stream_info(settings.nats.partitioned_stream)).state.messages < len(stored):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    print(f"seed: published and partitioned in {time.perf_counter() - t:.1f}s", flush=True)
    # Published here, not by the relay: the relay of the live phase starts after them, as a
    # relay that had published them would. (Otherwise the live sagas' events wait behind the
    # relay's pass over the whole seed, and the live lag measures that pass.)
    head = max(stored, key=lambda e: e.feed_position)  # the store holds only the seed
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO eventstore.relay_checkpoints (name, tx_id, position, published) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET tx_id = excluded.tx_id, "
            "position = excluded.position, published = excluded.published",
            settings.relay.name, head.tx_id, head.position, len(stored),
        )  # fmt: skip
    await store.close()
    await nc.close()
    await pool.close()


_BARE_SELECT = f"SELECT {COLUMNS} FROM {BARE_TABLE} WHERE order_id = ANY($1::text[])"
_BARE_UPSERT = f"""
INSERT INTO {BARE_TABLE} ({COLUMNS})
VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8, $9, $10::jsonb, $11, $12)
ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, version = excluded.version,
    failure_reason = excluded.failure_reason, timeline = excluded.timeline,
    updated_at = excluded.updated_at
WHERE {BARE_TABLE}.version < excluded.version
"""
_ORDER = [c.strip() for c in COLUMNS.split(",")]


async def run_bare(settings: Settings, n: int, round_: int) -> float:
    """Pull consume + ack, plus a batched asyncpg upsert of the same rows per fetched batch.

    A fresh connection each round, as ours gets a fresh engine: a connection kept across the
    TRUNCATE keeps prepared statements planned for the old table and ran 3-4x slower here.
    """
    pg = await db.connect(settings, "bench-bare")
    await pg.execute(f"TRUNCATE {BARE_TABLE}")
    nc = await bus.connect(settings, "bench-bare")
    js = nc.jetstream()
    durable = f"bench-bare-{round_}"
    sub = await js.pull_subscribe(
        f"{settings.nats.subject_prefix}.>",
        durable=durable,
        stream=settings.nats.stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )
    got = 0
    t = time.perf_counter()
    while got < n:
        try:
            msgs = await sub.fetch(512, timeout=5)
        except (nats.errors.TimeoutError, TimeoutError):
            continue
        batch = [OrderEvent.from_cloudevent(events.decode(m.data)) for m in msgs]
        async with pg.transaction():
            found = await pg.fetch(_BARE_SELECT, sorted({e.order_id for e in batch}))
            rows: dict[str, dict[str, Any]] = {}
            for r in found:
                row: dict[str, Any] = dict(r)
                row["timeline"] = json.loads(row["timeline"])
                rows[row["order_id"]] = row
            for e in batch:
                have = rows.get(e.order_id)
                if have is None or e.version > have["version"]:
                    rows[e.order_id] = apply(have, e)
            await pg.executemany(
                _BARE_UPSERT,
                [
                    [json.dumps(r[c]) if c in JSON_COLUMNS else r[c] for c in _ORDER]
                    for r in rows.values()
                ],
            )
        for m in msgs:
            await m.ack()
        got += len(msgs)
    rate = got / (time.perf_counter() - t)
    await js.delete_consumer(settings.nats.stream, durable)
    await nc.close()
    await pg.close()
    return rate


async def reset_ours(settings: Settings) -> None:
    """The orders projection from zero: its durables, checkpoints, progress and table."""
    nc = await bus.connect(settings, "bench-reset")
    js = nc.jetstream()
    for partition in range(settings.nats.partitions):
        durable = bus.projector_durable(partition)
        try:
            await js.delete_consumer(settings.nats.partitioned_stream, durable)
        except nats.js.errors.NotFoundError:
            pass
    await bus.setup(js, settings)
    await nc.close()
    pg = await db.connect(settings, "bench-reset")
    await pg.execute(f"TRUNCATE {LIVE_TABLE}")
    await pg.execute("DELETE FROM projections.checkpoints WHERE projection = 'orders'")
    await pg.execute("DELETE FROM projections.progress WHERE projection = 'orders'")
    await pg.close()


async def run_ours(settings: Settings, n: int) -> float:
    applied = 0
    done = asyncio.Event()

    def count(_: str, batch: Sequence[OrderEvent]) -> None:
        nonlocal applied
        applied += len(batch)
        if applied >= n:
            done.set()

    stop = asyncio.Event()
    t = time.perf_counter()
    task = asyncio.create_task(runner.run(settings, stop, names=["orders"], observer=count))
    await done.wait()
    rate = applied / (time.perf_counter() - t)
    stop.set()
    await task
    return rate


async def live_lag(settings: Settings, orders: int, api_key: str | None) -> list[float]:
    """Sagas through the API while the projector runs here: commit time - event time, in ms."""
    lags: list[float] = []
    expected = orders * len(HAPPY)
    all_applied = asyncio.Event()

    began = datetime.now(UTC)
    earlier = 0  # events from before the live phase that the projector applied during it

    def record(_: str, batch: Sequence[OrderEvent]) -> None:
        nonlocal earlier
        now = datetime.now(UTC)
        live = [e for e in batch if e.occurred_at >= began]
        earlier += len(batch) - len(live)
        lags.extend((now - e.occurred_at).total_seconds() * 1000 for e in live)
        if len(lags) >= expected:
            all_applied.set()

    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(settings, stop, names=["orders"], observer=record))
    await asyncio.sleep(2)  # claims and subscriptions in place; catch-up of old events done
    lags.clear()
    began = datetime.now(UTC)
    base = f"http://{settings.api.host}:{settings.api.port}"
    key = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=key) as api:
        sku = "lag-sku"
        (await api.put(f"/inventory/{sku}", json={"available": orders})).raise_for_status()
        body = {
            "customer_id": "bench",
            "items": [{"sku": sku, "quantity": 1, "unit_price": 1000}],
            "shipping_address": {"name": "B", "line1": "1 Loop", "city": "Localhost",
                                 "postal_code": "127", "country": "DE"},
            "payment": {"token": "tok_visa"},
        }  # fmt: skip
        gate = asyncio.Semaphore(64)

        async def one() -> None:
            async with gate:
                (await api.post("/orders", json=body)).raise_for_status()

        t = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(orders)))
        await asyncio.wait_for(all_applied.wait(), 300)
        print(f"live: {orders} sagas, {len(lags)} events applied in "
              f"{time.perf_counter() - t:.1f}s ({earlier} older events applied meanwhile)",
              flush=True)  # fmt: skip
    stop.set()
    await task
    return lags


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def main(n: int, rounds: int, sagas: int, partitions: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ordersaga-bench-") as data:
        base = isolated_settings(Path(data))
        base.nats.partitions = partitions
        stack = DevStack(base, apps=False, ui=False)
        settings = await stack.start()
        try:
            await seed(settings, n)
            engine = create_engine(settings)
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text(f"CREATE TABLE {BARE_TABLE} (LIKE {LIVE_TABLE} INCLUDING ALL)")
                )
            await engine.dispose()
            bare: list[float] = []
            ours: list[float] = []
            for r in range(rounds):
                bare.append(await run_bare(settings, n, r))
                await reset_ours(settings)
                ours.append(await run_ours(settings, n))
                print(
                    f"round {r + 1}: bare {bare[-1]:.0f} events/s, ours {ours[-1]:.0f} "
                    f"events/s (ratio {ours[-1] / bare[-1]:.2f})",
                    flush=True,
                )
            # Live lag: worker and API as processes, the projector here.
            # The relay publishes what the worker's activities store.
            await stack.start_apps(("worker", "relay", "api"))
            lags = await live_lag(settings, sagas, stack.api_key)
        finally:
            await stack.stop()
    b, o = statistics.median(bare), statistics.median(ours)
    p50, p99 = pct(lags, 0.50), pct(lags, 0.99)
    print(f"catch-up median: bare {b:.0f} events/s, ours {o:.0f} events/s, ratio {o / b:.2f} "
          f"(goal {CATCH_UP_GOAL})")  # fmt: skip
    print(f"live lag over {len(lags)} events: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"(goal p99 < {LAG_GOAL_MS:.0f} ms)")  # fmt: skip
    print(json.dumps({
        "bench": "projector_live_lag", "unit": "ms", "p50": round(p50, 1), "p99": round(p99, 1),
        "goal_p99": LAG_GOAL_MS, "events": len(lags), "sagas": sagas,
    }))  # fmt: skip
    print(json.dumps({
        "bench": "projector_catch_up", "unit": "events/s", "ours": round(o), "bare": round(b),
        "ratio": round(o / b, 3), "goal": CATCH_UP_GOAL, "events": n, "rounds": rounds,
        "partitions": partitions,
        "ours_runs": [round(x) for x in ours], "bare_runs": [round(x) for x in bare],
    }))  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sagas", type=int, default=150)
    parser.add_argument(
        "--partitions", type=int, default=4, help="1: one consumer, like the bare baseline"
    )
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rounds, args.sagas, args.partitions))
