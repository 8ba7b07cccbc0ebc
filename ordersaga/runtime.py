"""What every process's composition root shares: logging, a stop signal, and `Resources`, the one
way a process opens what it holds (engine, pools, NATS, Temporal) and closes it in reverse order."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Collection, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, PydanticPayloadConverter
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode

from ordersaga import bus, db, versions
from ordersaga.domain import SEARCH_ATTRIBUTES
from ordersaga.events import order_upcasters
from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings
from ordersaga.tls import temporal_tls

T = TypeVar("T")


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Per-request lines of the HTTP client and Alembic's plugin chatter drown what matters.
    for noisy in ("httpx", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a process's main coroutine to its end, on uvloop where it is installed.

    uvloop's sockets and callbacks cost a fraction of asyncio's own loop, and every process of
    the stack spends much of its CPU there (Postgres, NATS and Temporal traffic). Without uvloop
    (Windows) the standard loop runs the same code.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: the process drains and exits cleanly."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event


# JSON payloads (the saga's dataclasses) through pydantic's compiled validators: the SDK's
# default converter walks type hints in Python on every value. One JSON converter serves the
# process, so its cache of type adapters does too: the worker makes a payload converter per
# workflow, and the SDK's own `PydanticPayloadConverter` makes a JSON converter (an empty cache)
# in each (measured dearer than the default per saga). Same JSON either way, so sagas started
# before replay with it (test_replay).
_JSON = PydanticJSONPlainPayloadConverter()


class PayloadConverter(PydanticPayloadConverter):
    """The SDK's pydantic payload converter, with the process's one JSON converter in it."""

    def __init__(self) -> None:
        super().__init__()
        self.converters = {
            encoding: _JSON if isinstance(c, PydanticJSONPlainPayloadConverter) else c
            for encoding, c in self.converters.items()
        }


DATA_CONVERTER = DataConverter(payload_converter_class=PayloadConverter)


async def connect_temporal(settings: Settings) -> Client:
    ts = settings.temporal
    return await Client.connect(
        settings.temporal_address(),
        namespace=ts.namespace,
        api_key=ts.api_key,
        tls=temporal_tls(ts.tls, api_key=ts.api_key is not None),
        data_converter=DATA_CONVERTER,
    )


async def ensure_search_attributes(client: Client, settings: Settings) -> None:
    """Register the saga's search attributes (the embedded server has them from its flags)."""
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=settings.temporal.namespace,
                search_attributes={
                    key.name: IndexedValueType.ValueType(int(key.indexed_value_type))
                    for key in SEARCH_ATTRIBUTES
                },
            )
        )
    except RPCError as error:
        if error.status != RPCStatusCode.ALREADY_EXISTS:
            raise


def search_attribute_flags() -> list[str]:
    """`--search-attribute Name=Type` flags for the Temporal dev server."""
    flags = []
    for key in SEARCH_ATTRIBUTES:
        kind = SearchAttributeIndexedValueType(key.indexed_value_type).name.title()
        flags += ["--search-attribute", f"{key.name}={kind}"]
    return flags


class Resources:
    """A process's connections, each opened on first use and closed (in reverse order) when the
    `open_resources` block ends, however it ends."""

    def __init__(self, settings: Settings, name: str, stack: AsyncExitStack) -> None:
        self.settings = settings
        self.name = name
        self._stack = stack
        self._engine: AsyncEngine | None = None
        self._pool: asyncpg.Pool | None = None
        self._store: EventStore | None = None
        self._nats: NATS | None = None
        self._temporal: Client | None = None

    # Every server is checked for its version on first use, before anything is changed on it:
    # too old a server stops the process with one line (versions.UnsupportedServer).

    async def engine(self, *, pool_size: int | None = None) -> AsyncEngine:
        if self._engine is None:
            engine = db.create_engine(self.settings, pool_size=pool_size)
            self._stack.push_async_callback(engine.dispose)
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                await versions.check_postgres(raw.driver_connection, db.where(self.settings))
            self._engine = engine
        return self._engine

    async def pool(self, *, size: int | None = None) -> asyncpg.Pool:
        if self._pool is None:
            pool = await self.own_pool(size=size)
            async with pool.acquire() as conn:
                await versions.check_postgres(conn, db.where(self.settings))
            self._pool = pool
        return self._pool

    async def own_pool(self, *, size: int | None = None) -> asyncpg.Pool:
        """A pool apart from `pool` (which the event store uses), for work that holds a
        connection while it reads the store: on one pool, enough of it at once would wait for
        each other's connections. (The server's version is checked by `pool`, which the store
        opens first.)"""
        pool = await db.create_pool(self.settings, size=size)
        self._stack.push_async_callback(pool.close)
        return pool

    async def store(self, *, pool_size: int | None = None) -> EventStore:
        """The event store (order upcasters) on this process's asyncpg pool."""
        if self._store is None:
            self._store = EventStore(await self.pool(size=pool_size), order_upcasters())
            self._stack.push_async_callback(self._store.close)
        return self._store

    async def nats(self) -> NATS:
        if self._nats is None:
            nc = await bus.connect(self.settings, self.name)
            self._stack.push_async_callback(nc.close)
            await versions.check_nats(nc, self.settings.nats_where())
            self._nats = nc
        return self._nats

    async def jetstream(self, *, setup: bool = False) -> JetStreamContext:
        """JetStream; with `setup`, the streams and consumers are applied first (bus.setup)."""
        js = (await self.nats()).jetstream()
        if setup:
            await bus.setup(js, self.settings)
        return js

    async def temporal(self) -> Client:
        # The SDK's client holds no resource that needs closing.
        if self._temporal is None:
            client = await connect_temporal(self.settings)
            await versions.check_temporal(client, self.settings.temporal_address())
            self._temporal = client
        return self._temporal

    async def check_servers(
        self, servers: Collection[str] = ("postgres", "nats", "temporal")
    ) -> None:
        """Check `servers` (by default Postgres, NATS and Temporal) now, before anything else
        touches them."""
        if "postgres" in servers:
            await self.pool(size=1)
        if "nats" in servers:
            await self.nats()
        if "temporal" in servers:
            await self.temporal()

    async def enter(self, context: AbstractAsyncContextManager[T]) -> T:
        """Enter a context of the process's own; it is exited with the rest, in reverse order."""
        return await self._stack.enter_async_context(context)


@asynccontextmanager
async def open_resources(settings: Settings, name: str) -> AsyncIterator[Resources]:
    async with AsyncExitStack() as stack:
        yield Resources(settings, name, stack)
