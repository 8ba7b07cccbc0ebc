"""The bare baseline of shared/anchors/temporal_bare.py: a saga-shaped workflow of three no-op
activities, the same code, so `saga_e2e.py` can run it on the same server in the same run."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.converter import DataConverter
from temporalio.worker import Worker


@activity.defn
async def step(name: str) -> str:
    return name


@workflow.defn
class Saga3:
    @workflow.run
    async def run(self, oid: str) -> str:
        for s in ("reserve", "pay", "ship"):
            await workflow.execute_activity(step, s, start_to_close_timeout=timedelta(seconds=10))
        return oid


async def run_bare(client: Client, n: int) -> tuple[float, list[float]]:
    """N workflows through a fresh worker, as the anchor does; returns workflows per second, and
    each workflow's seconds from its start call to its result. The anchor's client has the SDK's
    default data converter, whatever `client` was given."""
    config = client.config()
    config["data_converter"] = DataConverter.default
    client = Client(**config)
    tq = "bare-" + uuid.uuid4().hex[:6]
    async with Worker(
        client,
        task_queue=tq,
        workflows=[Saga3],
        activities=[step],
        max_concurrent_workflow_tasks=200,
        max_concurrent_activities=200,
    ):
        await client.execute_workflow(Saga3.run, "w", id=f"w-{uuid.uuid4()}", task_queue=tq)

        async def start(i: int) -> tuple[WorkflowHandle[Any, str], float]:
            began = time.perf_counter()
            h = await client.start_workflow(
                Saga3.run, str(i), id=f"b-{uuid.uuid4()}", task_queue=tq
            )
            return h, began

        async def finish(h: WorkflowHandle[Any, str], began: float) -> float:
            await h.result()
            return time.perf_counter() - began

        t = time.perf_counter()
        hs = await asyncio.gather(*[start(i) for i in range(n)])
        latencies = await asyncio.gather(*[finish(h, began) for h, began in hs])
        return n / (time.perf_counter() - t), latencies
