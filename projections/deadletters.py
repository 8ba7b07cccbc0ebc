"""Operator actions on dead letters: list, retry (after a fix), discard (skip the event).

The read models' dead letters and the notifier's (projection `notifications`) share the table
and the actions: retrying a notification asks the API for the order again and records it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

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
_RESOLVE = (
    "UPDATE projections.dead_letters SET state = 'retried', resolved_at = now() "
    "WHERE id = ANY($1::bigint[]) AND resolved_at IS NULL RETURNING id"
)


async def list_dead_letters(
    pool: asyncpg.Pool, projection: str | None = None, *, resolved: bool = False
) -> list[DeadLetter]:
    where = ["($1::text IS NULL OR projection = $1)"]
    if not resolved:
        where.append("resolved_at IS NULL")
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM projections.dead_letters WHERE {' AND '.join(where)} "
        "ORDER BY projection, order_id, version, id",
        projection,
    )
    return [DeadLetter(**r) for r in rows]


async def _open_of_order(
    conn: asyncpg.Connection, projection: str, order_id: str
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, version, payload FROM projections.dead_letters "
        "WHERE projection = $1 AND order_id = $2 AND resolved_at IS NULL "
        "ORDER BY version, id FOR UPDATE",
        projection,
        order_id,
    )
    return rows


async def _the(conn: asyncpg.Connection | asyncpg.Pool, dead_letter_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT projection, order_id, version, resolved_at, state "
        "FROM projections.dead_letters WHERE id = $1 FOR UPDATE",
        dead_letter_id,
    )
    if row is None:
        raise DeadLetterError(f"no dead letter {dead_letter_id}")
    if row["resolved_at"] is not None:
        raise DeadLetterError(f"dead letter {dead_letter_id} is resolved already ({row['state']})")
    return row


async def _notify_again(pool: asyncpg.Pool, dead_letter_id: int, settings: Settings) -> int:
    """A notification's dead letter: ask the API for the order again and record the message.

    Notifications do not depend on each other, so nothing is parked behind one: one resolved.
    No transaction is open while the API answers (an open one would hold back every reader of
    the event store's feed); the letter is resolved and the message recorded together after,
    once: a second operator's retry finds it resolved, and the outbox is unique per event.
    """
    payload = await pool.fetchval(
        "SELECT payload FROM projections.dead_letters WHERE id = $1", dead_letter_id
    )
    event = OrderEvent.from_cloudevent(events.decode(bytes(payload)))
    async with notifier.api_client(settings) as http:
        row = await notifier.message(http, event)
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(_RESOLVE, [dead_letter_id]) is None:
            raise DeadLetterError(f"dead letter {dead_letter_id} was resolved meanwhile")
        await notifier.record(conn, row)  # in the same transaction: both, or neither
    return 1


async def retry(
    pool: asyncpg.Pool,
    appliers: dict[str, Applier],
    dead_letter_id: int,
    settings: Settings | None = None,
) -> int:
    """Apply the order's dead-lettered and parked events again, in version order; for the
    notifier's dead letter, write the notification (from the API at `settings`, by default this
    process's). `pool`: not the appliers' event store's (the retry holds its connection while
    an applier may read the store).

    Returns how many were resolved. On failure nothing changes but the recorded error.
    """
    try:
        projection = (await _the(pool, dead_letter_id))["projection"]
        if projection == notifier.PROJECTION:
            return await _notify_again(pool, dead_letter_id, settings or get_settings())
        async with pool.acquire() as conn, conn.transaction():
            row = await _the(conn, dead_letter_id)
            applier = appliers.get(row["projection"])
            if applier is None:
                raise DeadLetterError(f"this process does not run projection {row['projection']!r}")
            pending = await _open_of_order(conn, row["projection"], row["order_id"])
            batch = [
                OrderEvent.from_cloudevent(events.decode(bytes(r["payload"]))) for r in pending
            ]
            await applier.apply(conn, batch, release=True)
            await conn.execute(_RESOLVE, [r["id"] for r in pending])
            await conn.execute(f"SELECT pg_notify('{APPLIED_CHANNEL}', $1)", row["projection"])
            return len(pending)
    except DeadLetterError:
        raise
    except Exception as error:
        message = storable(f"{type(error).__name__}: {error}")
        await pool.execute(
            "UPDATE projections.dead_letters SET error = $1, deliveries = deliveries + 1 "
            "WHERE id = $2",
            message[:4000],
            dead_letter_id,
        )
        raise DeadLetterError(f"retry failed, the dead letter stays: {message}") from error


async def discard(
    pool: asyncpg.Pool,
    appliers: dict[str, Applier],
    dead_letter_id: int,
    settings: Settings | None = None,
) -> str:
    """Skip this event for its projection; then the order's parked events are retried."""
    async with pool.acquire() as conn, conn.transaction():
        row = await _the(conn, dead_letter_id)
        projection, order_id, version = row["projection"], row["order_id"], row["version"]
        await conn.execute(
            "SELECT 1 FROM projections.checkpoints WHERE projection = $1 AND order_id = $2 "
            "FOR UPDATE",
            projection,
            order_id,
        )
        await conn.execute(
            "UPDATE projections.dead_letters SET state = 'discarded', resolved_at = now() "
            "WHERE id = $1",
            dead_letter_id,
        )
        remaining = await _open_of_order(conn, projection, order_id)
        if not any(r["version"] < version for r in remaining):
            # Everything before it is applied: the projection moves past it.
            await conn.execute(
                "UPDATE projections.checkpoints SET version = GREATEST(version, $1) "
                "WHERE projection = $2 AND order_id = $3",
                version,
                projection,
                order_id,
            )
    if not remaining:
        return "discarded"
    try:
        resolved = await retry(pool, appliers, remaining[0]["id"], settings)
    except DeadLetterError as error:
        return f"discarded; the order's other dead letters stay: {error}"
    return f"discarded; {resolved} parked event(s) of the order applied"
