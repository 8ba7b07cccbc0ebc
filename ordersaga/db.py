"""Engine construction: one place that knows the session settings every process uses."""

from __future__ import annotations

import json
import ssl
from collections.abc import Collection, Mapping
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ordersaga.settings import Settings
from ordersaga.tls import ssl_context


def url(settings: Settings) -> URL:
    """The database URL with the password from `database.password`, when that is set."""
    parsed = make_url(settings.database_url())
    if settings.database.password is not None:
        parsed = parsed.set(password=settings.database.password)
    return parsed


def tls(settings: Settings) -> ssl.SSLContext | None:
    """asyncpg's `ssl` argument: our verifying context, or None when our TLS settings are off, so
    that the URL's own `?ssl=...` and libpq's PGSSLMODE still apply."""
    if settings.database.tls.server_name is not None:
        # asyncpg checks the certificate against the host it connects to; it has no override.
        raise ValueError(
            "ORDERSAGA_DATABASE__TLS__SERVER_NAME is not supported: put the name the server's "
            "certificate carries in the URL's host"
        )
    return ssl_context(settings.database.tls)


def _ssl_arg(settings: Settings) -> dict[str, object]:
    context = tls(settings)
    return {} if context is None else {"ssl": context}


def _url_ssl_mode(settings: Settings) -> dict[str, object]:
    """The URL's own `?ssl=` / `?sslmode=` for the asyncpg pool (SQLAlchemy reads it itself)."""
    query = url(settings).query
    mode = query.get("ssl") or query.get("sslmode")
    return {"ssl": mode} if isinstance(mode, str) else {}


def engine_args(settings: Settings) -> dict[str, object]:
    """What every SQLAlchemy engine on our database needs beyond the URL (migrations too)."""
    return {"connect_args": _ssl_arg(settings)}


def _server_settings(settings: Settings) -> dict[str, str]:
    db = settings.database
    # A session left idle inside a transaction holds back every global-feed reader (they wait
    # for the oldest open transaction), so Postgres ends it.
    return {
        "statement_timeout": str(db.statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(db.idle_in_transaction_timeout_ms),
        "application_name": "ordersaga",
    }


def _address(settings: Settings) -> dict[str, object]:
    """asyncpg's connection arguments, from the same URL SQLAlchemy uses."""
    parsed = url(settings)
    return {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "database": parsed.database,
        **(_ssl_arg(settings) or _url_ssl_mode(settings)),
    }


def where(settings: Settings) -> str:
    """The database's address for messages: host, port and name, never the password."""
    parsed = make_url(settings.database_url())
    return f"{parsed.host}:{parsed.port or 5432}/{parsed.database}"


def _refuse_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pool checkout: a connection its server has closed (a Postgres restart; asyncpg saw the
    socket close) is replaced before anyone uses it. No round trip, where SQLAlchemy's pre-ping
    sends BEGIN, a query and ROLLBACK at every checkout."""
    if dbapi_connection.driver_connection.is_closed():
        raise sa_exc.DisconnectionError("the server closed this connection")


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    db = settings.database
    engine = create_async_engine(
        url(settings),
        pool_size=pool_size or db.pool_size,
        max_overflow=db.pool_size,
        pool_pre_ping=db.pre_ping,
        connect_args={"server_settings": _server_settings(settings), **_ssl_arg(settings)},
    )
    event.listen(engine.sync_engine, "checkout", _refuse_closed)
    return engine


async def _released(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs when it is released, beyond what asyncpg always does (roll
    back an open transaction, drop its listeners): nothing, so a release costs no round trip.

    asyncpg's default sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release, one more round trip per event-store call. Pooled sessions here leave
    nothing behind for it to undo: session settings come in the startup packet, advisory locks
    are transaction-scoped (session-level leases use `connect`'s own sessions), cursors live in
    transactions, and the feed's subscriber undoes its LISTEN itself (or, when it cannot,
    terminates its connection)."""


def jsonb(value: Any) -> Any:
    """A jsonb value as read: text on this module's asyncpg pool (it installs no codec, so the
    writers' `json.dumps` text goes in as it is), already decoded through SQLAlchemy's. (The
    event store has its own line for this: it is a component of its own, free of this module.)"""
    return json.loads(value) if isinstance(value, str) else value


def record(row: Mapping[str, Any], json_columns: Collection[str] = ()) -> dict[str, Any]:
    """A row read on this module's asyncpg pool as a dict, its `json_columns` decoded."""
    out = dict(row)
    for column in json_columns:
        out[column] = jsonb(out[column])
    return out


async def create_pool(settings: Settings, *, size: int | None = None) -> asyncpg.Pool:
    """A plain asyncpg pool for the hot paths (the event store, the participants, the API's key
    lookup, request claim and order read, the projector's transactions, the notifier's
    statements), cheaper for the client
    than SQLAlchemy's pool (the README's benchmark section has the figures), with the same
    session settings as the engine. jsonb comes back as text: `jsonb` decodes it."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        **_address(settings),
        min_size=1,
        max_size=size or settings.database.pool_size,
        server_settings=_server_settings(settings),
        reset=_released,
    )
    return pool


async def connect(settings: Settings, application_name: str, **session: str) -> asyncpg.Connection:
    """One dedicated session (LISTEN, advisory locks): not from a pool, it lives on its own.
    `session`: more settings of the session (`tcp_keepalives_idle="10"`, ...)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        **_address(settings),
        server_settings={
            **_server_settings(settings),
            "application_name": application_name,
            **session,
        },
    )
    return conn
