"""The `eventsourcing` library's Postgres store doing the anchor's work (as in
shared/anchors/eventsourcing_peer.py): 16 writer threads, one aggregate of 4 events per
transaction. Reads the POSTGRES_* variables that bench/event_store.py sets. Prints events/s."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event


class Order(Aggregate):
    @event("Created")
    def __init__(self, customer_id: str, total: int) -> None:
        self.customer_id = customer_id
        self.total = total
        self.steps: list[str] = []

    @event("StepDone")
    def step(self, name: str) -> None:
        self.steps.append(name)


class Orders(Application):
    def place(self, i: int) -> None:
        o = Order(customer_id=f"c{i}", total=1000)
        for s in ("reserved", "paid", "shipped"):
            o.step(s)
        self.save(o)


def main(n: int) -> None:
    app = Orders()
    app.place(-1)  # warm-up: creates the tables, opens the pool
    t = time.perf_counter()
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(app.place, range(n)))
    dt = time.perf_counter() - t
    print(f"{4 * n / dt:.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4000)
