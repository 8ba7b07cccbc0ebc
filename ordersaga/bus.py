"""JetStream as code: the streams and consumers in one place, applied idempotently; the publisher.

Two streams:
- `ORDERS` (`orders.<order_id>.<event>`): what the relay publishes from the event store (the
  outbox; `ordersaga/relay.py`) and what any subscriber reads (`orders.*.placed`,
  `orders.<id>.>`); the wire contract.
- `ORDERS_PARTITIONED`: sources `ORDERS` through a subject-mapping transform that puts a
  deterministic partition of the order id in front (`orders-p.<partition>.<order_id>.<event>`).
  Each projection has one durable consumer per partition, so N projector processes can share the
  work while every order's events stay on one partition, in stream order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import NotFoundError

from ordersaga import events
from ordersaga.eventstore import StoredEvent
from ordersaga.settings import Settings
from ordersaga.tls import ssl_context

log = logging.getLogger(__name__)


class _TlsOnlyClient(NATS):
    """nats-py upgrades a connection to TLS only when the server's INFO says `tls_required`: a
    server (or anyone on the path) that leaves the flag out would get our CONNECT, credentials
    included, in plain text, and no certificate would be checked. With TLS configured, this
    client refuses to send CONNECT on a connection that was not upgraded; nats-py counts that as
    a failed attempt and tries again, so nothing is ever sent in the clear."""

    def _connect_command(self) -> bytes:
        if not self._server_info.get("tls_required"):
            raise nats.errors.Error(
                "nats: TLS is configured but this server did not start TLS; not connecting"
            )
        return super()._connect_command()


async def connect(settings: Settings, name: str) -> NATS:
    ns = settings.nats_auth()
    auth: dict[str, Any] = {}
    if ns.user is not None:
        auth.update(user=ns.user, password=ns.password)
    if ns.token is not None:
        auth.update(token=ns.token)
    if ns.creds_file is not None:
        auth.update(user_credentials=str(ns.creds_file))
    context = ssl_context(ns.tls)
    nc = NATS() if context is None else _TlsOnlyClient()
    if context is not None:
        auth.update(tls=context, tls_hostname=ns.tls.server_name)
    await nc.connect(
        settings.nats_url().split(","),
        name=f"ordersaga-{name}",
        connect_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        **auth,
    )
    return nc


# -- the topology -------------------------------------------------------------------------------


def _limits(settings: Settings) -> dict[str, Any]:
    ns = settings.nats
    return {
        "retention": RetentionPolicy.LIMITS,
        "storage": StorageType.FILE if ns.storage == "file" else StorageType.MEMORY,
        "num_replicas": ns.replicas,
        "max_age": ns.max_age.total_seconds(),
    }


def stream_config(settings: Settings) -> StreamConfig:
    ns = settings.nats
    return StreamConfig(
        name=ns.stream,
        description="Order events as CloudEvents; Nats-Msg-Id = event id.",
        subjects=[f"{ns.subject_prefix}.>"],
        duplicate_window=ns.duplicate_window.total_seconds(),
        **_limits(settings),
    )


def partitioned_stream_config(settings: Settings) -> StreamConfig:
    ns = settings.nats
    transform = SubjectTransform(
        src=f"{ns.subject_prefix}.*.*",
        dest=f"{ns.partitioned_prefix}.{{{{partition({ns.partitions},1)}}}}"
        ".{{wildcard(1)}}.{{wildcard(2)}}",
    )
    return StreamConfig(
        name=ns.partitioned_stream,
        description=f"{ns.stream} keyed by a partition of the order id, for projectors.",
        sources=[StreamSource(name=ns.stream, subject_transforms=[transform])],
        **_limits(settings),
    )


def partition_subject(settings: Settings, partition: int) -> str:
    return f"{settings.nats.partitioned_prefix}.{partition}.>"


def projector_durable(partition: int) -> str:
    return f"projector-{partition}"


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    config: ConsumerConfig


def consumer_specs(settings: Settings) -> list[ConsumerSpec]:
    ns, ps = settings.nats, settings.projector
    specs = [
        ConsumerSpec(
            ns.partitioned_stream,
            ConsumerConfig(
                durable_name=projector_durable(partition),
                description=f"every projection, partition {partition}",
                filter_subject=partition_subject(settings, partition),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=ps.ack_wait_s,
                # The projector dead-letters after max_attempts; this is the backstop.
                max_deliver=ps.max_attempts + 2,
                max_ack_pending=ps.batch * 4,
            ),
        )
        for partition in range(ns.partitions)
    ]
    specs.append(
        ConsumerSpec(
            ns.stream,
            ConsumerConfig(
                durable_name=settings.notifier.durable,
                description="customer notifications on terminal order events",
                filter_subjects=[
                    f"{ns.subject_prefix}.*.confirmed",
                    f"{ns.subject_prefix}.*.cancelled",
                ],
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=ps.ack_wait_s,
                # The notifier's own rule decides: an order it cannot serve is dead-lettered
                # after max_attempts, an unavailable API is waited out (JetStream cannot tell
                # the two apart).
                max_deliver=-1,
            ),
        )
    )
    return specs


class BusMismatch(Exception):
    """A stream on the server that ordersaga cannot update in place; the message says what to do."""


# What a stream of ours must have that JetStream cannot change in place (storage, retention), or
# that we will not change under someone else's feet (the subjects it captures).
_FIXED = ("subjects", "storage", "retention")


async def _existing(js: JetStreamContext, name: str) -> StreamConfig | None:
    try:
        return (await js.stream_info(name)).config
    except NotFoundError:
        return None


def _mismatch(have: StreamConfig, wanted: StreamConfig) -> str | None:
    diffs = []
    for key in _FIXED:
        theirs, ours = _plain(getattr(have, key)), _plain(getattr(wanted, key))
        if ours is not None and theirs != ours:
            diffs.append(f"{key} {theirs} (ordersaga needs {ours})")
    if not diffs:
        return None
    return (
        f"the NATS server has a stream {wanted.name} with {', '.join(diffs)}, which cannot be "
        f"updated in place: remove it (nats stream rm {wanted.name}) if it is an old one of "
        "ordersaga's, or choose other names with ORDERSAGA_NATS__STREAM / "
        "ORDERSAGA_NATS__PARTITIONED_STREAM and ORDERSAGA_NATS__SUBJECT_PREFIX"
    )


async def _ensure_stream(
    js: JetStreamContext, wanted: StreamConfig, have_config: StreamConfig | None
) -> str:
    if have_config is None:
        await js.add_stream(config=wanted)
        return "created"
    have = have_config.as_dict()
    if any(have.get(k) != v for k, v in wanted.as_dict().items() if k != "description"):
        await js.update_stream(config=wanted)
        return "updated"
    return "unchanged"


async def setup(js: JetStreamContext, settings: Settings) -> list[str]:
    """Create or update every stream and durable consumer; safe to run from every process."""
    report = []
    wanted = [stream_config(settings), partitioned_stream_config(settings)]
    # Every stream is checked before any is changed: a refusal leaves nothing half set up.
    existing = []
    for config in wanted:
        assert config.name is not None
        have = await _existing(js, config.name)
        problem = None if have is None else _mismatch(have, config)
        if problem is not None:
            raise BusMismatch(problem)
        existing.append(have)
    for config, have in zip(wanted, existing, strict=True):
        outcome = await _ensure_stream(js, config, have)
        report.append(f"stream {config.name}: {outcome}")
    for spec in consumer_specs(settings):
        # Without an action, the server creates the durable or updates its editable fields.
        await js.add_consumer(spec.stream, config=spec.config)
        report.append(f"consumer {spec.stream}/{spec.config.durable_name}: applied")
    for line in report:
        log.debug("bus setup: %s", line)
    return report


async def describe(js: JetStreamContext, settings: Settings) -> dict[str, Any]:
    """What the server has: each stream's configuration and state, and its consumers."""
    ns = settings.nats
    out: dict[str, Any] = {
        "flow": (
            f"activities -> event store (the outbox) -> relay -> {ns.stream} -> "
            f"{ns.partitioned_stream} -> projector-<partition> (read models); "
            f"{ns.stream} -> {settings.notifier.durable} (notifications)"
        )
    }
    for name in (settings.nats.stream, settings.nats.partitioned_stream):
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            out[name] = None
            continue
        cfg = info.config
        consumers = await js.consumers_info(name)
        out[name] = {
            "subjects": cfg.subjects,
            "sources": [
                {
                    "name": s.name,
                    "transforms": [f"{t.src} -> {t.dest}" for t in s.subject_transforms or []],
                }
                for s in cfg.sources or []
            ],
            "retention": _plain(cfg.retention),
            "storage": _plain(cfg.storage),
            "replicas": cfg.num_replicas,
            "max_age_s": cfg.max_age,
            "duplicate_window_s": cfg.duplicate_window,
            "messages": info.state.messages,
            "last_seq": info.state.last_seq,
            "consumers": {
                c.name: {
                    "filter": c.config.filter_subject or c.config.filter_subjects,
                    "ack_wait_s": c.config.ack_wait,
                    "max_deliver": c.config.max_deliver,
                    "pending": c.num_pending,
                    "ack_pending": c.num_ack_pending,
                    "redelivered": c.num_redelivered,
                }
                for c in sorted(consumers, key=lambda c: c.name)
            },
        }
    return out


def _plain(value: object) -> object:
    # nats-py hands enums back from the server's answer as plain strings.
    return getattr(value, "value", value)


# -- publishing ---------------------------------------------------------------------------------


@dataclass
class PublishStats:
    published: int = 0
    duplicates: int = 0
    failures: int = 0


class EventPublisher:
    """Publishes stored events as CloudEvents; `Nats-Msg-Id` = event id makes republishing safe.

    Every wait is bounded: a slot among `max_in_flight`, then the ack within `publish_timeout`.
    A JetStream that is down or does not answer makes `publish` raise (the activity then fails
    and Temporal retries it); it never hangs.
    """

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        self._js = js
        self._prefix = settings.nats.subject_prefix
        self._timeout = settings.nats.publish_timeout
        self._slots = asyncio.Semaphore(settings.nats.max_in_flight)
        self.stats = PublishStats()

    async def publish(self, event: StoredEvent) -> PubAck:
        try:
            async with asyncio.timeout(self._timeout):
                async with self._slots:
                    # `publish` (not `publish_async`): a server error reply must fail this call,
                    # not leave a future pending forever (nats.py #985).
                    ack = await self._js.publish(
                        events.subject_for(self._prefix, event.stream_id, event.event_type),
                        events.encode(event),
                        timeout=self._timeout,
                        headers={"Nats-Msg-Id": event.event_id},
                    )
        except Exception:
            self.stats.failures += 1
            raise
        self.stats.published += 1
        if ack.duplicate:
            # A retried activity republished an event the stream has: JetStream dropped it.
            self.stats.duplicates += 1
            log.info("duplicate publish of %s dropped by JetStream", event.event_id)
        return ack
