"""JetStream: the stream definition, applied idempotently, and a publisher with bounded waits."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from ordersaga import events
from ordersaga.eventstore import StoredEvent
from ordersaga.settings import Settings

log = logging.getLogger(__name__)


async def connect(settings: Settings, name: str) -> NATS:
    return await nats.connect(
        settings.nats_url(),
        name=f"ordersaga-{name}",
        connect_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
    )


def stream_config(settings: Settings) -> StreamConfig:
    ns = settings.nats
    return StreamConfig(
        name=ns.stream,
        subjects=[f"{ns.subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=ns.replicas,
        duplicate_window=ns.duplicate_window.total_seconds(),
    )


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the stream, or bring its settings in line; safe to run from every process."""
    wanted = stream_config(settings)
    try:
        info = await js.stream_info(wanted.name)  # type: ignore[arg-type]
    except NotFoundError:
        await js.add_stream(config=wanted)
        log.info("created JetStream stream %s", wanted.name)
        return
    have = info.config
    if (have.subjects, have.duplicate_window, have.num_replicas) != (
        wanted.subjects,
        wanted.duplicate_window,
        wanted.num_replicas,
    ):
        await js.update_stream(config=wanted)
        log.info("updated JetStream stream %s", wanted.name)


class EventPublisher:
    """Publishes stored events as CloudEvents; `Nats-Msg-Id` = event id makes republishing safe."""

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        self._js = js
        self._prefix = settings.nats.subject_prefix
        self._timeout = settings.nats.publish_timeout
        self.duplicates = 0

    async def publish(self, event: StoredEvent) -> PubAck:
        # `publish` (not `publish_async`): a server error reply must fail this call, not leave a
        # future pending forever (nats.py #985). The timeout bounds the wait when NATS is down.
        ack = await self._js.publish(
            events.subject_for(self._prefix, event.stream_id, event.event_type),
            events.encode(event),
            timeout=self._timeout,
            headers={"Nats-Msg-Id": event.event_id},
        )
        if ack.duplicate:
            self.duplicates += 1
        return ack
