"""The FastAPI application; its lifespan is the API process's composition root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ordersaga import bus, runtime
from ordersaga.activities.participants import PostgresInventory
from ordersaga.api import errors
from ordersaga.api.deps import AppContext
from ordersaga.api.progress import AppliedWatch
from ordersaga.api.routes import customers, health, inventory, orders, projections, reports
from ordersaga.db import create_engine, create_pool
from ordersaga.events import order_upcasters
from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or get_settings()
        engine = create_engine(s)
        pool = await create_pool(s)
        nc = await bus.connect(s, "api")
        watch = AppliedWatch(s)
        try:
            await watch.start()
            temporal = await runtime.connect_temporal(s)
            app.state.ctx = AppContext(
                s,
                engine,
                temporal,
                nc,
                EventStore(pool, order_upcasters()),
                PostgresInventory(engine),
                watch,
            )
            yield
        finally:
            await watch.stop()
            await nc.close()
            await pool.close()
            await engine.dispose()

    app = FastAPI(
        title="ordersaga",
        summary="Order sagas on Temporal, with every fact as an event.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(orders.router)
    app.include_router(inventory.router)
    app.include_router(customers.router)
    app.include_router(reports.router)
    app.include_router(projections.router)
    app.include_router(health.router)
    return app
