"""The API's composition root state and the `Annotated` dependencies routes ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from ordersaga.activities.participants import PostgresInventory
from ordersaga.api.progress import AppliedWatch
from ordersaga.eventstore import EventStore
from ordersaga.settings import Settings


@dataclass
class AppContext:
    settings: Settings
    engine: AsyncEngine
    temporal: Client
    nats: NATS
    store: EventStore
    inventory: PostgresInventory
    watch: AppliedWatch


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]
