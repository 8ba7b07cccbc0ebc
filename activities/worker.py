"""Composition root of the worker process: it hosts the saga workflow and these activities.

settings -> asyncpg pool (event store and participants) -> Temporal client -> Worker. It never
talks to NATS: activities write to the event store, and the relay publishes.
"""

from __future__ import annotations

import asyncio
import logging

from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.participants import PostgresInventory, PostgresPayments, PostgresShipping
from activities.saga import OrderActivities
from ordersaga import runtime
from ordersaga.settings import Settings
from workflows.order_saga import OrderSaga

log = logging.getLogger(__name__)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or runtime.stop_event()
    async with runtime.open_resources(settings, "worker") as res:
        # One asyncpg pool for the event store and the participants (an activity holds one
        # connection at a time): as many connections as the engine (pool_size + overflow) and
        # the store's pool it replaces could open together.
        pool = await res.pool(size=3 * settings.database.pool_size)
        activities = OrderActivities(
            await res.store(),
            PostgresInventory(pool),
            PostgresPayments(pool),
            PostgresShipping(pool),
        )
        client = await res.temporal()
        await runtime.ensure_search_attributes(client, settings)
        worker = Worker(
            client,
            task_queue=settings.temporal.task_queue,
            workflows=[OrderSaga],
            activities=activities.all(),
            max_concurrent_activities=settings.temporal.max_concurrent_activities,
            max_concurrent_workflow_tasks=settings.temporal.max_concurrent_workflow_tasks,
            max_concurrent_local_activities=settings.temporal.max_concurrent_activities,
            workflow_runner=(
                SandboxedWorkflowRunner()
                if settings.temporal.workflow_sandbox
                else UnsandboxedWorkflowRunner()
            ),
        )
        async with worker:
            log.info("worker polling task queue %r", settings.temporal.task_queue)
            await stop.wait()
