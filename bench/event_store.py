"""Benchmark: our event store's append against raw asyncpg and the `eventsourcing` library, and
a tailing reader's lag while writers run at full speed.

The workload is shared/anchors/pg_append_bare.py's: 16 writers, a new stream per transaction
with 4 events. The three are alternated on one embedded Postgres (started here), medians quoted,
on two kinds of disk: `durable` (each commit waits for its WAL flush, as configured) and
`fast-disk` (`synchronous_commit = off`: commits do not wait for the flush, so the figures show
what a machine whose fsync is cheap shows: the CPU each append costs). For each, the CPU per
event of the writing client and of Postgres. The last lines are JSON objects, one per ratio and
disk. Usage: python bench/event_store.py [--streams N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from saga_e2e import cpu_seconds

from ordersaga.db import create_pool
from ordersaga.devstack import DevStack, isolated_settings
from ordersaga.eventstore import NO_STREAM, EventStore, FeedPosition, NewEvent
from ordersaga.settings import Settings

WRITERS = 16
PAYLOAD = {"order_id": "x", "items": [{"sku": "a", "qty": 1}], "total": 1000}

RAW_DDL = """
DROP TABLE IF EXISTS bench_events;
CREATE TABLE bench_events(
  position bigserial PRIMARY KEY,
  stream_id uuid NOT NULL, version int NOT NULL,
  event_id uuid NOT NULL UNIQUE, event_type text NOT NULL, data jsonb NOT NULL,
  occurred_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE(stream_id, version));
"""


async def run_raw(dsn: str, n_streams: int) -> float:
    """The anchor, verbatim in what it does: SELECT max(version), executemany, per transaction."""
    pool = await asyncpg.create_pool(dsn, min_size=WRITERS, max_size=WRITERS)
    await pool.execute(RAW_DDL)
    payload = json.dumps(PAYLOAD)

    async def writer(streams: list[uuid.UUID]) -> None:
        for sid in streams:
            async with pool.acquire() as c, c.transaction():
                cur = await c.fetchval(
                    "SELECT coalesce(max(version),0) FROM bench_events WHERE stream_id=$1", sid
                )
                await c.executemany(
                    "INSERT INTO bench_events(stream_id,version,event_id,event_type,data) "
                    "VALUES($1,$2,$3,$4,$5)",
                    [(sid, cur + k + 1, uuid.uuid4(), "order.step", payload) for k in range(4)],
                )

    streams = [uuid.uuid4() for _ in range(n_streams)]
    t = time.perf_counter()
    await asyncio.gather(*[writer(streams[i::WRITERS]) for i in range(WRITERS)])
    dt = time.perf_counter() - t
    await pool.close()
    return 4 * n_streams / dt


async def run_ours(
    settings: Settings, n_streams: int, measure_lag: bool
) -> tuple[float, list[float]]:
    pool = await create_pool(settings, size=WRITERS + 2)
    store = EventStore(pool)
    appended_at: dict[str, float] = {}
    lags: list[float] = []
    start = FeedPosition()
    if measure_lag:
        # The reader starts at the feed's head. Only here: reading the whole table (which every
        # round makes longer) in a throughput round counted its CPU against ours per event.
        head = await store.read_all(FeedPosition(), limit=10_000_000)
        start = head[-1].feed_position if head else start
    total = 4 * n_streams

    seen_at: dict[str, float] = {}
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"

    async def tail() -> None:
        async for event in store.subscribe(start, batch=1000, poll_interval=0.5):
            if event.stream_id.startswith(prefix):
                seen_at[event.event_id] = time.perf_counter()
                if len(seen_at) >= total:
                    return

    async def writer(streams: list[str]) -> None:
        for sid in streams:
            batch = [NewEvent(str(uuid.uuid4()), "order.step", PAYLOAD) for _ in range(4)]
            stored = await store.append(sid, batch, NO_STREAM)
            now = time.perf_counter()
            for e in stored:
                appended_at[e.event_id] = now

    reader = asyncio.create_task(tail()) if measure_lag else None
    streams = [f"{prefix}{uuid.uuid4()}" for _ in range(n_streams)]
    t = time.perf_counter()
    await asyncio.gather(*[writer(streams[i::WRITERS]) for i in range(WRITERS)])
    dt = time.perf_counter() - t
    if reader is not None:
        await asyncio.wait_for(reader, timeout=60)
        # Lag: from the append call's return to the reader's sight of it (0 if it saw it first).
        lags = [max(0.0, seen_at[i] - appended_at[i]) for i in appended_at]
    await store.close()
    await pool.close()
    return total / dt, lags


def run_eventsourcing(port: int, n_streams: int, database: str) -> float:
    env = {
        **os.environ,
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": database,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "postgres",  # trust auth: ignored, but the library wants one
        "POSTGRES_POOL_SIZE": str(WRITERS),
        "POSTGRES_MAX_OVERFLOW": "0",
        "CREATE_TABLE": "y",
    }
    peer = Path(__file__).with_name("eventsourcing_peer.py")
    out = subprocess.run(
        [sys.executable, str(peer), str(n_streams)], env=env, check=True, capture_output=True,
        text=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


async def snapshot_loads(settings: Settings) -> dict[str, float]:
    """Median ms to load a 10-event and a 10,000-event stream (snapshots every 100 events),
    and to replay the 10,000 events without a snapshot."""
    pool = await create_pool(settings, size=2)
    store = EventStore(pool)

    def fold(state: dict[str, Any], event: Any) -> dict[str, Any]:
        return {"n": state["n"] + 1, "last": event.data["total"]}

    async def timed(call: Any) -> float:
        times = []
        for _ in range(15):
            t = time.perf_counter()
            await call()
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times)

    result: dict[str, float] = {}
    for length in (10, 10_000):
        s = f"snap-{uuid.uuid4()}"
        for start in range(0, length, 100):
            size = min(100, length - start)
            batch = [NewEvent(str(uuid.uuid4()), "order.step", PAYLOAD) for _ in range(size)]
            await store.append(s, batch, start)
        initial = {"n": 0, "last": 0}
        await store.load(s, fold, initial, snapshot="count-v1", every=100)  # takes the snapshots
        result[f"load_{length}_ms"] = await timed(
            lambda s=s, i=initial: store.load(s, fold, i, snapshot="count-v1", every=100)
        )
        if length == 10_000:
            result["replay_10000_ms"] = await timed(lambda s=s: store.read_stream(s))
    await store.close()
    await pool.close()
    return result


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else float("nan")


GOAL_RAW, GOAL_PEER = 0.9, 4.0  # issue 12
# synchronous_commit per kind of disk (see the module docstring).
DISKS = {"durable": "on", "fast-disk": "off"}


def cpu_us_per_event(
    before: dict[str, float], after: dict[str, float], events: int, client: float | None = None
) -> dict[str, float]:
    """CPU microseconds per event of Postgres (server and backends) and of the writing client:
    this process, unless `client` gives the seconds of another (the `eventsourcing` child)."""
    if client is None:
        client = after["bench"] - before["bench"]
    return {
        "client": round(client * 1e6 / events, 1),
        "postgres": round((after["postgres"] - before["postgres"]) * 1e6 / events, 1),
    }


async def main(n_streams: int, rounds: int) -> None:
    events = 4 * n_streams
    with tempfile.TemporaryDirectory(prefix="ordersaga-bench-") as data:
        stack = DevStack(isolated_settings(Path(data)), apps=False, servers=("postgres",))
        settings = await stack.start()
        port = settings.database.embedded_port
        dsn = f"postgresql://postgres@127.0.0.1:{port}/ordersaga"
        admin = await asyncpg.connect(dsn)
        await admin.execute("DROP DATABASE IF EXISTS es_bench")
        await admin.execute("CREATE DATABASE es_bench")
        rates: dict[str, dict[str, list[float]]] = {}
        cpu: dict[str, dict[str, list[dict[str, float]]]] = {}
        all_lags: list[float] = []
        try:
            await run_ours(settings, 200, measure_lag=False)  # warm-up
            for disk, synchronous_commit in DISKS.items():
                await admin.execute(f"ALTER SYSTEM SET synchronous_commit = {synchronous_commit}")
                await admin.execute("SELECT pg_reload_conf()")
                rates[disk] = {"raw": [], "ours": [], "eventsourcing": []}
                cpu[disk] = {"raw": [], "ours": [], "eventsourcing": []}
                for r in range(rounds):
                    t0 = cpu_seconds(stack)
                    raw = await run_raw(dsn, n_streams)
                    t1 = cpu_seconds(stack)
                    ours, _ = await run_ours(settings, n_streams, measure_lag=False)
                    t2 = cpu_seconds(stack)
                    # Lag in a run of its own: the reader shares the 2 cores with the writers,
                    # and the throughput figures compare writers alone, as the anchors do.
                    if disk == "durable":
                        _, lags = await run_ours(settings, n_streams, measure_lag=True)
                        all_lags += lags
                    children = os.times().children_user + os.times().children_system
                    t3 = cpu_seconds(stack)
                    es = await asyncio.to_thread(run_eventsourcing, port, n_streams, "es_bench")
                    t4 = cpu_seconds(stack)
                    es_cpu = os.times().children_user + os.times().children_system - children
                    for name, rate, used in (
                        ("raw", raw, cpu_us_per_event(t0, t1, events)),
                        ("ours", ours, cpu_us_per_event(t1, t2, events)),
                        ("eventsourcing", es, cpu_us_per_event(t3, t4, events, es_cpu)),
                    ):
                        rates[disk][name].append(rate)
                        cpu[disk][name].append(used)
                    print(
                        f"{disk} round {r + 1}: raw {raw:.0f}, ours {ours:.0f}, "
                        f"eventsourcing {es:.0f} events/s",
                        flush=True,
                    )
            await admin.execute("ALTER SYSTEM RESET synchronous_commit")
            await admin.execute("SELECT pg_reload_conf()")
            loads = await snapshot_loads(settings)
        finally:
            await admin.close()
            await stack.stop()
    common: dict[str, Any] = {"unit": "events/s", "streams_per_round": n_streams, "rounds": rounds}
    for disk in DISKS:
        raw, ours, peer = (
            statistics.median(rates[disk][k]) for k in ("raw", "ours", "eventsourcing")
        )
        per_event = {
            name: {k: statistics.median(run[k] for run in runs) for k in ("client", "postgres")}
            for name, runs in cpu[disk].items()
        }
        print(
            f"{disk}: median events/s raw {raw:.0f}, ours {ours:.0f}, eventsourcing {peer:.0f}; "
            f"ours/raw {ours / raw:.2f} (goal {GOAL_RAW}), "
            f"ours/eventsourcing {ours / peer:.2f} (goal {GOAL_PEER})"
        )
        print(f"{disk}: CPU us per event (median of rounds), client + postgres:")
        for name, u in per_event.items():
            print(f"  {name:<14} {u['client']:>7.1f} + {u['postgres']:>7.1f} = "
                  f"{u['client'] + u['postgres']:>7.1f}")  # fmt: skip
        for name, bare, goal in (
            ("event_store_vs_raw", raw, GOAL_RAW),
            ("event_store_vs_eventsourcing", peer, GOAL_PEER),
        ):
            print(json.dumps({"bench": name, "disk": disk, **common, "ours": round(ours),
                              "bare": round(bare), "ratio": round(ours / bare, 3), "goal": goal,
                              "cpu_us_per_event": per_event}))  # fmt: skip
    lag_ms = p99(all_lags) * 1000
    print(f"reader lag p99 {lag_ms:.1f} ms over {len(all_lags)} events (goal < 100)")
    print(
        f"load with snapshots every 100: 10 events {loads['load_10_ms']:.2f} ms, 10,000 events "
        f"{loads['load_10000_ms']:.2f} ms (reading all 10,000: {loads['replay_10000_ms']:.1f} ms)"
    )
    print(json.dumps({"bench": "event_store_snapshot_load", "unit": "ms",
                      **{k: round(v, 2) for k, v in loads.items()}}))  # fmt: skip
    print(json.dumps({"bench": "event_store_reader_lag", "unit": "ms", "p99": round(lag_ms, 1),
                      "events": len(all_lags), "goal": 100}))  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.streams, args.rounds))
