"""The partitions of one projector process share their transactions (`GroupCommit`), against the
real Postgres and read models: what the partitions add while the committer lingers commits
together and is acked, a full batch goes at once, a partition's events apply in order, and a
transaction that fails hands each partition its own share to isolate (which `test_read_side`
follows through the stack's projector)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from types import SimpleNamespace
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga.eventstore import EventStore
from ordersaga.settings import ProjectorSettings
from projections.base import OrderEvent
from projections.runner import appliers
from projections.runtime import Delivery, GroupCommit, PartitionConsumer
from tests.helpers import fake_events, unique

LINGER = 0.5


class _Msg:
    """What the committer touches of a JetStream message: its stream position and its ack. The
    position is 1, below any the stack's own projector has noted, so the progress it writes
    moves nothing."""

    def __init__(self) -> None:
        self.metadata: Any = SimpleNamespace(sequence=SimpleNamespace(stream=1))
        self.acked = asyncio.get_running_loop().create_future()

    async def ack(self) -> None:
        self.acked.set_result(time.monotonic())


class _Partition(PartitionConsumer):
    """A partition as the group sees it; records what it is handed to isolate."""

    def __init__(self, partition: int, group: GroupCommit) -> None:
        self.partition = partition
        self.durable = f"test-partition-{partition}"  # what the group's logs name
        self._group = group
        self.isolated: list[Delivery] = []
        self.hold: asyncio.Event | None = None  # set: an isolation that takes its time

    async def isolate(self, deliveries: list[Delivery], error: Exception) -> None:
        self.isolated.extend(deliveries)
        if self.hold is not None:
            await self.hold.wait()


class _Spying(GroupCommit):
    """Counts the partition's transactions in flight at once."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.in_flight: Counter[int] = Counter()
        self.most_in_flight = 0

    async def _commit(self, batches: list[tuple[PartitionConsumer, list[Delivery]]]) -> bool:
        partitions = [c.partition for c, _ in batches]
        self.in_flight.update(partitions)
        self.most_in_flight = max(self.most_in_flight, *self.in_flight.values())
        try:
            return await super()._commit(batches)
        finally:
            self.in_flight.subtract(partitions)


def _placed(overrides: dict[int, dict[str, Any]] | None = None) -> tuple[str, Delivery]:
    """A made-up order's first event as a partition consumer fetched it."""
    order_id = str(uuid.uuid4())
    event = fake_events(order_id, unique("c"), unique("sku"), overrides=overrides)[0]
    return order_id, Delivery(_Msg(), OrderEvent.from_stored(event))  # type: ignore[arg-type]


async def _writers(engine: AsyncEngine, order_ids: list[str]) -> dict[str, int]:
    """The transaction that wrote each order's row of the orders read model."""
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text(
                "SELECT order_id, xmin::text::bigint AS tx FROM readmodel.orders "
                "WHERE order_id = ANY(:ids)"
            ),
            {"ids": order_ids},
        )
        return {r.order_id: r.tx for r in found}


async def _all_acked(deliveries: list[Delivery]) -> list[float]:
    """When each was acked; a test fails within seconds, not at the suite's timeout."""
    return await asyncio.wait_for(asyncio.gather(*(_acked(d) for d in deliveries)), 30)


def _acked(delivery: Delivery) -> asyncio.Future[float]:
    acked: asyncio.Future[float] = delivery.msg.acked  # type: ignore[attr-defined]
    return acked


async def test_what_the_partitions_add_while_the_committer_lingers_commits_together(
    engine: AsyncEngine, projector_pool: asyncpg.Pool, store: EventStore
) -> None:
    group = GroupCommit(
        projector_pool, list(appliers(store).values()), ProjectorSettings(linger_s=LINGER)
    )
    partitions = [_Partition(p, group) for p in range(4)]
    first_id, first = _placed()
    began = time.monotonic()
    group.add(partitions[0], [first])  # after a quiet spell: at once
    assert await _acked(first) - began < LINGER

    # Added one after another while the committer lingers, as fetches come back.
    later = [_placed() for _ in range(3)]
    began = time.monotonic()
    for partition, (_, delivery) in zip(partitions[1:], later, strict=True):
        group.add(partition, [delivery])
        await asyncio.sleep(LINGER / 10)
    acked = await _all_acked([d for _, d in later])
    assert min(acked) - began >= LINGER * 0.9  # the linger was waited out
    writers = await _writers(engine, [first_id, *(o for o, _ in later)])
    assert len(writers) == 4, writers
    assert len({writers[o] for o, _ in later}) == 1, writers  # one transaction took all three
    assert writers[first_id] != writers[later[0][0]]
    await group.close()
    assert not any(p.isolated for p in partitions)


async def test_a_full_batch_does_not_wait_for_the_linger(
    projector_pool: asyncpg.Pool, store: EventStore
) -> None:
    settings = ProjectorSettings(linger_s=LINGER * 4, batch=2)
    group = GroupCommit(projector_pool, list(appliers(store).values()), settings)
    partition = _Partition(0, group)
    group.add(partition, [_placed()[1]])  # starts the linger clock
    await group.close()
    began = time.monotonic()
    full = [_placed()[1], _placed()[1]]
    group.add(partition, full)
    assert group.room(partition) == 2  # taken at once: the partition fetches again
    acked = await _all_acked(full)
    assert max(acked) - began < LINGER
    await group.close()


async def test_a_partition_has_one_transaction_in_flight_so_its_events_apply_in_order(
    engine: AsyncEngine, projector_pool: asyncpg.Pool, store: EventStore
) -> None:
    # Every batch full: each goes at once in a transaction of its own.
    settings = ProjectorSettings(linger_s=0, batch=1)
    group = _Spying(projector_pool, list(appliers(store).values()), settings)
    partition = _Partition(0, group)
    order_id = str(uuid.uuid4())
    stream = fake_events(order_id, unique("c"), unique("sku"))[:3]
    deliveries = [Delivery(_Msg(), OrderEvent.from_stored(e)) for e in stream]  # type: ignore[arg-type]
    for delivery in deliveries:
        group.add(partition, [delivery])
    await _all_acked(deliveries)
    await group.close()
    # Out of order, version 2 would have found a gap, which these made-up events (not in the
    # event store) cannot fill: the batch would have been isolated.
    assert partition.isolated == []
    assert group.most_in_flight == 1
    async with engine.connect() as conn:
        version = await conn.scalar(
            sa.text("SELECT version FROM readmodel.orders WHERE order_id = :o"), {"o": order_id}
        )
    assert version == 3


async def test_after_a_failed_transaction_each_partition_tries_its_own_share_alone(
    engine: AsyncEngine, projector_pool: asyncpg.Pool, store: EventStore
) -> None:
    group = GroupCommit(
        projector_pool, list(appliers(store).values()), ProjectorSettings(linger_s=0)
    )
    one, two = _Partition(1, group), _Partition(2, group)
    healthy_id, healthy = _placed()
    # A NUL, which the contract (as Postgres jsonb) refuses.
    _, poison = _placed(overrides={1: {"customer_id": "x\u0000"}})
    group.add(one, [healthy])
    group.add(two, [poison])  # both in one transaction, which fails
    await group.close()
    # The healthy share committed on its own; only the culprit's partition isolates.
    assert (one.isolated, two.isolated) == ([], [poison])
    assert list(await _writers(engine, [healthy_id])) == [healthy_id]
    assert _acked(healthy).done() and not _acked(poison).done()


async def test_a_stopping_partition_waits_for_its_transaction_in_flight(
    engine: AsyncEngine, projector_pool: asyncpg.Pool, store: EventStore
) -> None:
    group = GroupCommit(
        projector_pool, list(appliers(store).values()), ProjectorSettings(linger_s=0)
    )
    partition = _Partition(0, group)
    order_id, delivery = _placed()
    async with engine.connect() as blocker:
        # An uncommitted checkpoint row of the order: the projector's transaction waits on it.
        await blocker.execute(
            sa.text(
                "INSERT INTO projections.checkpoints (order_id, projection, version) "
                "VALUES (:o, 'orders', 0)"
            ),
            {"o": order_id},
        )
        group.add(partition, [delivery])
        settled = asyncio.create_task(group.settled(partition))
        await asyncio.sleep(LINGER)
        assert not settled.done()  # its transaction is in flight
        await blocker.rollback()
    await asyncio.wait_for(settled, 30)
    assert _acked(delivery).done()
    await group.close()


async def test_a_slow_isolation_holds_up_only_its_own_partition(
    projector_pool: asyncpg.Pool, store: EventStore
) -> None:
    group = GroupCommit(
        projector_pool, list(appliers(store).values()), ProjectorSettings(linger_s=0)
    )
    one, two = _Partition(1, group), _Partition(2, group)
    two.hold = asyncio.Event()
    _, healthy = _placed()
    _, poison = _placed(overrides={1: {"customer_id": "x\u0000"}})
    group.add(one, [healthy])
    group.add(two, [poison])  # one transaction, which fails; the culprit's isolation hangs
    await _all_acked([healthy])
    # The next shared transaction does not wait for that isolation.
    _, later = _placed()
    group.add(one, [later])
    await _all_acked([later])
    assert two.isolated == [poison]
    two.hold.set()
    await group.close()
