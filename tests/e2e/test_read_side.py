"""The read side under poison, crashes and redelivery, against the stack's own projector process."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga import events
from ordersaga.devstack import DevStack
from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings
from tests.helpers import (
    HAPPY_PATH,
    append,
    cli,
    eventually,
    fake_events,
    order_body,
    place,
    publish,
    read_side_caught_up,
    stocked_sku,
    unique,
    wait_terminal,
    waiting_on_lock,
)

pytestmark = pytest.mark.e2e


async def _version(api: httpx.AsyncClient, order_id: str) -> int:
    response = await api.get(f"/orders/{order_id}")
    return int(response.json()["version"]) if response.status_code == 200 else 0


async def _customer_version(engine: AsyncEngine, order_id: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text("SELECT version FROM readmodel.customer_orders WHERE order_id = :o"),
            {"o": order_id},
        )
        return int(found.scalar_one_or_none() or 0)


async def _dead_letters(engine: AsyncEngine, order_id: str) -> list[dict[str, Any]]:
    """The order's open dead letters, from the table, in the order `deadletters list` prints."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT id, projection, order_id, version, event_type, deliveries, state, error "
                "FROM projections.dead_letters WHERE order_id = :o AND resolved_at IS NULL "
                "ORDER BY projection, order_id, version, id"
            ),
            {"o": order_id},
        )
        return [dict(r._mapping) for r in rows]


def _listed_by_the_cli(settings: Settings, *args: str) -> list[dict[str, Any]]:
    """What `ordersaga deadletters list ARGS` prints, as an operator runs it."""
    listed = cli(settings, "deadletters", "list", *args)
    assert listed.returncode == 0, listed.stderr
    found: list[dict[str, Any]] = json.loads(listed.stdout)
    return found


async def test_poison_is_dead_lettered_while_other_orders_flow_and_its_order_waits(
    settings: Settings, api: httpx.AsyncClient, engine: AsyncEngine, nc: NATS
) -> None:
    js = nc.jetstream()
    poisoned, healthy = str(uuid.uuid4()), str(uuid.uuid4())
    # A producer bug: a NUL character, which JSON carries and the contract (as Postgres jsonb)
    # refuses.
    bad = fake_events(
        poisoned, unique("c"), unique("sku"), overrides={2: {"lines": {"x\u0000": 1}}}
    )
    await publish(js, settings, bad[:3])
    await publish(js, settings, fake_events(healthy, unique("c"), unique("sku")))

    async def dead_lettered() -> list[dict[str, Any]] | None:
        found = await _dead_letters(engine, poisoned)
        return found if len(found) == 2 else None

    found = await eventually(dead_lettered, 30, "the poison and its follower to be dead-lettered")
    assert [(d["version"], d["state"], d["projection"]) for d in found] == [
        (2, "failed", "orders"),
        (3, "waiting", "orders"),
    ]
    # The contract refuses it before Postgres could: the error names the payload's model.
    assert "InventoryReservedV1" in found[0]["error"], found[0]["error"]
    assert found[0]["deliveries"] == settings.projector.max_attempts
    # Other orders flowed meanwhile; the poisoned order stopped before its poison.
    await eventually(
        lambda: _at_least(api, healthy, 5), 30, "the healthy order to be fully applied"
    )
    assert await _version(api, poisoned) == 1
    # Other projections were not held back: the NUL never reaches their tables.
    assert await _customer_version(engine, poisoned) == 3
    # A later event of the poisoned order waits behind it, too.
    await publish(js, settings, bad[3:4])
    await eventually(
        lambda: _count_waiting(engine, poisoned, 2), 30, "the later event to be parked"
    )
    assert await _version(api, poisoned) == 1

    # Retrying does not help (the event is bad), and says so; discarding skips it.
    retried = cli(settings, "deadletters", "retry", str(found[0]["id"]))
    assert retried.returncode == 1 and "stays" in retried.stderr
    discarded = cli(settings, "deadletters", "discard", str(found[0]["id"]))
    assert discarded.returncode == 0, discarded.stderr
    assert "2 parked event(s) of the order applied" in discarded.stdout
    order = (await api.get(f"/orders/{poisoned}")).json()
    assert (order["version"], order["status"]) == (4, "PAYMENT_CAPTURED")
    assert [t["version"] for t in order["timeline"]] == [1, 3, 4]
    assert await _dead_letters(engine, poisoned) == []
    # From now on the order's events flow again.
    await publish(js, settings, bad[4:])
    await eventually(lambda: _at_least(api, poisoned, 5), 30, "the order's last event")


async def _at_least(api: httpx.AsyncClient, order_id: str, version: int) -> bool | None:
    return True if await _version(api, order_id) >= version else None


async def _count_waiting(engine: AsyncEngine, order_id: str, n: int) -> bool | None:
    waiting = [d for d in await _dead_letters(engine, order_id) if d["state"] == "waiting"]
    return True if len(waiting) == n else None


async def test_a_dead_letter_retried_after_the_fix_applies_with_what_waited(
    settings: Settings, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # A deployment bug, stood in for by a constraint: this customer's history rows fail.
    customer = unique("broken")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "ALTER TABLE readmodel.customer_orders ADD CONSTRAINT test_broken "
                f"CHECK (customer_id <> '{customer}') NOT VALID"
            )
        )
    try:
        sku = await stocked_sku(api, 5)
        order_id = await place(api, order_body(sku, customer_id=customer))
        await wait_terminal(api, order_id)  # the saga and the order read model are unaffected

        async def parked() -> list[dict[str, Any]] | None:
            found = await _dead_letters(engine, order_id)
            return found if len(found) == 5 else None

        found = await eventually(parked, 30, "placed to fail and the rest to wait")
        assert [d["state"] for d in found] == ["failed"] + ["waiting"] * 4
        assert {d["projection"] for d in found} == {"customer_orders"}
        assert "test_broken" in found[0]["error"]
    finally:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("ALTER TABLE readmodel.customer_orders DROP CONSTRAINT test_broken")
            )
    retried = cli(settings, "deadletters", "retry", str(found[0]["id"]))
    assert retried.returncode == 0, retried.stderr
    assert "5 event(s)" in retried.stdout
    history = (await api.get(f"/customers/{customer}/orders")).json()
    assert [(o["order_id"], o["status"], o["version"]) for o in history["items"]] == [
        (order_id, "CONFIRMED", 5)
    ]
    # The one look through `ordersaga deadletters list` itself (the probes read the table).
    resolved = [d for d in _listed_by_the_cli(settings, "--all") if d["order_id"] == order_id]
    assert {d["state"] for d in resolved} == {"retried"}


async def test_a_projector_killed_mid_batch_resumes_with_nothing_lost_or_doubled(
    stack: DevStack,
    settings: Settings,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    nc: NATS,
    store: EventStore,
) -> None:
    js = nc.jetstream()
    sku, customer = unique("sku"), unique("kill")
    orders = [str(uuid.uuid4()) for _ in range(300)]
    stored = await append(
        store, [e for o in orders for e in fake_events(o, customer, sku, quantity=2, unit_price=7)]
    )
    projector = stack.parts["projector"]
    restarts = projector.restarts
    await publish(js, settings, stored)

    async def partly_applied() -> bool | None:
        async with engine.connect() as conn:
            done = await conn.execute(
                sa.text("SELECT count(*) FROM readmodel.orders WHERE order_id = ANY(:ids)"),
                {"ids": orders},
            )
            return True if done.scalar_one() > 0 else None

    await eventually(partly_applied, 30, "the projector to be applying")
    projector.kill()  # SIGKILL: whatever batch is open rolls back, its acks never happen

    async def restarted() -> bool | None:
        return True if projector.restarts > restarts else None

    await eventually(restarted, 30, "the supervisor to restart it")
    await read_side_caught_up(api, js, settings, timeout=60)
    async with engine.connect() as conn:
        versions = await conn.execute(
            sa.text("SELECT version, count(*) FROM readmodel.orders WHERE order_id = ANY(:ids) "
                    "GROUP BY version"),
            {"ids": orders},
        )  # fmt: skip
        assert {v: n for v, n in versions} == {5: len(orders)}
    today = datetime.now(UTC).date().isoformat()
    report = (
        await api.get("/reports/sales", params={"from": today, "to": today, "sku": sku})
    ).json()
    # Sales add up: a doubled (or lost) confirmation would show here.
    assert report["totals"] == [
        {"sku": sku, "currency": "EUR", "orders": 300, "units": 600, "revenue": 4200}
    ]
    history = (await api.get(f"/customers/{customer}/orders", params={"limit": 200})).json()
    assert len(history["items"]) == 200 and history["next_cursor"] is not None


async def test_min_version_returns_as_soon_as_the_version_is_applied(
    settings: Settings, api: httpx.AsyncClient, engine: AsyncEngine, store: EventStore
) -> None:
    sku = await stocked_sku(api, 5)
    order_id = await place(api, order_body(sku))
    await wait_terminal(api, order_id)
    # Beyond the stream: answers after the bound with what it has, marked stale.
    response = await api.get(f"/orders/{order_id}", params={"min_version": 6})
    assert response.status_code == 200
    assert response.headers["read-model-stale"] == "true"
    assert response.headers["read-model-version"] == "5"

    # Hold the orders read model, and ask for a version it has not applied yet.
    second = await place(api, order_body(sku))
    loop = asyncio.get_running_loop()
    async with engine.connect() as blocker:
        await blocker.execute(sa.text("LOCK TABLE readmodel.orders IN EXCLUSIVE MODE"))
        asked = loop.time()
        request = asyncio.create_task(api.get(f"/orders/{second}", params={"min_version": 5}))

        async def saga_done() -> bool | None:
            return True if await store.version(second) >= 5 else None

        await eventually(saga_done, 30, "the saga to record its last event")
        await eventually(
            waiting_on_lock(engine, "readmodel.orders"), 30, "the projector to wait on our lock"
        )
        # Every event is stored and the projector is held: the request must still be waiting.
        assert not request.done()
        await blocker.rollback()  # from here on, only the projector's work remains
    response = await request
    answered = loop.time()
    assert response.status_code == 200
    assert "read-model-stale" not in response.headers
    assert response.json()["version"] == 5
    # It answered after the release (it was still waiting above) with what the projector applied
    # after it. Without a notification the API would have looked again only at its poll (every
    # 30 s in these tests) or once more when its bound ran out, `min_version_timeout` after the
    # request reached it: no sooner than `asked + bound`. An answer before that was woken by the
    # projector's notification, however slow the machine.
    bound = settings.api.min_version_timeout
    assert bound < settings.api.min_version_poll_s
    assert answered < asked + bound, (
        f"answered {answered - asked:.2f}s after asking: at the API's bound of {bound}s, "
        "not on a notification"
    )
    bad = await api.get(f"/orders/{second}", params={"min_version": 0})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["query", "min_version"]


async def test_the_notifier_records_one_message_per_terminal_event_even_when_redelivered(
    settings: Settings, api: httpx.AsyncClient, engine: AsyncEngine, nc: NATS, store: EventStore
) -> None:
    sku = await stocked_sku(api, 5)
    confirmed = await place(api, order_body(sku, quantity=2, unit_price=1250))
    cancelled = await place(api, order_body(sku, token="tok_decline"))
    await wait_terminal(api, confirmed)
    await wait_terminal(api, cancelled)

    async def outbox() -> Sequence[Any] | None:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT order_id, event_type, subject, body FROM notifications.outbox "
                        "WHERE order_id = ANY(:ids) ORDER BY event_type"
                    ),
                    {"ids": [confirmed, cancelled]},
                )
            ).all()
        return rows if len(rows) == 2 else None

    rows = await eventually(outbox, 30, "both notifications")
    by_order = {r.order_id: r for r in rows}
    assert by_order[confirmed].event_type == "order.confirmed"
    assert by_order[confirmed].subject.endswith("is confirmed (25.00 EUR)")
    assert by_order[cancelled].body["reason"] == "payment_declined"

    # The same terminal events again, as a redelivery (fresh message ids get past dedup).
    js = nc.jetstream()
    for order_id in (confirmed, cancelled):
        last = (await store.read_stream(order_id))[-1]
        await js.publish(
            events.subject_for(settings.nats.subject_prefix, order_id, last.event_type),
            events.encode(last),
            headers={"Nats-Msg-Id": f"again-{last.event_id}"},
        )

    async def notifier_idle() -> bool | None:
        info = await js.consumer_info(settings.nats.stream, settings.notifier.durable)
        return True if info.num_pending == 0 and info.num_ack_pending == 0 else None

    await eventually(notifier_idle, 30, "the notifier to take the redeliveries")
    assert await outbox() is not None  # still exactly two


async def test_events_tail_prints_an_orders_events_decoded(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    sku = await stocked_sku(api, 5)
    order_id = await place(api, order_body(sku))
    await wait_terminal(api, order_id)
    tailed = cli(settings, "events", "tail", "--order", order_id, "--since", "1h", "--count", "5")
    assert tailed.returncode == 0, tailed.stderr
    lines = tailed.stdout.splitlines()
    assert [line.split()[1] for line in lines] == list(HAPPY_PATH)
    assert all(order_id in line for line in lines)
    only = cli(settings, "events", "tail", "--type", "confirmed", "--order", order_id,
               "--since", "1h", "--count", "1")  # fmt: skip
    assert only.stdout.split()[1:4] == ["order.confirmed", order_id, "v5"]
    wrong = cli(settings, "events", "tail", "--type", "teleported")
    assert wrong.returncode == 1 and "unknown event type" in wrong.stderr


async def test_bus_setup_is_idempotent_and_describe_shows_the_topology(
    settings: Settings,
) -> None:
    first = cli(settings, "bus", "setup")
    assert first.returncode == 0, first.stderr
    again = cli(settings, "bus", "setup")
    assert f"stream {settings.nats.stream}: unchanged" in again.stdout
    assert f"stream {settings.nats.partitioned_stream}: unchanged" in again.stdout
    described = cli(settings, "bus", "describe")
    assert described.returncode == 0, described.stderr
    topology = json.loads(described.stdout)
    orders = topology[settings.nats.stream]
    assert orders["subjects"] == ["orders.>"]
    assert (orders["replicas"], orders["storage"], orders["duplicate_window_s"]) == (
        1,
        "file",
        86400,
    )
    assert settings.notifier.durable in orders["consumers"]
    partitioned = topology[settings.nats.partitioned_stream]
    assert partitioned["sources"][0]["transforms"] == [
        "orders.*.* -> orders-p.{{partition(4,1)}}.{{wildcard(1)}}.{{wildcard(2)}}"
    ]
    assert sorted(partitioned["consumers"]) == [f"projector-{i}" for i in range(4)]


async def test_customer_history_and_sales_report_follow_the_sagas(
    settings: Settings, api: httpx.AsyncClient, nc: NATS
) -> None:
    sku = await stocked_sku(api, 10)
    customer = unique("history")
    first = await place(api, order_body(sku, quantity=3, unit_price=250, customer_id=customer))
    await wait_terminal(api, first)
    second = await place(api, order_body(sku, token="tok_decline", customer_id=customer))
    await wait_terminal(api, second)
    await read_side_caught_up(api, nc.jetstream(), settings)

    history = (await api.get(f"/customers/{customer}/orders")).json()
    assert [(o["order_id"], o["status"]) for o in history["items"]] == [
        (second, "CANCELLED"),
        (first, "CONFIRMED"),
    ]
    assert history["items"][1]["item_count"] == 3
    page = (await api.get(f"/customers/{customer}/orders", params={"limit": 1})).json()
    rest = (
        await api.get(
            f"/customers/{customer}/orders", params={"limit": 1, "cursor": page["next_cursor"]}
        )
    ).json()
    assert [o["order_id"] for o in page["items"] + rest["items"]] == [second, first]
    assert rest["next_cursor"] is None

    today = datetime.now(UTC).date().isoformat()
    report = (
        await api.get("/reports/sales", params={"from": today, "to": today, "sku": sku})
    ).json()
    assert report["from"] == today
    assert report["rows"] == [
        {"day": today, "sku": sku, "currency": "EUR", "orders": 1, "units": 3, "revenue": 750}
    ]
    backwards = await api.get("/reports/sales", params={"from": today, "to": "2000-01-01"})
    assert backwards.status_code == 422
    assert backwards.json()["errors"][0]["loc"] == ["query", "to"]
    missing = await api.get("/reports/sales", params={"to": today})
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["loc"] == ["query", "from"]
