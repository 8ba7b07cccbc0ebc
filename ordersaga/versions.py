"""The server versions ordersaga supports, and the check every process makes before it changes
anything on a server: refuse to start, in one line, on a server too old for what we rely on."""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client as NATS
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client


@dataclass(frozen=True)
class Floor:
    server: str
    minimum: tuple[int, ...]
    why: str

    @property
    def shown(self) -> str:
        return ".".join(map(str, self.minimum))


# The README's table of supported versions is this one.
NATS_FLOOR = Floor(
    "NATS",
    (2, 10, 0),
    "subject transforms in stream sources (the partitioned stream) and consumers with several "
    "filter subjects (the notifier)",
)
POSTGRES_FLOOR = Floor(
    "Postgres",
    (13,),
    "the xid8 type and pg_current_snapshot(), which keep the event store's feed gap-free",
)
TEMPORAL_FLOOR = Floor(
    "Temporal",
    (1, 25, 0),
    "workflow updates enabled by default (cancel and retry-compensation are updates)",
)


class UnsupportedServer(Exception):
    """A server is older than ordersaga supports; the message is the one line to show."""


def parse(version: str) -> tuple[int, ...]:
    """`2.9.10`, `v1.25.1`, `16.2 (Debian 16.2-1)` -> (2, 9, 10), (1, 25, 1), (16, 2)."""
    found = re.match(r"v?(\d+(?:\.\d+)*)", version.strip())
    if found is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in found[1].split("."))


def require(floor: Floor, version: str, where: str) -> None:
    try:
        found = parse(version)
    except ValueError:
        found = ()
    if not found or found < floor.minimum:
        raise UnsupportedServer(
            f"{floor.server} at {where} is {version or 'of an unknown version'}; ordersaga needs "
            f"{floor.shown} or newer, for {floor.why}"
        )


def nats_version(nc: NATS) -> str:
    v = nc.connected_server_version
    return f"{v.major}.{v.minor}.{v.patch}"


async def check_nats(nc: NATS, where: str) -> None:
    require(NATS_FLOOR, nats_version(nc), where)


async def postgres_version(conn: asyncpg.Connection) -> str:
    version: str = await conn.fetchval("SHOW server_version")
    return version


async def check_postgres(conn: asyncpg.Connection, where: str) -> None:
    require(POSTGRES_FLOOR, await postgres_version(conn), where)


async def temporal_version(client: Client) -> str:
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    return str(info.server_version)


async def check_temporal(client: Client, where: str) -> None:
    require(TEMPORAL_FLOOR, await temporal_version(client), where)
