"""One settings class for every process (environment: ORDERSAGA_<SECTION>__<KEY>)."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Default ports for the embedded stack sit away from the standard ones (5432, 4222, 7233, 8233,
# 8000), so `ordersaga dev` runs beside servers that already use those.


class DatabaseSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (postgresql+asyncpg://...). Unset: the embedded Postgres.",
    )
    embedded_port: int = 15432
    pool_size: int = 10
    statement_timeout_ms: int = 15_000
    idle_in_transaction_timeout_ms: int = 30_000


class NatsSettings(BaseModel):
    url: str | None = Field(default=None, description="nats://... Unset: the embedded nats-server.")
    embedded_port: int = 14222
    embedded_monitor_port: int = 18222
    stream: str = "ORDERS"
    subject_prefix: str = "orders"
    # Longer than any activity's retry span, so a republished event is always deduplicated.
    duplicate_window: timedelta = timedelta(hours=24)
    replicas: int = 1
    publish_timeout: float = 5.0
    projector_durable: str = "projector-orders"


class TemporalSettings(BaseModel):
    address: str | None = Field(default=None, description="host:port. Unset: the embedded server.")
    embedded_port: int = 17233
    embedded_ui_port: int = 18233
    namespace: str = "default"
    task_queue: str = "orders"
    max_concurrent_activities: int = 200
    max_concurrent_workflow_tasks: int = 200


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 18000
    # How long a command route waits for the workflow to answer an update.
    update_timeout: float = 10.0


class SagaSettings(BaseModel):
    """Retry policy of the saga, passed into each workflow so that tests can shorten it."""

    step_max_attempts: int = 8
    compensation_max_attempts: int = 10
    initial_interval_s: float = 1.0
    max_interval_s: float = 30.0
    activity_timeout_s: float = 10.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ORDERSAGA_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Path(".ordersaga")
    log_level: str = "INFO"
    database: DatabaseSettings = DatabaseSettings()
    nats: NatsSettings = NatsSettings()
    temporal: TemporalSettings = TemporalSettings()
    api: ApiSettings = ApiSettings()
    saga: SagaSettings = SagaSettings()

    def database_url(self) -> str:
        if self.database.url is None:
            return (
                f"postgresql+asyncpg://postgres@127.0.0.1:{self.database.embedded_port}/ordersaga"
            )
        return self.database.url

    def nats_url(self) -> str:
        return self.nats.url or f"nats://127.0.0.1:{self.nats.embedded_port}"

    def temporal_address(self) -> str:
        return self.temporal.address or f"127.0.0.1:{self.temporal.embedded_port}"


@lru_cache
def get_settings() -> Settings:
    """Load settings once per process; a bad value fails here with pydantic's message."""
    return Settings()
