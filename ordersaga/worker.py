"""Composition root of the worker process: settings -> engine -> NATS -> Temporal -> Worker."""

from __future__ import annotations

import asyncio
import logging

from temporalio.worker import Worker

from ordersaga import bus, runtime
from ordersaga.activities.participants import (
    PostgresInventory,
    PostgresPayments,
    PostgresShipping,
)
from ordersaga.activities.saga import OrderActivities
from ordersaga.db import create_engine, create_pool
from ordersaga.events import order_upcasters
from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings
from ordersaga.workflows.order_saga import OrderSaga

log = logging.getLogger(__name__)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or runtime.stop_event()
    engine = create_engine(settings)
    pool = await create_pool(settings)
    nc = await bus.connect(settings, "worker")
    try:
        js = nc.jetstream()
        await bus.setup(js, settings)
        client = await runtime.connect_temporal(settings)
        await runtime.ensure_search_attributes(client, settings)
        activities = OrderActivities(
            EventStore(pool, order_upcasters()),
            bus.EventPublisher(js, settings),
            PostgresInventory(engine),
            PostgresPayments(engine),
            PostgresShipping(engine),
        )
        worker = Worker(
            client,
            task_queue=settings.temporal.task_queue,
            workflows=[OrderSaga],
            activities=activities.all(),
            max_concurrent_activities=settings.temporal.max_concurrent_activities,
            max_concurrent_workflow_tasks=settings.temporal.max_concurrent_workflow_tasks,
            max_concurrent_local_activities=settings.temporal.max_concurrent_activities,
        )
        async with worker:
            log.info("worker polling task queue %r", settings.temporal.task_queue)
            await stop.wait()
    finally:
        await nc.close()
        await pool.close()
        await engine.dispose()
