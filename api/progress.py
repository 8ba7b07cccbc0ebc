"""Read-your-writes: wait until a projection has applied what a client wrote, without sleeping.

The projector runtime sends `NOTIFY projection_applied, '<projection> <order ids>'` in the
transaction that applies a batch; this listener wakes whoever waits on one of those orders to
look again (and every waiter of the projection when the payload names no order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from ordersaga import db
from ordersaga.settings import Settings
from projections.queries import APPLIED_CHANNEL, applied_orders

log = logging.getLogger(__name__)


class TooManyWaits(Exception):
    """More min_version waits at once than the API takes."""


class AppliedWatch:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._conn: asyncpg.Connection | None = None
        # One wake-up per (projection, order) waited on, for as long as anyone waits on it.
        self._wakeups: dict[tuple[str, str], asyncio.Event] = {}
        self._waiters: Counter[tuple[str, str]] = Counter()
        self._waiting = 0

    async def start(self) -> None:
        try:
            self._conn = await db.connect(self._settings, "ordersaga-api-listen")
            await self._conn.add_listener(APPLIED_CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError) as error:
            log.warning("no LISTEN connection (%s): min_version waits poll instead", error)
            self._conn = None

    async def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()

    async def __aenter__(self) -> AppliedWatch:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        projection, orders = applied_orders(payload)
        if orders is None:
            keys = [k for k in self._wakeups if k[0] == projection]
        else:
            keys = [(projection, o) for o in orders]
        for key in keys:
            wakeup = self._wakeups.pop(key, None)
            if wakeup is not None:
                wakeup.set()

    @contextlib.asynccontextmanager
    async def watching(self, projection: str, order_id: str) -> AsyncIterator[Changes]:
        """Watch the order's changes in the projection from now on: enter before reading the
        order, so that a commit between that read and a wait is not missed."""
        key = (projection, order_id)
        self._waiters[key] += 1
        try:
            yield Changes(self, key)
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]
                self._wakeups.pop(key, None)

    def _arm(self, key: tuple[str, str]) -> asyncio.Event:
        return self._wakeups.setdefault(key, asyncio.Event())


class Changes:
    """One order's changes in one projection, as `AppliedWatch.watching` sees them."""

    def __init__(self, watch: AppliedWatch, key: tuple[str, str]) -> None:
        self._watch = watch
        self._key = key
        self._armed = watch._arm(key)  # set by the next change after this point

    async def wait_for(self, reached: Callable[[], Awaitable[bool]], timeout: float) -> bool:
        """After the caller looked and found the order behind: True once `reached()` is,
        looked at again at each change of the order (and every `min_version_poll_s`, since a
        listener may miss a notification); False if `timeout` passes first. Bounded: past
        `api.max_min_version_waits` waits at once, `TooManyWaits` at once."""
        watch = self._watch
        settings = watch._settings.api
        if watch._waiting >= settings.max_min_version_waits:
            raise TooManyWaits("too many read-your-writes waits at once; retry in a second")
        watch._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (remaining := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._armed.wait(), min(remaining, settings.min_version_poll_s)
                    )
                # Armed again before looking, so a commit during the look is not missed.
                self._armed = watch._arm(self._key)
                if await reached():
                    return True
            return False
        finally:
            watch._waiting -= 1
