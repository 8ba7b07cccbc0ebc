"""The notifier against the stack's own notifier process: an order it cannot serve holds up no
other, and ends as a dead letter an operator can see and retry."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings
from projections import deadletters, notifier
from projections.runner import appliers
from tests.helpers import (
    append,
    cli,
    eventually,
    fake_events,
    order_body,
    place,
    publish,
    stocked_sku,
    unique,
    wait_terminal,
)

pytestmark = pytest.mark.e2e

# How long after their sagas end the other orders' notifications may take. Well inside the
# API's min_version wait (5 s) that each attempt at the poisoned order costs: a notifier that
# waits for it (one message at a time, as it used to) misses this by seconds.
OTHERS_WITHIN_S = 3.0


async def _outbox(engine: AsyncEngine, order_ids: Sequence[str]) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT order_id, event_type FROM notifications.outbox WHERE order_id = ANY(:ids)"
            ),
            {"ids": list(order_ids)},
        )
        return list(rows)


async def _dead_letters(engine: AsyncEngine, order_id: str) -> list[Any]:
    """The order's dead letters, every projection's, from the table itself."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT id, projection, version, event_type, deliveries, state, error, resolved_at "
                "FROM projections.dead_letters WHERE order_id = :o ORDER BY projection, version"
            ),
            {"o": order_id},
        )
        return list(rows)


async def _notification_letter(engine: AsyncEngine, order_id: str) -> Any | None:
    found = [d for d in await _dead_letters(engine, order_id) if d.projection == "notifications"]
    return found[0] if found else None


async def _notifier_holds_everything(js: JetStreamContext, settings: Settings) -> bool | None:
    """Every message of the notifier's consumer is delivered, and some are still unacked."""
    info = await js.consumer_info(settings.nats.stream, settings.notifier.durable)
    return True if info.num_pending == 0 and (info.num_ack_pending or 0) > 0 else None


async def test_an_order_the_notifier_cannot_serve_holds_up_no_other_and_is_dead_lettered(
    settings: Settings,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    projector_pool: asyncpg.Pool,
    nc: NATS,
    store: EventStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    js = nc.jetstream()
    # The poisoned order, as the issue saw it: the read side has its first event, but its
    # confirmation comes with a gap the event store cannot fill, so the projector dead-letters it
    # and the read model stays at version 1. Every notifier attempt then costs the API's whole
    # min_version wait before it answers stale.
    poisoned = str(uuid.uuid4())
    made_up = fake_events(poisoned, unique("cust"), unique("sku"))
    placed, confirmed = made_up[0], made_up[-1]
    await publish(js, settings, [placed])

    async def projected() -> bool | None:
        response = await api.get(f"/orders/{poisoned}")
        return True if response.status_code == 200 and response.json()["version"] == 1 else None

    # Version 1 first: otherwise the first attempts meet a quick 404, not the slow wait.
    await eventually(projected, 30, "the poisoned order's first event on the read side")
    await publish(js, settings, [confirmed])
    await eventually(
        lambda: _notifier_holds_everything(js, settings), 30, "the notifier to take the poison"
    )

    # Now the other orders, while the notifier is on the poisoned one.
    sku = await stocked_sku(api, 20)
    bodies = [order_body(sku) for _ in range(4)] + [
        order_body(sku, token="tok_decline") for _ in range(2)
    ]
    others = list(await asyncio.gather(*(place(api, body) for body in bodies)))
    for order_id in others:
        await wait_terminal(api, order_id)

    async def all_notified() -> list[Any] | None:
        rows = await _outbox(engine, others)
        return rows if len(rows) == len(others) else None

    rows = await eventually(all_notified, OTHERS_WITHIN_S, "every other order's notification")
    assert sorted(r.event_type for r in rows) == ["order.cancelled"] * 2 + ["order.confirmed"] * 4
    # ...well before the poisoned one's attempts ran out: it is neither recorded nor dead yet.
    assert await _outbox(engine, [poisoned]) == []
    assert await _notification_letter(engine, poisoned) is None

    letter = await eventually(
        lambda: _notification_letter(engine, poisoned), 60, "the notification to be dead-lettered"
    )
    assert (letter.version, letter.event_type, letter.state) == (5, "order.confirmed", "failed")
    assert letter.deliveries == settings.projector.max_attempts
    assert "read model has not applied version 5" in letter.error
    # Acked once dead-lettered: nothing of the notifier's is left pending or unacked.

    async def notifier_idle() -> bool | None:
        info = await js.consumer_info(settings.nats.stream, settings.notifier.durable)
        return True if info.num_pending == 0 and info.num_ack_pending == 0 else None

    await eventually(notifier_idle, 30, "the notifier to ack the dead-lettered message")
    listed = cli(settings, "deadletters", "list", "--projection", "notifications")
    assert listed.returncode == 0, listed.stderr
    assert [(d["id"], d["order_id"]) for d in json.loads(listed.stdout)].count(
        (letter.id, poisoned)
    ) == 1

    # The operator's fix: the missing events reach the event store; the read side's dead letters
    # are retried, then the notification's, which asks the API again and records the message.
    await append(store, made_up)
    by_name = appliers(store)
    for d in await _dead_letters(engine, poisoned):
        if d.projection != "notifications" and d.resolved_at is None:
            await deadletters.retry(projector_pool, by_name, d.id)

    # A retry whose message cannot be recorded, after its UPDATE marked the letter resolved: the
    # two are one transaction, so the letter stays open, with the error, and nothing is recorded.
    async def refused(conn: asyncpg.Connection, row: dict[str, Any]) -> None:
        raise RuntimeError("the outbox refused it")

    with monkeypatch.context() as patch:
        patch.setattr(notifier, "record", refused)
        with pytest.raises(deadletters.DeadLetterError, match="the outbox refused it"):
            await deadletters.retry(projector_pool, by_name, letter.id, settings)
    (kept,) = [d for d in await _dead_letters(engine, poisoned) if d.id == letter.id]
    assert (kept.state, kept.resolved_at) == ("failed", None)
    assert "the outbox refused it" in kept.error
    assert kept.deliveries == settings.projector.max_attempts + 1
    assert await _outbox(engine, [poisoned]) == []

    assert await deadletters.retry(projector_pool, by_name, letter.id, settings) == 1
    assert [(r.order_id, r.event_type) for r in await _outbox(engine, [poisoned])] == [
        (poisoned, "order.confirmed")
    ]
    (after,) = [d for d in await _dead_letters(engine, poisoned) if d.id == letter.id]
    assert after.state == "retried" and after.resolved_at is not None


def test_the_notifier_without_an_api_key_refuses_to_start(settings: Settings) -> None:
    keyless = settings.model_copy(
        update={"notifier": settings.notifier.model_copy(update={"api_key": None})}
    )
    done = cli(keyless, "notifier", timeout=30)
    assert done.returncode == 1
    assert "ORDERSAGA_NOTIFIER__API_KEY" in done.stderr
