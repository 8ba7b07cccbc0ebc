"""Chaos soak: sagas of every kind through the HTTP API while a seeded driver kills the stack's
parts, then an audit of everything the design promises.

It starts its own embedded stack (as the tests do: free ports, a fresh data directory), stocks a
few SKUs and drives `--sagas` orders through `POST /orders` over `--duration` seconds at a bounded
concurrency, mixing every scenario of the participants' test mode: happy path (`tok_visa`),
declined (`tok_decline`), flaky (`tok_flaky`), unshippable (country `ZZ`), out of stock, a customer
cancel soon after placing, and a refund that fails until an operator fixes its cause and retries
the compensation. Every request survives the API being killed: it is retried with the same body
and `Idempotency-Key`.

Meanwhile a driver seeded by `--seed` SIGKILLs, at random times, Postgres, nats-server, the
Temporal server and every service process of `DevStack.APPS` (whatever that holds at run time),
each once plus `--extra-faults` more; the supervisor restarts each. One server (`--hold`, or one
picked by the seed) is held down for `--down` seconds (more than a minute by default). Before each
fault the driver waits until every part serves again, so outages do not pile up beyond the saga's
retry budget; the schedule ends by itself.

Holding a server down: `DevStack.pause(name)` kills it and keeps its supervisor from restarting
it; `DevStack.resume(name)` starts it again, supervised. `--outage freeze` instead SIGSTOPs the
server's whole process group (Postgres's backends too) and SIGCONTs it afterwards: a frozen
server, whose clients time out instead of being refused.

Afterwards it waits (polling, with deadlines) until every saga has ended and the read side has
caught up, then audits: outcomes per scenario, stock and money conserved, stream versions
contiguous, every stored event exactly once on JetStream and in version order, every read model
equal to a fresh fold of the store, one notification per terminal event, no dead letters, no
workflow left running, no saga nobody asked for. It prints a table, then one JSON object as its
last line, and exits non-zero if anything was violated. The data directory (with every process's
log in `logs/`) is kept when something was violated.

Usage: python bench/soak.py [--sagas 1000] [--seed 1] [--duration S] [--down 65] [--hold nats]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import nats.errors
import nats.js.errors
import sqlalchemy as sa
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ordersaga import bus, events
from ordersaga.contracts.payloads import OrderPlaced
from ordersaga.db import create_engine, create_pool
from ordersaga.devstack import DevStack, Managed, isolated_settings
from ordersaga.domain import EventType, SagaPolicy
from ordersaga.events import order_upcasters
from ordersaga.eventstore import EventStore, StoredEvent
from ordersaga.runtime import connect_temporal
from ordersaga.settings import ProjectorSettings, Settings
from projections import customers as customer_projection
from projections import orders as order_projection
from projections.base import OrderEvent

log = logging.getLogger("soak")

T = TypeVar("T")

TERMINAL_TYPES = (EventType.CONFIRMED.value, EventType.CANCELLED.value)
TERMINAL_STATUSES = ("CONFIRMED", "CANCELLED")

# The first fault waits until some sagas are in flight.
WARMUP_S = 3.0
# How long a killed part may take to serve again (Temporal's dev server is the slowest).
RECOVERY_S = 120.0
# Beyond the longest outage: a restart, and the apps reconnecting afterwards.
RECOVERY_BUDGET_S = 30.0
# Retry intervals of every saga activity: short, so sagas resume soon after an outage.
INITIAL_INTERVAL_S = 0.25
MAX_INTERVAL_S = 2.0

NORMAL_SKUS = tuple(f"soak-sku-{i}" for i in range(6))
SCARCE_SKU = "soak-scarce"
SCARCE_STOCK = 2
MAX_QUANTITY = 3


class Scenario(StrEnum):
    HAPPY = "happy"
    FLAKY = "flaky"
    DECLINED = "declined"
    UNSHIPPABLE = "unshippable"
    OUT_OF_STOCK = "out_of_stock"
    CANCEL = "cancel"
    ATTENTION = "attention"


# How often each scenario is drawn. A planned attention saga keeps failing its refund for the
# whole compensation retry budget (a minute and more), so it is the rarest.
WEIGHTS = {
    Scenario.HAPPY: 6,
    Scenario.FLAKY: 2,
    Scenario.DECLINED: 2,
    Scenario.UNSHIPPABLE: 2,
    Scenario.OUT_OF_STOCK: 2,
    Scenario.CANCEL: 3,
    Scenario.ATTENTION: 1,
}

# (status, failure reason) the store must end with, per scenario; a cancel saga's depends on
# how its cancel was answered (see `expected_outcomes`).
EXPECTED: dict[Scenario, tuple[str, str | None]] = {
    Scenario.HAPPY: ("CONFIRMED", None),
    Scenario.FLAKY: ("CONFIRMED", None),
    Scenario.DECLINED: ("CANCELLED", "payment_declined"),
    Scenario.UNSHIPPABLE: ("CANCELLED", "shipping_unavailable"),
    Scenario.OUT_OF_STOCK: ("CANCELLED", "out_of_stock"),
    Scenario.ATTENTION: ("CANCELLED", "shipping_unavailable"),
}

CHECKS = (
    "placement",
    "idempotency",
    "recovery",
    "terminal",
    "outcome",
    "attention",
    "orphans",
    "versions",
    "bus",
    "readmodel_orders",
    "readmodel_customers",
    "readmodel_sales",
    "notifications",
    "money",
    "stock",
    "shipping",
    "dead_letters",
    "temporal",
)

# The refund outage of the attention scenario, as tests/e2e/test_failures.py makes it: a trigger
# rejects refunds of the orders of listed customers. Listing the customer before the order is
# placed closes the race with a refund that runs right after the shipment fails; the operator
# deletes the row (the fix) before retrying the compensation.
OUTAGE_DDL = (
    "CREATE SCHEMA IF NOT EXISTS soak",
    "CREATE TABLE IF NOT EXISTS soak.refund_outage (customer_id text PRIMARY KEY)",
    """
    CREATE OR REPLACE FUNCTION soak.refund_outage() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.kind = 'REFUND' AND EXISTS (
            SELECT 1 FROM api.order_requests r JOIN soak.refund_outage o USING (customer_id)
            WHERE r.order_id = NEW.order_id) THEN
            RAISE EXCEPTION 'refunds are down for this customer (soak)';
        END IF;
        RETURN NEW;
    END $$
    """,
    "DROP TRIGGER IF EXISTS soak_refund_outage ON payments.ledger",
    "CREATE TRIGGER soak_refund_outage BEFORE INSERT ON payments.ledger "
    "FOR EACH ROW EXECUTE FUNCTION soak.refund_outage()",
)


class SoakError(Exception):
    """The soak could not do what it set out to (a request that never went through)."""


@dataclass(frozen=True)
class SoakConfig:
    sagas: int = 1000
    seed: int = 1
    # Placements and faults are spread over this many seconds; None: 0.2 s per saga, at least 60.
    duration_s: float | None = None
    concurrency: int = 16
    extra_faults: int = 0
    down_s: float = 65.0
    hold: str | None = None
    outage: Literal["kill", "freeze"] = "kill"
    settle_s: float = 300.0
    # Where the stack keeps its data and logs; None: a temporary directory.
    data_dir: Path | None = None
    # The local cluster of `ordersaga dev --cluster`: three NATS nodes (streams at R3) and two
    # of each service process, the requests spread over both APIs.
    cluster: bool = False
    # The faults in this order instead of the seeded schedule: ("kill" | "hold", part), where the
    # part `nats-leader` is the node that leads the ORDERS stream at the moment of the fault.
    plan: tuple[tuple[str, str], ...] | None = None

    @property
    def window_s(self) -> float:
        return self.duration_s if self.duration_s is not None else max(60.0, 0.2 * self.sagas)


def saga_policy(config: SoakConfig) -> SagaPolicy:
    """Retry budgets that outlast the longest outage the soak inflicts, so every saga can still
    end the way its scenario says: a step past its budget would be cancelled (`step_failed`), a
    compensation past its budget would wait for an operator. The planned refund outage reaches
    REQUIRES_ATTENTION when the compensation's budget runs out, so the budget is also what an
    attention saga costs in wall time."""
    budget = config.down_s + RECOVERY_BUDGET_S
    return SagaPolicy(
        step_budget_s=budget,
        compensation_budget_s=budget,
        initial_interval_s=INITIAL_INTERVAL_S,
        max_interval_s=MAX_INTERVAL_S,
        activity_timeout_s=5.0,
    )


# -- small helpers --------------------------------------------------------------------------------


async def poll_until(probe: Callable[[], Awaitable[T | None]], timeout: float) -> T | None:
    """Poll `probe` with backoff until it returns something other than None; None at the
    deadline (the caller decides whether that is a violation)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    while True:
        result = await probe()
        if result is not None:
            return result
        if loop.time() > deadline:
            return None
        await asyncio.sleep(delay)  # poll backoff within the deadline
        delay = min(delay * 1.5, 1.0)


async def serves(part: Managed) -> bool:
    """The part runs and its readiness probe passes (bounded: a frozen server never answers)."""
    if not part.running:
        return False
    try:
        async with asyncio.timeout(5):
            return await part.ready()
    except Exception:
        return False


def plain(value: Any) -> Any:
    """JSON-shaped, keys sorted: a folded row and a row read back from jsonb compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


TRANSIENT_DB = (sa.exc.SQLAlchemyError, OSError, TimeoutError)


async def in_db(
    engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]], timeout: float
) -> T:
    """Run `work` in a transaction, retried through Postgres outages until `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.2
    while True:
        try:
            async with asyncio.timeout(10):  # a frozen server never answers
                async with engine.begin() as conn:
                    return await work(conn)
        except TRANSIENT_DB as error:
            if loop.time() + delay > deadline:
                raise SoakError(
                    f"Postgres did not answer within {timeout:.0f}s: {error}"
                ) from error
            await asyncio.sleep(delay)  # retry backoff
            delay = min(delay * 2, 2.0)


class Api:
    """The soak's HTTP client: each request is retried through API restarts and outages (a
    transport error or a 5xx) with the same body and headers, so a POST keeps its
    Idempotency-Key, until a deadline. At most `concurrency` requests are in flight."""

    def __init__(
        self, base_urls: Sequence[str], key: str, concurrency: int, deadline_s: float
    ) -> None:
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0),
            headers={"Authorization": f"Bearer {key}"},
        )
        # Several APIs (the cluster): a request goes to the next one, and to the one after that
        # when it gets no answer, as a load balancer that takes a dead backend out would.
        self._bases = list(base_urls)
        self._next = 0
        self._gate = asyncio.Semaphore(concurrency)
        self._deadline_s = deadline_s
        self.retries = 0
        self.answered = Counter[str]()  # answers below 500, by API

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[httpx.Response, int]:
        """The first answer below 500, and how many attempts failed before it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline_s
        delay = 0.2
        failures = 0
        while True:
            base = self._bases[self._next % len(self._bases)]
            self._next += 1
            try:
                async with self._gate:
                    response = await self._http.request(
                        method, base + path, json=body, headers=headers
                    )
            except httpx.TransportError as error:
                last = f"{type(error).__name__}: {error}"
                unreachable = True
            else:
                unreachable = False
                if response.status_code < 500:
                    self.answered[base] += 1
                    return response, failures
                last = f"{response.status_code}: {response.text[:200]}"
            failures += 1
            self.retries += 1
            if loop.time() + delay > deadline:
                raise SoakError(f"{method} {path}: no answer after {failures} attempts ({last})")
            if unreachable and failures % len(self._bases):
                continue  # no connection to that API: the next one at once, then back off
            await asyncio.sleep(delay)  # retry backoff
            delay = min(delay * 2, 2.0)


# -- the sagas ------------------------------------------------------------------------------------


@dataclass
class Saga:
    index: int
    scenario: Scenario
    key: str
    customer_id: str
    body: dict[str, Any]
    start_at: float  # seconds after the load starts
    cancel_after: float
    recheck_idempotency: bool
    order_id: str | None = None
    post_failures: int = 0
    # cancel: "accepted" (202 at once), "refused" (409 at once), "uncertain" (an attempt failed
    # before the answer, so an earlier attempt may have gone through)
    cancel: str | None = None
    error: str | None = None
    retried_compensation: int = 0


def plan_sagas(config: SoakConfig, rng: random.Random, nonce: str) -> list[Saga]:
    kinds = list(Scenario)
    weights = [WEIGHTS[s] for s in kinds]
    # Every scenario at least once, then by weight.
    drawn = kinds[: config.sagas] + rng.choices(kinds, weights, k=max(0, config.sagas - len(kinds)))
    rng.shuffle(drawn)
    sagas = []
    for i, scenario in enumerate(drawn):
        customer = f"soak-{nonce}-{i:05d}-{scenario.value}"
        sagas.append(
            Saga(
                index=i,
                scenario=scenario,
                key=f"soak-{nonce}-{i}",
                customer_id=customer,
                body=order_body(rng, scenario, customer),
                start_at=rng.uniform(0, config.window_s * 0.9),
                cancel_after=rng.uniform(0.0, 1.5),
                recheck_idempotency=rng.random() < 0.05,
            )
        )
    return sorted(sagas, key=lambda s: s.start_at)


def order_body(rng: random.Random, scenario: Scenario, customer_id: str) -> dict[str, Any]:
    items = [
        {
            "sku": sku,
            "quantity": rng.randint(1, MAX_QUANTITY),
            "unit_price": rng.randrange(100, 5000),
        }
        for sku in rng.sample(NORMAL_SKUS, rng.randint(1, 2))
    ]
    if scenario == Scenario.OUT_OF_STOCK:
        scarce = {
            "sku": SCARCE_SKU,
            "quantity": SCARCE_STOCK + rng.randint(1, 3),
            "unit_price": 999,
        }
        # Sometimes beside lines that are in stock: nothing may stay reserved of those either.
        items = [scarce] if rng.random() < 0.5 else [*items, scarce]
    token = {Scenario.DECLINED: "tok_decline", Scenario.FLAKY: "tok_flaky"}.get(
        scenario, "tok_visa"
    )
    unshippable = scenario in (Scenario.UNSHIPPABLE, Scenario.ATTENTION)
    return {
        "customer_id": customer_id,
        "items": items,
        "shipping_address": {
            "name": "Soak Tester",
            "line1": "1 Chaos Lane",
            "city": "Entropy",
            "postal_code": "4242",
            "country": "ZZ" if unshippable else rng.choice(["DE", "GB", "FR", "NL"]),
        },
        "payment": {"token": token},
    }


def expected_outcomes(saga: Saga) -> set[tuple[str, str | None]]:
    if saga.scenario != Scenario.CANCEL:
        return {EXPECTED[saga.scenario]}
    cancelled = ("CANCELLED", "customer_request")
    if saga.cancel == "accepted":
        return {cancelled}
    if saga.cancel == "refused":
        return {("CONFIRMED", None)}
    return {cancelled, ("CONFIRMED", None)}


# -- faults ---------------------------------------------------------------------------------------


@dataclass
class FaultRecord:
    part: str
    kind: str  # "kill", or "hold-kill" / "hold-freeze" for the long outage
    at_s: float  # after the load started
    pid: int | None
    back_after_s: float | None  # from the fault until the part served again; None: it did not
    # Killing the ORDERS stream's leader: (old leader, the leader elected after it).
    leader: tuple[str, str | None] | None = None
    # Holding an API down: the answers each API gave meanwhile.
    answered_meanwhile: dict[str, int] | None = None


class FaultDriver:
    """Seeded faults: one SIGKILL per part (plus extras), and one server held down."""

    def __init__(self, stack: DevStack, config: SoakConfig, rng: random.Random) -> None:
        self.stack = stack
        self.config = config
        # Every part the stack runs today (`nats-2`, `api-1` on a cluster), so a new one (a
        # relay, say) is included.
        self.servers = [n for n in stack.parts if _service(n) in DevStack.SERVERS]
        self.apps = [n for n in stack.parts if _service(n) in DevStack.APPS]
        self.parts = self.servers + self.apps
        self.api: Api | None = None  # set by the soak: counts answers while an API is held
        if config.plan is not None:
            faults = list(config.plan)
            self.held = next((name for kind, name in faults if kind == "hold"), "")
        else:
            self.held = config.hold or rng.choice(self.servers)
            if self.held not in self.servers:
                raise SoakError(f"--hold {self.held}: not a server of this stack ({self.servers})")
            faults = [("kill", p) for p in self.parts]
            faults += [("kill", rng.choice(self.parts)) for _ in range(config.extra_faults)]
            faults.append(("hold", self.held))
            rng.shuffle(faults)
        # Seeded pauses, each counted from the moment the previous fault has healed: a long
        # outage early on pushes the rest back instead of bunching them up behind it.
        mean_gap = max(config.window_s - WARMUP_S, 1.0) / len(faults)
        self.plan = [(rng.uniform(0.0, 2 * mean_gap), kind, name) for kind, name in faults]
        if config.plan is not None:  # one after the other, each a second after the last healed
            self.plan = [(1.0, kind, name) for kind, name in faults]
        self.records: list[FaultRecord] = []
        self.skipped: list[str] = []

    async def stack_serves(self, timeout: float = RECOVERY_S) -> bool:
        async def probe() -> bool | None:
            for part in list(self.stack.parts.values()):
                if not await serves(part):
                    return None
            return True

        return await poll_until(probe, timeout) is not None

    async def run(self, t0: float) -> None:
        loop = asyncio.get_running_loop()
        give_up = t0 + self.config.window_s + self.config.down_s + RECOVERY_S
        await asyncio.sleep(WARMUP_S)  # some sagas in flight first
        for gap, kind, name in self.plan:
            await asyncio.sleep(gap)  # paces the seeded schedule
            if loop.time() > give_up:
                self.skipped.append(f"{kind} {name}: the fault schedule ran out of time")
                continue
            # One outage at a time: the saga's retry budget covers the longest one, not a pile.
            if not await self.stack_serves():
                self.skipped.append(f"{kind} {name}: the stack did not serve again before it")
                continue
            if kind == "kill":
                await self._kill(name, loop.time() - t0)
            else:
                await self._hold(name, loop.time() - t0)
        log.info(
            "fault schedule done: %d injected, %d skipped", len(self.records), len(self.skipped)
        )

    async def _kill(self, name: str, at: float) -> None:
        if name == "nats-leader":
            await self._kill_leader(at)
            return
        part = self.stack.parts[name]
        before = part.restarts
        pid = part.process.pid if part.process else None
        started = time.monotonic()
        part.kill()
        log.warning("fault: SIGKILL %s (pid %s) at %.1fs", name, pid, at)

        async def back() -> bool | None:
            return True if part.restarts > before and await serves(part) else None

        ok = await poll_until(back, RECOVERY_S)
        took = time.monotonic() - started if ok else None
        self.records.append(FaultRecord(name, "kill", at, pid, took))
        log.info("fault: %s serves again after %s", name, f"{took:.1f}s" if took else "NEVER")

    async def _kill_leader(self, at: float) -> None:
        """SIGKILL the node that leads ORDERS and keep it down until another node leads: back
        within a second, a killed node could win the election again before the others noticed
        it had gone, and nothing would show that the stream can change leaders."""
        name = await self._stream_leader()
        part = self.stack.parts[name]
        pid = part.process.pid if part.process else None
        started = time.monotonic()
        await self.stack.pause(name)
        log.warning("fault: SIGKILL %s (pid %s, leads ORDERS) at %.1fs", name, pid, at)
        new = await self._new_leader(name)
        log.info("fault: ORDERS led by %s after %s died", new, name)
        await self.stack.resume(name)
        ok = await poll_until(lambda: self._serving(part), RECOVERY_S)
        took = time.monotonic() - started if ok else None
        self.records.append(FaultRecord(name, "kill", at, pid, took, leader=(name, new)))
        log.info("fault: %s serves again after %s", name, f"{took:.1f}s" if took else "NEVER")

    async def _hold(self, name: str, at: float) -> None:
        part = self.stack.parts[name]
        assert part.process is not None
        pid = part.process.pid
        started = time.monotonic()
        answered: dict[str, int] | None = None
        if self.config.outage == "freeze":
            # The whole process group: Postgres's backends serve on without their postmaster.
            os.killpg(pid, signal.SIGSTOP)
            log.warning(
                "fault: %s (pid %s) frozen for %.0fs at %.1fs", name, pid, self.config.down_s, at
            )
            try:
                await asyncio.sleep(self.config.down_s)  # the outage itself
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGCONT)
        else:
            await self.stack.pause(name)
            log.warning(
                "fault: %s (pid %s) down for %.0fs at %.1fs", name, pid, self.config.down_s, at
            )
            # Answers already on their way from the API just killed are counted before this.
            await asyncio.sleep(0.5)
            before = Counter(self.api.answered) if self.api else Counter[str]()
            await asyncio.sleep(self.config.down_s)  # the outage itself
            if self.api is not None and _service(name) == "api":
                answered = dict(self.api.answered - before)
            # Supervised again: a start that fails (Postgres's old backends still holding shared
            # memory, say) is retried with the supervisor's own backoff.
            await self.stack.resume(name)
        ok = await poll_until(lambda: self._serving(part), RECOVERY_S)
        took = time.monotonic() - started if ok else None
        self.records.append(
            FaultRecord(
                name, f"hold-{self.config.outage}", at, pid, took, answered_meanwhile=answered
            )
        )
        log.info("fault: %s serves again after %s", name, f"{took:.1f}s" if took else "NEVER")

    @staticmethod
    async def _serving(part: Managed) -> bool | None:
        return True if await serves(part) else None

    async def _leaders(self) -> str | None:
        """The server that leads the ORDERS stream now (None while it is being elected)."""
        settings = self.stack.settings
        try:
            nc = await asyncio.wait_for(bus.connect(settings, "soak-faults"), 10)
        except (TimeoutError, OSError, nats.errors.Error):
            return None
        try:
            info = await nc.jetstream().stream_info(settings.nats.stream)
            return info.cluster.leader if info.cluster else None
        except (TimeoutError, nats.errors.Error):
            return None
        finally:
            await nc.close()

    async def _stream_leader(self) -> str:
        leader = await poll_until(self._leaders, 30)
        if leader is None:
            raise SoakError("the ORDERS stream has no leader to kill")
        # Server `ordersaga-dev-2` is the part `nats-2`.
        return "nats-" + leader.rsplit("-", 1)[1]

    async def _new_leader(self, old: str) -> str | None:
        async def elected() -> str | None:
            leader = await self._leaders()
            return leader if leader and not leader.endswith(old.removeprefix("nats")) else None

        return await poll_until(elected, 60)


def _service(part: str) -> str:
    """`api-2` -> `api`; `nats` -> `nats`."""
    name, _, copy = part.rpartition("-")
    return name if name and copy.isdigit() else part


# -- the result -----------------------------------------------------------------------------------


@dataclass
class SoakResult:
    config: SoakConfig
    sagas: list[Saga]
    faults: list[FaultRecord]
    skipped_faults: list[str]
    parts: list[str]
    held: str
    findings: dict[str, list[str]]
    final: dict[str, tuple[str, str | None]]  # every stored order -> (status, reason), folded
    restarts: dict[str, int]
    http_retries: int
    elapsed_s: float
    data_dir: Path
    api_urls: list[str]

    @property
    def violations(self) -> int:
        return sum(len(v) for v in self.findings.values())

    def status(self, saga: Saga) -> str:
        if saga.order_id is None:
            return "UNPLACED"
        return self.final.get(saga.order_id, ("NO EVENTS", None))[0]

    @property
    def terminal(self) -> int:
        """The soak's sagas that ended (CONFIRMED or CANCELLED) in the store."""
        return sum(1 for saga in self.sagas if self.status(saga) in TERMINAL_STATUSES)

    @property
    def injected(self) -> dict[str, int]:
        """Kills per part (the long outage counted too)."""
        return dict(Counter(f.part for f in self.faults))

    @property
    def max_down_s(self) -> float:
        held = [f.back_after_s or 0.0 for f in self.faults if f.kind.startswith("hold")]
        return max(held, default=0.0)

    def summary(self) -> dict[str, Any]:
        outcomes: dict[str, dict[str, int]] = defaultdict(dict)
        for saga in self.sagas:
            row = outcomes[saga.scenario.value]
            row[self.status(saga)] = row.get(self.status(saga), 0) + 1
        return {
            "bench": "soak",
            "sagas": len(self.sagas),
            "faults": len(self.faults),
            "terminal": self.terminal,
            "violations": self.violations,
            "checks": {name: len(found) for name, found in self.findings.items()},
            "seed": self.config.seed,
            "duration_s": round(self.elapsed_s, 1),
            "max_server_down_s": round(self.max_down_s, 1),
            "held": self.held,
            "outage": self.config.outage,
            "faults_by_part": self.injected,
            "faults_skipped": len(self.skipped_faults),
            "supervisor_restarts": self.restarts,
            "outcomes": outcomes,
            "http_retries": self.http_retries,
            "data_dir": str(self.data_dir),
        }

    def table(self) -> str:
        lines = [
            f"ordersaga chaos soak: seed {self.config.seed}, {len(self.sagas)} sagas, "
            f"{self.elapsed_s:.0f}s, outage mode {self.config.outage}",
            "",
            f"{'at (s)':>8}  {'part':<10} {'fault':<12} {'pid':>8}  serves again after",
        ]
        for f in self.faults:
            back = f"{f.back_after_s:.1f}s" if f.back_after_s is not None else "NEVER"
            lines.append(f"{f.at_s:8.1f}  {f.part:<10} {f.kind:<12} {f.pid or '-':>8}  {back}")
        lines += [f"  skipped: {s}" for s in self.skipped_faults]
        lines += ["", f"{'scenario':<13} {'sagas':>6} {'CONFIRMED':>10} {'CANCELLED':>10} other"]
        by_scenario: dict[Scenario, list[Saga]] = defaultdict(list)
        for saga in self.sagas:
            by_scenario[saga.scenario].append(saga)
        for scenario in Scenario:
            group = by_scenario.get(scenario, [])
            statuses = Counter(self.status(s) for s in group)
            other = {k: v for k, v in statuses.items() if k not in TERMINAL_STATUSES}
            lines.append(
                f"{scenario.value:<13} {len(group):>6} {statuses['CONFIRMED']:>10} "
                f"{statuses['CANCELLED']:>10} {other or ''}"
            )
        lines += ["", f"{'check':<20} {'violations':>10}  first findings"]
        for name, found in self.findings.items():
            lines.append(f"{name:<20} {len(found):>10}  {found[0] if found else ''}")
            lines += [f"{'':<33}{detail}" for detail in found[1:5]]
            if len(found) > 5:
                lines.append(f"{'':<33}... {len(found) - 5} more")
        lines += [
            "",
            f"terminal {self.terminal}/{len(self.sagas)}, violations {self.violations}, "
            f"max server down {self.max_down_s:.1f}s",
        ]
        return "\n".join(lines)


# -- the soak -------------------------------------------------------------------------------------


class Soak:
    def __init__(self, stack: DevStack, config: SoakConfig) -> None:
        self.stack = stack
        self.settings: Settings = stack.settings
        self.config = config
        rng = random.Random(config.seed)
        self.faults = FaultDriver(stack, config, rng)
        self.sagas = plan_sagas(config, rng, uuid.uuid4().hex[:6])
        self.by_order: dict[str, Saga] = {}
        self.stocked: dict[str, int] = {sku: config.sagas * MAX_QUANTITY for sku in NORMAL_SKUS}
        self.stocked[SCARCE_SKU] = SCARCE_STOCK
        self.findings: dict[str, list[str]] = {name: [] for name in CHECKS}
        self.unplanned_attention: set[str] = set()
        # Long enough for a request to outlast the held-down server and its restart.
        self.request_deadline_s = config.down_s + RECOVERY_S
        assert stack.api_key is not None
        self.api = Api(stack.api_urls(), stack.api_key, config.concurrency, self.request_deadline_s)
        self.faults.api = self.api
        self.engine = create_engine(self.settings, pool_size=4)

    def find(self, check: str, detail: str) -> None:
        self.findings[check].append(detail)

    async def close(self) -> None:
        await self.api.close()
        await self.engine.dispose()

    # -- driving --------------------------------------------------------------------------------

    async def prepare(self) -> None:
        for sku, available in self.stocked.items():
            response, _ = await self.api.request(
                "PUT", f"/inventory/{sku}", body={"available": available}
            )
            if response.status_code != 200:
                raise SoakError(f"stocking {sku}: {response.status_code} {response.text}")

        async def outage(conn: AsyncConnection) -> None:
            for statement in OUTAGE_DDL:
                await conn.execute(sa.text(statement))

        await in_db(self.engine, outage, 60)

    async def drive(self, saga: Saga, t0: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, t0 + saga.start_at - loop.time()))  # paces the load
        try:
            await self._place(saga)
            if saga.scenario == Scenario.CANCEL and saga.order_id:
                await asyncio.sleep(saga.cancel_after)  # "soon after placing", seeded
                await self._cancel(saga)
        except SoakError as error:
            saga.error = str(error)
            log.error("saga %d (%s): %s", saga.index, saga.scenario.value, error)

    async def _place(self, saga: Saga) -> None:
        if saga.scenario == Scenario.ATTENTION:

            async def list_customer(conn: AsyncConnection) -> None:
                await conn.execute(
                    sa.text(
                        "INSERT INTO soak.refund_outage (customer_id) VALUES (:c) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    {"c": saga.customer_id},
                )

            await in_db(self.engine, list_customer, self.request_deadline_s)
        headers = {"Idempotency-Key": saga.key}
        response, failures = await self.api.request(
            "POST", "/orders", body=saga.body, headers=headers
        )
        saga.post_failures = failures
        if response.status_code != 202:
            raise SoakError(f"POST /orders answered {response.status_code}: {response.text}")
        saga.order_id = str(response.json()["order_id"])
        self.by_order[saga.order_id] = saga
        if failures or saga.recheck_idempotency:
            # A retried POST must return the same order: asked once more, on purpose.
            again, _ = await self.api.request("POST", "/orders", body=saga.body, headers=headers)
            same = again.status_code == 202 and again.json().get("order_id") == saga.order_id
            if not same or again.headers.get("Idempotent-Replayed") != "true":
                self.find(
                    "idempotency",
                    f"saga {saga.index}: key {saga.key} gave order {saga.order_id}, then "
                    f"{again.status_code} {again.text[:120]} "
                    f"(replayed={again.headers.get('Idempotent-Replayed')})",
                )

    async def _cancel(self, saga: Saga) -> None:
        response, failures = await self.api.request(
            "POST", f"/orders/{saga.order_id}/cancel", body={"reason": "soak: changed my mind"}
        )
        if response.status_code not in (202, 409):
            raise SoakError(f"cancel answered {response.status_code}: {response.text}")
        if failures:
            saga.cancel = "uncertain"
        else:
            saga.cancel = "accepted" if response.status_code == 202 else "refused"

    async def operate(self) -> None:
        """The operator: finds orders that require attention, fixes the cause, retries the
        compensation. Planned (the attention scenario) or not: an order must never be left
        waiting, and an unplanned one is reported by the audit."""
        handled: dict[str, int] = {}  # order -> version of the attention event retried
        while True:
            await asyncio.sleep(1.0)  # the operator's round
            try:
                waiting = await in_db(self.engine, _requiring_attention, 30)
            except SoakError as error:
                log.warning("operator: %s", error)
                continue
            for order_id, version in waiting:
                if handled.get(order_id, 0) >= version:
                    continue  # retried already; the compensation has not recorded its fact yet
                saga = self.by_order.get(order_id)
                if saga is None or saga.scenario != Scenario.ATTENTION:
                    if order_id not in self.unplanned_attention:
                        log.warning("operator: order %s requires attention, unplanned", order_id)
                    self.unplanned_attention.add(order_id)
                try:
                    if saga is not None:
                        await in_db(self.engine, _fix_refunds(saga.customer_id), 60)
                    response, _ = await self.api.request(
                        "POST", f"/orders/{order_id}/retry-compensation"
                    )
                except SoakError as error:
                    log.warning("operator: order %s: %s", order_id, error)
                    continue
                if response.status_code == 202:
                    handled[order_id] = version
                    if saga is not None:
                        saga.retried_compensation += 1
                    log.info("operator: retried the compensation of order %s", order_id)
                # 409: the workflow has recorded the event but is not waiting yet, or a retry
                # went through already: look again next round.

    async def report_progress(self, t0: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(15.0)  # one operator line per 15 s
            placed = len(self.by_order)
            try:
                statuses = await in_db(self.engine, _status_counts, 10)
            except SoakError:
                statuses = {}
            log.info(
                "%.0fs: %d/%d placed, %d faults, read model %s",
                loop.time() - t0,
                placed,
                len(self.sagas),
                len(self.faults.records),
                dict(sorted(statuses.items())),
            )

    async def run(self) -> tuple[list[FaultRecord], list[str]]:
        await self.prepare()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        log.info(
            "driving %d sagas over %.0fs; faults on %s; %s held down %.0fs (%s)",
            len(self.sagas),
            self.config.window_s,
            ", ".join(self.faults.parts),
            self.faults.held,
            self.config.down_s,
            self.config.outage,
        )
        helpers = [
            asyncio.create_task(self.operate(), name="soak: operator"),
            asyncio.create_task(self.report_progress(t0), name="soak: progress"),
        ]
        drivers = [asyncio.create_task(self.drive(s, t0)) for s in self.sagas]
        try:
            await self.faults.run(t0)
            # Afterwards: every part serves again, then every saga has been placed (and its
            # cancel sent), then every saga ends and the read side catches up.
            if not await self.faults.stack_serves():
                down = [n for n, p in self.stack.parts.items() if not await serves(p)]
                self.find("recovery", f"parts not serving after the faults: {down}")
            await asyncio.gather(*drivers)
            await self.settle(t0)
        finally:
            for task in [*helpers, *drivers]:
                task.cancel()
            await asyncio.gather(*helpers, *drivers, return_exceptions=True)
        for skipped in self.faults.skipped:
            self.find("recovery", f"fault skipped: {skipped}")
        for record in self.faults.records:
            if record.back_after_s is None:
                self.find("recovery", f"{record.part} did not serve again after {record.kind}")
        return self.faults.records, self.faults.skipped

    async def settle(self, t0: float) -> None:
        """Poll until every saga has ended and the read models and the outbox have caught up
        with the store; at the deadline, say what is still open (the audit counts it)."""
        loop = asyncio.get_running_loop()
        placed = [s.order_id for s in self.sagas if s.order_id]
        last_log = 0.0

        async def probe() -> bool | None:
            nonlocal last_log
            try:
                pending = await in_db(self.engine, _pending(placed), 30)
            except SoakError:
                return None
            if not any(pending.values()):
                return True
            if loop.time() - last_log > 10:
                last_log = loop.time()
                open_ = {k: v for k, v in pending.items() if v}
                log.info("%.0fs: settling: %s", loop.time() - t0, open_)
            return None

        if await poll_until(probe, self.config.settle_s) is None:
            pending = await in_db(self.engine, _pending(placed), 30)
            log.error("not settled after %.0fs: %s", self.config.settle_s, pending)
        else:
            log.info("%.0fs: settled: every saga ended, the read side caught up", loop.time() - t0)

    # -- the audit ------------------------------------------------------------------------------

    async def audit(self) -> dict[str, tuple[str, str | None]]:
        """Every check; returns each stored order's (status, reason) from a fold of the store."""
        streams = await self._streams()
        final: dict[str, tuple[str, str | None]] = {}
        folded: dict[str, dict[str, Any]] = {}
        for order_id, stored in streams.items():
            row = self._fold(order_id, stored, order_projection.apply, "readmodel_orders")
            if row is not None:
                folded[order_id] = row
                final[order_id] = (str(row["status"]), row["failure_reason"])
        self._check_sagas(streams, final)
        self._check_versions(streams)
        async with self.engine.connect() as conn:
            await self._check_read_models(conn, streams, folded)
            await self._check_notifications(conn, streams)
            await self._check_books(conn, streams, final)
            dead = await conn.execute(
                sa.text(
                    "SELECT projection, order_id, version, event_type, error "
                    "FROM projections.dead_letters WHERE resolved_at IS NULL ORDER BY id"
                )
            )
            for r in dead:
                self.find(
                    "dead_letters",
                    f"{r.projection}: order {r.order_id} v{r.version} {r.event_type}: "
                    f"{r.error[:160]}",
                )
        await self._check_bus(streams)
        await self._check_temporal()
        return final

    async def _streams(self) -> dict[str, list[StoredEvent]]:
        pool = await create_pool(self.settings, size=4)
        try:
            store = EventStore(pool, order_upcasters())
            ids = [r["stream_id"] for r in await pool.fetch(
                "SELECT DISTINCT stream_id FROM eventstore.events ORDER BY stream_id"
            )]  # fmt: skip
            gate = asyncio.Semaphore(4)

            async def read(stream_id: str) -> list[StoredEvent]:
                async with gate:
                    return await store.read_stream(stream_id)

            read_all = await asyncio.gather(*(read(i) for i in ids))
            await store.close()
        finally:
            await pool.close()
        return dict(zip(ids, read_all, strict=True))

    def _fold(
        self,
        order_id: str,
        stored: Sequence[StoredEvent],
        fold: Callable[[dict[str, Any] | None, OrderEvent], dict[str, Any]],
        check: str,
    ) -> dict[str, Any] | None:
        row: dict[str, Any] | None = None
        try:
            for event in stored:
                row = fold(row, OrderEvent.from_stored(event))
        except Exception as error:
            self.find(check, f"order {order_id}: the store does not fold: {error}")
            return None
        return row

    def _check_sagas(
        self, streams: dict[str, list[StoredEvent]], final: dict[str, tuple[str, str | None]]
    ) -> None:
        customers: dict[str, list[str]] = defaultdict(list)
        for order_id, stored in streams.items():
            if stored and stored[0].event_type == EventType.PLACED:
                customers[str(stored[0].data.get("customer_id"))].append(order_id)
            if order_id not in self.by_order:
                types = [e.event_type.removeprefix("order.") for e in stored]
                self.find("orphans", f"order {order_id} was not placed by the soak: {types}")
        for customer, orders in customers.items():
            if len(orders) > 1:
                self.find("orphans", f"customer {customer} has {len(orders)} sagas: {orders}")
        for saga in self.sagas:
            if saga.order_id is None:
                self.find("placement", f"saga {saga.index} ({saga.scenario}): {saga.error}")
                continue
            stored = streams.get(saga.order_id, [])
            status, reason = final.get(saga.order_id, ("NO EVENTS", None))
            if status not in TERMINAL_STATUSES:
                last = stored[-1].event_type if stored else "-"
                self.find(
                    "terminal",
                    f"order {saga.order_id} ({saga.scenario}) is {status} (last event {last})",
                )
                continue
            wanted = expected_outcomes(saga)
            if (status, reason) not in wanted:
                self.find(
                    "outcome",
                    f"order {saga.order_id} ({saga.scenario}, cancel={saga.cancel}) ended "
                    f"{status}/{reason}, expected {' or '.join(f'{s}/{r}' for s, r in wanted)}",
                )
            types = [e.event_type for e in stored]
            attention = EventType.REQUIRES_ATTENTION.value in types
            if saga.scenario == Scenario.ATTENTION:
                refunded_after = (
                    attention
                    and EventType.PAYMENT_REFUNDED.value
                    in types[types.index(EventType.REQUIRES_ATTENTION.value) :]
                )
                if not refunded_after:
                    self.find(
                        "attention",
                        f"order {saga.order_id}: the planned refund outage did not end in "
                        f"requires_attention then payment_refunded: {types}",
                    )
            elif attention:
                self.find(
                    "attention",
                    f"order {saga.order_id} ({saga.scenario}) required attention unplanned: "
                    + "; ".join(
                        f"{e.data.get('compensation')}: {str(e.data.get('error'))[:120]}"
                        for e in stored
                        if e.event_type == EventType.REQUIRES_ATTENTION
                    ),
                )
        for order_id in sorted(self.unplanned_attention - set(self.by_order)):
            self.find("attention", f"order {order_id} (not the soak's) required attention")

    def _check_versions(self, streams: dict[str, list[StoredEvent]]) -> None:
        for order_id, stored in streams.items():
            versions = [e.version for e in stored]
            if versions != list(range(1, len(stored) + 1)):
                self.find("versions", f"order {order_id}: versions {versions}")
            if stored and stored[0].event_type != EventType.PLACED:
                self.find("versions", f"order {order_id}: starts with {stored[0].event_type}")
            ends = [e.version for e in stored if e.event_type in TERMINAL_TYPES]
            if len(ends) > 1 or (ends and ends[0] != versions[-1]):
                self.find("versions", f"order {order_id}: terminal events at versions {ends}")

    async def _check_read_models(
        self,
        conn: AsyncConnection,
        streams: dict[str, list[StoredEvent]],
        folded: dict[str, dict[str, Any]],
    ) -> None:
        rows = {
            r.order_id: dict(r._mapping)
            for r in await conn.execute(
                sa.text(f"SELECT {order_projection.COLUMNS} FROM readmodel.orders")
            )
        }
        compared = (
            "customer_id",
            "status",
            "version",
            "failure_reason",
            "total",
            "currency",
            "items",
            "timeline",
            "placed_at",
            "updated_at",
        )
        for order_id, want in folded.items():
            have = rows.get(order_id)
            if have is None:
                self.find("readmodel_orders", f"order {order_id}: no row")
                continue
            diff = [
                k
                for k in compared
                if (plain(have[k]) if k in ("items", "timeline") else have[k])
                != (plain(want[k]) if k in ("items", "timeline") else want[k])
            ]
            if diff:
                self.find(
                    "readmodel_orders",
                    f"order {order_id}: {', '.join(diff)} differ "
                    f"(row v{have['version']} {have['status']}, store v{want['version']} "
                    f"{want['status']})",
                )
        for order_id in sorted(set(rows) - set(streams)):
            self.find("readmodel_orders", f"order {order_id}: a row without events")

        customer_rows = {
            r.order_id: dict(r._mapping)
            for r in await conn.execute(
                sa.text(
                    "SELECT order_id, customer_id, status, total, currency, item_count, version, "
                    "placed_at, updated_at FROM readmodel.customer_orders"
                )
            )
        }
        for order_id, stored in streams.items():
            want_c = self._fold(order_id, stored, customer_projection.fold, "readmodel_customers")
            have_c = customer_rows.get(order_id)
            if want_c is None:
                continue
            if have_c is None:
                self.find("readmodel_customers", f"order {order_id}: no row")
                continue
            diff = [k for k in have_c if have_c[k] != want_c.get(k)]
            if diff:
                self.find(
                    "readmodel_customers",
                    f"order {order_id}: {', '.join(diff)} differ "
                    f"(row {[have_c[k] for k in diff]}, store {[want_c.get(k) for k in diff]})",
                )
        for order_id in sorted(set(customer_rows) - set(streams)):
            self.find("readmodel_customers", f"order {order_id}: a row without events")

        # Sales: per day of confirmation (UTC, as the projection counts) and SKU.
        want_sales: dict[tuple[date, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        for stored in streams.values():
            confirmed = [e for e in stored if e.event_type == EventType.CONFIRMED]
            if not confirmed or stored[0].event_type != EventType.PLACED:
                continue
            placed = _placed(stored[0])
            day = confirmed[0].occurred_at.date()
            skus = set()
            currency = placed.total.currency
            for item in placed.items:
                total = want_sales[(day, item.sku, currency)]
                total[1] += item.quantity
                total[2] += item.quantity * item.unit_price.amount
                skus.add(item.sku)
            for sku in skus:
                want_sales[(day, sku, currency)][0] += 1
        have_sales = {
            (r.day, r.sku, r.currency): [int(r.orders), int(r.units), int(r.revenue)]
            for r in await conn.execute(
                sa.text(
                    "SELECT day, sku, currency, orders, units, revenue FROM readmodel.sales_daily"
                )
            )
        }
        for key in sorted(set(want_sales) | set(have_sales)):
            want_s, have_s = want_sales.get(key, [0, 0, 0]), have_sales.get(key, [0, 0, 0])
            if want_s != have_s:
                self.find(
                    "readmodel_sales",
                    f"{key[0]} {key[1]} {key[2]}: orders/units/revenue {have_s}, "
                    f"confirmed orders say {want_s}",
                )
        for r in await conn.execute(
            sa.text("SELECT order_id FROM readmodel.sales_pending_lines ORDER BY order_id")
        ):
            self.find("readmodel_sales", f"order {r.order_id}: lines still pending after its end")

    async def _check_notifications(
        self, conn: AsyncConnection, streams: dict[str, list[StoredEvent]]
    ) -> None:
        want = {
            e.event_id: (e.stream_id, e.event_type)
            for stored in streams.values()
            for e in stored
            if e.event_type in TERMINAL_TYPES
        }
        have: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for r in await conn.execute(
            sa.text("SELECT event_id, order_id, event_type FROM notifications.outbox")
        ):
            have[r.event_id].append((r.order_id, r.event_type))
        for event_id, (order_id, event_type) in want.items():
            got = have.get(event_id, [])
            if got != [(order_id, event_type)]:
                self.find(
                    "notifications",
                    f"order {order_id} {event_type} ({event_id}): outbox has {got or 'nothing'}",
                )
        for event_id in sorted(set(have) - set(want)):
            self.find(
                "notifications", f"outbox row for event {event_id} not stored: {have[event_id]}"
            )

    async def _check_books(
        self,
        conn: AsyncConnection,
        streams: dict[str, list[StoredEvent]],
        final: dict[str, tuple[str, str | None]],
    ) -> None:
        placed = {
            order_id: _placed(stored[0])
            for order_id, stored in streams.items()
            if stored and stored[0].event_type == EventType.PLACED
        }
        confirmed = {o for o, (status, _) in final.items() if status == "CONFIRMED"}
        cancelled = {o for o, (status, _) in final.items() if status == "CANCELLED"}

        # Money: captured - refunded = total of confirmed orders, and per order.
        ledger: dict[str, dict[str, int]] = defaultdict(dict)
        for r in await conn.execute(
            sa.text("SELECT order_id, kind, amount FROM payments.ledger ORDER BY order_id")
        ):
            ledger[r.order_id][r.kind] = int(r.amount)
        net = sum(k.get("CAPTURE", 0) - k.get("REFUND", 0) for k in ledger.values())
        confirmed_total = sum(placed[o].total.amount for o in confirmed if o in placed)
        if net != confirmed_total:
            self.find(
                "money",
                f"captured - refunded = {net}, total of confirmed orders = {confirmed_total}",
            )
        for order_id, kinds in sorted(ledger.items()):
            if order_id not in placed:
                self.find("money", f"order {order_id}: ledger rows {kinds} without an order")
            elif order_id in confirmed and kinds != {"CAPTURE": placed[order_id].total.amount}:
                self.find("money", f"order {order_id} CONFIRMED: ledger {kinds}")
            elif order_id in cancelled and kinds.get("CAPTURE") != kinds.get("REFUND"):
                self.find("money", f"order {order_id} CANCELLED: ledger {kinds}")
        for order_id in sorted(confirmed - set(ledger)):
            self.find("money", f"order {order_id} CONFIRMED: nothing captured")

        # Stock: what confirmed orders hold stays reserved; the rest is available again.
        holds: dict[str, Counter[str]] = {}
        for order_id in confirmed:
            held = Counter[str]()
            for item in placed[order_id].items if order_id in placed else []:
                held[item.sku] += item.quantity
            holds[order_id] = held
        taken = sum(holds.values(), Counter[str]())
        stock = {
            r.sku: (int(r.available), int(r.reserved))
            for r in await conn.execute(
                sa.text("SELECT sku, available, reserved FROM inventory.stock")
            )
        }
        for sku, stocked in sorted(self.stocked.items()):
            want_stock = (stocked - taken[sku], taken[sku])
            if stock.get(sku) != want_stock:
                self.find(
                    "stock",
                    f"sku {sku}: available/reserved {stock.get(sku)}, expected {want_stock} "
                    f"(stocked {stocked}, confirmed orders took {taken[sku]})",
                )
        reservations = {
            r.order_id: (r.status, {k: int(v) for k, v in r.lines.items()})
            for r in await conn.execute(
                sa.text("SELECT order_id, status, lines FROM inventory.reservations")
            )
        }
        for order_id in sorted(confirmed):
            want_r = ("RESERVED", dict(holds[order_id]))
            if reservations.get(order_id) != want_r:
                self.find(
                    "stock",
                    f"order {order_id} CONFIRMED: reservation {reservations.get(order_id)}, "
                    f"expected {want_r}",
                )
        for order_id in sorted(cancelled):
            if reservations.get(order_id, ("NONE", {}))[0] == "RESERVED":
                self.find(
                    "stock", f"order {order_id} CANCELLED still holds {reservations[order_id]}"
                )
        for order_id in sorted(set(reservations) - set(placed)):
            self.find(
                "stock", f"order {order_id}: reservation {reservations[order_id]} without order"
            )
        drift = await conn.execute(
            sa.text(
                """
                SELECT s.sku, s.reserved, coalesce(r.held, 0) AS held
                FROM inventory.stock s LEFT JOIN (
                    SELECT l.key AS sku, sum(l.value::int) AS held
                    FROM inventory.reservations, jsonb_each_text(lines) AS l
                    WHERE status = 'RESERVED' GROUP BY l.key) r USING (sku)
                WHERE s.reserved <> coalesce(r.held, 0)
                """
            )
        )
        for r in drift:
            self.find("stock", f"sku {r.sku}: stock.reserved {r.reserved} != reservations {r.held}")

        # Shipping: a confirmed order's shipment stands; a cancelled one's is cancelled or none.
        shipments = {
            r.order_id: r.status
            for r in await conn.execute(sa.text("SELECT order_id, status FROM shipping.shipments"))
        }
        for order_id in sorted(confirmed):
            if shipments.get(order_id) != "SCHEDULED":
                self.find(
                    "shipping", f"order {order_id} CONFIRMED: shipment {shipments.get(order_id)}"
                )
        for order_id in sorted(cancelled):
            if shipments.get(order_id, "CANCELLED") != "CANCELLED":
                self.find("shipping", f"order {order_id} CANCELLED: shipment {shipments[order_id]}")

    async def _check_bus(self, streams: dict[str, list[StoredEvent]]) -> None:
        """Each stored event exactly once on ORDERS (by `Nats-Msg-Id`), nothing else, each
        order's events in version order, and all of them sourced into the partitioned stream."""
        ns = self.settings.nats
        nc = await bus.connect(self.settings, "soak-audit")
        try:
            js = nc.jetstream()
            info = await js.stream_info(ns.stream)
            count, last = int(info.state.messages), int(info.state.last_seq)
            # An ephemeral consumer without acks: a read of the whole stream, in sequence order.
            sub = await js.pull_subscribe(
                f"{ns.subject_prefix}.>",
                stream=ns.stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.NONE,
                    deliver_policy=DeliverPolicy.ALL,
                    inactive_threshold=60.0,
                ),
            )
            seen: list[tuple[int, str | None, str]] = []  # (stream seq, msg id, subject)
            unavailable_until = time.monotonic() + 30
            while len(seen) < count:
                try:
                    msgs = await sub.fetch(1000, timeout=5)
                except nats.js.errors.ServiceUnavailableError:
                    # No responder for the pull (503): on a cluster that lost a node, the new
                    # consumer's leader can still be settling. Ask again, for a while.
                    if time.monotonic() < unavailable_until:
                        await asyncio.sleep(0.5)
                        continue
                    self.find("bus", f"read {len(seen)} of {count} messages: JetStream 503")
                    break
                except (nats.errors.TimeoutError, TimeoutError):
                    self.find("bus", f"read {len(seen)} of {count} messages (last seq {last})")
                    break
                for msg in msgs:
                    msg_id = (msg.headers or {}).get("Nats-Msg-Id")
                    seen.append((int(msg.metadata.sequence.stream), msg_id, str(msg.subject)))
            await sub.unsubscribe()
            partitioned = await js.stream_info(ns.partitioned_stream)
            if int(partitioned.state.messages) != count:
                self.find(
                    "bus",
                    f"{ns.partitioned_stream} holds {partitioned.state.messages} messages, "
                    f"{ns.stream} {count}",
                )
        finally:
            await nc.close()
        stored = {e.event_id: e for events_ in streams.values() for e in events_}
        copies = Counter(msg_id for _, msg_id, _ in seen)
        for event_id, event in stored.items():
            if copies[event_id] != 1:
                self.find(
                    "bus",
                    f"order {event.stream_id} v{event.version} {event.event_type}: "
                    f"{copies[event_id]} copies on {ns.stream}",
                )
        for seq, msg_id, subject in seen:
            if msg_id not in stored:
                self.find("bus", f"seq {seq} {subject}: message id {msg_id} is not a stored event")
            elif subject != events.subject_for(
                ns.subject_prefix, stored[msg_id].stream_id, stored[msg_id].event_type
            ):
                self.find("bus", f"seq {seq}: subject {subject} for {stored[msg_id].event_type}")
        by_order: dict[str, list[int]] = defaultdict(list)
        for _, msg_id, _ in sorted(seen):
            if msg_id in stored:
                by_order[stored[msg_id].stream_id].append(stored[msg_id].version)
        for order_id, versions in by_order.items():
            if versions != sorted(versions):
                self.find("bus", f"order {order_id}: versions in stream order {versions}")

    async def _check_temporal(self) -> None:
        client = await connect_temporal(self.settings)
        running = await client.count_workflows('ExecutionStatus = "Running"')
        if running.count:
            ids = [
                w.id async for w in client.list_workflows('ExecutionStatus = "Running"', limit=5)
            ]
            self.find("temporal", f"{running.count} workflows still running, e.g. {ids}")


async def _requiring_attention(conn: AsyncConnection) -> list[tuple[str, int]]:
    """Orders whose last stored event is `order.requires_attention`, with its version. From the
    store, the source of truth: a stalled read side must not keep the operator from acting (the
    audit reports the read side on its own)."""
    rows = await conn.execute(
        sa.text(
            """
            SELECT e.stream_id, e.version FROM eventstore.events e
            WHERE e.event_type = 'order.requires_attention'
              AND e.version = (SELECT max(version) FROM eventstore.events
                               WHERE stream_id = e.stream_id)
            ORDER BY e.position
            """
        )
    )
    return [(str(r.stream_id), int(r.version)) for r in rows]


def _fix_refunds(customer_id: str) -> Callable[[AsyncConnection], Awaitable[None]]:
    async def fix(conn: AsyncConnection) -> None:
        await conn.execute(
            sa.text("DELETE FROM soak.refund_outage WHERE customer_id = :c"), {"c": customer_id}
        )

    return fix


async def _status_counts(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(sa.text("SELECT status, count(*) FROM readmodel.orders GROUP BY 1"))
    return {str(status): int(n) for status, n in rows}


def _placed(event: StoredEvent) -> OrderPlaced:
    """An order's first event, typed (the store hands it over at the current version)."""
    payload = events.payload(event)
    assert isinstance(payload, OrderPlaced), event.event_type
    return payload


def _pending(placed: Iterable[str]) -> Callable[[AsyncConnection], Awaitable[dict[str, int]]]:
    ids = list(placed)

    async def pending(conn: AsyncConnection) -> dict[str, int]:
        row = (
            await conn.execute(
                sa.text(
                    """
                    WITH s AS (
                        SELECT stream_id, max(version) AS v,
                               bool_or(event_type IN ('order.confirmed', 'order.cancelled'))
                                   AS ended
                        FROM eventstore.events GROUP BY stream_id)
                    SELECT
                      (SELECT count(*) FROM unnest(CAST(:ids AS text[])) AS i(id)
                        WHERE NOT EXISTS (SELECT 1 FROM s WHERE s.stream_id = i.id))
                        AS not_started,
                      count(*) FILTER (WHERE NOT s.ended) AS running,
                      count(*) FILTER (WHERE o.version IS DISTINCT FROM s.v) AS orders_behind,
                      count(*) FILTER (WHERE c.version IS DISTINCT FROM s.v) AS customers_behind,
                      (SELECT count(*) FROM readmodel.sales_pending_lines) AS sales_pending,
                      (SELECT count(*) FROM eventstore.events
                        WHERE event_type IN ('order.confirmed', 'order.cancelled'))
                        - (SELECT count(*) FROM notifications.outbox) AS notifications_behind
                    FROM s
                    LEFT JOIN readmodel.orders o ON o.order_id = s.stream_id
                    LEFT JOIN readmodel.customer_orders c ON c.order_id = s.stream_id
                    """
                ),
                {"ids": ids},
            )
        ).one()
        return {k: int(v) for k, v in row._mapping.items()}

    return pending


async def run_soak(config: SoakConfig) -> SoakResult:
    """Start a stack of its own, drive and break it, audit it, stop it."""
    started = time.monotonic()
    data_dir = config.data_dir or Path(tempfile.mkdtemp(prefix="ordersaga-soak-"))
    settings = isolated_settings(
        data_dir / "stack",
        saga=saga_policy(config),
        # A killed projector's batch comes back within 5 s; partitions move on within a second.
        projector=ProjectorSettings(ack_wait_s=5.0, claim_interval_s=0.5),
        nats_nodes=3 if config.cluster else 1,
        copies=2 if config.cluster else 1,
    )
    stack = (
        DevStack(settings, ui=False, nats_nodes=3, copies=2)
        if config.cluster
        else DevStack(settings, ui=False)
    )
    log.info("starting the stack in %s", data_dir)
    await stack.start()
    soak: Soak | None = None
    try:
        soak = Soak(stack, config)
        faults, skipped = await soak.run()
        log.info("auditing")
        final = await soak.audit()
        restarts = {name: part.restarts for name, part in stack.parts.items()}
    finally:
        if soak is not None:
            await soak.close()
        await stack.stop()
    return SoakResult(
        config=config,
        sagas=soak.sagas,
        faults=faults,
        skipped_faults=skipped,
        parts=soak.faults.parts,
        held=soak.faults.held,
        findings=soak.findings,
        final=final,
        restarts=restarts,
        http_retries=soak.api.retries,
        elapsed_s=time.monotonic() - started,
        data_dir=data_dir,
        api_urls=stack.api_urls(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sagas", type=int, default=1000, help="sagas to drive (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the sagas and the faults")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds over which placements and faults are spread (default 0.2 s per saga, "
        "at least 60)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP requests in flight")
    parser.add_argument(
        "--extra-faults", type=int, default=0, help="SIGKILLs beyond one per part (seeded parts)"
    )
    parser.add_argument(
        "--down", type=float, default=65.0, help="seconds the held server stays down (default 65)"
    )
    parser.add_argument(
        "--hold",
        default=None,
        help="the server held down: postgres, nats, temporal (nats-2 on --cluster); "
        "default: seeded",
    )
    parser.add_argument(
        "--outage",
        choices=("kill", "freeze"),
        default="kill",
        help="hold the server down killed (refused connections) or frozen (SIGSTOP: timeouts)",
    )
    parser.add_argument(
        "--settle", type=float, default=300.0, help="seconds to wait for every saga to end"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the stack's data here")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="on make dev-cluster's shape: 3 NATS nodes (R3), 2 of each process, both APIs used",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "alembic", "alembic.runtime.migration", "ordersaga"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = SoakConfig(
        sagas=args.sagas,
        seed=args.seed,
        duration_s=args.duration,
        concurrency=args.concurrency,
        extra_faults=args.extra_faults,
        down_s=args.down,
        hold=args.hold,
        outage=args.outage,
        settle_s=args.settle,
        data_dir=args.data_dir,
        cluster=args.cluster,
    )
    result = asyncio.run(run_soak(config))
    print(result.table(), flush=True)
    if result.violations == 0 and args.data_dir is None:
        shutil.rmtree(result.data_dir, ignore_errors=True)
    else:
        print(f"data and every process's log kept in {result.data_dir}", flush=True)
    print(json.dumps(result.summary()), flush=True)
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
