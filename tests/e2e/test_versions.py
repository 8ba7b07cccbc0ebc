"""Servers too old, or a stream that cannot be updated in place: every process refuses to start
with one line, changing nothing; the embedded servers pass.

No wheel of a NATS server older than 2.10 exists, so an old one is the real server behind a
loopback proxy that rewrites the version in its INFO line (the string the client reads). For
Postgres and Temporal the version string is stubbed where the client reads it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from ordersaga import runtime, versions
from ordersaga.devstack import DevStack, StackError
from ordersaga.settings import Settings
from tests.helpers import unique

pytestmark = pytest.mark.e2e

OLD_NATS = "2.9.10"


@pytest.fixture
async def old_nats(settings: Settings) -> AsyncIterator[str]:
    """The real nats-server, reporting version 2.9.10 (Debian stable's) to its clients."""
    host, port = settings.nats_url().removeprefix("nats://").split(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool) -> None:
        try:
            if first:  # the server's INFO line comes first: rewrite its version
                line = await reader.readline()
                line = re.sub(rb'"version":"[^"]+"', f'"version":"{OLD_NATS}"'.encode(), line)
                writer.write(line)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(server_r, client_w, True), pipe(client_r, server_w, False))

    proxy = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = proxy.sockets[0].getsockname()
    yield f"nats://127.0.0.1:{address[1]}"
    proxy.close()


async def ordersaga(settings: Settings, *args: str) -> tuple[int, str, str]:
    """`ordersaga ARGS` as a child process, without blocking this loop (the proxy runs in it)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args,
        env={**os.environ, **settings.as_child_env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


def with_nats(settings: Settings, url: str, name: str) -> Settings:
    nats = settings.nats.model_copy(
        update={"url": url, "stream": name.upper(), "subject_prefix": name,
                "partitioned_stream": f"{name.upper()}_P", "partitioned_prefix": f"{name}-p"}
    )  # fmt: skip
    return settings.model_copy(update={"nats": nats})


async def absent(nc: NATS, stream: str) -> bool:
    try:
        await nc.jetstream().stream_info(stream)
    except NotFoundError:
        return True
    return False


@pytest.mark.parametrize("command", [("bus", "setup"), ("relay",), ("projector",), ("notifier",)])
async def test_an_old_nats_server_stops_every_process_in_one_line(
    settings: Settings, old_nats: str, nc: NATS, command: tuple[str, ...]
) -> None:
    ours = with_nats(settings, old_nats, unique("old").replace("-", ""))
    code, _, err = await ordersaga(ours, *command)
    assert code != 0
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: NATS at {old_nats} is {OLD_NATS}; ordersaga needs 2.10.0 or newer, for "
        f"{versions.NATS_FLOOR.why}"
    ]
    # Nothing was set up on it.
    assert await absent(nc, ours.nats.stream) and await absent(nc, ours.nats.partitioned_stream)


async def test_make_dev_reports_the_same_line_and_stops(settings: Settings, old_nats: str) -> None:
    ours = with_nats(settings, old_nats, unique("old").replace("-", ""))
    with pytest.raises(StackError) as refused:
        await DevStack(ours, apps=False, ui=False).start()
    assert str(refused.value).startswith(f"NATS at {old_nats} is {OLD_NATS}; ordersaga needs")


async def test_old_postgres_and_temporal_are_refused_before_use(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def postgres_12(_: object) -> str:
        return "12.17 (Debian 12.17-1.pgdg120+1)"

    async def temporal_1_22(_: object) -> str:
        return "1.22.3"

    monkeypatch.setattr(versions, "postgres_version", postgres_12)
    with pytest.raises(versions.UnsupportedServer, match=r"^Postgres at .* is 12\.17 .*13 or"):
        async with runtime.open_resources(settings, "test") as res:
            await res.engine()
    monkeypatch.setattr(versions, "temporal_version", temporal_1_22)
    with pytest.raises(versions.UnsupportedServer, match=r"^Temporal at .* is 1\.22\.3; .*1\.25"):
        async with runtime.open_resources(settings, "test") as res:
            await res.temporal()


async def test_the_embedded_servers_are_supported(settings: Settings) -> None:
    async with runtime.open_resources(settings, "test") as res:
        await res.check_servers()
        assert versions.parse(versions.nats_version(await res.nats())) >= (2, 10)


async def test_bus_setup_refuses_a_stream_it_cannot_update_in_place(
    settings: Settings, nc: NATS
) -> None:
    name = unique("theirs").replace("-", "")
    ours = with_nats(settings, settings.nats_url(), name)
    js = nc.jetstream()
    # Someone else's stream under our name: other subjects, in memory.
    await js.add_stream(
        StreamConfig(
            name=ours.nats.stream, subjects=[f"{name}-other.>"], storage=StorageType.MEMORY
        )
    )
    try:
        code, _, err = await ordersaga(ours, "bus", "setup")
        assert code != 0 and "Traceback" not in err
        (line,) = err.strip().splitlines()
        assert f"stream {ours.nats.stream} with subjects ['{name}-other.>']" in line
        assert "storage memory (ordersaga needs file)" in line
        assert "nats stream rm" in line and "ORDERSAGA_NATS__STREAM" in line
        info = await js.stream_info(ours.nats.stream)
        assert info.config.subjects == [f"{name}-other.>"]  # left as it was
        assert await absent(nc, ours.nats.partitioned_stream)  # and nothing else created
        described = json.loads((await ordersaga(ours, "bus", "describe"))[1])
        assert described[ours.nats.partitioned_stream] is None
    finally:
        await js.delete_stream(ours.nats.stream)
