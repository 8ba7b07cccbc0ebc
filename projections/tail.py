"""`ordersaga events tail`: an ordered ephemeral consumer on the ORDERS stream, decoded and at
the current schema version of each event type."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from ordersaga import events, runtime
from ordersaga.domain import EventType
from ordersaga.settings import Settings

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class TailQuery:
    subject: str
    start: datetime | None

    @classmethod
    def parse(
        cls, settings: Settings, order: str | None, type_: str | None, since: str | None
    ) -> TailQuery:
        name = "*"
        if type_ is not None:
            full = type_ if type_.startswith("order.") else f"order.{type_}"
            try:
                name = EventType(full).short_name
            except ValueError:
                known = ", ".join(e.value for e in EventType)
                raise ValueError(f"unknown event type {type_!r}; known: {known}") from None
        if order is not None and not re.fullmatch(r"[A-Za-z0-9-]+", order):
            raise ValueError(f"not an order id: {order!r}")
        start = None
        if since is not None:
            found = re.fullmatch(r"(\d+)([smhd])", since)
            if found is None:
                raise ValueError(
                    f"--since takes a number and a unit (90s, 15m, 1h, 2d), not {since!r}"
                )
            start = datetime.now(UTC) - timedelta(**{_UNITS[found[2]]: int(found[1])})
        return cls(f"{settings.nats.subject_prefix}.{order or '*'}.{name}", start)


def line(doc: dict[str, object]) -> str:
    data = json.dumps(doc.get("data"), separators=(",", ":"))
    kind = str(doc.get("type"))
    return (
        f"{doc.get('time')}  {kind:<32} {doc.get('subject')}  v{doc.get('streamversion')}  {data}"
    )


async def tail(
    settings: Settings,
    query: TailQuery,
    count: int | None,
    as_json: bool,
    echo: Callable[[str], object],
    stop: asyncio.Event | None = None,
) -> int:
    stop = stop or runtime.stop_event()
    seen = 0
    async with runtime.open_resources(settings, "tail") as res:
        js = await res.jetstream()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        if query.start is not None:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=query.start
            )
        sub = await js.subscribe(
            query.subject, stream=settings.nats.stream, ordered_consumer=True, config=config
        )
        try:
            while not stop.is_set() and (count is None or seen < count):
                try:
                    msg = await sub.next_msg(timeout=1)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                try:
                    doc = events.decode(msg.data)
                except ValueError as error:
                    echo(f"{msg.subject}: not a CloudEvent ({error})")
                else:
                    # At the current schema version, as every reader of ours sees it (the bus
                    # carries each event as it was stored: `nats sub` shows that).
                    try:
                        doc, _ = events.current(doc)
                    except ValueError as error:  # unknown version, or data its schema refuses
                        echo(f"{msg.subject}: {doc.get('type')} breaks its contract ({error})")
                    echo(json.dumps(doc) if as_json else line(doc))
                seen += 1
        finally:
            # Without a subscriber, the server drops the ephemeral consumer shortly after.
            await sub.unsubscribe()
    return seen
