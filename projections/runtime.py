"""The projector runtime every projection shares.

`Applier` is the transactional core: per projection and order it keeps a checkpoint (the last
stream version applied), locks it while the order's events apply, skips what it has, fills a
gap from the event store, and holds back the events of an order that has an unresolved dead
letter. `PartitionConsumer` feeds it from one durable pull consumer, and `GroupCommit` applies
what the partitions of a process fetched in one transaction (read models + checkpoints +
progress), then acks it; a batch that fails is retried order by order and event by event, so
one poison event holds back only its own order.
An event that keeps failing is dead-lettered after `max_attempts` deliveries, with the order's
later events parked behind it, until `ordersaga deadletters retry|discard`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ordersaga import events
from ordersaga.eventstore import EventStore
from ordersaga.settings import ProjectorSettings
from projections.base import OrderEvent, Projection, ProjectionError
from projections.queries import APPLIED_CHANNEL, applied_payload

log = logging.getLogger(__name__)

# An observer sees what each committed batch applied (metrics, benchmarks).
Observer = Callable[[str, Sequence[OrderEvent]], None]

# One round trip for every projection of a batch: creates the orders' checkpoints or locks the
# existing ones (DO UPDATE takes the row lock, waiting for a concurrent holder), and returns each
# one's version and the order's lowest unresolved dead letter of that projection. Locks are taken
# projection by projection (in the order given), each's orders sorted, so batches lock alike.
# ($1: the projections, $2: the order ids.) The projector's statements run on a plain asyncpg
# pool, cheaper for the client than SQLAlchemy's (README, Benchmark).
_LOCK_CHECKPOINTS = """
    INSERT INTO projections.checkpoints AS c (order_id, projection, version)
    SELECT o, p.name, 0
    FROM unnest($1::text[]) WITH ORDINALITY AS p(name, n), unnest($2::text[]) AS o
    ORDER BY p.n, o
    ON CONFLICT (order_id, projection) DO UPDATE SET version = c.version
    RETURNING c.projection, c.order_id, c.version,
        (SELECT min(d.version) FROM projections.dead_letters AS d
          WHERE d.projection = c.projection AND d.order_id = c.order_id
            AND d.resolved_at IS NULL) AS blocked_at
    """
# One round trip to end a batch: every projection's checkpoints moved; the progress of the
# projections in $4 on each partition of the batch (none: an operator's retry, which moves no
# stream position); and a NOTIFY per payload in $8 (a projection and the orders it changed),
# which wakes those orders' read-your-writes waiters once this transaction commits.
# Data-modifying CTEs run to completion whether or not the outer query reads them.
# ($1-$3: the moved checkpoints' projections, orders and versions; $4: the projections whose
# progress moves; $5-$7: the partitions, stream positions and event times; $8: the payloads.)
_FINISH = f"""
    WITH moved AS (
        UPDATE projections.checkpoints AS c SET version = n.version
        FROM unnest($1::text[], $2::text[], $3::integer[]) AS n(projection, order_id, version)
        WHERE c.order_id = n.order_id AND c.projection = n.projection
        RETURNING 1),
    progressed AS (
        INSERT INTO projections.progress AS g
            (projection, partition, stream_seq, event_time, applied_at)
        SELECT p, q.part, q.seq, q.at, now()
        FROM unnest($4::text[]) AS p,
             unnest($5::integer[], $6::bigint[], $7::timestamptz[]) AS q(part, seq, at)
        ORDER BY p, q.part
        ON CONFLICT (projection, partition) DO UPDATE SET
            stream_seq = GREATEST(g.stream_seq, excluded.stream_seq),
            event_time = excluded.event_time, applied_at = now()
        RETURNING 1)
    SELECT pg_notify('{APPLIED_CHANNEL}', p) FROM unnest($8::text[]) AS p
    """
_DISCARDED = (
    "SELECT version FROM projections.dead_letters "
    "WHERE projection = $1 AND order_id = $2 AND state = 'discarded'"
)
# Its arguments: `dead_letter_row`.
DEAD_LETTER = (
    "INSERT INTO projections.dead_letters (projection, order_id, version, event_id, event_type, "
    "subject, stream_seq, deliveries, payload, error, state) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
    "ON CONFLICT (projection, event_id) DO NOTHING"
)


@dataclass(frozen=True)
class Outcome:
    applied: list[OrderEvent]
    held: list[OrderEvent]  # behind an unresolved dead letter of their order


@dataclass(frozen=True)
class Progress:
    """How far a batch reaches in its partition (the last delivery's stream position)."""

    partition: int
    seq: int
    event_time: datetime


class Applier:
    def __init__(self, projection: Projection, store: EventStore) -> None:
        self.projection = projection
        self.name = projection.name
        self._store = store

    async def apply(
        self, conn: asyncpg.Connection, batch: Sequence[OrderEvent], *, release: bool = False
    ) -> Outcome:
        """Apply what is new in `batch` (any orders, any order), inside the caller's transaction.

        `release`: apply even for orders with an unresolved dead letter (an operator's retry).
        """
        return (await apply_all(conn, [self], batch, release=release))[self.name]

    async def _fold(
        self,
        conn: asyncpg.Connection,
        by_order: dict[str, dict[int, OrderEvent]],
        checkpoints: dict[str, int],
        blocked: dict[str, int],
    ) -> tuple[Outcome, dict[str, int]]:
        """This projection's share of a batch whose checkpoints are locked: apply what is new,
        in each order's version order. Returns the outcome and the orders' new checkpoints."""
        applied: list[OrderEvent] = []
        held: list[OrderEvent] = []
        moved: dict[str, int] = {}
        for order_id in sorted(by_order):
            versions = by_order[order_id]
            if order_id in blocked:
                # What comes before the order's dead letter still applies (a late event), what
                # comes after it waits.
                held.extend(versions[v] for v in sorted(versions) if v >= blocked[order_id])
                versions = {v: e for v, e in versions.items() if v < blocked[order_id]}
            done = checkpoints[order_id]
            fresh = sorted(v for v in versions if v > done)
            if not fresh:
                continue  # a redelivery: applied already
            missing = [v for v in range(done + 1, fresh[-1]) if v not in versions]
            if missing:
                versions = dict(versions)
                versions.update(await self._fill(conn, order_id, missing))
            sequence = [versions[v] for v in sorted(versions) if v > done]
            applied.extend(sequence)
            moved[order_id] = sequence[-1].version
        wanted = [e for e in applied if e.event_type in self.projection.event_types]
        if wanted:
            await self.projection.apply(conn, wanted)
        return Outcome(applied, held), moved

    async def _fill(
        self, conn: asyncpg.Connection, order_id: str, missing: list[int]
    ) -> dict[int, OrderEvent]:
        """Events that have not arrived (yet) come from the store, the source of truth."""
        discarded = {int(r["version"]) for r in await conn.fetch(_DISCARDED, self.name, order_id)}
        wanted = set(missing) - discarded
        if not wanted:
            return {}
        stored = await self._store.read_stream(order_id, min(wanted), max(wanted))
        filled = {e.version: OrderEvent.from_stored(e) for e in stored if e.version in wanted}
        if len(filled) != len(wanted):
            absent = sorted(wanted - set(filled))
            raise ProjectionError(f"order {order_id}: versions {absent} are not in the event store")
        return filled


async def apply_all(
    conn: asyncpg.Connection,
    appliers: Sequence[Applier],
    batch: Sequence[OrderEvent],
    *,
    release: bool = False,
    progress: Sequence[Progress] = (),
) -> dict[str, Outcome]:
    """Apply what is new in `batch` for every projection, inside the caller's transaction: one
    round trip locks all their checkpoints, each projection folds its share, and one round trip
    moves the checkpoints (and notes each partition's `progress`, if given, for every
    projection). A batch costs the same two statements however many projections it feeds.

    `release`: apply even for orders with an unresolved dead letter (an operator's retry).
    """
    by_order: dict[str, dict[int, OrderEvent]] = defaultdict(dict)
    for event in batch:
        by_order[event.order_id][event.version] = event
    names = [a.name for a in appliers]
    found: Sequence[asyncpg.Record] = ()
    if by_order:
        found = await conn.fetch(_LOCK_CHECKPOINTS, names, sorted(by_order))
    outcomes: dict[str, Outcome] = {}
    moves: list[tuple[str, str, int]] = []
    for applier in appliers:
        mine = [r for r in found if r["projection"] == applier.name]
        checkpoints = {r["order_id"]: int(r["version"]) for r in mine}
        blocked: dict[str, int] = {}
        if not release:
            blocked = {
                r["order_id"]: int(r["blocked_at"]) for r in mine if r["blocked_at"] is not None
            }
        outcome, moved = await applier._fold(conn, by_order, checkpoints, blocked)
        outcomes[applier.name] = outcome
        moves.extend((applier.name, order_id, version) for order_id, version in moved.items())
    if moves or progress:
        # One row per partition (ON CONFLICT cannot touch a row twice): the furthest position.
        furthest: dict[int, Progress] = {}
        for p in progress:
            if p.partition not in furthest or p.seq > furthest[p.partition].seq:
                furthest[p.partition] = p
        reached = [furthest[k] for k in sorted(furthest)]
        await conn.execute(
            _FINISH,
            [m[0] for m in moves],
            [m[1] for m in moves],
            [m[2] for m in moves],
            names if reached else [],
            [p.partition for p in reached],
            [p.seq for p in reached],
            [p.event_time for p in reached],
            [
                applied_payload(n, {e.order_id for e in outcomes[n].applied})
                for n in names
                if reached and outcomes[n].applied
            ],
        )
    return outcomes


@dataclass
class Delivery:
    msg: Msg
    event: OrderEvent | None
    error: str | None = None

    @property
    def seq(self) -> int:
        return int(self.msg.metadata.sequence.stream)

    @property
    def deliveries(self) -> int:
        return int(self.msg.metadata.num_delivered or 1)

    @property
    def order_id(self) -> str:
        if self.event is not None:
            return self.event.order_id
        tokens = self.msg.subject.split(".")  # <prefix>.<partition>.<order_id>.<event>
        return tokens[-2] if len(tokens) >= 3 else self.msg.subject

    @classmethod
    def of(cls, msg: Msg) -> Delivery:
        try:
            return cls(msg, OrderEvent.from_cloudevent(events.decode(msg.data)))
        except Exception as error:  # whatever is wrong with it, it is poison
            return cls(msg, None, f"undecodable: {type(error).__name__}: {error}")


def storable(text: str) -> str:
    """Text Postgres stores: a NUL or an unpaired surrogate (which a poison event's error message
    may quote) shown escaped."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter_row(projection: str, delivery: Delivery, error: str, state: str) -> tuple[Any, ...]:
    """`DEAD_LETTER`'s arguments for a delivery."""
    event = delivery.event
    headers = delivery.msg.headers or {}
    return (
        projection,
        delivery.order_id,
        event.version if event else 0,
        event.event_id if event else headers.get("Nats-Msg-Id", f"seq-{delivery.seq}"),
        event.event_type if event else None,
        delivery.msg.subject,
        delivery.seq,
        delivery.deliveries,
        delivery.msg.data,
        storable(error)[:4000],
        state,
    )


async def apply_deliveries(
    conn: asyncpg.Connection,
    appliers: Sequence[Applier],
    batches: Sequence[tuple[int, list[Delivery]]],
) -> dict[str, Outcome]:
    """The projections' share of a transaction over the batches of one or more partitions
    (`(partition, deliveries)`): apply, note each partition's progress, park what waits."""
    progress: list[Progress] = []
    for partition, deliveries in batches:
        last = max(deliveries, key=lambda d: d.seq)
        assert last.event is not None
        progress.append(Progress(partition, last.seq, last.event.occurred_at))
    every = [d for _, deliveries in batches for d in deliveries]
    outcomes = await apply_all(
        conn, appliers, [d.event for d in every if d.event is not None], progress=progress
    )
    for name, outcome in outcomes.items():
        if not outcome.held:
            continue
        held = {(e.order_id, e.version) for e in outcome.held}
        await conn.executemany(
            DEAD_LETTER,
            [
                dead_letter_row(name, d, "waiting behind a dead letter", "waiting")
                for d in every
                if d.event is not None and (d.event.order_id, d.event.version) in held
            ],
        )
    return outcomes


def _observe(observer: Observer | None, outcomes: dict[str, Outcome]) -> None:
    if observer is not None:
        for name, outcome in outcomes.items():
            if outcome.applied:
                observer(name, outcome.applied)


class GroupCommit:
    """The transactions of every partition a projector process holds.

    Each partition's consumer keeps fetching and adds what it fetched here. Partial batches (a
    live flow) share a transaction: it takes whatever every partition has added by the time it
    starts, so a process applies its partitions' events together, not in a transaction per
    partition. After such a transaction, the next starts `linger_s` after it ended at the
    earliest, and the consumers go on fetching meanwhile: what arrives joins it (the first batch
    after a quiet spell goes at once). A full batch (a backlog) goes at once in a transaction of
    its own, beside the others, so catching up uses every partition's connection.

    A partition has one transaction in flight at most: what it adds meanwhile waits for the
    next, so its events apply in order. The committer acks what a transaction applied; when a
    transaction fails, each partition in it isolates the culprit in its own share
    (`PartitionConsumer.isolate`) before it takes part in another.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        appliers: Sequence[Applier],
        settings: ProjectorSettings,
        observer: Observer | None = None,
    ) -> None:
        self._pool = pool
        self._appliers = list(appliers)
        self._batch = settings.batch
        self._linger = settings.linger_s
        self._observer = observer
        # By partition number: a partition's consumer may be replaced (a restart, a lost claim)
        # while a transaction of its events is in flight.
        self._pending: dict[int, tuple[PartitionConsumer, list[Delivery]]] = {}
        self._busy: dict[int, asyncio.Event] = {}  # set when the transaction in flight ends
        self._took = asyncio.Event()  # a transaction took what was pending
        self._committer: asyncio.Task[None] | None = None  # the shared transactions
        self._alone: set[asyncio.Task[None]] = set()  # full batches' own transactions
        self._ended = -float("inf")  # loop time the last shared transaction ended

    def room(self, consumer: PartitionConsumer) -> int:
        """How many more deliveries the partition may add before a transaction takes them."""
        _, pending = self._pending.get(consumer.partition, (consumer, []))
        return self._batch - len(pending)

    async def took(self, timeout: float) -> None:
        """Until a transaction takes what is pending (or `timeout` passes)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._took.wait(), timeout)

    def add(self, consumer: PartitionConsumer, deliveries: list[Delivery]) -> None:
        """Apply these (decoded) deliveries of the partition in a coming transaction."""
        _, pending = self._pending.get(consumer.partition, (consumer, []))
        self._pending[consumer.partition] = (consumer, pending + deliveries)
        self._schedule()

    def withdraw(self, consumer: PartitionConsumer) -> list[Delivery]:
        """What the partition added and no transaction took yet (a consumer that stops)."""
        return self._pending.pop(consumer.partition, (consumer, []))[1]

    async def settled(self, consumer: PartitionConsumer) -> None:
        """Until no transaction of the partition's events is in flight (a consumer that stops
        waits for it, so that its partition is not handed on with events still applying)."""
        while (ended := self._busy.get(consumer.partition)) is not None:
            await ended.wait()

    async def close(self) -> None:
        """Wait for the transactions under way, and for those they start."""
        while running := [*self._alone, *([self._committer] if self._committer else [])]:
            await asyncio.gather(*running, return_exceptions=True)
            if self._committer is not None and self._committer.done():
                self._committer = None

    def _schedule(self) -> None:
        """Start what can start: a full batch's own transaction, or the shared committer."""
        for partition in list(self._pending):
            if partition not in self._busy and len(self._pending[partition][1]) >= self._batch:
                self._spawn(self._run(self._take([partition])))
        if self._ready() and (self._committer is None or self._committer.done()):
            self._committer = asyncio.create_task(self._commit_shared())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._alone.add(task)
        task.add_done_callback(self._alone.discard)

    def _ready(self) -> list[int]:
        return [p for p, (_, ds) in self._pending.items() if ds and p not in self._busy]

    def _take(self, partitions: list[int]) -> list[tuple[PartitionConsumer, list[Delivery]]]:
        batches = [self._pending.pop(p) for p in partitions]
        for p in partitions:
            self._busy[p] = asyncio.Event()
        self._took.set()
        self._took = asyncio.Event()
        return batches

    def _release(self, consumer: PartitionConsumer) -> None:
        ended = self._busy.pop(consumer.partition, None)
        if ended is not None:
            ended.set()
        self._schedule()

    async def _run(self, batches: list[tuple[PartitionConsumer, list[Delivery]]]) -> None:
        """Commit the batches together; each partition is released as soon as its events are
        settled (applied and acked, or isolated)."""
        handed_on = False
        try:
            handed_on = await self._commit(batches)
        except Exception:  # what it held comes back after ack_wait; the rest goes on
            log.exception("projector transaction of %d partition(s) lost", len(batches))
        finally:
            if not handed_on:
                for consumer, _ in batches:
                    self._release(consumer)

    async def _commit_shared(self) -> None:
        loop = asyncio.get_running_loop()
        while self._ready():
            delay = self._ended + self._linger - loop.time()
            if delay > 0:
                # The linger: bounded (shorter than ack_wait); a batch that fills meanwhile
                # goes at once on its own.
                await asyncio.sleep(delay)
            ready = self._ready()
            if ready:
                await self._run(self._take(ready))
                self._ended = loop.time()

    async def _commit(self, batches: list[tuple[PartitionConsumer, list[Delivery]]]) -> bool:
        """Apply and ack the batches in one transaction, or isolate; True when the partitions
        were handed on to transactions of their own (which release them)."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                outcomes = await apply_deliveries(
                    conn, self._appliers, [(c.partition, ds) for c, ds in batches]
                )
        except Exception as error:
            if len(batches) == 1:  # the culprit is in this share: isolate it
                consumer, deliveries = batches[0]
                await consumer.isolate(deliveries, error)
                return False
            # Which share holds the culprit is unknown: each partition tries its own at once,
            # in a transaction of its own, and is released when it is done; only the culprit's
            # isolates, and neither the others nor the shared transactions wait for it.
            for batch in batches:
                self._spawn(self._run([batch]))
            return True
        for consumer, deliveries in batches:
            try:
                for d in deliveries:
                    await d.msg.ack()
            except Exception as error:  # applied: isolating finds them applied, and acks
                try:
                    await consumer.isolate(deliveries, error)
                except Exception:
                    log.exception("%s: acks left to redelivery", consumer.durable)
        with contextlib.suppress(Exception):  # an observer's failure is not the projector's
            _observe(self._observer, outcomes)
        return False


class PartitionConsumer:
    """Every projection on one partition: fetch, apply them all in one transaction, ack.

    One durable consumer and one transaction per batch serve all projections, so a saga's
    event costs one delivery and one commit however many read models it feeds; the partitions
    of one process share their transactions (`GroupCommit`). Each projection keeps its own
    checkpoints and dead letters: when one fails on an event (in its own savepoint), the others
    still apply it, and only the failing one retries or parks the order.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        appliers: Sequence[Applier],
        js: JetStreamContext,
        stream: str,
        durable: str,
        partition: int,
        settings: ProjectorSettings,
        observer: Observer | None = None,
        group: GroupCommit | None = None,
    ) -> None:
        self._pool = pool
        self._appliers = list(appliers)
        self._js = js
        self._stream = stream
        self.durable = durable
        self.partition = partition
        self._settings = settings
        self._observer = observer
        self._group = group or GroupCommit(pool, appliers, settings, observer)

    async def run(self, stop: asyncio.Event, wait: float = 1.0) -> None:
        """Fetch for as long as `stop` is not set, as much as the next transaction has room for;
        at the end, give back what no transaction took (redelivered at once)."""
        sub = await self._js.pull_subscribe_bind(self.durable, self._stream)
        try:
            while not stop.is_set():
                room = self._group.room(self)
                if room <= 0:
                    await self._group.took(wait)
                    continue
                try:
                    msgs = await sub.fetch(room, timeout=wait)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue  # nothing new (nats-py raises instead of returning [])
                await self.handle([Delivery.of(m) for m in msgs])
        finally:
            for d in self._group.withdraw(self):
                with contextlib.suppress(Exception):
                    await d.msg.nak()
            await self._group.settled(self)
            await sub.unsubscribe()

    async def handle(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            if delivery.event is None:
                # Undecodable is undecodable on every delivery: dead-letter it at once.
                names = [a.name for a in self._appliers]
                await self._dead_letter(delivery, names, delivery.error or "undecodable")
                await delivery.msg.ack()
        good = [d for d in deliveries if d.event is not None]
        if good:
            self._group.add(self, good)

    async def isolate(self, deliveries: list[Delivery], error: Exception) -> None:
        """A transaction with this partition's `deliveries` failed: apply them order by order
        and event by event, so that only a culprit's order waits."""
        log.warning(
            "%s: batch of %d failed (%s); retrying it order by order",
            self.durable, len(deliveries), error,
        )  # fmt: skip
        await self._isolate(deliveries)

    async def _commit_each(self, delivery: Delivery) -> dict[str, str]:
        """Apply one event for every projection, each in a savepoint; the failures, by name."""
        failed: dict[str, str] = {}
        outcomes: dict[str, Outcome] = {}
        async with self._pool.acquire() as conn, conn.transaction():
            for applier in self._appliers:
                try:
                    async with conn.transaction():  # a savepoint
                        batch = [(self.partition, [delivery])]
                        outcomes.update(await apply_deliveries(conn, [applier], batch))
                except Exception as error:  # this projection waits; the others go on
                    failed[applier.name] = f"{type(error).__name__}: {error}"
        _observe(self._observer, outcomes)
        return failed

    async def _isolate(self, deliveries: list[Delivery]) -> None:
        groups: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            groups[d.order_id].append(d)
        for group in groups.values():
            group.sort(key=lambda d: (d.event.version if d.event else 0, d.seq))
            for i, delivery in enumerate(group):
                failed = await self._commit_each(delivery)
                if not failed:
                    await delivery.msg.ack()
                    continue
                if delivery.deliveries < self._settings.max_attempts:
                    # Again later, with the order's later events: the projections that did
                    # apply them skip them then.
                    await self._retry_later(group[i:], failed)
                    break
                # Dead-lettered for the projections that failed; the order's later events go
                # on below: those projections park them behind it, the others apply them.
                log.error(
                    "%s: dead-lettering %s after %d deliveries: %s",
                    self.durable, delivery.msg.subject, delivery.deliveries, failed,
                )  # fmt: skip
                for name, error in failed.items():
                    await self._dead_letter(delivery, [name], error)
                await delivery.msg.ack()

    async def _retry_later(self, deliveries: list[Delivery], failed: dict[str, str]) -> None:
        first = deliveries[0]
        backoff = self._settings.backoff_s
        delay = backoff[min(first.deliveries, len(backoff)) - 1]
        log.warning(
            "%s: %s failed (delivery %d), again in %.1fs: %s",
            self.durable, first.msg.subject, first.deliveries, delay, failed,
        )  # fmt: skip
        for d in deliveries:
            await d.msg.nak(delay=delay)

    async def _dead_letter(self, delivery: Delivery, names: list[str], error: str) -> None:
        async with self._pool.acquire() as conn:
            await conn.executemany(
                DEAD_LETTER, [dead_letter_row(name, delivery, error, "failed") for name in names]
            )
