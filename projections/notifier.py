"""The notification service: a choreographed subscriber, added without touching the producer.

It has its own durable consumer on `orders.*.confirmed` and `orders.*.cancelled`. The events
carry little (event notification), so it asks the API for the order, reading its own write's
version (`?min_version=`), and records the customer's message in its outbox table, where a real
mailer would pick it up. The outbox is unique per order and event type: a redelivered event, or
the same one from a replay, records nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import sqlalchemy as sa
from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga import bus, events, runtime
from ordersaga.domain import EventType
from ordersaga.settings import Settings

log = logging.getLogger(__name__)

_SEEN = sa.text("SELECT 1 FROM notifications.outbox WHERE event_id = :e")
_RECORD = sa.text(
    "INSERT INTO notifications.outbox "
    "(event_id, order_id, event_type, customer_id, subject, body) "
    "VALUES (:event_id, :order_id, :event_type, :customer_id, :subject, CAST(:body AS jsonb)) "
    "ON CONFLICT DO NOTHING"
)


class NotReady(Exception):
    """The order cannot be read yet (API down, read model behind): try again later."""


def compose(event_type: str, order: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The customer's message: a subject line and what a mail template needs."""
    short = order["order_id"][:8]
    money = f"{order['total'] / 100:.2f} {order['currency']}"
    body = {
        "order_id": order["order_id"],
        "status": order["status"],
        "total": order["total"],
        "currency": order["currency"],
        "items": [{"sku": i["sku"], "quantity": i["quantity"]} for i in order["items"]],
    }
    if event_type == EventType.CONFIRMED:
        return f"Your order {short} is confirmed ({money})", body
    body["reason"] = order.get("failure_reason")
    return f"Your order {short} was cancelled", body


class Notifier:
    def __init__(self, engine: AsyncEngine, http: httpx.AsyncClient, settings: Settings) -> None:
        self._engine = engine
        self._http = http
        self._settings = settings

    async def _order(self, order_id: str, version: int) -> dict[str, Any]:
        try:
            response = await self._http.get(f"/orders/{order_id}", params={"min_version": version})
        except httpx.HTTPError as error:
            raise NotReady(f"API unreachable: {error}") from error
        if response.status_code != 200:
            raise NotReady(f"API answered {response.status_code}")
        if response.headers.get("Read-Model-Stale") == "true":
            raise NotReady(f"read model has not applied version {version} yet")
        order: dict[str, Any] = response.json()
        return order

    async def handle(self, msg: Msg) -> None:
        doc = events.decode(msg.data)
        async with self._engine.connect() as conn:
            if (await conn.execute(_SEEN, {"e": doc["id"]})).first() is not None:
                await msg.ack()  # recorded already: a redelivery
                return
        order = await self._order(str(doc["subject"]), int(doc["streamversion"]))
        subject, body = compose(str(doc["type"]), order)
        async with self._engine.begin() as conn:
            await conn.execute(
                _RECORD,
                {
                    "event_id": doc["id"],
                    "order_id": order["order_id"],
                    "event_type": doc["type"],
                    "customer_id": order["customer_id"],
                    "subject": subject,
                    "body": json.dumps(body),
                },
            )
        await msg.ack()


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or runtime.stop_event()
    # Longer than the API's own bound on a min_version wait, so the API answers first.
    timeout = settings.api.min_version_timeout + 5
    async with runtime.open_resources(settings, "notifier") as res:
        engine = res.engine(pool_size=2)
        js = await res.jetstream(setup=True)
        sub = await js.pull_subscribe_bind(settings.notifier.durable, settings.nats.stream)
        http = await res.enter(httpx.AsyncClient(base_url=settings.api_url(), timeout=timeout))
        notifier = Notifier(engine, http, settings)
        log.info("notifier consuming %s as %s", settings.nats.stream, settings.notifier.durable)
        async for msgs in bus.batches(sub, 32, stop):
            for msg in msgs:
                try:
                    await notifier.handle(msg)
                except Exception as error:  # try again later, never drop
                    delay = min(2 ** (msg.metadata.num_delivered or 1), 30)
                    log.warning("notification for %s waits %ss: %s", msg.subject, delay, error)
                    await msg.nak(delay=delay)
