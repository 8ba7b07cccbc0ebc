"""Read-your-writes wake-ups against the real Postgres: the projector's NOTIFY names the orders a
batch changed, and a `min_version` waiter looks again only when its own order changed (or when
a payload names no order), with nothing left behind once the waits end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from api.progress import AppliedWatch
from ordersaga.settings import Settings
from projections.queries import APPLIED_CHANNEL, applied_orders, applied_payload
from tests.helpers import eventually


def test_a_payload_names_the_orders_it_can_and_falls_back_to_every_order() -> None:
    payload = applied_payload("orders", {"b", "a"})
    assert payload == "orders a,b"
    assert applied_orders(payload) == ("orders", ["a", "b"])
    many = {f"{i:036d}" for i in range(1000)}  # past what a NOTIFY carries
    assert applied_payload("orders", many) == "orders"
    assert applied_orders("orders") == ("orders", None)


async def test_a_waiter_looks_again_only_when_its_order_changed(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    looks = {"mine": 0, "other": 0}
    done = {"mine": False, "other": False}

    def looking(order: str) -> Callable[[], Awaitable[bool]]:
        async def reached() -> bool:
            looks[order] += 1
            return done[order]

        return reached

    async def notify(payload: str) -> None:
        await pool.execute("SELECT pg_notify($1, $2)", APPLIED_CHANNEL, payload)

    async with (
        AppliedWatch(_quiet(settings)) as watch,
        watch.watching("orders", "mine") as my_changes,
        watch.watching("orders", "other") as other_changes,
    ):
        # Each caller has read its order and found it behind: now they wait.
        mine = asyncio.create_task(my_changes.wait_for(looking("mine"), 20))
        other = asyncio.create_task(other_changes.wait_for(looking("other"), 20))

        await notify(applied_payload("orders", {"other", "third"}))
        await eventually(lambda: _looked(looks, "other", 1), 5, "the other waiter to look")
        assert looks["mine"] == 0  # not its order: not woken

        await notify(applied_payload("customer_orders", {"mine"}))
        done["mine"] = True
        await notify(applied_payload("orders", {"mine"}))
        assert await asyncio.wait_for(mine, 5) is True
        assert looks["mine"] == 1  # woken once, by its own projection and order

        done["other"] = True
        await notify("orders")  # names no order: wakes every waiter of the projection
        assert await asyncio.wait_for(other, 5) is True
    assert (watch._wakeups, watch._waiters) == ({}, {})  # nothing left behind


async def test_a_change_between_the_first_read_and_the_wait_is_not_missed(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with (
        AppliedWatch(_quiet(settings)) as watch,
        watch.watching("orders", "mine") as changes,
    ):
        # The caller reads the order (behind), and the projector commits before it waits.
        await pool.execute(
            "SELECT pg_notify($1, $2)", APPLIED_CHANNEL, applied_payload("orders", {"mine"})
        )
        await eventually(lambda: _notified(watch), 5, "the notification to arrive")

        async def reached() -> bool:
            return True

        # Answered at once, not at the next periodic look (a minute away).
        assert await asyncio.wait_for(changes.wait_for(reached, 20), 5) is True


def _quiet(settings: Settings) -> Settings:
    """No periodic look: only a notification wakes a waiter."""
    return settings.model_copy(
        update={"api": settings.api.model_copy(update={"min_version_poll_s": 60.0})}
    )


async def _notified(watch: AppliedWatch) -> bool | None:
    return True if ("orders", "mine") not in watch._wakeups else None


async def _looked(looks: dict[str, int], order: str, n: int) -> bool | None:
    return True if looks[order] >= n else None
