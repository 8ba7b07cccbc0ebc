"""Alembic migrations, run by `ordersaga migrate` (and by `ordersaga dev` at start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from ordersaga.settings import Settings

HERE = Path(__file__).parent


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("sqlalchemy.url", settings.database_url().replace("%", "%%"))
    # env.py builds its engine from the settings whole (password, TLS), not the bare URL.
    config.attributes["settings"] = settings
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(settings), revision)
