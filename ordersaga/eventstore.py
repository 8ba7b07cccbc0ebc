"""Postgres event store: append-only streams with optimistic concurrency and idempotent appends.

Contract:
- `append(stream_id, events, expected_version)` writes the events at versions
  `expected_version + 1 ...` in one statement, or raises `ConcurrencyError` if the stream is not
  at `expected_version` (`expected_version=0`: the stream must not exist yet).
- Appending events whose ids are all stored already, with the same stream, version, type and
  data, is a no-op that returns the stored records: activities are retried and must be safe.
  The same id with other content raises `EventIdConflict`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine


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


_COLUMNS = (
    "position, stream_id, version, event_id::text AS event_id, event_type, schema_version, "
    "data, metadata, occurred_at"
)

_APPEND = sa.text(
    f"""
    INSERT INTO eventstore.events
        (stream_id, version, event_id, event_type, schema_version, data, metadata)
    SELECT :stream_id, CAST(:expected AS int) + i.ord::int, i.event_id, i.event_type,
           i.schema_version, i.data::jsonb, i.metadata::jsonb
    FROM unnest(CAST(:event_ids AS uuid[]), CAST(:types AS text[]), CAST(:schemas AS int[]),
                CAST(:datas AS text[]), CAST(:metas AS text[]))
         WITH ORDINALITY AS i(event_id, event_type, schema_version, data, metadata, ord)
    WHERE CAST(:expected AS int) = 0 OR EXISTS (
        SELECT 1 FROM eventstore.events WHERE stream_id = :stream_id
        AND version = CAST(:expected AS int))
    RETURNING {_COLUMNS}
    """
)


def _row_to_event(row: sa.Row[Any]) -> StoredEvent:
    return StoredEvent(
        position=row.position,
        stream_id=row.stream_id,
        version=row.version,
        event_id=row.event_id,
        event_type=row.event_type,
        schema_version=row.schema_version,
        data=row.data,
        metadata=row.metadata,
        occurred_at=row.occurred_at,
    )


class EventStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        if not events:
            return []
        params = {
            "stream_id": stream_id,
            "expected": expected_version,
            "event_ids": [uuid.UUID(e.event_id) for e in events],
            "types": [e.event_type for e in events],
            "schemas": [e.schema_version for e in events],
            "datas": [json.dumps(e.data) for e in events],
            "metas": [json.dumps(e.metadata) for e in events],
        }
        try:
            async with self._engine.begin() as conn:
                rows = (await conn.execute(_APPEND, params)).all()
        except IntegrityError:
            rows = []
        if len(rows) == len(events):
            return [_row_to_event(r) for r in sorted(rows, key=lambda r: r.version)]
        # Nothing was written: either a retry of an append that already happened, or a clash.
        return await self._resolve_rejected(stream_id, events, expected_version)

    async def _resolve_rejected(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        stored = await self._by_ids([e.event_id for e in events])
        if not stored:
            raise ConcurrencyError(stream_id, expected_version, await self.version(stream_id))
        for offset, new in enumerate(events, start=1):
            old = stored.get(new.event_id)
            if old is None or (
                old.stream_id,
                old.version,
                old.event_type,
                old.data,
            ) != (stream_id, expected_version + offset, new.event_type, new.data):
                raise EventIdConflict(
                    f"event {new.event_id} of stream {stream_id!r} is stored with other content"
                    " (or only part of the batch is stored)"
                )
        return [stored[e.event_id] for e in events]

    async def _by_ids(self, event_ids: list[str]) -> dict[str, StoredEvent]:
        query = sa.text(
            f"SELECT {_COLUMNS} FROM eventstore.events WHERE event_id = ANY(CAST(:ids AS uuid[]))"
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query, {"ids": [uuid.UUID(i) for i in event_ids]})).all()
        return {r.event_id: _row_to_event(r) for r in rows}

    async def version(self, stream_id: str) -> int:
        query = sa.text(
            "SELECT coalesce(max(version), 0) FROM eventstore.events WHERE stream_id = :s"
        )
        async with self._engine.connect() as conn:
            return int((await conn.execute(query, {"s": stream_id})).scalar_one())

    async def read_stream(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[StoredEvent]:
        query = sa.text(
            f"SELECT {_COLUMNS} FROM eventstore.events WHERE stream_id = :s "
            "AND version >= :lo AND version <= :hi ORDER BY version"
        )
        hi = to_version if to_version is not None else 2**31 - 1
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query, {"s": stream_id, "lo": from_version, "hi": hi})).all()
        return [_row_to_event(r) for r in rows]
