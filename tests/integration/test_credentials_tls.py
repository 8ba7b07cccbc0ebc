"""Credentials and TLS from settings, against real servers: nats-server with a user and with
(mutual) TLS, a Postgres of its own with `ssl=on`, and the test stack's Temporal server behind a
TLS-terminating proxy (the dev server speaks plain gRPC only). Each connection is shown to work
with the right settings and to fail with the wrong ones: an unverified server is never trusted."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import nats.errors
import pytest
import trustme
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from ordersaga import bus, db, migrations
from ordersaga.devstack import find_tool, free_port
from ordersaga.runtime import connect_temporal
from ordersaga.settings import (
    DatabaseSettings,
    NatsSettings,
    Settings,
    TemporalSettings,
    TlsSettings,
)
from tests.helpers import eventually

NAME = "localhost"  # the name every server certificate here carries


class Pki:
    """A throwaway CA and its files: the server's certificate, a client's, and a stranger CA."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.stranger_ca_file = root / "stranger.pem"
        trustme.CA().cert_pem.write_to_path(str(self.stranger_ca_file))
        server = self.ca.issue_cert(NAME, "127.0.0.1")
        self.server_cert, self.server_key = root / "server.pem", root / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        client = self.ca.issue_cert("ordersaga-client")
        self.client_cert, self.client_key = root / "client.pem", root / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))

    def trust(self, *, client_cert: bool = False) -> TlsSettings:
        pair = {"cert_file": self.client_cert, "key_file": self.client_key} if client_cert else {}
        return TlsSettings(ca_file=self.ca_file, server_name=NAME, **pair)

    def stranger(self) -> TlsSettings:
        """Our client certificate, but trusting another CA: only the server check can refuse."""
        return TlsSettings(
            ca_file=self.stranger_ca_file,
            server_name=NAME,
            cert_file=self.client_cert,
            key_file=self.client_key,
        )

    def stranger_db(self) -> TlsSettings:
        return TlsSettings(ca_file=self.stranger_ca_file)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


# -- NATS ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def nats_server(root: Path, config: str) -> AsyncIterator[str]:
    port = free_port()
    conf = root / f"nats-{port}.conf"
    conf.write_text(config)
    server = await asyncio.create_subprocess_exec(
        find_tool("nats-server"), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await eventually(lambda: _listening(port), 10, "the nats-server to listen")
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.kill()
        await server.wait()


async def _listening(port: int) -> bool | None:
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        return True
    return None


async def _nats_refuses(settings: Settings) -> None:
    """The connection fails: no client is handed out, whatever the error's kind."""
    with pytest.raises((nats.errors.Error, OSError, ssl.SSLError, TimeoutError)):
        nc = await asyncio.wait_for(bus.connect(settings, "test"), 3)
        await nc.close()


async def _round_trip(nc: NATS) -> None:
    sub = await nc.subscribe("tls.check")
    await nc.publish("tls.check", b"ok")
    assert (await sub.next_msg(timeout=5)).data == b"ok"
    await nc.close()


async def test_nats_user_and_password_are_sent_and_a_wrong_password_is_refused(
    tmp_path: Path,
) -> None:
    config = 'authorization { user: "svc", password: "s3cret" }\n'
    async with nats_server(tmp_path, config) as url:
        right = Settings(nats=NatsSettings(url=url, user="svc", password="s3cret"))
        await _round_trip(await bus.connect(right, "test"))
        await _nats_refuses(Settings(nats=NatsSettings(url=url, user="svc", password="wrong")))
        await _nats_refuses(Settings(nats=NatsSettings(url=url)))  # no credentials at all


async def test_nats_token(tmp_path: Path) -> None:
    async with nats_server(tmp_path, 'authorization { token: "t0ken" }\n') as url:
        await _round_trip(
            await bus.connect(Settings(nats=NatsSettings(url=url, token="t0ken")), "t")
        )
        await _nats_refuses(Settings(nats=NatsSettings(url=url, token="other")))


async def test_nats_mutual_tls_verifies_both_ends(tmp_path: Path, pki: Pki) -> None:
    config = (
        f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", '
        f'ca_file: "{pki.ca_file}", verify: true }}\n'
    )
    async with nats_server(tmp_path, config) as url:
        ours = Settings(nats=NatsSettings(url=url, tls=pki.trust(client_cert=True)))
        await _round_trip(await bus.connect(ours, "test"))
        # A server whose certificate our CA did not sign is not trusted ...
        await _nats_refuses(Settings(nats=NatsSettings(url=url, tls=pki.stranger())))
        # ... and a client without a certificate is not let in.
        await _nats_refuses(Settings(nats=NatsSettings(url=url, tls=pki.trust())))


# -- Postgres ------------------------------------------------------------------------------------


SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


@contextlib.asynccontextmanager
async def postgres_tls_proxy(upstream: str, pki: Pki) -> AsyncIterator[tuple[str, list[str]]]:
    """TLS in front of the stack's Postgres, as PgBouncer or a cloud SQL proxy terminates it
    (the embedded Postgres wheel is built without SSL): it answers the client's SSLRequest with
    `S`, completes the handshake with our CA's server certificate, then relays the session.
    Yields the address and the cipher of every handshake, so a test sees TLS was spoken."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    ciphers: list[str] = []
    host, port = upstream.rsplit(":", 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
            if await reader.readexactly(8) != SSL_REQUEST:
                writer.close()  # plain TCP is not served: this endpoint is TLS only
                return
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(context)
            cipher = writer.get_extra_info("cipher")
            ciphers.append(cipher[0] if cipher else "?")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", ciphers
    finally:
        server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
    writer.close()


def _database(settings: Settings, address: str, tls: TlsSettings) -> Settings:
    # asyncpg checks the certificate against the URL's host: here its IP address.
    return settings.model_copy(
        update={
            "database": DatabaseSettings(
                url=f"postgresql+asyncpg://postgres@{address}/ordersaga", tls=tls
            )
        }
    )


async def test_postgres_tls_for_the_pool_the_engine_and_migrations(
    settings: Settings, pki: Pki
) -> None:
    upstream = db.where(settings).split("/")[0]
    async with postgres_tls_proxy(upstream, pki) as (address, ciphers):
        ours = _database(settings, address, TlsSettings(ca_file=pki.ca_file))
        await asyncio.to_thread(migrations.upgrade, ours)  # alembic's own engine
        assert len(ciphers) == 1
        pool = await db.create_pool(ours, size=1)
        try:
            assert await pool.fetchval("SELECT count(*) >= 0 FROM api.keys")
        finally:
            await pool.close()
        assert len(ciphers) == 2
        engine = db.create_engine(ours, pool_size=1)
        try:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        finally:
            await engine.dispose()
        assert len(ciphers) == 3
        # Without TLS settings the URL's own ssl mode applies: `disable` speaks plain TCP, which
        # this endpoint does not serve.
        plain = _database(settings, address, TlsSettings())
        plain_url = f"{plain.database.url}?ssl=disable"
        plain = plain.model_copy(update={"database": DatabaseSettings(url=plain_url)})
        with pytest.raises((OSError, ConnectionError, asyncpg.PostgresError)):
            await db.connect(plain, "test")
        assert len(ciphers) == 3


async def test_postgres_behind_a_certificate_of_another_ca_is_refused(
    settings: Settings, pki: Pki
) -> None:
    upstream = db.where(settings).split("/")[0]
    async with postgres_tls_proxy(upstream, pki) as (address, _):
        with pytest.raises(ssl.SSLCertVerificationError):
            await db.connect(_database(settings, address, pki.stranger_db()), "test")
    # A name override asyncpg cannot honour is refused at start, not silently ignored.
    with pytest.raises(ValueError, match="SERVER_NAME"):
        db.tls(_database(settings, "127.0.0.1:1", pki.trust()))


def test_the_password_setting_overrides_the_url_and_stays_out_of_repr() -> None:
    settings = Settings(
        database=DatabaseSettings(url="postgresql+asyncpg://u:old@db/x", password="from-secret")
    )
    assert db.url(settings).password == "from-secret"
    assert "from-secret" not in repr(settings)  # secrets stay out of logs


# -- Temporal ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tls_proxy(upstream: str, pki: Pki, *, require_client_cert: bool) -> AsyncIterator[str]:
    """TLS in front of a plain gRPC server, as a load balancer or service mesh terminates it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.set_alpn_protocols(["h2"])
    if require_client_cert:
        context.load_verify_locations(pki.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    host, port = upstream.rsplit(":", 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def _temporal(settings: Settings, address: str, tls: TlsSettings) -> Settings:
    return settings.model_copy(update={"temporal": TemporalSettings(address=address, tls=tls)})


async def test_temporal_mutual_tls(settings: Settings, pki: Pki) -> None:
    upstream = settings.temporal_address()
    async with tls_proxy(upstream, pki, require_client_cert=True) as address:
        client = await connect_temporal(_temporal(settings, address, pki.trust(client_cert=True)))
        assert await client.service_client.check_health()
        # Without our client certificate, or trusting another CA, there is no connection.
        for tls in (pki.trust(), pki.stranger()):
            with pytest.raises(RuntimeError):
                await asyncio.wait_for(connect_temporal(_temporal(settings, address, tls)), 20)


async def test_the_embedded_nats_server_lets_in_only_its_own_user(settings: Settings) -> None:
    assert settings.nats.user == "ordersaga" and settings.nats.password
    await _round_trip(await bus.connect(settings, "test"))
    anonymous = settings.nats.model_copy(update={"user": None, "password": None})
    await _nats_refuses(settings.model_copy(update={"nats": anonymous}))
    stranger = settings.nats.model_copy(update={"password": "guess"})
    await _nats_refuses(settings.model_copy(update={"nats": stranger}))


async def test_tls_settings_never_talk_to_a_server_that_does_not_start_tls(
    tmp_path: Path, pki: Pki
) -> None:
    """nats-py upgrades only when the server asks: a plain server (or a stripped INFO) must get
    no CONNECT, so no credentials in the clear."""
    async with nats_server(tmp_path, 'authorization { user: "svc", password: "s3cret" }\n') as url:
        tls = pki.trust(client_cert=True)
        plain = NatsSettings(url=url, user="svc", password="s3cret", tls=tls)
        await _nats_refuses(Settings(nats=plain))


def test_secrets_stay_out_of_validation_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSAGA_NATS__PASSWORD", "hunter2")  # and no user: invalid
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({"temporal": {"api_key": "k3y", "tls": {"cert_file": "c"}}})
    assert "k3y" not in str(caught.value)


def test_a_server_name_alone_turns_tls_on() -> None:
    assert TlsSettings(server_name="nats.internal").on
    assert not TlsSettings().on


def test_without_tls_settings_the_urls_own_ssl_mode_applies() -> None:
    settings = Settings(database=DatabaseSettings(url="postgresql+asyncpg://u@db/x?ssl=require"))
    assert db._address(settings)["ssl"] == "require"
    assert "ssl" not in db.engine_args(settings)["connect_args"]  # type: ignore[operator]
    assert "ssl" not in db._address(
        Settings(database=DatabaseSettings(url="postgresql+asyncpg://u@db/x"))
    )
