"""Projector process: a durable JetStream pull consumer feeding the order projection."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga import bus, events, runtime
from ordersaga.db import create_engine, create_pool
from ordersaga.events import order_upcasters
from ordersaga.eventstore import EventStore
from ordersaga.projections.orders import OrderEvent, OrderProjection
from ordersaga.settings import Settings

log = logging.getLogger(__name__)

BATCH = 256
MAX_DELIVER = 20


async def process(engine: AsyncEngine, projection: OrderProjection, msg: Msg) -> None:
    """Apply one message in its own transaction, then ack; a failure naks it for a later retry."""
    try:
        event = OrderEvent.from_cloudevent(events.decode(msg.data))
        async with engine.begin() as conn:
            await projection.handle(conn, event)
    except Exception:
        log.exception(
            "projection failed on %s (delivery %s)", msg.subject, msg.metadata.num_delivered
        )
        await msg.nak(delay=min(2**msg.metadata.num_delivered, 30))
        return
    await msg.ack()


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or runtime.stop_event()
    engine = create_engine(settings, pool_size=2)
    pool = await create_pool(settings, size=2)
    nc = await bus.connect(settings, "projector")
    try:
        js = nc.jetstream()
        await bus.ensure_stream(js, settings)
        projection = OrderProjection(EventStore(pool, order_upcasters()))
        sub = await js.pull_subscribe(
            f"{settings.nats.subject_prefix}.>",
            durable=settings.nats.projector_durable,
            stream=settings.nats.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
                max_deliver=MAX_DELIVER,
            ),
        )
        log.info(
            "projector consuming %s as %s", settings.nats.stream, settings.nats.projector_durable
        )
        while not stop.is_set():
            try:
                msgs = await sub.fetch(BATCH, timeout=1)
            except (nats.errors.TimeoutError, TimeoutError):
                # Nothing new within the timeout: fetch raises instead of returning [].
                continue
            # In stream order, one at a time: events of one order must apply in version order.
            for msg in msgs:
                await process(engine, projection, msg)
    finally:
        await nc.close()
        await pool.close()
        await engine.dispose()
