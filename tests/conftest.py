"""The embedded stack, started once per test session exactly as `ordersaga dev` starts it.

Free ports and a temporary data directory keep it apart from anything else on the machine; the
saga's retry policy is shortened so that retries cost milliseconds, not seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga import bus
from ordersaga.db import create_engine, create_pool
from ordersaga.devstack import DevStack, isolated_settings
from ordersaga.domain import SagaPolicy
from ordersaga.events import order_upcasters
from ordersaga.eventstore import EventStore
from ordersaga.settings import ProjectorSettings, Settings


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevStack]:
    settings = isolated_settings(
        tmp_path_factory.mktemp("stack"),
        SagaPolicy(
            step_max_attempts=5,
            compensation_max_attempts=5,
            initial_interval_s=0.2,
            max_interval_s=1.0,
            activity_timeout_s=5.0,
        ),
        # Poison is dead-lettered within a second; a dead process's batch comes back in 3 s.
        ProjectorSettings(
            max_attempts=3, backoff_s=[0.2, 0.5], ack_wait_s=3.0, claim_interval_s=0.5
        ),
    )
    # Only a notification can wake a min_version wait within the tests' bounds.
    settings.api.min_version_poll_s = 30.0
    # Few enough that a test can reach the bound on concurrent min_version waits.
    settings.api.max_min_version_waits = 8
    dev = DevStack(settings, ui=False)
    await dev.start()
    yield dev
    await dev.stop()


@pytest.fixture(scope="session")
def settings(stack: DevStack) -> Settings:
    return stack.settings


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(settings)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(settings)
    yield p
    await p.close()


@pytest.fixture(scope="session")
async def projector_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool apart from the store's, as the projector's transactions and an operator's dead
    letter actions have (they read the store while they hold a connection)."""
    p = await create_pool(settings, size=4)
    yield p
    await p.close()


@pytest.fixture(scope="session")
async def store(pool: asyncpg.Pool) -> AsyncIterator[EventStore]:
    s = EventStore(pool, order_upcasters())
    yield s
    await s.close()  # its pending coalesced NOTIFY, before the pool closes


@pytest.fixture(scope="session")
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    conn = await bus.connect(settings, "tests")
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
async def api(stack: DevStack, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API as an operator calls it: with the key the stack made."""
    base = f"http://{settings.api.host}:{settings.api.port}"
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as client:
        yield client
