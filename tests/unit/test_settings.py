"""Settings load from the environment and fail fast on bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ordersaga.domain import SagaPolicy
from ordersaga.settings import Settings, get_settings


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


def test_the_saga_section_is_the_workflow_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSAGA_SAGA__STEP_MAX_ATTEMPTS", "3")
    policy = Settings().saga
    assert policy == SagaPolicy(step_max_attempts=3)


def test_a_child_process_gets_the_parents_settings_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = Settings(api={"port": 20001}, saga=SagaPolicy(initial_interval_s=0.2))
    # A variable of the child's own environment does not override what the parent resolved.
    monkeypatch.setenv("ORDERSAGA_API__PORT", "20002")
    for name, value in parent.as_child_env().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        assert get_settings() == parent
    finally:
        get_settings.cache_clear()


def test_a_command_beside_the_dev_stack_finds_the_embedded_nats_password(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.nats_auth().user is None  # no stack has run here
    (tmp_path / "nats-password").write_text("pw\n")
    auth = settings.nats_auth()
    assert (auth.user, auth.password) == ("ordersaga", "pw")
    # A server of the user's own (a URL) or credentials set explicitly are left as they are.
    assert Settings(data_dir=tmp_path, nats={"url": "nats://n:4222"}).nats_auth().user is None
    assert Settings(data_dir=tmp_path, nats={"token": "t"}).nats_auth().user is None


def test_nats_credentials_go_one_way_and_secrets_stay_out_of_repr() -> None:
    with pytest.raises(ValidationError, match="user and password go together"):
        Settings(nats={"user": "u"})
    with pytest.raises(ValidationError, match="one way"):
        Settings(nats={"user": "u", "password": "p", "token": "t"})
    with pytest.raises(ValidationError, match="cert_file and key_file"):
        Settings(temporal={"tls": {"cert_file": "c.pem"}})
    settings = Settings(nats={"user": "u", "password": "hunter2"}, temporal={"api_key": "k3y"})
    assert "hunter2" not in repr(settings) and "k3y" not in repr(settings)


def test_nats_urls_in_messages_leave_out_credentials() -> None:
    url = "nats://svc:s3cret@n0:4222,nats://svc:s3cret@n1:4222"
    assert Settings(nats={"url": url}).nats_where() == "nats://n0:4222,nats://n1:4222"
