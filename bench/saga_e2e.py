"""Benchmark: orders through the API to a terminal state, against the bare Temporal baseline.

Starts the embedded stack (the same one `ordersaga dev` and the tests use) on free ports, then
alternates baseline and ours on the same Temporal server, and prints medians and the ratio.
The last line is one JSON object. Usage: python bench/saga_e2e.py [--orders N] [--rounds R]
[--copies C] [--nats-nodes K] [--cluster]: C processes of each service (the POSTs spread over the
C APIs) on a K-node NATS cluster; --cluster is `make dev-cluster`'s shape (C=2, K=3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bare_temporal import run_bare

from ordersaga import bus, relay
from ordersaga.db import create_pool
from ordersaga.devstack import DevStack, isolated_settings
from ordersaga.domain import workflow_id
from ordersaga.runtime import connect_temporal
from ordersaga.settings import Settings

GOAL = 0.6
IN_FLIGHT = 64  # concurrent POSTs, as many clients would send


async def run_ours(
    api: httpx.AsyncClient, bases: list[str], settings: Settings, n: int, sku: str
) -> tuple[float, dict[str, int], list[float]]:
    """N orders through the APIs, at most IN_FLIGHT POSTs at a time; returns sagas per second,
    the outcomes, and each order's seconds from its POST to its saga's end."""
    client = await connect_temporal(settings)
    gate = asyncio.Semaphore(IN_FLIGHT)
    body = {
        "customer_id": "bench",
        "items": [{"sku": sku, "quantity": 1, "unit_price": 1000}],
        "shipping_address": {
            "name": "Bench",
            "line1": "1 Loop",
            "city": "Localhost",
            "postal_code": "127",
            "country": "DE",
        },
        "payment": {"token": "tok_visa"},
    }

    async def one(i: int) -> tuple[str, float]:
        async with gate:
            began = time.perf_counter()
            response = await api.post(f"{bases[i % len(bases)]}/orders", json=body)
            response.raise_for_status()
            order_id: str = response.json()["order_id"]
        result = await client.get_workflow_handle(workflow_id(order_id)).result()
        return str(result["status"]), time.perf_counter() - began

    t = time.perf_counter()
    ends = await asyncio.gather(*[one(i) for i in range(n)])
    rate = n / (time.perf_counter() - t)
    counts: dict[str, int] = {}
    for s, _ in ends:
        counts[s] = counts.get(s, 0) + 1
    return rate, counts, [seconds for _, seconds in ends]


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values (nearest rank), rounded to 0.1."""
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 of latencies, in milliseconds."""
    ordered = sorted(s * 1000 for s in seconds)
    return {"p50": quantile(ordered, 0.5), "p99": quantile(ordered, 0.99)}


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stack: DevStack) -> dict[str, float]:
    """CPU time (user + system) so far of every part of the stack with all its descendants
    (Postgres's backends count as Postgres), and of this process (the client, and the bare
    baseline's worker)."""
    parts = {part.process.pid: name for name, part in stack.parts.items() if part.process}
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        # Own time and that of reaped children (Postgres's backends that have exited).
        used[pid] = sum(int(f) for f in fields[11:15]) / _TICK
    out = dict.fromkeys(stack.parts, 0.0)
    for pid, seconds in used.items():
        ancestor = pid
        while ancestor > 1 and ancestor not in parts:
            ancestor = parent.get(ancestor, 0)
        if ancestor in parts:
            out[parts[ancestor]] += seconds
    mine = os.times()
    out["bench"] = mine.user + mine.system
    return out


def per_saga_ms(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: round((after[k] - before.get(k, 0.0)) * 1000 / n, 1) for k in after}


async def relay_lag(settings: Settings) -> dict[str, float]:
    """From each event's time in the store to its time in JetStream, over every event of the run
    (the relay publishes while the sagas run, so this is the lag under the benchmark's load)."""
    deadline = time.monotonic() + 60
    pool = await create_pool(settings, size=1)
    nc = await bus.connect(settings, "bench")
    try:
        while time.monotonic() < deadline:
            if not (await relay.status(pool))["lag_events"]:
                break
            await asyncio.sleep(0.2)  # poll: the relay is catching up
        stored = {
            str(r["event_id"]): r["occurred_at"]
            for r in await pool.fetch("SELECT event_id, occurred_at FROM eventstore.events")
        }
        js = nc.jetstream()
        sub = await js.subscribe(
            f"{settings.nats.subject_prefix}.>", stream=settings.nats.stream, ordered_consumer=True
        )
        lags: list[float] = []
        for _ in range(int((await js.stream_info(settings.nats.stream)).state.messages)):
            msg = await sub.next_msg(timeout=5)
            at = stored.get((msg.headers or {}).get("Nats-Msg-Id", ""))
            if at is not None:
                lags.append((msg.metadata.timestamp - at).total_seconds() * 1000)
        await sub.unsubscribe()
    finally:
        await nc.close()
        await pool.close()
    if not lags:
        raise RuntimeError("no published event of this run was found on JetStream")
    lags.sort()
    return {
        "events": len(lags),
        **{f"{k}_ms": quantile(lags, q) for k, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
    }


async def main(n: int, rounds: int, read_side: bool, copies: int, nats_nodes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ordersaga-bench-") as data:
        # By default the whole stack runs, as `make dev` runs it; without the read side
        # (projector, notifier) the figure shows what those cost on the same cores.
        apps = DevStack.APPS if read_side else ("worker", "relay", "api")
        settings = isolated_settings(Path(data), nats_nodes=nats_nodes, copies=copies)
        stack = DevStack(settings, ui=False, apps=apps, nats_nodes=nats_nodes, copies=copies)
        resolved = await stack.start()
        try:
            client = await connect_temporal(resolved)
            bases = stack.api_urls()
            key = {"Authorization": f"Bearer {stack.api_key}"}
            async with httpx.AsyncClient(timeout=60, headers=key) as api:
                sku = "bench-sku"
                stock = {"available": n * (rounds + 1)}
                (await api.put(f"{bases[0]}/inventory/{sku}", json=stock)).raise_for_status()
                # Warm-up: connections, caches, every process's first requests.
                await run_ours(api, bases, resolved, 10 * copies, sku)
                bare: list[float] = []
                ours: list[float] = []
                cpu_bare: list[dict[str, float]] = []
                cpu_ours: list[dict[str, float]] = []
                latency_bare: list[dict[str, float]] = []
                latency_ours: list[dict[str, float]] = []
                for r in range(rounds):
                    t0 = cpu_seconds(stack)
                    bare_rate, bare_seconds = await run_bare(client, n)
                    t1 = cpu_seconds(stack)
                    rate, counts, seconds = await run_ours(api, bases, resolved, n, sku)
                    t2 = cpu_seconds(stack)
                    bare.append(bare_rate)
                    ours.append(rate)
                    latency_bare.append(percentiles(bare_seconds))
                    latency_ours.append(percentiles(seconds))
                    cpu_bare.append(per_saga_ms(t0, t1, n))
                    cpu_ours.append(per_saga_ms(t1, t2, n))
                    print(
                        f"round {r + 1}: bare {bare[-1]:.1f} wf/s, ours {rate:.1f} sagas/s "
                        f"(ratio {rate / bare[-1]:.2f}; outcomes {counts})",
                        flush=True,
                    )
            lag = await relay_lag(resolved)
        finally:
            await stack.stop()
    b, o = statistics.median(bare), statistics.median(ours)
    cpu = {
        side: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for side, runs in (("bare", cpu_bare), ("ours", cpu_ours))
    }
    print(
        "CPU ms per saga (median of rounds; bare: the same server, the baseline's worker in bench)"
    )
    for k in cpu["ours"]:
        print(f"  {k:<10} bare {cpu['bare'][k]:>7.1f}   ours {cpu['ours'][k]:>7.1f}")
    print(f"  {'total':<10} bare {sum(cpu['bare'].values()):>7.1f}   "
          f"ours {sum(cpu['ours'].values()):>7.1f}")  # fmt: skip
    latency = {
        side: {k: statistics.median(r[k] for r in runs) for k in ("p50", "p99")}
        for side, runs in (("bare", latency_bare), ("ours", latency_ours))
    }
    print(
        "latency, start (bare) or POST /orders (ours) to the saga's end (median of rounds): "
        f"bare p50 {latency['bare']['p50']} ms, p99 {latency['bare']['p99']} ms; "
        f"ours p50 {latency['ours']['p50']} ms, p99 {latency['ours']['p99']} ms"
    )
    print(
        f"median: bare {b:.1f} workflows/s, ours {o:.1f} sagas/s, ratio {o / b:.2f} (goal {GOAL})"
    )
    print(
        f"relay lag (store -> JetStream) over {lag['events']} events: "
        f"p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms"
    )
    print(
        json.dumps(
            {
                "bench": "saga_e2e",
                "unit": "sagas/s",
                "ours": round(o, 2),
                "bare": round(b, 2),
                "ratio": round(o / b, 3),
                "goal": GOAL,
                "orders_per_round": n,
                "rounds": rounds,
                "read_side": read_side,
                "copies": copies,
                "nats_nodes": nats_nodes,
                "ours_runs": [round(x, 2) for x in ours],
                "bare_runs": [round(x, 2) for x in bare],
                "relay_lag_ms": {k: v for k, v in lag.items() if k != "events"},
                "cpu_ms_per_saga": cpu,
                "latency_ms": latency,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-read-side",
        action="store_true",
        help="run only the worker and the API (no projector, no notifier) beside the servers",
    )
    parser.add_argument("--copies", type=int, default=1, help="processes of each service")
    parser.add_argument("--nats-nodes", type=int, default=1, help="nats-server nodes (R = nodes)")
    parser.add_argument(
        "--cluster", action="store_true", help="make dev-cluster: 2 copies, 3 nodes"
    )
    args = parser.parse_args()
    copies, nodes = (2, 3) if args.cluster else (args.copies, args.nats_nodes)
    asyncio.run(main(args.orders, args.rounds, not args.no_read_side, copies, nodes))
