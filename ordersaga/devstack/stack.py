"""DevStack: the servers, then the service processes, started in dependency order and supervised
by one asyncio program; stopped in reverse order.

`ordersaga dev` runs it in the foreground; the test suite and the benchmarks start the very same
stack on free ports in a temporary data directory.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx

from ordersaga import db, keys
from ordersaga.devstack import servers
from ordersaga.devstack.ports import port_in_use
from ordersaga.devstack.supervisor import Managed, StackError
from ordersaga.settings import Settings

# The service processes are commands of the CLI, a package of the application: named, not imported.
CLI_MODULE = "cli"


def nats_url_with_credentials(settings: Settings) -> str:
    """The embedded server's URL with its user and password, for `nats sub --server ...`."""
    ns = settings.nats
    if ns.user is None or ns.password is None:
        return settings.nats_url()
    user, password = quote(ns.user, safe=""), quote(ns.password, safe="")
    return settings.nats_url().replace("nats://", f"nats://{user}:{password}@")


class DevStack:
    """Starts what the settings do not point elsewhere, in dependency order; stops in reverse."""

    SERVERS = ("postgres", "nats", "temporal")
    APPS = ("worker", "relay", "projector", "notifier", "api")

    def __init__(
        self,
        settings: Settings,
        *,
        apps: bool | tuple[str, ...] = True,
        ui: bool = True,
        servers: tuple[str, ...] = SERVERS,
        nats_nodes: int = 1,
        copies: int = 1,
    ) -> None:
        """`nats_nodes` > 1: the embedded NATS is a cluster of that many nodes on loopback, the
        streams replicated to each. `copies` > 1: that many processes of each service (parts
        named `worker-1`, `worker-2`, ...; API i on `api.port + i - 1`)."""
        self.base = settings
        self.nats_nodes = nats_nodes
        self.copies = copies
        self.servers = servers
        self.data_dir: Path = settings.data_dir.resolve()
        # Which service processes to run: all (True), none (False), or the ones named.
        self.apps: tuple[str, ...] = (
            self.APPS if apps is True else () if apps is False else tuple(apps)
        )
        self.ui = ui
        self.parts: dict[str, Managed] = {}
        self.settings = settings  # resolved (explicit URLs) once started
        self.api_key: str | None = None  # the operator key `make dev` makes and prints
        self._supervisors: list[asyncio.Task[None]] = []

    def part_names(self, app: str) -> list[str]:
        """The parts that run one service: `api`, or `api-1`, `api-2`, ... with copies."""
        if self.copies == 1:
            return [app]
        return [f"{app}-{i}" for i in range(1, self.copies + 1)]

    def api_urls(self) -> list[str]:
        api = self.settings.api
        return [f"http://{api.host}:{api.port + i}" for i in range(self.copies)]

    def _app(self, command: str, copy: int) -> Managed:
        name = self.part_names(command)[copy]
        settings = self.settings
        ready: Callable[[], Awaitable[bool]] = self._started
        if command == "api":
            api = settings.api.model_copy(update={"port": settings.api.port + copy})
            settings = settings.model_copy(update={"api": api})
            ready = self._serves(f"http://{api.host}:{api.port}/healthz")
        if command == "notifier" and settings.notifier.api_url is None:
            # Notifier i asks API i: neither API alone holds up every notification.
            notifier = settings.notifier.model_copy(
                update={"api_url": self.api_urls()[copy % self.copies]}
            )
            settings = settings.model_copy(update={"notifier": notifier})
        # The resolved settings, whole: the child reads them back in get_settings().
        return Managed(
            name,
            [sys.executable, "-m", CLI_MODULE, command],
            self.data_dir / "logs" / f"{name}.log",
            ready,
            env={**os.environ, **settings.as_child_env()},
        )

    @staticmethod
    async def _started() -> bool:
        return True

    @staticmethod
    def _serves(health: str) -> Callable[[], Awaitable[bool]]:
        async def ready() -> bool:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(health)).status_code == 200

        return ready

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Settings:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        base = self.base
        infra: list[Managed] = []
        updates: dict[str, object] = {}
        if base.database.url is None and "postgres" in self.servers:
            infra.append(servers.postgres(base, self.data_dir))
            updates["database"] = base.database.model_copy(update={"url": base.database_url()})
        if base.nats.url is None and "nats" in self.servers:
            nats = servers.nats_credentials(base).model_copy(
                update={"url": servers.nats_urls(base, self.nats_nodes)}
            )
            if self.nats_nodes > 1:  # every stream on every node: any one may die
                nats = nats.model_copy(update={"replicas": self.nats_nodes})
            with_auth = base.model_copy(update={"nats": nats})
            infra += [
                servers.nats(with_auth, self.data_dir, node=node, nodes=self.nats_nodes)
                for node in range(self.nats_nodes)
            ]
            updates["nats"] = nats
        if base.temporal.address is None and "temporal" in self.servers:
            infra.append(servers.temporal(base, self.data_dir, ui=self.ui))
            updates["temporal"] = base.temporal.model_copy(
                update={"address": base.temporal_address()}
            )
        self.settings = base.model_copy(update=updates)
        self._check_ports()
        try:
            # The three servers do not depend on each other: start them side by side.
            for part in infra:
                self.parts[part.name] = part
                await part.spawn()
            await asyncio.gather(*(part.wait_ready() for part in infra))
            await self._check_versions()
            from ordersaga import migrations

            await asyncio.to_thread(migrations.upgrade, self.settings)
            await self._ensure_keys()
            if self.apps:
                await self._start_apps()
        except BaseException:
            await self.stop()
            raise
        self._supervise(self.parts.values())
        return self.settings

    async def start_apps(self, names: tuple[str, ...]) -> None:
        """Start (more) service processes on the running servers, e.g. after a benchmark's setup."""
        self.apps = tuple(dict.fromkeys(self.apps + names))
        await self._start_apps(names)
        self._supervise(self.parts[p] for n in names for p in self.part_names(n))

    def _supervise(self, parts: Iterable[Managed]) -> None:
        self._supervisors += [
            asyncio.create_task(part.supervise(), name=f"supervise {part.name}") for part in parts
        ]

    async def _start_apps(self, names: tuple[str, ...] | None = None) -> None:
        apps = [
            self._app(name, copy)
            for name in self.APPS
            if name in (self.apps if names is None else names)
            for copy in range(self.copies)
        ]
        for part in apps:
            self.parts[part.name] = part
            await part.spawn()
        await asyncio.gather(*(part.wait_ready() for part in apps))

    def _check_ports(self) -> None:
        s = self.base
        wanted = []
        if s.database.url is None and "postgres" in self.servers:
            wanted.append(("ORDERSAGA_DATABASE__EMBEDDED_PORT", s.database.embedded_port))
        if s.nats.url is None and "nats" in self.servers:
            for node in range(self.nats_nodes):
                wanted += [
                    ("ORDERSAGA_NATS__EMBEDDED_PORT", s.nats.embedded_port + node),
                    ("ORDERSAGA_NATS__EMBEDDED_MONITOR_PORT", s.nats.embedded_monitor_port + node),
                ]
                if self.nats_nodes > 1:
                    cluster = s.nats.embedded_cluster_port + node
                    wanted.append(("ORDERSAGA_NATS__EMBEDDED_CLUSTER_PORT", cluster))
        if s.temporal.address is None and "temporal" in self.servers:
            wanted.append(("ORDERSAGA_TEMPORAL__EMBEDDED_PORT", s.temporal.embedded_port))
            if self.ui:
                wanted.append(("ORDERSAGA_TEMPORAL__EMBEDDED_UI_PORT", s.temporal.embedded_ui_port))
        if "api" in self.apps:
            wanted += [("ORDERSAGA_API__PORT", s.api.port + i) for i in range(self.copies)]
        busy = [f"{port} ({var})" for var, port in wanted if port_in_use(port)]
        if busy:
            raise StackError(
                "ports already in use: " + ", ".join(busy) + ". Stop what listens there "
                "(another `ordersaga dev`?) or choose other ports with those variables."
            )

    async def _ensure_keys(self) -> None:
        """An operator key for the person running the stack (printed with the addresses) and a
        client key for the notifier, made on first start and kept in the data directory."""
        conn = await db.connect(self.settings, "ordersaga-dev")
        try:
            self.api_key = await self._key(conn, "api-key", keys.Role.OPERATOR, "dev")
            notifier = self.settings.notifier.api_key or await self._key(
                conn, "notifier-api-key", keys.Role.CLIENT, "notifier"
            )
        finally:
            await conn.close()
        self.settings = self.settings.model_copy(
            update={"notifier": self.settings.notifier.model_copy(update={"api_key": notifier})}
        )

    async def _key(self, conn: asyncpg.Connection, file: str, role: keys.Role, name: str) -> str:
        path = self.data_dir / file
        if path.exists():
            kept = path.read_text().strip()
            if await keys.role_of(conn, kept) == role:
                return kept  # still valid (not revoked, same database)
        _, key = await keys.create(conn, role, name)
        path.write_text(key + "\n")
        path.chmod(0o600)
        return key

    async def _check_versions(self) -> None:
        """Servers given by URL may be too old: say so in one line before changing anything."""
        from ordersaga import runtime, versions

        try:
            async with runtime.open_resources(self.settings, "dev") as res:
                # Only the servers this stack runs: a stack of Postgres alone (a benchmark's)
                # has no NATS to reach, and the client would retry it for ever.
                await res.check_servers(self.servers)
        except versions.UnsupportedServer as error:
            raise StackError(str(error)) from None

    async def pause(self, name: str) -> None:
        """Hold one part down (chaos tests): killed, and not restarted until `resume`."""
        await self.parts[name].pause()

    async def resume(self, name: str) -> None:
        """Start a paused part again, supervised as before; it may take a moment to serve."""
        part = self.parts[name]
        part.restart = True
        await part.spawn()
        self._supervise([part])

    async def stop(self) -> None:
        # The supervisors first, so that nothing restarts what is being stopped.
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._supervisors.clear()
        for part in reversed(list(self.parts.values())):
            await part.stop()
        self.parts.clear()

    def _monitors(self) -> str:
        port = self.settings.nats.embedded_monitor_port
        return ", ".join(f"http://127.0.0.1:{port + n}" for n in range(self.nats_nodes))

    def endpoints(self) -> list[tuple[str, str]]:
        s = self.settings
        rows = []
        if "api" in self.apps:
            for name, base in zip(self.part_names("api"), self.api_urls(), strict=True):
                rows.append((name.replace("api", "API"), base))
            rows.append(("API docs (OpenAPI)", f"{self.api_urls()[0]}/docs"))
            if self.api_key:
                rows.append(("API key (operator)", self.api_key))
        rows.append(("Temporal server", s.temporal_address()))
        if "temporal" in self.parts and self.ui:
            rows.append(("Temporal Web UI", f"http://127.0.0.1:{s.temporal.embedded_ui_port}"))
        embedded = "nats" in self.parts or "nats-1" in self.parts
        rows.append(("NATS", nats_url_with_credentials(s) if embedded else s.nats_url()))
        if self.nats_nodes > 1:
            rows.append(("NATS monitors", self._monitors()))
        if self.copies > 1:
            rows.append(("Processes", ", ".join(n for a in self.apps for n in self.part_names(a))))
        rows.append(("Postgres", s.database_url().replace("+asyncpg", "")))
        rows.append(("Data and logs", str(self.data_dir)))
        return rows
