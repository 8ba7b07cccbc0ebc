"""The API's composition-root state and the `Annotated` dependencies routes ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api.progress import AppliedWatch
from ordersaga.eventstore import EventStore
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
    inventory: Inventory
    watch: AppliedWatch


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]
