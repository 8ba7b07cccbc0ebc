"""Rebuild a read model from the event store's global feed, and swap it in while the service runs.

The replay fills a fresh table from the feed; then, in one transaction that locks the live table
(the projector waits on it for that moment), it applies what was appended meanwhile and renames
the fresh table into place. The projector carries on against the new table: each row's version
guards it, so events it receives again are skipped and later ones apply. Events an operator
discarded for this projection (dead letters) stay skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from ordersaga.eventstore import EventStore, FeedPosition
from projections.base import OrderEvent
from projections.orders import LIVE_TABLE, OrderProjection

log = logging.getLogger(__name__)

REBUILD_TABLE = "readmodel.orders_rebuild"
BATCH = 1000


@dataclass(frozen=True)
class RebuildReport:
    events: int
    orders: int


async def _replay(
    conn: asyncpg.Connection, store: EventStore, projection: OrderProjection, after: FeedPosition
) -> tuple[FeedPosition, int]:
    """Apply every event of the feed after `after`; returns the new position and the count."""
    applied = 0
    discarded = {
        r["event_id"]
        for r in await conn.fetch(
            "SELECT event_id FROM projections.dead_letters "
            "WHERE projection = $1 AND state = 'discarded'",
            projection.name,
        )
    }
    while True:
        batch = await store.read_all(after, BATCH, event_types=sorted(projection.event_types))
        if not batch:
            return after, applied
        await projection.apply(
            conn, [OrderEvent.from_stored(e) for e in batch if e.event_id not in discarded]
        )
        applied += len(batch)
        after = batch[-1].feed_position


async def _indexes(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    """Index definition (from USING on, so without its name and table) -> index name."""
    rows = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes "
        "WHERE schemaname = 'readmodel' AND tablename = $1",
        table,
    )
    return {r["indexdef"].split(" USING ", 1)[1]: r["indexname"] for r in rows}


async def rebuild_orders(pool: asyncpg.Pool, store: EventStore) -> RebuildReport:
    """`pool`: not the store's (a replay holds its connection while it reads the store)."""
    projection = OrderProjection(table=REBUILD_TABLE)
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(f"DROP TABLE IF EXISTS {REBUILD_TABLE}")
            await conn.execute(f"CREATE TABLE {REBUILD_TABLE} (LIKE {LIVE_TABLE} INCLUDING ALL)")
        position, total = FeedPosition(), 0
        while True:  # catch up in batches, each its own transaction
            async with conn.transaction():
                position, applied = await _replay(conn, store, projection, position)
            total += applied
            if applied == 0:
                break
            log.info("rebuild: %d events replayed", total)
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {LIVE_TABLE} IN ACCESS EXCLUSIVE MODE")
            position, applied = await _replay(conn, store, projection, position)
            total += applied
            names = await _indexes(conn, "orders")
            await conn.execute("ALTER TABLE readmodel.orders RENAME TO orders_replaced")
            await conn.execute("ALTER TABLE readmodel.orders_rebuild RENAME TO orders")
            await conn.execute("DROP TABLE readmodel.orders_replaced")
            # LIKE ... INCLUDING ALL named the copies after the new table: give them (and the
            # primary key constraint, which follows its index) the names the migrations know.
            for definition, fresh_name in (await _indexes(conn, "orders")).items():
                if definition in names and names[definition] != fresh_name:
                    await conn.execute(
                        f'ALTER INDEX readmodel."{fresh_name}" RENAME TO "{names[definition]}"'
                    )
            orders = await conn.fetchval(f"SELECT count(*) FROM {LIVE_TABLE}")
    return RebuildReport(events=total, orders=int(orders))
