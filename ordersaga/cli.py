"""`ordersaga`: the dev stack in one command, and each process on its own for production."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Annotated

import typer

from ordersaga.settings import Settings, get_settings

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
    """Start Postgres, NATS, Temporal, the worker, the projector and the API; Ctrl-C stops all."""
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
    """Run the projector that builds the order read model from JetStream."""
    from ordersaga.projections import runner

    asyncio.run(runner.run(_settings()))


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


projections = typer.Typer(help="Read models: rebuild them from the event store.")
app.add_typer(projections, name="projections")


@projections.command("rebuild")
def rebuild(
    name: Annotated[str, typer.Argument(help="The read model: orders.")] = "orders",
) -> None:
    """Replay the event store into fresh tables and swap them in (the service may keep running)."""
    from ordersaga.db import create_engine, create_pool
    from ordersaga.events import order_upcasters
    from ordersaga.eventstore import EventStore
    from ordersaga.projections.rebuild import rebuild_orders

    if name != "orders":
        raise typer.Exit(_fail(f"unknown read model {name!r}; there is: orders"))
    settings = _settings()

    async def main() -> None:
        engine = create_engine(settings, pool_size=2)
        pool = await create_pool(settings, size=2)
        try:
            report = await rebuild_orders(engine, EventStore(pool, order_upcasters()))
        finally:
            await pool.close()
            await engine.dispose()
        typer.echo(f"rebuilt orders: {report.events} events replayed, {report.orders} orders")

    asyncio.run(main())


def main() -> None:
    app()
