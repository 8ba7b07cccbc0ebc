"""The FastAPI application; its lifespan is the API process's composition root."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI

from api import errors
from api.deps import AppContext
from api.limits import BodyLimit
from api.progress import AppliedWatch
from api.routes import contracts, customers, health, inventory, orders, projections, reports
from ordersaga import runtime
from ordersaga.participants import Inventory
from ordersaga.settings import Settings, get_settings
from workflows.client import SagaClient


def create_app(
    settings: Settings | None = None,
    *,
    make_inventory: Callable[[asyncpg.Pool], Inventory],
) -> FastAPI:
    """`make_inventory` builds the inventory participant (the API knows only its Protocol)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or get_settings()
        async with runtime.open_resources(s, "api") as res:
            engine = await res.engine()
            pool = await res.pool()
            watch = await res.enter(AppliedWatch(s))
            temporal = await res.temporal()
            app.state.ctx = AppContext(
                s,
                engine,
                temporal,
                SagaClient(temporal, s.temporal.task_queue, s.api.update_timeout),
                await res.nats(),
                await res.store(),
                pool,
                make_inventory(pool),
                watch,
            )
            yield

    app = FastAPI(
        title="ordersaga",
        summary="Order sagas on Temporal, with every fact as an event.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=(settings or get_settings()).api.max_body_bytes)
    app.include_router(orders.router)
    app.include_router(inventory.router)
    app.include_router(customers.router)
    app.include_router(reports.router)
    app.include_router(projections.router)
    app.include_router(health.router)
    app.include_router(contracts.router)
    return app
