"""Paired benchmark: two code trees, each on a whole stack of its own, against bare Temporal.

Tells whether a change moves the cost of a saga when one run's ratio swings by more than the
change: both stacks run side by side (idle between their rounds), and each round runs the bare
baseline (on the first stack's Temporal server), A and B, in a rotating order. It prints, for A
and B, the median ratio to bare, the median of B/A per round, and each side's CPU ms per saga of
every process; the last line is one JSON object.

Usage: python bench/saga_ab.py A_DIR B_DIR [--rounds R] [--orders N] [--b-apps worker,relay,api]
where each directory is a checkout (`git worktree add /tmp/base HEAD~1`) whose processes run
with it first on PYTHONPATH. Run it from outside both trees, so neither wins by being the
current directory: `cd /tmp && python /path/to/bench/saga_ab.py ...`.

Caveats: this process starts both stacks, so both databases get the migrations of the tree it
imports (compare trees whose migrations agree, or run it with the newer tree's interpreter
path); the bare baseline runs on A's Temporal server only; with `--b-apps` the totals cover
different sets of processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bare_temporal import run_bare
from saga_e2e import cpu_seconds, per_saga_ms, run_ours

from ordersaga.devstack import DevStack, isolated_settings
from ordersaga.runtime import connect_temporal
from ordersaga.settings import Settings

SIDES = ("A", "B")


async def main(trees: dict[str, Path], rounds: int, n: int, b_apps: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory(prefix="ordersaga-ab-") as data:
        stacks: dict[str, DevStack] = {}
        resolved: dict[str, Settings] = {}
        try:
            for side in SIDES:
                # The children inherit the environment they are started with.
                os.environ["PYTHONPATH"] = str(trees[side])
                apps = b_apps if side == "B" and b_apps else DevStack.APPS
                stacks[side] = DevStack(isolated_settings(Path(data) / side), ui=False, apps=apps)
                resolved[side] = await stacks[side].start()
            client = await connect_temporal(resolved["A"])
            rates: dict[str, list[float]] = {"bare": [], "A": [], "B": []}
            cpu: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
            async with httpx.AsyncClient(timeout=60) as api:
                for side in SIDES:
                    api.headers["Authorization"] = f"Bearer {stacks[side].api_key}"
                    base = stacks[side].api_urls()[0]
                    stock = {"available": n * rounds + 10}  # every order confirms
                    (await api.put(f"{base}/inventory/bench-sku", json=stock)).raise_for_status()
                    await run_ours(api, stacks[side].api_urls(), resolved[side], 10, "bench-sku")
                order = ["bare", "A", "B"]
                for r in range(rounds):
                    for side in order[r % 3 :] + order[: r % 3]:
                        if side == "bare":
                            rate, _ = await run_bare(client, n)
                        else:
                            stack = stacks[side]
                            api.headers["Authorization"] = f"Bearer {stack.api_key}"
                            before = cpu_seconds(stack)
                            rate, outcomes, _ = await run_ours(
                                api, stack.api_urls(), resolved[side], n, "bench-sku"
                            )
                            if set(outcomes) != {"CONFIRMED"}:  # another saga path: not comparable
                                raise RuntimeError(f"{side}: outcomes {outcomes}")
                            used = per_saga_ms(before, cpu_seconds(stack), n)
                            used.pop("bench", None)  # this process: the client, and bare's worker
                            cpu[side].append(used)
                        rates[side].append(rate)
                    b = rates["bare"][-1]
                    print(
                        f"round {r + 1}: bare {b:.1f} wf/s, A {rates['A'][-1]:.1f} "
                        f"({rates['A'][-1] / b:.2f}), B {rates['B'][-1]:.1f} "
                        f"({rates['B'][-1] / b:.2f}) sagas/s",
                        flush=True,
                    )
        finally:
            for stack in stacks.values():
                await stack.stop()
    ratio = {
        side: statistics.median(x / b for x, b in zip(rates[side], rates["bare"], strict=True))
        for side in SIDES
    }
    b_over_a = statistics.median(y / x for x, y in zip(rates["A"], rates["B"], strict=True))
    medians = {
        side: {k: round(statistics.median(r[k] for r in cpu[side]), 1) for k in cpu[side][0]}
        for side in SIDES
    }
    print("CPU ms per saga (median of rounds):")
    for k in medians["A"]:
        print(f"  {k:<10} A {medians['A'][k]:>6.1f}   B {medians['B'].get(k, 0.0):>6.1f}")
    totals = {side: round(sum(medians[side].values()), 1) for side in SIDES}
    print(f"  {'total':<10} A {totals['A']:>6.1f}   B {totals['B']:>6.1f}")
    print(
        f"median ratio to bare: A {ratio['A']:.3f}, B {ratio['B']:.3f}; "
        f"B/A per round, median: {b_over_a:.3f}"
    )
    print(
        json.dumps(
            {
                "bench": "saga_ab",
                "a": str(trees["A"]),
                "b": str(trees["B"]),
                "rounds": rounds,
                "orders_per_round": n,
                "ratio_to_bare": {k: round(v, 3) for k, v in ratio.items()},
                "b_over_a": round(b_over_a, 3),
                "cpu_ms_per_saga": medians,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a", type=Path, help="checkout A (the base)")
    parser.add_argument("b", type=Path, help="checkout B (the change)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--orders", type=int, default=150)
    parser.add_argument(
        "--b-apps", default="", help="services of B's stack (default all), e.g. worker,relay,api"
    )
    args = parser.parse_args()
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    b_apps = tuple(a for a in args.b_apps.split(",") if a)
    asyncio.run(main(trees, args.rounds, args.orders, b_apps))
