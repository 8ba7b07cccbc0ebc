"""Alembic environment: runs the migrations over the async engine."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from ordersaga import db

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, version_table_schema="public")
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    settings = config.attributes.get("settings")
    if settings is not None:
        engine = create_async_engine(db.url(settings), **db.engine_args(settings))
    else:  # the alembic command line, given a URL
        engine = create_async_engine(config.get_main_option("sqlalchemy.url") or "")
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit(
        "offline migrations are not supported; point ORDERSAGA_DATABASE__URL at a server"
    )
asyncio.run(_main())
