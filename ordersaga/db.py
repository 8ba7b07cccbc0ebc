"""Engine construction: one place that knows the session settings every process uses."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ordersaga.settings import Settings


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    db = settings.database
    return create_async_engine(
        settings.database_url(),
        pool_size=pool_size or db.pool_size,
        max_overflow=db.pool_size,
        pool_pre_ping=True,
        connect_args={
            # A session left idle inside a transaction holds back every global-feed reader
            # (they wait for the oldest open transaction), so Postgres ends it.
            "server_settings": {
                "statement_timeout": str(db.statement_timeout_ms),
                "idle_in_transaction_session_timeout": str(db.idle_in_transaction_timeout_ms),
                "application_name": "ordersaga",
            },
        },
    )
