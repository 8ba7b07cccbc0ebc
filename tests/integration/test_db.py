"""What every process's connections promise, against the real Postgres: a pooled asyncpg
connection is released without a round trip and clean, and an engine replaces a connection its
server closed before anyone uses it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import sqlalchemy as sa

from ordersaga.db import create_engine, create_pool
from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings
from tests.helpers import eventually


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
        # A type no event has: nothing to yield, so it listens and waits. (An event of its
        # own would reach the running stack's relay, which refuses a type that is not an order's.)
        feed = EventStore(pool).batches(poll_interval=0.05, event_types=["none.such"])
        waiting = asyncio.create_task(anext(feed))

        async def listening() -> bool | None:
            # A second connection was opened for its reads, and it holds the first: it listens.
            return True if pool.get_size() == 2 and pool.get_idle_size() == 1 else None

        await eventually(listening, timeout=10, what="the subscriber to hold its connection")
        waiting.cancel()
        async with asyncio.timeout(10):  # a listener left on it: no clean release
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        async with asyncio.timeout(10), pool.acquire() as one, pool.acquire() as other:
            for conn in (one, other):
                channels: list[Any] = await conn.fetch("SELECT * FROM pg_listening_channels()")
                assert channels == []
    finally:
        pool.terminate()  # close() would wait for a connection whose release failed


async def test_the_engine_replaces_a_connection_its_server_closed_before_anyone_uses_it(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    engine = create_engine(settings, pool_size=1)  # one connection: each checkout gets it again
    try:
        async with engine.connect() as conn:
            pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
        await pool.execute("SELECT pg_terminate_backend($1)", pid)  # as a restart would

        async def closed() -> bool | None:
            return True if driver.is_closed() else None

        await eventually(closed, timeout=10, what="asyncpg to see its socket close")

        async with engine.connect() as conn:  # no round trip found it closed: a new one
            again = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        assert again != pid
    finally:
        await engine.dispose()
