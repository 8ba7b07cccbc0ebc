"""The event store's contract, against the real Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections import defaultdict
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ordersaga.domain import event_id
from ordersaga.eventstore import (
    ANY,
    NO_STREAM,
    ConcurrencyError,
    EventIdConflict,
    EventStore,
    FeedPosition,
    NewEvent,
    StoredEvent,
    UnknownEventError,
    Upcasters,
)
from tests.helpers import eventually

HAPPENED = "test.happened"


def count_to_n(data: dict[str, Any]) -> dict[str, Any]:
    """test.happened 1 -> 2: the field "count" was renamed "n"."""
    renamed = {k: v for k, v in data.items() if k != "count"}
    return {**renamed, "n": data["count"]}


def registry() -> Upcasters:
    return Upcasters().current(HAPPENED, 2).register(HAPPENED, 1, count_to_n)


@pytest.fixture(scope="module")
def es(pool: asyncpg.Pool) -> EventStore:
    return EventStore(pool, registry())


def stream() -> str:
    return f"test-{uuid.uuid4()}"


def events(stream_id: str, start: int, count: int, tag: str = "x") -> list[NewEvent]:
    """Events as one writer (`tag`) would make them: its ids are its own."""
    return [
        NewEvent(
            event_id(f"{stream_id}/{tag}", v, HAPPENED),
            HAPPENED,
            {"n": v, "tag": tag},
            schema_version=2,
        )
        for v in range(start, start + count)
    ]


async def test_append_assigns_consecutive_versions(es: EventStore) -> None:
    s = stream()
    first = await es.append(s, events(s, 1, 2), expected_version=NO_STREAM)
    second = await es.append(s, events(s, 3, 2), expected_version=2)
    assert [e.version for e in first + second] == [1, 2, 3, 4]
    positions = [e.position for e in first + second]
    assert positions == sorted(positions)
    assert [e.data["n"] for e in await es.read_stream(s)] == [1, 2, 3, 4]
    assert [e.version for e in await es.read_stream(s, from_version=3)] == [3, 4]
    assert await es.version(s) == 4


async def test_expect_any_appends_wherever_the_stream_is(es: EventStore) -> None:
    s = stream()
    await es.append(s, events(s, 1, 1, tag="a"), expected_version=ANY)
    stored = await es.append(s, events(s, 1, 2, tag="b"), expected_version=ANY)
    assert [e.version for e in stored] == [2, 3]


async def test_a_retried_append_stores_nothing_and_returns_the_stored_events(
    es: EventStore,
) -> None:
    s = stream()
    batch = events(s, 1, 3)
    first = await es.append(s, batch, expected_version=NO_STREAM)
    again = await es.append(s, batch, expected_version=NO_STREAM)
    assert again == first
    # Expecting ANY, the retry is told apart by the event ids' unique constraint instead.
    assert await es.append(s, batch, expected_version=ANY) == first
    assert len(await es.read_stream(s)) == 3


async def test_the_same_event_id_with_other_content_is_an_error(es: EventStore) -> None:
    s = stream()
    original = events(s, 1, 1)[0]
    await es.append(s, [original], expected_version=NO_STREAM)
    altered = NewEvent(original.event_id, HAPPENED, {"n": 1, "tag": "altered"}, schema_version=2)
    with pytest.raises(EventIdConflict):
        await es.append(s, [altered], expected_version=NO_STREAM)
    with pytest.raises(EventIdConflict):  # the same id in another stream
        await es.append(stream(), [original], expected_version=NO_STREAM)


async def test_wrong_expected_version_names_both_and_burns_no_position(es: EventStore) -> None:
    s = stream()
    await es.append(s, events(s, 1, 2), expected_version=NO_STREAM)
    with pytest.raises(ConcurrencyError) as behind:
        await es.append(s, events(s, 2, 1, tag="other"), expected_version=1)
    assert (behind.value.expected, behind.value.actual) == (1, 2)
    with pytest.raises(ConcurrencyError) as ahead:
        await es.append(s, events(s, 6, 1), expected_version=5)
    assert "expected version 5" in str(ahead.value) and "version 2" in str(ahead.value)
    with pytest.raises(ConcurrencyError):
        await es.append(s, events(s, 1, 1, tag="new"), expected_version=NO_STREAM)
    # The losers took no global position: the next append follows the last one directly.
    last = (await es.read_stream(s))[-1].position
    after = await es.append(s, events(s, 3, 1, tag="later"), expected_version=2)
    assert after[0].position == last + 1


async def test_concurrent_appends_to_one_stream_one_wins(es: EventStore) -> None:
    for _ in range(10):
        s = stream()
        await es.append(s, events(s, 1, 1), expected_version=NO_STREAM)
        results = await asyncio.gather(
            es.append(s, events(s, 2, 2, tag="a"), expected_version=1),
            es.append(s, events(s, 2, 2, tag="b"), expected_version=1),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1 and len(losers) == 1
        assert isinstance(losers[0], ConcurrencyError)
        stored = await es.read_stream(s)
        assert [e.version for e in stored] == [1, 2, 3]
        assert {e.data["tag"] for e in stored[1:]} == {winners[0][0].data["tag"]}


async def test_old_schema_versions_are_upcast_and_unknown_ones_fail_loudly(
    es: EventStore, pool: asyncpg.Pool
) -> None:
    s = stream()
    old = NewEvent(str(uuid.uuid4()), HAPPENED, {"count": 7, "tag": "v1"}, schema_version=1)
    await es.append(s, [old], expected_version=NO_STREAM)
    [read] = await es.read_stream(s)
    assert (read.schema_version, read.data) == (2, {"n": 7, "tag": "v1"})

    future = NewEvent(str(uuid.uuid4()), HAPPENED, {"n": 1}, schema_version=3)
    [stored] = await es.append(s, [future], expected_version=1)
    with pytest.raises(UnknownEventError, match=f"position {stored.position}"):
        await es.read_stream(s)
    other = stream()
    [alien] = await EventStore(pool).append(
        other, [NewEvent(str(uuid.uuid4()), "test.alien", {})], expected_version=NO_STREAM
    )
    with pytest.raises(UnknownEventError, match=f"'test.alien' at position {alien.position}"):
        await es.read_stream(other)


def fold(state: dict[str, Any], event: StoredEvent) -> dict[str, Any]:
    return {"total": state["total"] + event.data["n"], "seen": [*state["seen"], event.version]}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    batches=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=8),
    every=st.integers(min_value=1, max_value=10),
)
async def test_snapshot_plus_tail_equals_full_replay(
    es: EventStore, batches: list[int], every: int
) -> None:
    s = stream()
    initial: dict[str, Any] = {"total": 0, "seen": []}
    version = 0
    for size in batches:
        await es.append(s, events(s, version + 1, size), expected_version=version)
        version += size
        # Load (and maybe snapshot) between batches, so snapshots land mid-stream.
        await es.load(s, fold, initial, snapshot="sum-v1", every=every)
    replayed = initial
    states = {0: initial}  # the state after each version
    for event in await es.read_stream(s):
        replayed = fold(replayed, event)
        states[event.version] = replayed
    folded: list[int] = []

    def counting_fold(state: dict[str, Any], event: StoredEvent) -> dict[str, Any]:
        folded.append(event.version)
        return fold(state, event)

    loaded, at = await es.load(s, counting_fold, initial, snapshot="sum-v1", every=every)
    assert (loaded, at) == (replayed, version)
    # Each load snapshots once `every` events have gone by since the last snapshot, so however
    # the appends were batched, the latest snapshot is at the last multiple of `every`...
    due = version // every * every
    taken = await es.latest_snapshot(s, "sum-v1")
    assert taken == ((due, states[due]) if due else None)
    # ...and the last load started from it: it folded only the events after it.
    assert folded == list(range(due + 1, version + 1))


async def test_the_feed_sees_every_committed_event_once_in_stream_order(
    pool: asyncpg.Pool,
) -> None:
    """Writers commit in random order, some hold their transaction open, some roll back; a
    reader tails the feed from its checkpoint and restarts from it now and then."""
    es = EventStore(pool)  # no upcasting: other tests leave deliberately unreadable events
    rng = random.Random(1234)
    streams = [stream() for _ in range(12)]
    committed: set[str] = set()
    rolled_back: set[str] = set()
    start = FeedPosition()
    head = await es.read_all(start, limit=1_000_000)
    if head:
        start = head[-1].feed_position
    writers_done = asyncio.Event()

    async def writer(k: int) -> None:
        for j in range(15):
            s = rng.choice(streams)
            batch = [
                NewEvent(str(uuid.uuid4()), HAPPENED, {"n": j, "w": k}, schema_version=2)
                for _ in range(rng.randint(1, 3))
            ]
            hold = rng.choice([0, 0, 0, 0.005, 0.02, 0.2])  # some transactions stay open long
            rollback = rng.random() < 0.15
            async with pool.acquire() as raw:
                tx = raw.transaction()
                await tx.start()
                await raw.fetch(
                    "SELECT * FROM eventstore.append_events($1, -1, $2, $3, $4, $5, $6)",
                    s,
                    [uuid.UUID(e.event_id) for e in batch],
                    [e.event_type for e in batch],
                    [2] * len(batch),
                    [json.dumps(e.data) for e in batch],
                    ["{}"] * len(batch),
                )
                await asyncio.sleep(hold)  # holds the transaction open, on purpose
                if rollback:
                    await tx.rollback()
                    rolled_back.update(e.event_id for e in batch)
                else:
                    await tx.commit()
                    committed.update(e.event_id for e in batch)

    seen: list[StoredEvent] = []

    async def reader() -> None:
        checkpoint = start
        while True:
            restart_after = rng.randint(5, 40)
            handled = 0
            stream_it = es.subscribe(checkpoint, batch=16, poll_interval=0.05)
            async for event in stream_it:
                if event.event_type != HAPPENED or not event.stream_id.startswith("test-"):
                    checkpoint = event.feed_position
                    continue
                seen.append(event)
                checkpoint = event.feed_position
                handled += 1
                if handled >= restart_after:
                    break  # "crash": resume from the checkpoint with a new subscription
                if writers_done.is_set() and {e.event_id for e in seen} >= committed:
                    await stream_it.aclose()
                    return
            await stream_it.aclose()
            if writers_done.is_set() and {e.event_id for e in seen} >= committed:
                return

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(k) for k in range(8)))
    writers_done.set()
    # One more event after the flag: a reader that had caught up before the flag was set waits
    # for the next event, and would otherwise wait forever (seen once in CI).
    # It goes to a stream of its own, outside the ones checked below.
    await es.append(stream(), [NewEvent(str(uuid.uuid4()), HAPPENED, {"n": -1})])
    await asyncio.wait_for(reading, timeout=60)

    ours = [e for e in seen if e.stream_id in streams]
    ids = [e.event_id for e in ours]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert set(ids) == committed
    assert not set(ids) & rolled_back
    by_stream: dict[str, list[int]] = defaultdict(list)
    for event in ours:
        by_stream[event.stream_id].append(event.version)
    for versions in by_stream.values():
        assert versions == sorted(versions)
        assert versions == list(range(1, len(versions) + 1))


async def _append_without_notify(pool: asyncpg.Pool, stream_id: str, event: NewEvent) -> str:
    """Store an event as `EventStore.append` does, but send no NOTIFY (that is the store's own
    doing, after the commit): a subscriber can only see it by reading the feed itself."""
    async with pool.acquire() as conn:
        [row] = await conn.fetch(
            "SELECT event_id::text FROM eventstore.append_events($1, $2, $3, $4, $5, $6, $7)",
            stream_id,
            NO_STREAM,
            [uuid.UUID(event.event_id)],
            [event.event_type],
            [event.schema_version],
            [json.dumps(event.data)],
            [json.dumps(event.metadata)],
        )
    stored: str = row["event_id"]
    return stored


async def test_subscribers_wake_on_notify_not_on_their_poll(pool: asyncpg.Pool) -> None:
    es = EventStore(pool, registry())
    head = await EventStore(pool).read_all(FeedPosition(), limit=10_000_000)
    start = head[-1].feed_position if head else FeedPosition()
    s = stream()
    poll_interval = 60.0
    # Written without a notification, so the subscriber gets it from its first read of the feed.
    marker = await _append_without_notify(pool, s, events(s, 1, 1)[0])
    marker_read = asyncio.Event()

    async def first_after_the_marker() -> StoredEvent:
        feed = es.subscribe(start, poll_interval=poll_interval, event_types=[HAPPENED])
        async with contextlib.aclosing(feed):
            async for event in feed:
                if event.stream_id != s:
                    continue
                if event.event_id == marker:
                    # The subscriber has read the feed to its end: asking for the next event
                    # puts it straight into its wait, which ends on a notification or the poll.
                    marker_read.set()
                    continue
                return event
        raise AssertionError("the feed ended")

    waiting = asyncio.create_task(first_after_the_marker())
    try:
        await eventually(
            lambda: _true_if(marker_read.is_set()), 30, "the subscriber's first read of the feed"
        )
        [written] = await es.append(s, events(s, 2, 1), expected_version=1)
        # Its next poll is 60 s away: an arrival well within that came through the NOTIFY.
        await eventually(
            lambda: _true_if(waiting.done()), poll_interval / 6, "the NOTIFY to wake the subscriber"
        )
        seen = waiting.result()
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    assert seen.event_id == written.event_id


async def _true_if(condition: bool) -> bool | None:
    return True if condition else None


async def test_a_lingering_feed_gathers_a_burst_and_lets_a_lone_event_through(
    pool: asyncpg.Pool,
) -> None:
    """`batches(linger=…)`: events that arrive while the previous read is younger than the linger
    come in one batch, no sooner than the linger after that read; after a quiet spell the first
    event comes at once."""
    es = EventStore(pool, registry())
    head = await EventStore(pool).read_all(FeedPosition(), limit=10_000_000)
    start = head[-1].feed_position if head else FeedPosition()
    s = stream()
    linger = 1.0
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[tuple[float, list[str]]] = asyncio.Queue()

    async def tail() -> None:
        # Polls every 0.2 s: the quiet spell is a run of empty reads, which must not linger.
        feed = es.batches(start, poll_interval=0.2, event_types=[HAPPENED], linger=linger)
        async with contextlib.aclosing(feed):
            async for batch in feed:
                mine = [e.event_id for e in batch if e.stream_id == s]
                if mine:
                    await got.put((loop.time(), mine))

    tailing = asyncio.create_task(tail())
    try:
        # Let the tail's first read (the store up to now) and its linger pass: a quiet feed.
        await asyncio.sleep(linger + 0.3)
        sent = loop.time()
        [first] = await es.append(s, events(s, 1, 1), expected_version=NO_STREAM)
        at, ids = await asyncio.wait_for(got.get(), 10)
        assert ids == [first.event_id]
        assert at - sent < linger / 2, "a lone event after a quiet spell waited for the linger"
        # A burst right behind it: each append notifies, but the reads wait out the linger.
        burst = [
            (await es.append(s, events(s, v, 1), expected_version=v - 1))[0].event_id
            for v in (2, 3, 4)
        ]
        at_burst, ids = await asyncio.wait_for(got.get(), 10)
        assert ids == burst, "the burst came in more than one batch"
        # Read no sooner than the linger after the lone event's read, which followed `sent`.
        assert at_burst - sent >= linger
    finally:
        tailing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tailing
