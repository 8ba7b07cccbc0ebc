"""The outbox relay: every event the store holds, published to JetStream, in store order.

Activities write facts to the event store only; the store is the outbox. The relay tails the
store's gap-safe global feed from its checkpoint and publishes each event with
`Nats-Msg-Id` = event id, so a republished event is dropped by JetStream's duplicate window.

Guarantees:
- Nothing is missed: the checkpoint moves only past events JetStream has acknowledged, and the
  feed never skips an event that commits late.
- Per order, JetStream receives events in version order: an order's events are published one
  after the other, each after the previous one's ack, so a publish that fails is never overtaken
  by a later event of its order. Different orders are published concurrently (bounded by
  `nats.max_in_flight`).
- One relay is active at a time: it holds a lease (a Postgres advisory lock on its own session)
  and writes its checkpoint on that session, so a relay whose session ended can no longer move
  it. Others wait as standbys and take over within `relay.lease_interval_s` once its session
  ends: at once when its process dies; when its host or network is gone, once Postgres's TCP
  keepalive (set short on the lease's session) notices, about 25 s. A relay frozen in place
  keeps its lease (its kernel still answers) until it is killed. Were two ever to publish at
  once, duplicates are dropped and each order's order still holds.
- A NATS outage delays the bus, never a saga: the relay backs off (capped) and resumes from its
  checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ordersaga import db, runtime
from ordersaga.bus import EventPublisher
from ordersaga.eventstore import EventStore, FeedPosition, StoredEvent
from ordersaga.settings import Settings

log = logging.getLogger(__name__)

# Advisory-lock key space of the relay leases (the projector's claims use their own).
_LEASE_NAMESPACE = 0x0E5A
_CHECKPOINT = "SELECT tx_id, position FROM eventstore.relay_checkpoints WHERE name = $1"
_SAVE = (
    "INSERT INTO eventstore.relay_checkpoints (name, tx_id, position, published) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET tx_id = excluded.tx_id, "
    "position = excluded.position, "
    "published = eventstore.relay_checkpoints.published + excluded.published, updated_at = now()"
)


@dataclass
class RelayStats:
    published: int = 0
    duplicates: int = 0  # JetStream had them (a batch published again after a failure)
    failures: int = 0


class Lease:
    """The relay's lease: a session-level advisory lock on a connection of its own."""

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self._key = hash_key(name)
        self.conn: asyncpg.Connection | None = None
        self._held = False

    async def acquire(self) -> bool:
        """Take the lease, or keep it: a session-level lock lasts as long as its session, so a
        live session that holds it is asked nothing (taking it again would stack the lock)."""
        if self.conn is not None and not self.conn.is_closed() and self._held:
            return True
        if self.conn is None or self.conn.is_closed():
            # Short keepalives: a relay whose host or network is gone loses its lease in about
            # 25 s, not the two hours of the system's defaults.
            self.conn = await db.connect(
                self._settings,
                "ordersaga-relay-lease",
                tcp_keepalives_idle="10",
                tcp_keepalives_interval="5",
                tcp_keepalives_count="3",
            )
        self._held = bool(
            await self.conn.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", _LEASE_NAMESPACE, self._key
            )
        )
        return self._held

    async def release(self) -> None:
        self._held = False
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None


def hash_key(name: str) -> int:
    """A stable 31-bit key for a relay name (Python's own hash() differs per process)."""
    value = 0
    for char in name.encode():
        value = (value * 131 + char) % 2_147_483_647
    return value


class Relay:
    def __init__(
        self,
        store: EventStore,
        publisher: EventPublisher,
        lease: Lease,
        *,
        name: str = "relay",
        batch: int = 256,
        poll_interval: float = 1.0,
        linger: float = 0.0,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._lease = lease
        self.name = name
        self._batch = batch
        self._poll_interval = poll_interval
        self._linger = linger
        self.stats = RelayStats()

    async def _checkpoint(self, conn: asyncpg.Connection) -> FeedPosition:
        row = await conn.fetchrow(_CHECKPOINT, self.name)
        return FeedPosition() if row is None else FeedPosition(row["tx_id"], row["position"])

    async def publish_from_checkpoint(self, stop: asyncio.Event) -> None:
        """Publish until `stop`, or until a failure (which the caller backs off from)."""
        conn = self._lease.conn
        assert conn is not None, "hold the lease first"
        checkpoint = await self._checkpoint(conn)
        feed = self._store.batches(
            checkpoint, batch=self._batch, poll_interval=self._poll_interval, linger=self._linger
        )
        try:
            while not stop.is_set():
                next_batch = asyncio.ensure_future(anext(feed))
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({next_batch, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not next_batch.done():
                    next_batch.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await next_batch
                    return
                stopped.cancel()
                events = next_batch.result()
                await self._publish(events)
                last = events[-1].feed_position
                # On the lease's own session: if it ended, the lease is gone and this fails.
                await conn.execute(_SAVE, self.name, last.tx_id, last.position, len(events))
        finally:
            await feed.aclose()

    async def _publish(self, events: list[StoredEvent]) -> None:
        by_stream: dict[str, list[StoredEvent]] = {}
        for event in events:
            by_stream.setdefault(event.stream_id, []).append(event)

        async def in_order(stream: list[StoredEvent]) -> None:
            for event in stream:
                ack = await self._publisher.publish(event)
                if ack.duplicate:
                    self.stats.duplicates += 1
                else:
                    self.stats.published += 1

        # One failure cancels the rest; the checkpoint stays, and everything from it is published
        # again (JetStream drops what it has), so nothing after a failed event of an order lands
        # before it.
        async with asyncio.TaskGroup() as group:
            for stream in by_stream.values():
                group.create_task(in_order(stream))

    async def run(self, stop: asyncio.Event, lease_interval: float = 1.0) -> None:
        """Hold the lease (or wait for it) and publish; back off on failures, never give up."""
        backoff = 0.5
        holding = False
        while not stop.is_set():
            try:
                if not await self._lease.acquire():
                    if holding:
                        log.warning("relay %s lost its lease", self.name)
                    holding = False
                    await _pause(stop, lease_interval)
                    continue
                if not holding:
                    log.info("relay %s holds the lease; publishing", self.name)
                    holding = True
                await self.publish_from_checkpoint(stop)
                backoff = 0.5
            except Exception as error:  # NATS or Postgres away: resume from the checkpoint
                self.stats.failures += 1
                while isinstance(error, ExceptionGroup):  # a failed round: its first failure
                    error = error.exceptions[0]
                log.warning("relay %s: %s: %s; again in %.1fs", self.name,
                            type(error).__name__, error, backoff)  # fmt: skip
                if self._lease.conn is not None and self._lease.conn.is_closed():
                    holding = False
                await _pause(stop, backoff)
                backoff = min(backoff * 2, 10.0)
        await self._lease.release()


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def status(pool: asyncpg.Pool, name: str = "relay") -> dict[str, Any]:
    """How far the relay is behind the store: events not yet published and the oldest's age."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT tx_id, position, published, updated_at FROM eventstore.relay_checkpoints "
            "WHERE name = $1",
            name,
        )
        tx_id, position = (row["tx_id"], row["position"]) if row else (0, 0)
        behind = await conn.fetchrow(
            "SELECT count(*) AS n, min(occurred_at) AS oldest FROM eventstore.events "
            "WHERE (tx_id, position) > ($1::text::xid8, $2) "
            "AND tx_id < pg_snapshot_xmin(pg_current_snapshot())",
            str(tx_id),
            position,
        )
        holder = await conn.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 "
            "AND objid = $2 AND granted",
            _LEASE_NAMESPACE,
            hash_key(name),
        )
    oldest = behind["oldest"]
    return {
        "relay": name,
        "lease_held": holder is not None,
        "published": int(row["published"]) if row else 0,
        "checkpoint": {"tx_id": int(tx_id), "position": int(position)},
        "checkpoint_at": row["updated_at"].isoformat() if row else None,
        "lag_events": int(behind["n"]),
        "oldest_unpublished_age_s": (
            round((datetime.now(UTC) - oldest).total_seconds(), 3) if oldest else None
        ),
    }


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """The relay process's composition root."""
    stop = stop or runtime.stop_event()
    async with runtime.open_resources(settings, "relay") as res:
        relay = Relay(
            # Without upcasters: the bus carries each event as it was stored, at the schema
            # version it was written with (its `dataschema` says which).
            EventStore(await res.pool(size=2)),
            EventPublisher(await res.jetstream(setup=True), settings),
            Lease(settings, settings.relay.name),
            name=settings.relay.name,
            batch=settings.relay.batch,
            linger=settings.relay.linger_s,
        )
        started = time.monotonic()
        await relay.run(stop, settings.relay.lease_interval_s)
        log.info(
            "relay stopped after %.0fs: %d published, %d duplicates",
            time.monotonic() - started, relay.stats.published, relay.stats.duplicates,
        )  # fmt: skip
