"""Two relays, the active one SIGKILLed mid-batch: the standby takes over from the checkpoint,
and JetStream has every stored event once, each order's in version order."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict

import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings
from tests.helpers import append, cli, eventually, fake_events, unique

pytestmark = pytest.mark.e2e


async def test_a_standby_relay_takes_over_without_a_gap_or_a_double(
    settings: Settings, engine: AsyncEngine, store: EventStore, nc: NATS
) -> None:
    # A stream and relay name of this test's own, so the relay replays the whole store into it
    # while the stack's own relay goes on beside it.
    name = unique("relaytest").replace("-", "")
    ours = settings.model_copy(
        update={
            "nats": settings.nats.model_copy(
                update={"stream": name.upper(), "subject_prefix": name,
                        "partitioned_stream": f"{name.upper()}_P",
                        "partitioned_prefix": f"{name}-p"}
            ),
            "relay": settings.relay.model_copy(update={"name": name, "batch": 10}),
        }
    )  # fmt: skip
    # Enough of a store, in small batches, that the relay is killed well before the end.
    await asyncio.gather(
        *(append(store, fake_events(str(uuid.uuid4()), unique("cust"), "sku-relay"))
          for _ in range(600))
    )  # fmt: skip
    async with engine.connect() as conn:
        stored = (
            await conn.execute(sa.text("SELECT count(*) FROM eventstore.events"))
        ).scalar_one()
    env = {**os.environ, **ours.as_child_env()}

    def start_relay() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "relay"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    js = nc.jetstream()

    async def some_published() -> int | None:
        try:
            info = await js.stream_info(ours.nats.stream)
        except Exception:
            return None
        n = int(info.state.messages)
        return n if 0 < n < stored else None

    # The first relay alone takes the lease; the second, started once the first publishes,
    # can only stand by.
    active = start_relay()
    standby: subprocess.Popen[bytes] | None = None
    try:
        await eventually(some_published, 30, "the active relay to publish part of the store")
        standby = start_relay()
        active.send_signal(signal.SIGKILL)
        active.wait()
        at_kill = int((await js.stream_info(ours.nats.stream)).state.messages)
        assert at_kill < stored, "killed mid-way through the store"

        async def caught_up() -> dict[str, object] | None:
            now = json.loads(cli(ours, "relay", "status").stdout)
            return now if now["lag_events"] == 0 and now["lease_held"] else None

        await eventually(caught_up, 90, "the standby to take over and publish everything")
        assert standby.poll() is None, "the standby is the one that finished"
    finally:
        for relay in (active, standby):
            if relay is not None and relay.poll() is None:
                relay.terminate()
                relay.wait(10)
    # Every stored event exactly once, and per order in version order.
    sub = await js.subscribe(f"{name}.>", stream=ours.nats.stream, ordered_consumer=True)
    seen: dict[str, int] = defaultdict(int)
    versions: dict[str, list[int]] = defaultdict(list)
    info = await js.stream_info(ours.nats.stream)
    for _ in range(int(info.state.messages)):
        msg = await sub.next_msg(timeout=5)
        doc = json.loads(msg.data)
        seen[doc["id"]] += 1
        versions[doc["subject"]].append(int(doc["streamversion"]))
    await sub.unsubscribe()
    async with engine.connect() as conn:
        ids = {
            str(r[0]) for r in await conn.execute(sa.text("SELECT event_id FROM eventstore.events"))
        }
    assert set(seen) == ids, f"{len(ids - set(seen))} stored events never published"
    assert all(n == 1 for n in seen.values())
    assert all(v == sorted(v) for v in versions.values())
    await js.delete_stream(ours.nats.stream)
    await js.delete_stream(ours.nats.partitioned_stream)
