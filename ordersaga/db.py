"""Engine construction: one place that knows the session settings every process uses."""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ordersaga.settings import Settings


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
    url = make_url(settings.database_url())
    return {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "database": url.database,
    }


def where(settings: Settings) -> str:
    """The database's address for messages: host, port and name, never the password."""
    url = make_url(settings.database_url())
    return f"{url.host}:{url.port or 5432}/{url.database}"


def create_engine(
    settings: Settings, *, pool_size: int | None = None, pre_ping: bool = True
) -> AsyncEngine:
    """`pre_ping=False` saves a round trip per checkout, for callers that retry a transaction
    that fails on a dead connection anyway (the projector: the batch is delivered again)."""
    db = settings.database
    return create_async_engine(
        settings.database_url(),
        pool_size=pool_size or db.pool_size,
        max_overflow=db.pool_size,
        pool_pre_ping=pre_ping,
        connect_args={"server_settings": _server_settings(settings)},
    )


async def create_pool(settings: Settings, *, size: int | None = None) -> asyncpg.Pool:
    """A plain asyncpg pool for the event store's hot path (a third faster than going through
    SQLAlchemy's pool here), with the same session settings as the engine."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        **_address(settings),
        min_size=1,
        max_size=size or settings.database.pool_size,
        server_settings=_server_settings(settings),
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
