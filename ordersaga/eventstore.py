"""Postgres event store: append-only streams, optimistic concurrency, idempotent appends, a global
feed that never skips a late commit, snapshots and upcasting.

Contract
--------
- `append(stream_id, events, expected_version)` writes the events at the versions after the
  stream's current one, in one call to the `eventstore.append_events` function (one statement,
  one round trip). `expected_version` is the version the stream must be at (`NO_STREAM` = 0:
  it must not exist) or `ANY`. A clash raises `ConcurrencyError` naming both versions, before
  anything is inserted, so the losing writer burns no global position. Writers of different
  streams do not wait for each other.
- Appending events whose ids are all stored already, with the same stream, versions, types and
  data, is a no-op that returns the stored records (activities are retried). The same id with
  other content raises `EventIdConflict`. (Such a retry is recognised from the error its insert
  gets; expecting `ANY`, that insert has drawn a global position, which stays unused.)
- A store given `Upcasters` passes every event it reads through them: an old `schema_version`
  comes out in the current shape; an unknown type or version raises `UnknownEventError` with its
  global position. (Without them, events come out as stored.)
- The global feed (`read_all`, `subscribe`) yields each committed event exactly once, in
  `(transaction id, position)` order, and only events of transactions older than the oldest one
  still open: insert order is not commit order, so a position handed out early can commit late.
  Its cost: a transaction left open holds readers back (sessions have
  `idle_in_transaction_session_timeout`). Events of one stream come in version order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

import asyncpg

NO_STREAM: Final = 0
ANY: Final = -1

NOTIFY_CHANNEL = "eventstore_appended"
_CONCURRENCY_SQLSTATE = "OSC01"
_STREAM_VERSION = "events_stream_version"  # the unique constraint on (stream_id, version)


class ConcurrencyError(Exception):
    """The stream was not at the expected version."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream_id!r}: expected version {expected}, but it is at version {actual}"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class EventIdConflict(Exception):
    """An event id is stored already with different content."""


class UnknownEventError(Exception):
    """A stored event whose type or schema version no upcaster knows: never skipped silently."""


@dataclass(frozen=True)
class NewEvent:
    event_id: str
    event_type: str
    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    schema_version: int = 1


@dataclass(frozen=True)
class StoredEvent:
    position: int
    stream_id: str
    version: int
    event_id: str
    event_type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    occurred_at: datetime
    tx_id: int = 0

    @property
    def feed_position(self) -> FeedPosition:
        return FeedPosition(self.tx_id, self.position)


@dataclass(frozen=True, order=True)
class FeedPosition:
    """A checkpoint in the global feed: the last event a subscriber has handled."""

    tx_id: int = 0
    position: int = 0


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Upcasters:
    """Per event type: its current schema version, and one step from each older version."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def current(self, event_type: str, version: int = 1) -> Upcasters:
        self._current[event_type] = version
        return self

    def register(self, event_type: str, from_version: int, step: Upcaster) -> Upcasters:
        """`step` turns data of `from_version` into data of `from_version + 1`."""
        self._steps[(event_type, from_version)] = step
        return self

    def upcast(self, event: StoredEvent) -> StoredEvent:
        current = self._current.get(event.event_type)
        if current is None:
            raise UnknownEventError(
                f"unknown event type {event.event_type!r} at position {event.position}"
            )
        if event.schema_version == current:
            return event
        data, version = event.data, event.schema_version
        while version < current:
            step = self._steps.get((event.event_type, version))
            if step is None:
                break
            data, version = step(data), version + 1
        if version != current:
            raise UnknownEventError(
                f"no upcaster from {event.event_type!r} schema version {event.schema_version} "
                f"to {current} (event at position {event.position})"
            )
        return replace(event, data=data, schema_version=current)


_COLUMNS = (
    "position, stream_id, version, event_id::text AS event_id, event_type, schema_version, "
    "data, metadata, occurred_at, tx_id::text::bigint AS tx_id"
)
# The caller has each event's data: only what the store assigned comes back.
_APPEND = (
    "SELECT position, version, occurred_at, tx_id::text::bigint AS tx_id "
    "FROM eventstore.append_events($1, $2, $3, $4, $5, $6, $7)"
)
_BY_IDS = f"SELECT {_COLUMNS} FROM eventstore.events WHERE event_id = ANY($1::uuid[])"
_STREAM = (
    f"SELECT {_COLUMNS} FROM eventstore.events WHERE stream_id = $1 "
    "AND version >= $2 AND version <= $3 ORDER BY version"
)
_FEED = (
    f"SELECT {_COLUMNS} FROM eventstore.events "
    "WHERE (tx_id, position) > ($1::text::xid8, $2) "
    "AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) "
    "AND ($4::text[] IS NULL OR event_type = ANY($4)) "
    "ORDER BY tx_id, position LIMIT $3"
)


def _json(value: Any) -> Any:
    # SQLAlchemy's pool installs a jsonb codec that decodes already; a plain asyncpg one does not.
    return json.loads(value) if isinstance(value, str) else value


def _event(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        position=row["position"],
        stream_id=row["stream_id"],
        version=row["version"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        data=_json(row["data"]),
        metadata=_json(row["metadata"]),
        occurred_at=row["occurred_at"],
        tx_id=row["tx_id"],
    )


class EventStore:
    """The event store over an asyncpg pool (`ordersaga.db.create_pool`)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        upcasters: Upcasters | None = None,
        *,
        notify_window: float = 0.005,
    ) -> None:
        self._pool = pool
        self._upcasters = upcasters
        self._notify_window = notify_window
        self._notify_pending: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._pool.acquire() as conn:
            yield conn

    def _wake_subscribers(self) -> None:
        """Send one NOTIFY per window, after the appends' commits.

        A NOTIFY inside each append would serialise every committing writer on Postgres's
        notification queue lock (a third of the append rate here). The notification is only a
        hint (subscribers re-query the feed and also poll), so one per window is enough.
        """
        if self._notify_pending is None or self._notify_pending.done():
            self._notify_pending = asyncio.create_task(self._notify())

    async def close(self) -> None:
        """Drop a pending coalesced NOTIFY (subscribers poll too); call before closing the pool."""
        pending, self._notify_pending = self._notify_pending, None
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending

    async def _notify(self) -> None:
        await asyncio.sleep(self._notify_window)  # coalesce the appends of this window
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            async with self._connection() as conn:
                await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")

    def _read(self, row: asyncpg.Record) -> StoredEvent:
        event = _event(row)
        return self._upcasters.upcast(event) if self._upcasters else event

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int = ANY
    ) -> list[StoredEvent]:
        if not events:
            return []
        args = (
            stream_id,
            expected_version,
            [e.event_id for e in events],  # asyncpg parses the text itself
            [e.event_type for e in events],
            [e.schema_version for e in events],
            [json.dumps(e.data) for e in events],
            [json.dumps(e.metadata) if e.metadata else "{}" for e in events],
        )
        try:
            async with self._connection() as conn:
                rows = await conn.fetch(_APPEND, *args)
        except asyncpg.PostgresError as error:
            # A retried append whose first attempt is stored: the stream is past the expected
            # version, or (expecting ANY) an event id is taken. Then it is a no-op if the stored
            # events are this very batch.
            if error.sqlstate == _CONCURRENCY_SQLSTATE:
                stored = await self._by_ids([e.event_id for e in events])
                if not stored:
                    actual = int(getattr(error, "detail", None) or 0)
                    raise ConcurrencyError(stream_id, expected_version, actual) from None
                return self._same_or_conflict(stream_id, events, stored)
            if isinstance(error, asyncpg.UniqueViolationError):
                if error.constraint_name == _STREAM_VERSION:
                    # Only a writer that went around the function's lock gets here.
                    actual = await self.version(stream_id)
                    raise ConcurrencyError(stream_id, expected_version, actual) from None
                stored = await self._by_ids([e.event_id for e in events])
                return self._same_or_conflict(stream_id, events, stored)
            raise
        self._wake_subscribers()
        # The function inserts the batch in order at consecutive versions.
        rows = sorted(rows, key=lambda r: r["version"])
        return [
            StoredEvent(
                position=r["position"],
                stream_id=stream_id,
                version=r["version"],
                event_id=e.event_id,
                event_type=e.event_type,
                schema_version=e.schema_version,
                data=e.data,
                metadata=e.metadata,
                occurred_at=r["occurred_at"],
                tx_id=r["tx_id"],
            )
            for r, e in zip(rows, events, strict=True)
        ]

    @staticmethod
    def _same_or_conflict(
        stream_id: str, events: Sequence[NewEvent], stored: dict[str, StoredEvent]
    ) -> list[StoredEvent]:
        found = [stored.get(e.event_id) for e in events]
        first = found[0]
        for offset, (new, old) in enumerate(zip(events, found, strict=True)):
            if (
                old is None
                or first is None
                or (old.stream_id, old.version, old.event_type, old.data)
                != (stream_id, first.version + offset, new.event_type, new.data)
            ):
                raise EventIdConflict(
                    f"event {new.event_id} of stream {stream_id!r} is stored with other content"
                    " (or only part of the batch is stored)"
                )
        return [e for e in found if e is not None]

    async def _by_ids(self, event_ids: list[str]) -> dict[str, StoredEvent]:
        async with self._connection() as conn:
            rows = await conn.fetch(_BY_IDS, [uuid.UUID(i) for i in event_ids])
        return {r["event_id"]: _event(r) for r in rows}

    async def version(self, stream_id: str) -> int:
        async with self._connection() as conn:
            value = await conn.fetchval(
                "SELECT coalesce(max(version), 0) FROM eventstore.events WHERE stream_id = $1",
                stream_id,
            )
        return int(value)

    async def read_stream(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[StoredEvent]:
        hi = to_version if to_version is not None else 2**31 - 1
        async with self._connection() as conn:
            rows = await conn.fetch(_STREAM, stream_id, from_version, hi)
        return [self._read(r) for r in rows]

    # -- the global feed ------------------------------------------------------------------------

    async def read_all(
        self,
        after: FeedPosition = FeedPosition(),
        limit: int = 500,
        event_types: Sequence[str] | None = None,
    ) -> list[StoredEvent]:
        """The next committed events after `after`, in feed order (see the module docstring)."""
        types = list(event_types) if event_types is not None else None
        async with self._connection() as conn:
            rows = await conn.fetch(_FEED, str(after.tx_id), after.position, limit, types)
        return [self._read(r) for r in rows]

    async def batches(
        self,
        after: FeedPosition = FeedPosition(),
        *,
        batch: int = 500,
        poll_interval: float = 1.0,
        event_types: Sequence[str] | None = None,
        linger: float = 0.0,
    ) -> AsyncGenerator[list[StoredEvent], None]:
        """Tail the feed for ever, a batch at a time: woken by LISTEN/NOTIFY, polling as the
        fallback. Each batch continues where the one before ended; to resume from a checkpoint
        after a failure, start a new generator.

        The fallback matters: appends notify after they commit, but their events become readable
        only once every older transaction has ended, which sends no notification.

        `linger`: after a partial batch, the next read waits until this long after the previous
        one began, so what arrives meanwhile comes in one batch (one read, and one round of
        whatever the caller does per batch) rather than one each. A first event after a quiet
        spell waits for nothing; a full batch (a backlog) is followed by the next at once.
        """
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def on_notify(*_: object) -> None:
            wake.set()

        async with self._connection() as listener:
            await listener.add_listener(NOTIFY_CHANNEL, on_notify)
            try:
                while True:
                    wake.clear()
                    began = loop.time()
                    events = await self.read_all(after, batch, event_types)
                    if events:
                        yield events
                        after = events[-1].feed_position
                    if len(events) < batch:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(wake.wait(), poll_interval)
                        # Only after a read that found events: an empty one (a poll, or a wake
                        # whose events were not readable yet) must not hold up the next event.
                        if events and (rest := began + linger - loop.time()) > 0:
                            await asyncio.sleep(rest)
            finally:
                try:
                    await listener.remove_listener(NOTIFY_CHANNEL, on_notify)
                except BaseException:
                    # Still listening (cancelled again, or the connection failed): the pool
                    # does not undo a LISTEN on release, so this connection goes.
                    listener.terminate()
                    raise

    async def subscribe(
        self,
        after: FeedPosition = FeedPosition(),
        *,
        batch: int = 500,
        poll_interval: float = 1.0,
        event_types: Sequence[str] | None = None,
    ) -> AsyncGenerator[StoredEvent, None]:
        """Tail the feed for ever, an event at a time (see `batches`)."""
        async for events in self.batches(
            after, batch=batch, poll_interval=poll_interval, event_types=event_types
        ):
            for event in events:
                yield event

    # -- snapshots --------------------------------------------------------------------------------

    async def save_snapshot(
        self, stream_id: str, name: str, version: int, state: dict[str, Any]
    ) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO eventstore.snapshots (stream_id, name, version, state) "
                "VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (stream_id, name) DO UPDATE "
                "SET version = excluded.version, state = excluded.state, taken_at = now() "
                "WHERE eventstore.snapshots.version < excluded.version",
                stream_id,
                name,
                version,
                json.dumps(state),
            )

    async def latest_snapshot(self, stream_id: str, name: str) -> tuple[int, dict[str, Any]] | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT version, state FROM eventstore.snapshots "
                "WHERE stream_id = $1 AND name = $2",
                stream_id,
                name,
            )
        return None if row is None else (row["version"], _json(row["state"]))

    async def load(
        self,
        stream_id: str,
        fold: Callable[[dict[str, Any], StoredEvent], dict[str, Any]],
        initial: dict[str, Any],
        *,
        snapshot: str,
        every: int = 100,
    ) -> tuple[dict[str, Any], int]:
        """State of a stream = latest snapshot + the events after it; snapshots every `every`.

        `snapshot` names the fold: change the name when the fold changes, and old snapshots
        are ignored rather than trusted.
        """
        state, version = initial, 0
        taken = await self.latest_snapshot(stream_id, snapshot)
        if taken is not None:
            version, state = taken
        last_snapshot = version
        for event in await self.read_stream(stream_id, from_version=version + 1):
            state, version = fold(state, event), event.version
            if version - last_snapshot >= every:
                await self.save_snapshot(stream_id, snapshot, version, state)
                last_snapshot = version
        return state, version
