"""Ports for a stack of its own: free now, below the kernel's ephemeral range."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from ordersaga.domain import SagaPolicy
from ordersaga.settings import (
    ApiSettings,
    DatabaseSettings,
    NatsSettings,
    ProjectorSettings,
    Settings,
    TemporalSettings,
)

# Ports this process promised to a server already: free until that server binds them.
_HANDED_OUT: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(block: int = 1) -> int:
    """A port free now (with the `block - 1` ports after it), below the kernel's ephemeral range.

    A port the kernel handed out (bind to 0) is in the ephemeral range, where any outgoing
    connection may take it before our server binds it, say when a stack restarts on the same
    ports (seen in CI: "address already in use" for the API).
    """
    floor = _ephemeral_floor()
    for _ in range(200):
        port = random.randrange(20_000, max(floor - block, 20_001))
        ports = range(port, port + block)
        if _HANDED_OUT.intersection(ports):
            continue  # free now, but promised to a server of this process already
        if all(_bindable(p) for p in ports):
            _HANDED_OUT.update(ports)
            return port
    if block > 1:
        raise OSError(f"no {block} free ports in a row between 20000 and {floor}")
    with socket.socket() as sock:  # a crowded machine: take what the kernel gives
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_in_use(port: int) -> bool:
    """Whether something on this machine accepts connections on `port` (127.0.0.1)."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def isolated_settings(
    data_dir: Path,
    saga: SagaPolicy | None = None,
    projector: ProjectorSettings | None = None,
    *,
    nats_nodes: int = 1,
    copies: int = 1,
) -> Settings:
    """A stack of its own (tests, benchmarks): every port free right now, data in `data_dir`;
    a block of ports for each NATS node and each API copy (`DevStack(nats_nodes=, copies=)`)."""
    return Settings(
        data_dir=data_dir,
        database=DatabaseSettings(embedded_port=free_port()),
        nats=NatsSettings(
            embedded_port=free_port(nats_nodes),
            embedded_monitor_port=free_port(nats_nodes),
            embedded_cluster_port=free_port(nats_nodes),
        ),
        temporal=TemporalSettings(embedded_port=free_port(), embedded_ui_port=free_port()),
        api=ApiSettings(port=free_port(copies)),
        saga=saga or SagaPolicy(),
        projector=projector or ProjectorSettings(),
    )
