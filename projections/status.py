"""How far behind each projection is: JetStream's count of what it has not applied yet, the last
stream sequence and event time it applied, and its open dead letters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga import bus
from ordersaga.settings import Settings
from projections import PROJECTIONS


async def projection_status(
    js: JetStreamContext, engine: AsyncEngine, settings: Settings
) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        progress = {
            (r.projection, r.partition): r
            for r in await conn.execute(
                sa.text(
                    "SELECT projection, partition, stream_seq, event_time FROM projections.progress"
                )
            )
        }
        dead = {
            r.projection: int(r.n)
            for r in await conn.execute(
                sa.text(
                    "SELECT projection, count(*) AS n FROM projections.dead_letters "
                    "WHERE resolved_at IS NULL GROUP BY projection"
                )
            )
        }
    now = datetime.now(UTC)
    # One consumer per partition feeds every projection: what it has not acked, none has applied.
    pending: dict[int, int | None] = {}
    for partition in range(settings.nats.partitions):
        try:
            info = await js.consumer_info(
                settings.nats.partitioned_stream, bus.projector_durable(partition)
            )
            pending[partition] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        except NotFoundError:
            pending[partition] = None
    out = []
    for name in PROJECTIONS:
        partitions = []
        for partition in range(settings.nats.partitions):
            row = progress.get((name, partition))
            partitions.append(
                {
                    "partition": partition,
                    "consumer": bus.projector_durable(partition),
                    "lag": pending[partition],
                    "applied_stream_seq": row.stream_seq if row else 0,
                    "last_event_age_s": (
                        round((now - row.event_time).total_seconds(), 3)
                        if row and row.event_time
                        else None
                    ),
                }
            )
        known = [int(p["lag"]) for p in partitions if p["lag"] is not None]
        out.append(
            {
                "projection": name,
                "lag": sum(known) if known else None,
                "dead_letters": int(dead.get(name, 0)),
                "partitions": partitions,
            }
        )
    return out
