"""The notification service: a choreographed subscriber, added without touching the producer.

It has its own durable consumer on `orders.*.confirmed` and `orders.*.cancelled`. The events
carry little (event notification), so it asks the API for the order, reading its own write's
version (`?min_version=`), and records the customer's message in its outbox table, where a real
mailer would pick it up. The outbox is unique per order and event type: a redelivered event, or
the same one from a replay, records nothing twice.

Orders are handled concurrently, up to `ORDERSAGA_NOTIFIER__CONCURRENCY` messages at once, and
the consumer fetches as slots free up, so an order the API cannot serve yet (its read model
dead-lettered or behind, which costs the API's whole `min_version` wait per attempt) holds up
only itself. Such an order is retried with backoff and, after `max_attempts` deliveries, written
to `projections.dead_letters` (projection `notifications`) and acked, where
`ordersaga deadletters` lists, retries or discards it. An API that cannot be reached is waited
out, never dead-lettered: infrastructure does not decide a customer's notification.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ordersaga import runtime
from ordersaga.contracts.payloads import OrderCancelled, OrderConfirmed
from ordersaga.settings import Settings
from projections.base import OrderEvent
from projections.runtime import DEAD_LETTER, Delivery, dead_letter_row

log = logging.getLogger(__name__)

# The notifier's name in `projections.dead_letters`, beside the read models'.
PROJECTION = "notifications"
# At stop, how long messages in hand may finish; the rest are left unacked and come back to the
# next notifier after ack_wait, which the outbox makes harmless.
DRAIN_S = 5.0

# A redelivery or replay of an event that has its notification, or that an operator owns as a
# dead letter (open, or discarded on purpose), does nothing.
# Both on the plain asyncpg pool, cheaper for the client than SQLAlchemy's (README, Benchmark).
_SEEN = (
    "SELECT 1 FROM notifications.outbox WHERE event_id = $1 "
    "UNION ALL SELECT 1 FROM projections.dead_letters WHERE projection = $2 AND event_id = $1 "
    "LIMIT 1"
)
_RECORD = (
    "INSERT INTO notifications.outbox "
    "(event_id, order_id, event_type, customer_id, subject, body) "
    "VALUES ($1, $2, $3, $4, $5, $6::jsonb) "
    "ON CONFLICT DO NOTHING"
)


class NotReady(Exception):
    """The order cannot be served yet (unknown to the API, read model behind or dead-lettered):
    tried again later, and dead-lettered once the attempts run out."""


class Unavailable(NotReady):
    """The API cannot be reached or failed on its side, or the read model is merely behind:
    waited out, however long it takes."""


# Infrastructure, never a reason to dead-letter a notification: the API or the read side away,
# or this process's own database (the dead letter could not even be written then): refused or
# lost connections (OSError, asyncpg's connection errors), a server shutting down, starting or
# cancelling the statement (class 57), or out of resources (class 53: too many connections).
_WAITED_OUT = (
    Unavailable,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InterfaceError,
)


Terminal = OrderConfirmed | OrderCancelled


def compose(event: Terminal, order: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The customer's message: a subject line and what a mail template needs; the order as the
    API shows it, the outcome and its reason as the event says."""
    short = order["order_id"][:8]
    money = f"{order['total'] / 100:.2f} {order['currency']}"
    body = {
        "order_id": order["order_id"],
        "status": order["status"],
        "total": order["total"],
        "currency": order["currency"],
        "items": [{"sku": i["sku"], "quantity": i["quantity"]} for i in order["items"]],
    }
    if isinstance(event, OrderConfirmed):
        return f"Your order {short} is confirmed ({money})", body
    body["reason"] = event.reason.value
    return f"Your order {short} was cancelled", body


def api_client(settings: Settings) -> httpx.AsyncClient:
    key = settings.notifier.api_key
    return httpx.AsyncClient(
        base_url=settings.api_url(),
        headers={"Authorization": f"Bearer {key}"} if key else None,
        # Longer than the API's own bound on a min_version wait, so the API answers first.
        timeout=settings.api.min_version_timeout + 5,
        # One connection per slot: a slot never queues behind another order's slow answer.
        limits=httpx.Limits(
            max_connections=settings.notifier.concurrency,
            max_keepalive_connections=settings.notifier.concurrency,
        ),
    )


async def _order(http: httpx.AsyncClient, order_id: str, version: int) -> dict[str, Any]:
    try:
        response = await http.get(f"/orders/{order_id}", params={"min_version": version})
    except httpx.HTTPError as error:
        raise Unavailable(f"API unreachable: {type(error).__name__}: {error}") from error
    if response.status_code >= 500 or response.status_code == 429:
        raise Unavailable(f"API answered {response.status_code}")
    if response.status_code != 200:
        raise NotReady(f"API answered {response.status_code}: {response.text[:200]}")
    if response.headers.get("Read-Model-Stale") == "true":
        behind = (
            f"read model has not applied version {version} yet "
            f"(it has {response.headers.get('Read-Model-Version')})"
        )
        if response.headers.get("Read-Model-Blocked") == "true":
            # Behind a dead letter of the read model: only an operator moves it on.
            raise NotReady(f"{behind}: it waits behind a dead letter")
        # Merely behind (a projector down or catching up): infrastructure, waited out.
        raise Unavailable(behind)
    order: dict[str, Any] = response.json()
    return order


async def message(http: httpx.AsyncClient, event: OrderEvent) -> dict[str, Any]:
    """The outbox row for a terminal event, from the API's view of its order."""
    outcome = event.payload
    if not isinstance(outcome, Terminal):
        raise NotReady(f"{event.event_type} is not an order's outcome; nothing to tell")
    order = await _order(http, event.order_id, event.version)
    subject, body = compose(outcome, order)
    return {
        "event_id": event.event_id,
        "order_id": order["order_id"],
        "event_type": event.event_type,
        "customer_id": order["customer_id"],
        "subject": subject,
        "body": json.dumps(body),
    }


async def record(conn: asyncpg.Connection, row: dict[str, Any]) -> None:
    await conn.execute(
        _RECORD,
        row["event_id"], row["order_id"], row["event_type"], row["customer_id"],
        row["subject"], row["body"],
    )  # fmt: skip


@asynccontextmanager
async def _in_progress(msg: Msg, every: float) -> AsyncIterator[None]:
    """Tell JetStream, while the message is worked on, that it is: a min_version wait can outlast
    ack_wait, and a second copy would take another slot and count as another delivery."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)  # a heartbeat's period, not a wait for something
            try:
                await msg.in_progress()
            except Exception as error:  # worst case JetStream redelivers: harmless
                log.debug("in-progress for %s failed: %s", msg.subject, error)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


class Notifier:
    def __init__(self, pool: asyncpg.Pool, http: httpx.AsyncClient, settings: Settings) -> None:
        self._pool = pool  # each notification's two statements, and dead letters
        self._http = http
        # The projector's retry policy, the one the operator already tunes for poison.
        self._max_attempts = settings.projector.max_attempts
        self._backoff = settings.projector.backoff_s
        self._beat_s = settings.projector.ack_wait_s / 2
        self._concurrency = settings.notifier.concurrency

    async def notify(self, event: OrderEvent) -> bool:
        """Record the event's notification; False when there was nothing to do (a redelivery).

        No connection is held across the API call, so a few serve every slot. Each statement
        stands alone, so neither runs in a transaction (no BEGIN and COMMIT round trips)."""
        async with self._pool.acquire() as conn:
            if await conn.fetchval(_SEEN, event.event_id, PROJECTION) is not None:
                return False
        row = await message(self._http, event)
        async with self._pool.acquire() as conn:
            await record(conn, row)
        return True

    async def process(self, msg: Msg) -> None:
        """One message to its end: recorded and acked, retried later, or dead-lettered and acked.
        Never raises: a message whose ack or nak is lost comes back after ack_wait."""
        delivery = Delivery.of(msg)
        try:
            try:
                if delivery.event is None:
                    raise NotReady(delivery.error or "undecodable")
                async with _in_progress(msg, self._beat_s):
                    await self.notify(delivery.event)
            except Exception as error:
                await self._failed(delivery, error)
                return
            # Outside the failure path: a lost ack must not make a recorded one a dead letter.
            await msg.ack()
        except Exception as error:
            log.error("notification for %s left to redelivery: %s", msg.subject, error)

    async def _failed(self, delivery: Delivery, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        attempts = delivery.deliveries
        # Undecodable is undecodable on every delivery: no point in trying again.
        again = delivery.event is not None and (
            isinstance(error, _WAITED_OUT) or attempts < self._max_attempts
        )
        if again:
            delay = self._backoff[min(attempts, len(self._backoff)) - 1]
            log.warning(
                "notification for %s waits %.1fs (delivery %d): %s",
                delivery.msg.subject, delay, attempts, reason,
            )  # fmt: skip
            await delivery.msg.nak(delay=delay)
            return
        log.error(
            "dead-lettering the notification for %s after %d deliveries: %s",
            delivery.msg.subject, attempts, reason,
        )  # fmt: skip
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    DEAD_LETTER, *dead_letter_row(PROJECTION, delivery, reason, "failed")
                )
        except Exception as failure:
            # Neither recorded nor dead-lettered: acking it would drop it. Again later.
            log.warning("dead letter for %s not written: %s", delivery.msg.subject, failure)
            await delivery.msg.nak(delay=self._backoff[-1])
            return
        await delivery.msg.ack()

    async def consume(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        """Fetch as many messages as there are free slots and handle each in its own task; a slow
        one holds only its slot, never the next fetch."""
        busy: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                free = self._concurrency - len(busy)
                if free == 0:
                    await asyncio.wait(busy, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(free, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue  # nothing new; look at `stop` again
                for msg in msgs:
                    task = asyncio.create_task(self.process(msg))
                    busy.add(task)
                    task.add_done_callback(busy.discard)
        finally:
            if busy:
                await asyncio.wait(set(busy), timeout=DRAIN_S)
            left = list(busy)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or runtime.stop_event()
    async with runtime.open_resources(settings, "notifier") as res:
        pool = await res.pool()  # no connection is held across the API call: a few serve all
        js = await res.jetstream(setup=True)
        sub = await js.pull_subscribe_bind(settings.notifier.durable, settings.nats.stream)
        http = await res.enter(api_client(settings))
        notifier = Notifier(pool, http, settings)
        log.info(
            "notifier consuming %s as %s, %d at a time",
            settings.nats.stream, settings.notifier.durable, settings.notifier.concurrency,
        )  # fmt: skip
        await notifier.consume(sub, stop)
