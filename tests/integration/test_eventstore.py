"""The event store against the real Postgres: expectations, idempotency, concurrency."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ordersaga.domain import event_id
from ordersaga.eventstore import ConcurrencyError, EventIdConflict, EventStore, NewEvent


def stream() -> str:
    return f"test-{uuid.uuid4()}"


def events(stream_id: str, start: int, count: int, tag: str = "x") -> list[NewEvent]:
    """Events as one writer (`tag`) would make them: its ids are its own."""
    return [
        NewEvent(
            event_id(f"{stream_id}/{tag}", v, "order.placed"), "order.placed", {"n": v, "tag": tag}
        )
        for v in range(start, start + count)
    ]


async def test_append_assigns_consecutive_versions(store: EventStore) -> None:
    s = stream()
    first = await store.append(s, events(s, 1, 2), expected_version=0)
    second = await store.append(s, events(s, 3, 2), expected_version=2)
    assert [e.version for e in first + second] == [1, 2, 3, 4]
    positions = [e.position for e in first + second]
    assert positions == sorted(positions)
    assert [e.data["n"] for e in await store.read_stream(s)] == [1, 2, 3, 4]
    assert [e.version for e in await store.read_stream(s, from_version=3)] == [3, 4]
    assert await store.version(s) == 4


async def test_a_retried_append_stores_nothing_and_returns_the_stored_events(
    store: EventStore,
) -> None:
    s = stream()
    batch = events(s, 1, 3)
    first = await store.append(s, batch, expected_version=0)
    again = await store.append(s, batch, expected_version=0)
    assert again == first
    assert len(await store.read_stream(s)) == 3


async def test_the_same_event_id_with_other_content_is_an_error(store: EventStore) -> None:
    s = stream()
    original = events(s, 1, 1)[0]
    await store.append(s, [original], expected_version=0)
    altered = NewEvent(original.event_id, original.event_type, {"n": 1, "tag": "altered"})
    with pytest.raises(EventIdConflict):
        await store.append(s, [altered], expected_version=0)


async def test_wrong_expected_version_is_a_concurrency_error(store: EventStore) -> None:
    s = stream()
    await store.append(s, events(s, 1, 2), expected_version=0)
    with pytest.raises(ConcurrencyError) as behind:
        await store.append(s, events(s, 2, 1, tag="other"), expected_version=1)
    assert (behind.value.expected, behind.value.actual) == (1, 2)
    with pytest.raises(ConcurrencyError) as ahead:
        await store.append(s, events(s, 6, 1), expected_version=5)
    assert "expected version 5" in str(ahead.value) and "version 2" in str(ahead.value)
    with pytest.raises(ConcurrencyError):
        await store.append(s, events(s, 1, 1, tag="new"), expected_version=0)


async def test_concurrent_appends_to_one_stream_one_wins(store: EventStore) -> None:
    for _ in range(10):
        s = stream()
        await store.append(s, events(s, 1, 1), expected_version=0)
        results = await asyncio.gather(
            store.append(s, events(s, 2, 2, tag="a"), expected_version=1),
            store.append(s, events(s, 2, 2, tag="b"), expected_version=1),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1 and len(losers) == 1
        assert isinstance(losers[0], ConcurrencyError)
        stored = await store.read_stream(s)
        assert [e.version for e in stored] == [1, 2, 3]
        assert {e.data["tag"] for e in stored[1:]} == {winners[0][0].data["tag"]}
