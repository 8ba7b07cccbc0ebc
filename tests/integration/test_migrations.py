"""The migration applies to an empty database, reverts cleanly, and applies again."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from ordersaga import migrations
from ordersaga.settings import DatabaseSettings, Settings

SCHEMAS = {"eventstore", "inventory", "payments", "shipping", "readmodel", "api"}


async def _schemas(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text("SELECT schema_name FROM information_schema.schemata")
            )
            return {r[0] for r in rows} & SCHEMAS
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(settings: Settings) -> None:
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    admin_url = settings.database_url().replace("+asyncpg", "")
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = settings.database_url().rsplit("/", 1)[0] + f"/{name}"
        scratch = settings.model_copy(update={"database": DatabaseSettings(url=url)})
        await asyncio.to_thread(migrations.upgrade, scratch)
        assert await _schemas(url) == SCHEMAS
        await asyncio.to_thread(migrations.downgrade, scratch, "base")
        assert await _schemas(url) == set()
        await asyncio.to_thread(migrations.upgrade, scratch)
        assert await _schemas(url) == SCHEMAS
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
