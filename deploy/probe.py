"""Readiness probe of an ordersaga container: `python /opt/ordersaga/probe.py ROLE`.

Exit 0 when the process of ROLE runs in this container and can do its work now; exit 1, with
the reason on stderr, otherwise. Kubernetes runs it as an exec readiness probe and Compose as a
healthcheck. The standard library only, so a probe costs a few milliseconds of CPU:

- api: `GET /readyz` on the container's own port answers 200 (the API's own check of Postgres,
  NATS and Temporal).
- worker, relay, projector, notifier: a process `ordersaga ROLE` runs, and every server the
  role needs accepts a TCP connection (for NATS, one server of ORDERSAGA_NATS__URL's
  comma-separated seed list is enough: the client fails over). The notifier also needs its API
  key.

Only host and port are read from the URLs, which carry no password in deploy/ (the passwords
are variables of their own, which the probe never reads). TLS and authentication are the
process's own checks at start: a process that cannot sign in exits, and is restarted.

It reads the same ORDERSAGA_* variables as the process; the settings it needs are set
explicitly in every manifest of deploy/, so the embedded stack's defaults do not apply here.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

TIMEOUT_S = 2.0

Check = Callable[[], str | None]  # None when fine, else why not


def _endpoints(urls: str, default_port: int) -> list[tuple[str, int]]:
    """host:port of each of a comma-separated list of URLs or host:port addresses, with or
    without a user (and a password, if one is there, ignored): `nats://a:4222, nats://b`,
    `postgresql+asyncpg://user@db:5432/name`, `temporal:7233`."""
    found = []
    for url in filter(None, (part.strip() for part in urls.split(","))):
        parts = urlsplit(url if "://" in url else f"tcp://{url}")
        if parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else default_port)
            found.append((parts.hostname, port))
    return found


def _reachable(name: str, variable: str, default_port: int) -> Check:
    def check() -> str | None:
        value = os.environ.get(variable, "")
        endpoints = _endpoints(value, default_port)
        if not endpoints:
            return f"{name}: {variable} is not set"
        errors = []
        for host, port in endpoints:
            try:
                with socket.create_connection((host, port), timeout=TIMEOUT_S):
                    return None
            except OSError as error:
                errors.append(f"{host}:{port} ({error})")
        return f"{name} unreachable: {', '.join(errors)}"

    return check


def _is_set(variable: str) -> Check:
    def check() -> str | None:
        return None if os.environ.get(variable) else f"{variable} is not set"

    return check


def _running(role: str) -> Check:
    """A process whose command line is `... ordersaga ROLE ...` runs in this container."""

    def check() -> str | None:
        proc = Path("/proc")
        if not proc.is_dir():
            return None  # not Linux: nothing to look at
        for cmdline in proc.glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue  # the process ended meanwhile
            for i, arg in enumerate(argv[:-1]):
                if Path(arg).name == "ordersaga" and argv[i + 1] == role:
                    return None
        return f"no `ordersaga {role}` process runs here"

    return check


def _http_ok(port_variable: str, path: str) -> Check:
    def check() -> str | None:
        port = os.environ.get(port_variable) or "8000"
        url = f"http://127.0.0.1:{port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                status = int(response.status)
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError as error:
            return f"{url}: {error}"
        return None if status == 200 else f"{url} answered {status}"

    return check


POSTGRES = _reachable("Postgres", "ORDERSAGA_DATABASE__URL", 5432)
NATS = _reachable("NATS", "ORDERSAGA_NATS__URL", 4222)
TEMPORAL = _reachable("Temporal", "ORDERSAGA_TEMPORAL__ADDRESS", 7233)
API = _reachable("the API", "ORDERSAGA_NOTIFIER__API_URL", 80)

ROLES: dict[str, list[Check]] = {
    "api": [_http_ok("ORDERSAGA_API__PORT", "/readyz")],
    "worker": [_running("worker"), POSTGRES, TEMPORAL],
    "relay": [_running("relay"), POSTGRES, NATS],
    "projector": [_running("projector"), POSTGRES, NATS],
    "notifier": [
        _running("notifier"),
        _is_set("ORDERSAGA_NOTIFIER__API_KEY"),
        POSTGRES,
        NATS,
        API,
    ],
}


def problems(role: str) -> Iterable[str]:
    for check in ROLES[role]:
        problem = check()
        if problem is not None:
            yield problem


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ROLES:
        print(f"usage: probe.py {{{','.join(ROLES)}}}", file=sys.stderr)
        return 2
    found = list(problems(argv[1]))
    for problem in found:
        print(f"not ready: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
