"""The projector process: claims partitions and runs every projection on each one it holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from ordersaga import bus, runtime
from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings
from projections import PROJECTIONS
from projections.base import Projection
from projections.claims import Claims
from projections.customers import CustomerOrdersProjection
from projections.orders import OrderProjection
from projections.runtime import Applier, GroupCommit, Observer, PartitionConsumer
from projections.sales import SalesProjection

log = logging.getLogger(__name__)


def projections(names: Sequence[str] = PROJECTIONS) -> list[Projection]:
    known: dict[str, Projection] = {
        "orders": OrderProjection(),
        "customer_orders": CustomerOrdersProjection(),
        "sales": SalesProjection(),
    }
    unknown = set(names) - set(known)
    if unknown:
        raise ValueError(f"unknown projections {sorted(unknown)}; there are {sorted(known)}")
    return [known[n] for n in names]


def appliers(store: EventStore, names: Sequence[str] = PROJECTIONS) -> dict[str, Applier]:
    return {p.name: Applier(p, store) for p in projections(names)}


class _Running:
    def __init__(self, tasks: list[asyncio.Task[None]], stop: asyncio.Event) -> None:
        self.tasks, self.stop = tasks, stop

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    names: Sequence[str] = PROJECTIONS,
    observer: Observer | None = None,
) -> None:
    """Every claim interval: rebalance the partitions with the other projector processes, and
    run one consumer (feeding every projection) on each partition this process holds."""
    stop = stop or runtime.stop_event()
    claims = Claims(settings)
    running: dict[int, _Running] = {}

    async def halt_all() -> None:
        for job in running.values():
            await job.halt()
        running.clear()
        await claims.leave()

    async with runtime.open_resources(settings, "projector") as res:
        by_name = appliers(await res.store(pool_size=2), names)
        # The transactions fill gaps from the store, so they have a pool of their own: a
        # partition has one transaction in flight at most, and a dead letter's write may come
        # beside them (connections open as they are needed).
        pool = await res.own_pool(size=settings.nats.partitions + 1)
        js = await res.jetstream(setup=True)
        # The partitions this process holds share their transactions.
        group = GroupCommit(pool, list(by_name.values()), settings.projector, observer)

        def start(partition: int) -> _Running:
            halt = asyncio.Event()
            consumer = PartitionConsumer(
                pool,
                list(by_name.values()),
                js,
                settings.nats.partitioned_stream,
                bus.projector_durable(partition),
                partition,
                settings.projector,
                observer,
                group,
            )
            return _Running([asyncio.create_task(_guard(consumer, halt))], halt)

        try:
            while not stop.is_set():
                try:
                    if not claims.connected:
                        await claims.join()
                    claimed, handed_back = await claims.rebalance()
                except Exception as error:  # the session (and its leases) is gone
                    log.warning("partition claims lost (%s); stopping and rejoining", error)
                    await halt_all()
                    await _pause(stop, settings.projector.claim_interval_s)
                    continue
                for partition in sorted(handed_back):
                    await running.pop(partition).halt()
                    await claims.release(partition)
                for partition in sorted(claimed):
                    running[partition] = start(partition)
                if claimed or handed_back:
                    log.info("projector holds partitions %s", sorted(claims.held))
                await _pause(stop, settings.projector.claim_interval_s)
        finally:
            try:
                await halt_all()
            finally:
                await group.close()


async def _guard(consumer: PartitionConsumer, stop: asyncio.Event) -> None:
    """Keep one partition consumer running: a crash (NATS or Postgres away) restarts it."""
    while not stop.is_set():
        try:
            await consumer.run(stop)
        except Exception:
            log.exception("%s stopped; restarting in 1s", consumer.durable)
            await _pause(stop, 1.0)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
