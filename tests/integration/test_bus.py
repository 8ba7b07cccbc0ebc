"""The publisher against a real JetStream: acks, duplicates counted, bounded when NATS is down."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS

from ordersaga import bus
from ordersaga.devstack import find_tool, free_port
from ordersaga.eventstore import StoredEvent
from ordersaga.settings import NatsSettings, Settings
from tests.helpers import eventually


def _event() -> StoredEvent:
    order_id = str(uuid.uuid4())
    return StoredEvent(
        1, order_id, 1, str(uuid.uuid4()), "order.confirmed", 1, {"total": 1}, {},
        datetime.now(UTC),
    )  # fmt: skip


async def test_a_republished_event_is_acked_as_a_duplicate_and_counted(
    settings: Settings, nc: NATS
) -> None:
    publisher = bus.EventPublisher(nc.jetstream(), settings)
    event = _event()
    first = await publisher.publish(event)
    again = await publisher.publish(event)  # an activity retried after its publish went through
    assert (bool(first.duplicate), again.duplicate) == (False, True)
    assert again.seq == first.seq
    assert (publisher.stats.published, publisher.stats.duplicates) == (2, 1)


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        find_tool("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js",
        "-sd", str(tmp_path / "js"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    yield server, f"nats://127.0.0.1:{port}"
    if server.returncode is None:
        server.kill()
        await server.wait()


async def test_a_jetstream_that_goes_down_fails_the_publish_within_its_timeout(
    own_nats: tuple[asyncio.subprocess.Process, str],
) -> None:
    server, url = own_nats
    settings = Settings(nats=NatsSettings(url=url, publish_timeout=1.0))

    async def connected() -> NATS | None:  # the server needs a moment to listen
        try:
            return await bus.connect(settings, "test")
        except (OSError, nats.errors.Error):
            return None

    nc = await eventually(connected, 10, "the nats-server to listen")
    try:
        await bus.setup(nc.jetstream(), settings)
        publisher = bus.EventPublisher(nc.jetstream(), settings)
        await publisher.publish(_event())
        server.kill()
        await server.wait()
        loop = asyncio.get_running_loop()
        # The first finds the connection lost; the next one meets a client that is reconnecting.
        for attempt in (1, 2):
            started = loop.time()
            with pytest.raises((TimeoutError, OSError, nats.errors.Error)):
                await publisher.publish(_event())
            assert loop.time() - started < 2.5  # bounded by publish_timeout, never a hang
            assert publisher.stats.failures == attempt
        assert publisher.stats.published == 1
    finally:
        with contextlib.suppress(OSError):  # closing flushes into the lost connection
            await nc.close()
