"""Settings load from the environment and fail fast on bad values."""

from __future__ import annotations

from dataclasses import fields

import pytest
from pydantic import ValidationError

from ordersaga.domain import SagaPolicy
from ordersaga.settings import SagaSettings, Settings


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSAGA_TEMPORAL__TASK_QUEUE", "orders-eu")
    monkeypatch.setenv("ORDERSAGA_DATABASE__URL", "postgresql+asyncpg://u@db/orders")
    settings = Settings()
    assert settings.temporal.task_queue == "orders-eu"
    assert settings.database_url() == "postgresql+asyncpg://u@db/orders"
    assert settings.nats_url() == "nats://127.0.0.1:14222"  # embedded default


def test_default_ports_avoid_the_standard_ones() -> None:
    s = Settings()
    ours = {s.database.embedded_port, s.nats.embedded_port, s.temporal.embedded_port,
            s.temporal.embedded_ui_port, s.api.port}  # fmt: skip
    assert ours.isdisjoint({5432, 4222, 7233, 8233, 8000})


def test_a_bad_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSAGA_API__PORT", "eighty")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_saga_settings_and_the_workflow_policy_have_the_same_fields() -> None:
    # The API builds the workflow's SagaPolicy from SagaSettings field by field.
    assert set(SagaSettings.model_fields) == {f.name for f in fields(SagaPolicy)}
    assert SagaPolicy(**SagaSettings().model_dump()) == SagaPolicy()
