"""One supervised child: spawned on asyncio, awaited, restarted with backoff when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import pwd
import signal
import sys
import time
from asyncio.subprocess import Process
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Restart backoff: from the first to the longest pause between restarts of a failing child.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0


class StackError(RuntimeError):
    """A part of the stack could not start; the message says which and where its log is."""


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the supervisor dies, so no server outlives a killed stack."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop to `user` entirely: uid, gid and supplementary groups.

    With only `user=`, the child keeps root's group, and a directory whose group is root and
    whose group bits are clear (pytest's temporary directories) stays closed to it.
    """
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class Managed:
    """A supervised child process, restarted with backoff when it exits unexpectedly.

    `spawn()` starts it, `wait_ready()` probes it until it serves, `supervise()` awaits its exit
    and restarts it, `stop()` ends it for good. `kill()` is the crash that tests inflict.
    """

    name: str
    argv: list[str]
    log_path: Path
    ready: Callable[[], Awaitable[bool]]
    env: dict[str, str] | None = None
    user: str | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    restart: bool = True
    process: Process | None = None
    restarts: int = 0
    _stopping: bool = False

    async def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The child writes to its own copy of the descriptor; ours is closed straight away.
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=self.env,
                **as_user(self.user),
                # Own session: Ctrl-C reaches only the supervisor, which stops children in order.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Probe the server until it answers; fail as soon as the child exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.returncode is not None:
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
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited a moment ago
                proc.kill()

    async def pause(self) -> None:
        """Take it down and keep it down (an outage on purpose): its supervisor returns instead
        of restarting it. `DevStack.resume` brings it back."""
        self.restart = False
        self.kill()
        if self.process is not None:
            await self.process.wait()

    async def stop(self, timeout: float = 20.0) -> None:
        """Stop for good: the stop signal, then SIGKILL if it has not exited within `timeout`."""
        self._stopping = True
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self.stop_signal)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def supervise(self) -> None:
        """Await the child's exit and start it again, until `stop()`; runs as a task."""
        backoff = BACKOFF_FIRST_S
        while not self._stopping and self.process is not None:
            returncode = await self.process.wait()
            if self._stopping or not self.restart:
                return
            log.warning("%s exited with %s; restarting in %.1fs", self.name, returncode, backoff)
            await asyncio.sleep(backoff)
            if self._stopping or not self.restart:  # paused meanwhile
                return
            self.restarts += 1
            await self.spawn()
            if not self.restart:  # paused while it was being spawned: keep it down
                self.kill()
            try:
                await self.wait_ready()
            except StackError:
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            else:
                backoff = BACKOFF_FIRST_S
