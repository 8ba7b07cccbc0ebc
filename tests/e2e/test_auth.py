"""API keys and roles: every route but /healthz and /readyz needs a key; a client places, cancels
and reads orders; an operator may do everything; keys are created and revoked with the CLI."""

from __future__ import annotations

import uuid

import httpx
import pytest

from ordersaga.settings import Settings
from tests.helpers import cli, order_body, place, stocked_sku, wait_terminal

pytestmark = pytest.mark.e2e


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def created_key(settings: Settings, role: str) -> tuple[str, str]:
    made = cli(settings, "keys", "create", "--role", role, "--name", f"test-{role}")
    assert made.returncode == 0, made.stderr
    key, info = made.stdout.strip().splitlines()
    return key, info.split()[1].rstrip(",")  # "(id <uuid>, role ..."


async def test_without_a_valid_key_every_route_but_health_is_a_401(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    base = str(api.base_url)
    async with httpx.AsyncClient(base_url=base, timeout=30) as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/readyz")).status_code == 200
        for headers in ({}, bearer("osk_not-a-key"), {"Authorization": "Basic dXNlcjpwdw=="}):
            for method, path in [
                ("GET", "/orders"), ("POST", "/orders"), ("GET", f"/orders/{uuid.uuid4()}"),
                ("PUT", "/inventory/sku-x"), ("GET", "/projections"),
                ("GET", "/reports/sales?from=2026-01-01&to=2026-01-02"),
                ("GET", "/customers/c1/orders"),
            ]:  # fmt: skip
                response = await anonymous.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_client_orders_but_an_operator_runs_the_shop(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    key, key_id = created_key(settings, "client")
    sku = await stocked_sku(api)  # the session's operator key
    async with httpx.AsyncClient(base_url=str(api.base_url), timeout=30, headers=bearer(key)) as c:
        order_id = await place(c, order_body(sku))
        assert (await wait_terminal(c, order_id))["status"] == "CONFIRMED"
        assert (await c.get(f"/orders/{order_id}/events")).status_code == 200
        assert (await c.get("/orders")).status_code == 200
        for method, path in [
            ("PUT", f"/inventory/{sku}"), ("GET", f"/inventory/{sku}"), ("GET", "/projections"),
            ("GET", "/reports/sales?from=2026-01-01&to=2026-01-02"),
            ("POST", f"/orders/{order_id}/retry-compensation"),
        ]:  # fmt: skip
            refused = await c.request(method, path, json={"available": 1})
            assert refused.status_code == 403, (method, path, refused.text)
        # The operator may do all of those (the retry is a 409: nothing to retry).
        assert (await api.get(f"/inventory/{sku}")).status_code == 200
        assert (await api.get("/projections")).status_code == 200
        assert (await api.post(f"/orders/{order_id}/retry-compensation")).status_code == 409

        revoked = cli(settings, "keys", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        assert (await c.get("/orders")).status_code == 401
    listed = cli(settings, "keys", "list")
    assert key_id in listed.stdout and "revoked" in listed.stdout
    assert key not in listed.stdout  # the key itself is never shown again
