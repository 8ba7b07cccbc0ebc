"""The API's composition-root state and the `Annotated` dependencies routes ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api.errors import Forbidden, Unauthorized
from api.progress import AppliedWatch
from ordersaga import keys
from ordersaga.eventstore import EventStore
from ordersaga.keys import Role
from ordersaga.participants import Inventory
from ordersaga.settings import Settings
from workflows.client import SagaClient


@dataclass
class AppContext:
    settings: Settings
    engine: AsyncEngine
    temporal: Client
    sagas: SagaClient
    nats: NATS
    store: EventStore
    pool: asyncpg.Pool
    inventory: Inventory
    watch: AppliedWatch


async def get_ctx(request: Request) -> AppContext:
    # A coroutine, though it awaits nothing: FastAPI runs a plain function dependency in its
    # thread pool, a hand-off to a thread and back on every request.
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]

# Every route that needs a key documents what a missing or weak one gets.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no API key, or not a valid one"},
    403: {"description": "the key's role may not do this"},
}

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key: `ordersaga keys create --role client|operator` prints one.",
)


async def caller(
    ctx: Ctx, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Role:
    """The role of the calling key. A missing, unknown or revoked key is the same 401."""
    # The same lookup whether a key came or not: a missing key and a wrong one take as long.
    presented = credentials.credentials if credentials is not None else ""
    async with ctx.pool.acquire() as conn:
        role = await keys.role_of(conn, presented)
    if credentials is None:
        raise Unauthorized("an API key is needed: Authorization: Bearer <key>")
    if role is None:
        raise Unauthorized("this API key is not valid")
    return role


def requires(role: Role) -> Any:
    """A dependency for a router or route: callers need `role` (an operator may do anything)."""

    async def check(granted: Annotated[Role, Depends(caller)]) -> Role:
        if role == Role.OPERATOR and granted != Role.OPERATOR:
            raise Forbidden("this needs an operator's API key")
        return granted

    return Depends(check)
