"""`ordersaga`: the dev stack in one command, and each process on its own for production."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer

from ordersaga.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ordersaga.eventstore import EventStore

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help=__doc__
)


def _settings() -> Settings:
    from ordersaga import runtime

    settings = get_settings()
    runtime.setup_logging(settings)
    return settings


@app.command()
def dev(
    ui: Annotated[bool, typer.Option(help="Serve the Temporal Web UI.")] = True,
) -> None:
    """Start Postgres, NATS, Temporal, the worker, projector, notifier and API; Ctrl-C stops all."""
    from ordersaga import runtime
    from ordersaga.devstack import DevStack, StackError

    settings = _settings()

    async def main() -> None:
        stop = runtime.stop_event()
        stack = DevStack(settings, ui=ui)
        typer.echo(f"starting the embedded stack in {stack.data_dir} ...")
        try:
            await stack.start()
        except StackError as error:
            raise typer.Exit(_fail(str(error))) from error
        width = max(len(name) for name, _ in stack.endpoints())
        typer.echo("\nordersaga is running:")
        for name, where in stack.endpoints():
            typer.echo(f"  {name:<{width}}  {where}")
        typer.echo("\nCtrl-C stops everything; data and in-flight sagas resume on the next start.")
        await stop.wait()
        typer.echo("stopping ...")
        await stack.stop()
        typer.echo("stopped.")

    asyncio.run(main())


def _fail(message: str) -> int:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return 1


@app.command()
def worker() -> None:
    """Run the Temporal worker (saga workflow and participant activities)."""
    from ordersaga import worker as worker_process

    asyncio.run(worker_process.run(_settings()))


@app.command()
def projector() -> None:
    """Run a projector process: it claims a share of the partitions and applies every read
    model on them (run several for scale-out; they rebalance as they come and go)."""
    from ordersaga.projections import runner

    asyncio.run(runner.run(_settings()))


@app.command()
def notifier() -> None:
    """Run the notification service (customer messages on confirmed and cancelled orders)."""
    from ordersaga import notifier as notifier_process

    asyncio.run(notifier_process.run(_settings()))


@app.command()
def api() -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from ordersaga.api.app import create_app

    settings = _settings()
    uvicorn.run(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_level=settings.log_level.lower(),
    )


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    down: Annotated[bool, typer.Option(help="Downgrade to REVISION instead.")] = False,
) -> None:
    """Apply (or revert) the database migrations."""
    from ordersaga import migrations

    settings = _settings()
    if down:
        migrations.downgrade(settings, revision)
    else:
        migrations.upgrade(settings, revision)


def _saga_call(order_id: str, update: str | None) -> None:
    from ordersaga import runtime
    from ordersaga.domain import SagaState, workflow_id

    settings = _settings()

    async def main() -> SagaState:
        client = await runtime.connect_temporal(settings)
        handle = client.get_workflow_handle(workflow_id(order_id))
        if update is None:
            state: SagaState = await handle.query("status", result_type=SagaState)
        else:
            state = await handle.execute_update(update, result_type=SagaState)
        return state

    typer.echo(json.dumps(asdict(asyncio.run(main())), indent=2))


@app.command()
def status(order_id: str) -> None:
    """Ask a running saga for its status (the workflow's own view)."""
    _saga_call(order_id, None)


@app.command("retry-compensation")
def retry_compensation(order_id: str) -> None:
    """Operator action: retry the failed compensation of a REQUIRES_ATTENTION order."""
    _saga_call(order_id, "retry_compensation")


@contextlib.asynccontextmanager
async def _engine_and_store(settings: Settings) -> AsyncIterator[tuple[AsyncEngine, EventStore]]:
    """What the operator commands on read models need: an engine and the event store."""
    from ordersaga.db import create_engine, create_pool
    from ordersaga.events import order_upcasters
    from ordersaga.eventstore import EventStore

    engine = create_engine(settings, pool_size=2)
    pool = await create_pool(settings, size=2)
    try:
        yield engine, EventStore(pool, order_upcasters())
    finally:
        await pool.close()
        await engine.dispose()


projections = typer.Typer(help="Read models: their lag, and rebuilding them from the event store.")
app.add_typer(projections, name="projections")


@projections.command("status")
def projections_status() -> None:
    """Lag (events not applied yet) per projection and partition, and open dead letters."""
    from ordersaga import bus
    from ordersaga.db import create_engine
    from ordersaga.projections.status import projection_status

    settings = _settings()

    async def main() -> list[dict[str, object]]:
        engine = create_engine(settings, pool_size=1)
        nc = await bus.connect(settings, "cli")
        try:
            return await projection_status(nc.jetstream(), engine, settings)
        finally:
            await nc.close()
            await engine.dispose()

    typer.echo(json.dumps(asyncio.run(main()), indent=2))


@projections.command("rebuild")
def rebuild(
    name: Annotated[str, typer.Argument(help="The read model: orders.")] = "orders",
) -> None:
    """Replay the event store into fresh tables and swap them in (the service may keep running)."""
    from ordersaga.projections.rebuild import rebuild_orders

    if name != "orders":
        raise typer.Exit(_fail(f"unknown read model {name!r}; there is: orders"))
    settings = _settings()

    async def main() -> None:
        async with _engine_and_store(settings) as (engine, store):
            report = await rebuild_orders(engine, store)
        typer.echo(f"rebuilt orders: {report.events} events replayed, {report.orders} orders")

    asyncio.run(main())


bus_app = typer.Typer(help="The JetStream streams and consumers, as code.")
app.add_typer(bus_app, name="bus")


@bus_app.command("setup")
def bus_setup() -> None:
    """Create or update the streams and durable consumers (the worker, projector and notifier
    also do at start)."""
    from ordersaga import bus

    settings = _settings()

    async def main() -> list[str]:
        nc = await bus.connect(settings, "cli")
        try:
            return await bus.setup(nc.jetstream(), settings)
        finally:
            await nc.close()

    for line in asyncio.run(main()):
        typer.echo(line)


@bus_app.command("describe")
def bus_describe() -> None:
    """What the server has: subjects, sources, retention, replicas, limits, consumers."""
    from ordersaga import bus

    settings = _settings()

    async def main() -> dict[str, object]:
        nc = await bus.connect(settings, "cli")
        try:
            return await bus.describe(nc.jetstream(), settings)
        finally:
            await nc.close()

    typer.echo(json.dumps(asyncio.run(main()), indent=2))


deadletters = typer.Typer(help="Events a projection could not apply, and what waits behind them.")
app.add_typer(deadletters, name="deadletters")


@deadletters.command("list")
def deadletters_list(
    projection: Annotated[str | None, typer.Option(help="Only this projection.")] = None,
    resolved: Annotated[bool, typer.Option("--all", help="Include resolved ones.")] = False,
) -> None:
    """Open dead letters: failed events, and later events of the same order waiting."""
    from ordersaga.db import create_engine
    from ordersaga.projections.deadletters import list_dead_letters

    settings = _settings()

    async def main() -> list[dict[str, object]]:
        engine = create_engine(settings, pool_size=1)
        try:
            found = await list_dead_letters(engine, projection, resolved=resolved)
        finally:
            await engine.dispose()
        return [d.as_dict() for d in found]

    typer.echo(json.dumps(asyncio.run(main()), indent=2))


def _dead_letter_action(dead_letter_id: int, action: str) -> None:
    from ordersaga.projections import deadletters as ops
    from ordersaga.projections.deadletters import DeadLetterError
    from ordersaga.projections.runner import appliers

    settings = _settings()

    async def main() -> str:
        async with _engine_and_store(settings) as (engine, store):
            by_name = appliers(store)
            if action == "retry":
                n = await ops.retry(engine, by_name, dead_letter_id)
                return f"retried: {n} event(s) of the order applied"
            return await ops.discard(engine, by_name, dead_letter_id)

    try:
        typer.echo(asyncio.run(main()))
    except DeadLetterError as error:
        raise typer.Exit(_fail(str(error))) from error


@deadletters.command("retry")
def deadletters_retry(dead_letter_id: int) -> None:
    """Apply the dead letter's order again (after a fix), with the events parked behind it."""
    _dead_letter_action(dead_letter_id, "retry")


@deadletters.command("discard")
def deadletters_discard(dead_letter_id: int) -> None:
    """Skip this event for its projection; the order's parked events then apply."""
    _dead_letter_action(dead_letter_id, "discard")


events_app = typer.Typer(help="The order events on the bus.")
app.add_typer(events_app, name="events")


@events_app.command("tail")
def events_tail(
    order: Annotated[str | None, typer.Option(help="Only this order id.")] = None,
    type_: Annotated[
        str | None, typer.Option("--type", help="Only this type: order.confirmed or confirmed.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Start this far back: 90s, 15m, 1h, 2d. Default: new only.")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print whole CloudEvents.")] = False,
) -> None:
    """Print events as they arrive, decoded (like `nats sub 'orders.>'`, but readable)."""
    from ordersaga import tail

    settings = _settings()
    try:
        query = tail.TailQuery.parse(settings, order, type_, since)
    except ValueError as error:
        raise typer.Exit(_fail(str(error))) from error
    asyncio.run(tail.tail(settings, query, count, as_json, typer.echo))


def main() -> None:
    app()
