"""The embedded stack: Postgres, nats-server and the Temporal dev server from Python wheels, plus
the worker, projector and API processes, started and supervised by one asyncio program.

`ordersaga dev` runs it in the foreground; the test suite and the benchmarks start the very same
stack on free ports in a temporary data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import json
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
from temporalio.client import Client

from ordersaga.settings import (
    ApiSettings,
    DatabaseSettings,
    NatsSettings,
    ProjectorSettings,
    SagaSettings,
    Settings,
    TemporalSettings,
)

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "pgserver"  # the same user the pgserver wheel itself runs Postgres as under root


class StackError(RuntimeError):
    """A part of the stack could not start; the message says which and where its log is."""


_HANDED_OUT: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range.

    A port the kernel handed out (bind to 0) is in the ephemeral range, where any outgoing
    connection may take it before our server binds it, say when a stack restarts on the same
    ports (seen in CI: "address already in use" for the API).
    """
    floor = _ephemeral_floor()
    for _ in range(200):
        port = random.randrange(20_000, max(floor, 20_001))
        if port in _HANDED_OUT:
            continue  # free now, but promised to a server of this process already
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as sock:  # a crowded machine: take what the kernel gives
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolated_settings(
    data_dir: Path, saga: SagaSettings | None = None, projector: ProjectorSettings | None = None
) -> Settings:
    """A stack of its own (tests, benchmarks): every port free right now, data in `data_dir`."""
    return Settings(
        data_dir=data_dir,
        database=DatabaseSettings(embedded_port=free_port()),
        nats=NatsSettings(embedded_port=free_port(), embedded_monitor_port=free_port()),
        temporal=TemporalSettings(embedded_port=free_port(), embedded_ui_port=free_port()),
        api=ApiSettings(port=free_port()),
        saga=saga or SagaSettings(),
        projector=projector or ProjectorSettings(),
    )


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the supervisor dies, so no server outlives a killed stack."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop to `user` entirely: uid, gid and supplementary groups.

    With only `user=`, the child keeps root's group, and a directory whose group is root and
    whose group bits are clear (pytest's temporary directories) stays closed to it.
    """
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _postgres_bin() -> Path:
    # Located without importing pgserver, whose import-time side effects we do not need.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the pgserver wheel is not installed; set ORDERSAGA_DATABASE__URL instead")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def find_tool(name: str) -> str:
    # The wheel's binary beside this interpreter first: a system-wide server of the same name
    # may be older, or lack what we rely on.
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise StackError(f"{name!r} not found: is the project installed (make dev)?")
    return found


@dataclass
class Managed:
    """A supervised child process, restarted with backoff when it exits unexpectedly."""

    name: str
    argv: list[str]
    log_path: Path
    ready: Callable[[], Awaitable[bool]]
    env: dict[str, str] | None = None
    user: str | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    restart: bool = True
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _stopping: bool = False

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The child writes to its own copy of the descriptor; ours is closed straight away.
        with self.log_path.open("ab") as log_file:
            self.process = self._popen(log_file)

    def _popen(self, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            **_as_user(self.user),
            # Own session: Ctrl-C reaches only the supervisor, which stops children in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise StackError(
                    f"{self.name} exited with {self.process.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(Exception):
                if await self.ready():
                    return
            await asyncio.sleep(0.2)
        raise StackError(f"{self.name} was not ready within {timeout:.0f}s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL, as a crash would; the supervisor restarts it (tests use this)."""
        if self.process is not None:
            self.process.kill()

    async def stop(self, timeout: float = 20.0) -> None:
        self._stopping = True
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, timeout)
            if proc.poll() is None:
                log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
                proc.kill()
                proc.wait()

    async def supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            proc = self.process
            if proc is None or proc.poll() is None:
                await asyncio.sleep(0.1)
                continue
            if self._stopping or not self.restart:
                return
            log.warning(
                "%s exited with %s; restarting in %.1fs", self.name, proc.returncode, backoff
            )
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            self.restarts += 1
            self.spawn()
            with contextlib.suppress(StackError):
                await self.wait_ready()
                backoff = 0.5
                continue
            backoff = min(backoff * 2, 10.0)


class DevStack:
    """Starts what the settings do not point elsewhere, in dependency order; stops in reverse."""

    SERVERS = ("postgres", "nats", "temporal")
    APPS = ("worker", "projector", "notifier", "api")

    def __init__(
        self,
        settings: Settings,
        *,
        apps: bool | tuple[str, ...] = True,
        ui: bool = True,
        servers: tuple[str, ...] = SERVERS,
    ) -> None:
        self.base = settings
        self.servers = servers
        self.data_dir = settings.data_dir.resolve()
        # Which service processes to run: all (True), none (False), or the ones named.
        self.apps: tuple[str, ...] = (
            self.APPS if apps is True else () if apps is False else tuple(apps)
        )
        self.ui = ui
        self.parts: dict[str, Managed] = {}
        self.settings = settings  # resolved (explicit URLs) once started
        self._supervisors: list[asyncio.Task[None]] = []

    # -- the parts ----------------------------------------------------------------------------

    def _postgres(self) -> Managed:
        port = self.base.database.embedded_port
        pgdata = self.data_dir / "postgres"
        bindir = _postgres_bin()
        user = None
        if os.geteuid() == 0:
            # Postgres refuses to run as root; run it as an unprivileged user, as pgserver does.
            user = PG_SYSTEM_USER
            self._ensure_pg_user(pgdata, bindir)
        if not (pgdata / "PG_VERSION").exists():
            pgdata.mkdir(parents=True, exist_ok=True)
            if user:
                shutil.chown(pgdata, user, user)
            init = subprocess.run(
                [str(bindir / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres",
                 "--encoding=UTF8", "--no-sync"],
                capture_output=True, text=True, **_as_user(user),
            )  # fmt: skip
            if init.returncode != 0:
                raise StackError(f"initdb failed in {pgdata}:\n{init.stdout}{init.stderr}")

        async def ready() -> bool:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=2
            )
            try:
                exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname='ordersaga'")
                if not exists:
                    await conn.execute("CREATE DATABASE ordersaga")
            finally:
                await conn.close()
            return True

        return Managed(
            "postgres",
            [str(bindir / "postgres"), "-D", str(pgdata), "-p", str(port), "-h", "127.0.0.1",
             "-c", "unix_socket_directories=", "-c", "max_connections=300",
             "-c", "shared_buffers=128MB"],
            self.data_dir / "logs" / "postgres.log",
            ready,
            user=user,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, checkpoint
        )  # fmt: skip

    @staticmethod
    def _ensure_pg_user(pgdata: Path, bindir: Path) -> None:
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin",
                 PG_SYSTEM_USER],
                check=True, capture_output=True,
            )  # fmt: skip
        # The user must be able to reach the data directory and the binaries.
        for path in [pgdata.parent, bindir]:
            path.mkdir(parents=True, exist_ok=True)
            for prefix in [path, *path.parents]:
                mode = prefix.stat().st_mode
                if mode & 0o005 != 0o005:
                    prefix.chmod(mode | 0o005)

    def _nats(self) -> Managed:
        ns = self.base.nats
        monitor = f"http://127.0.0.1:{ns.embedded_monitor_port}/healthz?js-enabled-only=true"

        async def ready() -> bool:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(monitor)).status_code == 200

        return Managed(
            "nats",
            [find_tool("nats-server"), "-a", "127.0.0.1", "-p", str(ns.embedded_port),
             "-m", str(ns.embedded_monitor_port), "-js", "-sd", str(self.data_dir / "nats"),
             "--server_name", "ordersaga-dev"],
            self.data_dir / "logs" / "nats.log",
            ready,
        )  # fmt: skip

    def _temporal(self) -> Managed:
        ts = self.base.temporal
        address = f"127.0.0.1:{ts.embedded_port}"
        argv = [
            find_tool("temporal"), "server", "start-dev",
            "--ip", "127.0.0.1", "--port", str(ts.embedded_port),
            "--ui-port", str(ts.embedded_ui_port),
            "--db-filename", str(self.data_dir / "temporal.db"),
            "--namespace", ts.namespace,
            "--search-attribute", "CustomerId=Keyword",
            "--search-attribute", "OrderStatus=Keyword",
            "--log-level", "warn",
        ]  # fmt: skip
        if not self.ui:
            argv.append("--headless")

        async def ready() -> bool:
            client = await Client.connect(address, namespace=ts.namespace)
            return await client.service_client.check_health()

        return Managed("temporal", argv, self.data_dir / "logs" / "temporal.log", ready)

    def _app(self, command: str, ready: Callable[[], Awaitable[bool]]) -> Managed:
        env = {**os.environ, **child_env(self.settings)}
        return Managed(
            command,
            [sys.executable, "-m", "ordersaga", command],
            self.data_dir / "logs" / f"{command}.log",
            ready,
            env=env,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Settings:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        base = self.base
        infra: list[Managed] = []
        updates: dict[str, object] = {}
        if base.database.url is None and "postgres" in self.servers:
            infra.append(self._postgres())
            updates["database"] = base.database.model_copy(update={"url": base.database_url()})
        if base.nats.url is None and "nats" in self.servers:
            infra.append(self._nats())
            updates["nats"] = base.nats.model_copy(update={"url": base.nats_url()})
        if base.temporal.address is None and "temporal" in self.servers:
            infra.append(self._temporal())
            updates["temporal"] = base.temporal.model_copy(
                update={"address": base.temporal_address()}
            )
        self.settings = base.model_copy(update=updates)
        self._check_ports()
        try:
            # The three servers do not depend on each other: start them side by side.
            for part in infra:
                part.spawn()
                self.parts[part.name] = part
            await asyncio.gather(*(part.wait_ready() for part in infra))
            from ordersaga import migrations

            await asyncio.to_thread(migrations.upgrade, self.settings)
            if self.apps:
                await self._start_apps()
        except BaseException:
            await self.stop()
            raise
        self._supervisors = [asyncio.create_task(p.supervise()) for p in self.parts.values()]
        return self.settings

    async def start_apps(self, names: tuple[str, ...]) -> None:
        """Start (more) service processes on the running servers, e.g. after a benchmark's setup."""
        self.apps = tuple(dict.fromkeys(self.apps + names))
        await self._start_apps(names)
        self._supervisors += [asyncio.create_task(self.parts[n].supervise()) for n in names]

    async def _start_apps(self, names: tuple[str, ...] | None = None) -> None:
        api = self.settings.api
        health = f"http://{api.host}:{api.port}/healthz"

        async def api_ready() -> bool:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(health)).status_code == 200

        async def started() -> bool:
            return True

        apps = [
            self._app(name, api_ready if name == "api" else started)
            for name in self.APPS
            if name in (self.apps if names is None else names)
        ]
        for part in apps:
            part.spawn()
            self.parts[part.name] = part
        await asyncio.gather(*(part.wait_ready() for part in apps))

    def _check_ports(self) -> None:
        s = self.base
        wanted = []
        if s.database.url is None and "postgres" in self.servers:
            wanted.append(("ORDERSAGA_DATABASE__EMBEDDED_PORT", s.database.embedded_port))
        if s.nats.url is None and "nats" in self.servers:
            wanted += [
                ("ORDERSAGA_NATS__EMBEDDED_PORT", s.nats.embedded_port),
                ("ORDERSAGA_NATS__EMBEDDED_MONITOR_PORT", s.nats.embedded_monitor_port),
            ]
        if s.temporal.address is None and "temporal" in self.servers:
            wanted.append(("ORDERSAGA_TEMPORAL__EMBEDDED_PORT", s.temporal.embedded_port))
            if self.ui:
                wanted.append(("ORDERSAGA_TEMPORAL__EMBEDDED_UI_PORT", s.temporal.embedded_ui_port))
        if "api" in self.apps:
            wanted.append(("ORDERSAGA_API__PORT", s.api.port))
        busy = [f"{port} ({var})" for var, port in wanted if _port_in_use(port)]
        if busy:
            raise StackError(
                "ports already in use: " + ", ".join(busy) + ". Stop what listens there "
                "(another `ordersaga dev`?) or choose other ports with those variables."
            )

    async def stop(self) -> None:
        for task in self._supervisors:
            task.cancel()
        for part in reversed(list(self.parts.values())):
            await part.stop()
        self.parts.clear()

    def endpoints(self) -> list[tuple[str, str]]:
        s = self.settings
        rows = []
        if "api" in self.parts:
            base = f"http://{s.api.host}:{s.api.port}"
            rows += [("API", base), ("API docs (OpenAPI)", f"{base}/docs")]
        rows.append(("Temporal server", s.temporal_address()))
        if "temporal" in self.parts and self.ui:
            rows.append(("Temporal Web UI", f"http://127.0.0.1:{s.temporal.embedded_ui_port}"))
        rows.append(("NATS", s.nats_url()))
        rows.append(("Postgres", s.database_url().replace("+asyncpg", "")))
        rows.append(("Data and logs", str(self.data_dir)))
        return rows


def child_env(settings: Settings) -> dict[str, str]:
    """Environment that hands a child process these exact (resolved) settings."""
    env: dict[str, str] = {}
    for key, value in settings.model_dump(mode="json").items():
        if isinstance(value, dict):
            for sub, item in value.items():
                if item is not None:
                    env[f"ORDERSAGA_{key.upper()}__{sub.upper()}"] = _env_value(item)
        elif value is not None:
            env[f"ORDERSAGA_{key.upper()}"] = _env_value(value)
    return env


def _env_value(value: object) -> str:
    # pydantic-settings reads lists (and other complex values) from the environment as JSON.
    return json.dumps(value) if isinstance(value, list | dict) else str(value)
