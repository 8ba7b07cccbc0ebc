"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import AppContext, Ctx

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


async def _postgres(ctx: AppContext) -> None:
    async with ctx.engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


async def _nats(ctx: AppContext) -> None:
    if not ctx.nats.is_connected:
        raise ConnectionError("not connected")
    await ctx.nats.jetstream().account_info()


async def _temporal(ctx: AppContext) -> None:
    if not await ctx.temporal.service_client.check_health():
        raise ConnectionError("unhealthy")


@router.get("/readyz", responses={503: {"description": "a dependency is down"}})
async def readyz(ctx: Ctx) -> JSONResponse:
    """Postgres, NATS JetStream and Temporal all answer (each check bounded to 2 s)."""
    checks = {"postgres": _postgres, "nats": _nats, "temporal": _temporal}
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check(ctx), timeout=2)
            results[name] = "ok"
        except Exception as error:
            results[name] = f"error: {type(error).__name__}: {error}"
    ok = all(v == "ok" for v in results.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": results},
                        status_code=200 if ok else 503)  # fmt: skip
