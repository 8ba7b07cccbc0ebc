"""Helpers shared by the long-running processes' composition roots."""

from __future__ import annotations

import asyncio
import logging
import signal

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from ordersaga.settings import Settings

SEARCH_ATTRIBUTES = {
    "CustomerId": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "OrderStatus": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
}


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Per-request lines of the HTTP client and Alembic's plugin chatter drown what matters.
    for noisy in ("httpx", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: the process drains and exits cleanly."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event


async def connect_temporal(settings: Settings) -> Client:
    return await Client.connect(settings.temporal_address(), namespace=settings.temporal.namespace)


async def ensure_search_attributes(client: Client, settings: Settings) -> None:
    """Register CustomerId and OrderStatus (the embedded server has them from its flags)."""
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=settings.temporal.namespace, search_attributes=SEARCH_ATTRIBUTES
            )
        )
    except RPCError as error:
        if error.status != RPCStatusCode.ALREADY_EXISTS:
            raise
