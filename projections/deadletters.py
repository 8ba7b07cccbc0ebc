"""Operator actions on dead letters: list, retry (after a fix), discard (skip the event).

The read models' dead letters and the notifier's (projection `notifications`) share the table
and the actions: retrying a notification asks the API for the order again and records it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ordersaga import events
from ordersaga.settings import Settings, get_settings
from projections import notifier
from projections.base import OrderEvent
from projections.queries import APPLIED_CHANNEL
from projections.runtime import Applier, storable


class DeadLetterError(Exception):
    """The action could not be done; the message says why."""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    projection: str
    order_id: str
    version: int
    event_type: str | None
    stream_seq: int
    deliveries: int
    state: str
    error: str
    created_at: datetime
    resolved_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in vars(self).items()}


_COLUMNS = (
    "id, projection, order_id, version, event_type, stream_seq, deliveries, state, error, "
    "created_at, resolved_at"
)


async def list_dead_letters(
    engine: AsyncEngine, projection: str | None = None, *, resolved: bool = False
) -> list[DeadLetter]:
    where = ["(CAST(:p AS text) IS NULL OR projection = :p)"]
    if not resolved:
        where.append("resolved_at IS NULL")
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                f"SELECT {_COLUMNS} FROM projections.dead_letters WHERE {' AND '.join(where)} "
                "ORDER BY projection, order_id, version, id"
            ),
            {"p": projection},
        )
        return [DeadLetter(**r._mapping) for r in rows]


async def _open_of_order(conn: AsyncConnection, projection: str, order_id: str) -> list[Any]:
    rows = await conn.execute(
        sa.text(
            "SELECT id, version, payload FROM projections.dead_letters "
            "WHERE projection = :p AND order_id = :o AND resolved_at IS NULL "
            "ORDER BY version, id FOR UPDATE"
        ),
        {"p": projection, "o": order_id},
    )
    return list(rows)


async def _the(conn: AsyncConnection, dead_letter_id: int) -> Any:
    row = (
        await conn.execute(
            sa.text(
                "SELECT projection, order_id, version, resolved_at, state "
                "FROM projections.dead_letters WHERE id = :id FOR UPDATE"
            ),
            {"id": dead_letter_id},
        )
    ).one_or_none()
    if row is None:
        raise DeadLetterError(f"no dead letter {dead_letter_id}")
    if row.resolved_at is not None:
        raise DeadLetterError(f"dead letter {dead_letter_id} is resolved already ({row.state})")
    return row


async def _notify_again(engine: AsyncEngine, dead_letter_id: int, settings: Settings) -> int:
    """A notification's dead letter: ask the API for the order again and record the message.

    Notifications do not depend on each other, so nothing is parked behind one: one resolved.
    No transaction is open while the API answers (an open one would hold back every reader of
    the event store's feed); the letter is resolved and the message recorded together after,
    once: a second operator's retry finds it resolved, and the outbox is unique per event.
    """
    async with engine.connect() as conn:
        payload = (
            await conn.execute(
                sa.text("SELECT payload FROM projections.dead_letters WHERE id = :id"),
                {"id": dead_letter_id},
            )
        ).scalar_one()
    event = OrderEvent.from_cloudevent(events.decode(bytes(payload)))
    async with notifier.api_client(settings) as http:
        row = await notifier.message(http, event)
    async with engine.begin() as conn:
        resolved = await conn.execute(
            sa.text(
                "UPDATE projections.dead_letters SET state = 'retried', resolved_at = now() "
                "WHERE id = :id AND resolved_at IS NULL RETURNING id"
            ),
            {"id": dead_letter_id},
        )
        if resolved.first() is None:
            raise DeadLetterError(f"dead letter {dead_letter_id} was resolved meanwhile")
        # In this transaction (begun by the UPDATE above: SQLAlchemy's adapter starts it at the
        # first statement), so the letter is resolved and the message recorded, or neither.
        await notifier.record((await conn.get_raw_connection()).driver_connection, row)
    return 1


async def retry(
    engine: AsyncEngine,
    appliers: dict[str, Applier],
    dead_letter_id: int,
    settings: Settings | None = None,
) -> int:
    """Apply the order's dead-lettered and parked events again, in version order; for the
    notifier's dead letter, write the notification (from the API at `settings`, by default this
    process's).

    Returns how many were resolved. On failure nothing changes but the recorded error.
    """
    try:
        async with engine.connect() as conn:
            projection = (await _the(conn, dead_letter_id)).projection
        if projection == notifier.PROJECTION:
            return await _notify_again(engine, dead_letter_id, settings or get_settings())
        async with engine.begin() as conn:
            row = await _the(conn, dead_letter_id)
            applier = appliers.get(row.projection)
            if applier is None:
                raise DeadLetterError(f"this process does not run projection {row.projection!r}")
            pending = await _open_of_order(conn, row.projection, row.order_id)
            batch = [OrderEvent.from_cloudevent(events.decode(bytes(r.payload))) for r in pending]
            await applier.apply(conn, batch, release=True)
            await conn.execute(
                sa.text(
                    "UPDATE projections.dead_letters SET state = 'retried', resolved_at = now() "
                    "WHERE id = ANY(:ids)"
                ),
                {"ids": [r.id for r in pending]},
            )
            await conn.execute(
                sa.text(f"SELECT pg_notify('{APPLIED_CHANNEL}', :p)"), {"p": row.projection}
            )
            return len(pending)
    except DeadLetterError:
        raise
    except Exception as error:
        message = storable(f"{type(error).__name__}: {error}")
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "UPDATE projections.dead_letters SET error = :e, deliveries = deliveries + 1 "
                    "WHERE id = :id"
                ),
                {"e": message[:4000], "id": dead_letter_id},
            )
        raise DeadLetterError(f"retry failed, the dead letter stays: {message}") from error


async def discard(
    engine: AsyncEngine,
    appliers: dict[str, Applier],
    dead_letter_id: int,
    settings: Settings | None = None,
) -> str:
    """Skip this event for its projection; then the order's parked events are retried."""
    async with engine.begin() as conn:
        row = await _the(conn, dead_letter_id)
        await conn.execute(
            sa.text(
                "SELECT 1 FROM projections.checkpoints WHERE projection = :p AND order_id = :o "
                "FOR UPDATE"
            ),
            {"p": row.projection, "o": row.order_id},
        )
        await conn.execute(
            sa.text(
                "UPDATE projections.dead_letters SET state = 'discarded', resolved_at = now() "
                "WHERE id = :id"
            ),
            {"id": dead_letter_id},
        )
        remaining = await _open_of_order(conn, row.projection, row.order_id)
        if not any(r.version < row.version for r in remaining):
            # Everything before it is applied: the projection moves past it.
            await conn.execute(
                sa.text(
                    "UPDATE projections.checkpoints SET version = GREATEST(version, :v) "
                    "WHERE projection = :p AND order_id = :o"
                ),
                {"v": row.version, "p": row.projection, "o": row.order_id},
            )
    if not remaining:
        return "discarded"
    try:
        resolved = await retry(engine, appliers, remaining[0].id, settings)
    except DeadLetterError as error:
        return f"discarded; the order's other dead letters stay: {error}"
    return f"discarded; {resolved} parked event(s) of the order applied"
