"""Which projector process applies which partitions: Postgres advisory locks as leases.

Every process holds a membership lock for as long as its session lives, and one lock per
partition it applies. Postgres releases a dead process's locks when its connection drops (a
SIGKILL closes the socket at once), so the survivors see fewer members on their next look and
claim the partitions that came free. Each process aims at a fair share, ceil(partitions /
members): it claims free partitions up to it, and hands back what it holds beyond it.

A lease is an optimisation, not what keeps the read models right: the checkpoint lock in
`Applier` serialises an order's events even if two processes ever consumed one partition.
"""

from __future__ import annotations

import math
import random

import asyncpg

from ordersaga import db
from ordersaga.settings import Settings

MEMBER_CLASS = 0x4F53_0001  # "OS" + 1: a live projector process
PARTITION_CLASS = 0x4F53_0002  # "OS" + 2: one partition's lease

_HOLDERS = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND classid = $1::bigint::oid AND objsubid = 2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


class Claims:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._partitions = settings.nats.partitions
        self._conn: asyncpg.Connection | None = None
        self.held: set[int] = set()

    async def join(self) -> None:
        self._conn = await db.connect(self._settings, "ordersaga-projector-claims")
        self.held = set()
        while not await self._conn.fetchval(
            "SELECT pg_try_advisory_lock($1, $2)", MEMBER_CLASS, random.randrange(1, 2**31)
        ):
            pass  # a collision of random keys: draw again

    async def leave(self) -> None:
        if self._conn is not None:
            await self._conn.close()  # releases every lock this process holds
            self._conn = None
        self.held = set()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def members(self) -> int:
        assert self._conn is not None
        return int(await self._conn.fetchval(_HOLDERS, MEMBER_CLASS))

    async def rebalance(self) -> tuple[set[int], set[int]]:
        """(partitions claimed now, partitions to hand back); raises if the session is gone."""
        assert self._conn is not None
        fair = math.ceil(self._partitions / max(await self.members(), 1))
        if len(self.held) > fair:
            return set(), set(sorted(self.held)[fair:])
        claimed: set[int] = set()
        # Start the search at a random partition, so that processes do not all race for 0.
        start = random.randrange(self._partitions)
        for i in range(self._partitions):
            if len(self.held) >= fair:
                break
            partition = (start + i) % self._partitions
            if partition in self.held:
                continue
            if await self._conn.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", PARTITION_CLASS, partition
            ):
                self.held.add(partition)
                claimed.add(partition)
        return claimed, set()

    async def release(self, partition: int) -> None:
        assert self._conn is not None
        await self._conn.fetchval("SELECT pg_advisory_unlock($1, $2)", PARTITION_CLASS, partition)
        self.held.discard(partition)
