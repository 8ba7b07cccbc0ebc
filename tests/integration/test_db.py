"""The asyncpg pool every process uses for the event store's hot path, against the real Postgres."""

from __future__ import annotations

import uuid
from typing import Any

from ordersaga.db import create_pool
from ordersaga.eventstore import EventStore, NewEvent
from ordersaga.settings import Settings


async def test_a_release_sends_nothing_and_leaves_the_next_acquirer_a_clean_session(
    settings: Settings,
) -> None:
    pool = await create_pool(settings, size=1)  # one connection: every acquire gets it again
    sent: list[str] = []
    try:
        mine = ["BEGIN", "SELECT pg_current_xact_id()"]
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda q: sent.append(q.query))
            await conn.execute(mine[0])  # left open, as a cancelled caller would
            await conn.fetchval(mine[1])  # the transaction takes an id
        # asyncpg rolls the open transaction back, and sends no reset query after it.
        assert [q for q in sent if q not in mine] == ["ROLLBACK"]

        sent.clear()
        mine = ["SELECT pg_current_xact_id_if_assigned()"]
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval(mine[0]) is None
        assert [q for q in sent if q not in mine] == []  # a clean release: no round trip
    finally:
        await pool.close()


async def test_a_feed_subscriber_leaves_no_listen_on_its_pooled_connection(
    settings: Settings,
) -> None:
    pool = await create_pool(settings, size=2)  # the listener's, and the reader's
    try:
        store = EventStore(pool)
        happened = NewEvent(str(uuid.uuid4()), "test.happened", {"n": 1})
        await store.append(f"test-{uuid.uuid4()}", [happened])
        feed = store.batches(poll_interval=0.05)
        await anext(feed)  # listening, with at least that event
        await feed.aclose()
        async with pool.acquire() as one, pool.acquire() as other:
            for conn in (one, other):
                channels: list[Any] = await conn.fetch("SELECT * FROM pg_listening_channels()")
                assert channels == []
    finally:
        await pool.close()
