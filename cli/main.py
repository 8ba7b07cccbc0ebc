"""`ordersaga`: the dev stack in one command, and each process on its own for production."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ordersaga.settings import Settings, get_settings

if TYPE_CHECKING:
    from ordersaga.domain import SagaState
    from ordersaga.runtime import Resources
    from workflows.client import SagaClient

T = TypeVar("T")
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
    cluster: Annotated[
        bool,
        typer.Option(
            help="Three nats-server nodes clustered on loopback (streams at 3 replicas) and two "
            "of each service process; data in .ordersaga-cluster unless ORDERSAGA_DATA_DIR is set."
        ),
    ] = False,
) -> None:
    """Start Postgres, NATS, Temporal, the worker, relay, projector, notifier and API; Ctrl-C
    stops all."""
    from ordersaga import runtime
    from ordersaga.devstack import DevStack, StackError

    settings = _settings()
    if cluster and "data_dir" not in settings.model_fields_set:
        # Apart from the single-node stack's data: its streams are R1 on one server.
        settings = settings.model_copy(update={"data_dir": Path(".ordersaga-cluster")})

    async def main() -> None:
        stop = runtime.stop_event()
        stack = DevStack(
            settings, ui=ui, nats_nodes=3 if cluster else 1, copies=2 if cluster else 1
        )
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

    # asyncio's own loop: the supervisor starts Postgres as an unprivileged user when run as
    # root, through subprocess arguments (user, group) that uvloop's process spawning refuses.
    # It is no hot path; the processes it starts run on uvloop.
    asyncio.run(main())


def _loop(main: Coroutine[Any, Any, T]) -> T:
    from ordersaga import runtime

    return runtime.run(main)


def _fail(message: str) -> int:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return 1


@app.command()
def worker() -> None:
    """Run the Temporal worker (saga workflow and participant activities)."""
    from activities import worker as worker_process

    _loop(worker_process.run(_settings()))


relay_app = typer.Typer(
    help="The outbox relay: every event the store holds, published to JetStream in store order.",
    invoke_without_command=True,
)
app.add_typer(relay_app, name="relay")


@relay_app.callback()
def relay(ctx: typer.Context) -> None:
    """Run the relay (one holds the lease and publishes; others stand by and take over)."""
    if ctx.invoked_subcommand is None:
        from ordersaga import relay as relay_process

        _loop(relay_process.run(_settings()))


@relay_app.command("status")
def relay_status() -> None:
    """How far JetStream is behind the event store: events not yet published, the oldest's age."""
    from ordersaga import relay as relay_process

    async def main(res: Resources) -> dict[str, object]:
        return await relay_process.status(await res.pool(size=1), res.settings.relay.name)

    typer.echo(json.dumps(_run(main), indent=2))


@app.command()
def projector() -> None:
    """Run a projector process: it claims a share of the partitions and applies every read
    model on them (run several for scale-out; they rebalance as they come and go)."""
    from projections import runner

    _loop(runner.run(_settings()))


@app.command()
def notifier() -> None:
    """Run the notification service (customer messages on confirmed and cancelled orders)."""
    from projections import notifier as notifier_process

    settings = _settings()
    if settings.notifier.api_key is None:
        # Without a key every order it asks the API for is a 401, and every notification would
        # end as a dead letter: refuse to start instead, saying what to do.
        raise typer.Exit(
            _fail(
                "the notifier needs an API key of role client in ORDERSAGA_NOTIFIER__API_KEY: "
                "ordersaga keys create --role client --name notifier"
            )
        )
    _loop(notifier_process.run(settings))


@app.command()
def api() -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from activities.participants import PostgresInventory
    from api.app import create_app

    settings = _settings()
    # The lifespan checks too, but uvicorn would wrap a refusal there in a traceback.
    _run(lambda res: res.check_servers(), "api")
    uvicorn.run(
        create_app(settings, make_inventory=PostgresInventory),
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
    _run(lambda res: res.pool(size=1))  # Postgres's version, before anything changes on it
    if down:
        migrations.downgrade(settings, revision)
    else:
        migrations.upgrade(settings, revision)


def _run(main: Callable[[Resources], Awaitable[T]], name: str = "cli") -> T:
    """Run one operator command with what it opens closed afterwards, whatever happens."""
    from ordersaga import runtime

    settings = _settings()

    async def opened() -> T:
        async with runtime.open_resources(settings, name) as res:
            return await main(res)

    return _loop(opened())


def _saga(call: Callable[[SagaClient], Awaitable[SagaState]]) -> None:
    from ordersaga.domain import SagaError
    from workflows.client import SagaClient

    async def main(res: Resources) -> SagaState:
        s = res.settings
        temporal = await res.temporal()
        return await call(SagaClient(temporal, s.temporal.task_queue, s.api.update_timeout))

    try:
        state = _run(main)
    except SagaError as error:
        raise typer.Exit(_fail(str(error))) from error
    typer.echo(json.dumps(asdict(state), indent=2))


@app.command()
def status(order_id: str) -> None:
    """Ask a running saga for its status (the workflow's own view)."""
    _saga(lambda sagas: sagas.status(order_id))


@app.command("retry-compensation")
def retry_compensation(order_id: str) -> None:
    """Operator action: retry the failed compensation of a REQUIRES_ATTENTION order."""
    _saga(lambda sagas: sagas.retry_compensation(order_id))


projections = typer.Typer(help="Read models: their lag, and rebuilding them from the event store.")
app.add_typer(projections, name="projections")


@projections.command("status")
def projections_status() -> None:
    """Lag (events not applied yet) per projection and partition, and open dead letters."""
    from projections.status import projection_status

    async def main(res: Resources) -> list[dict[str, object]]:
        return await projection_status(
            await res.jetstream(), await res.engine(pool_size=1), res.settings
        )

    typer.echo(json.dumps(_run(main), indent=2))


@projections.command("rebuild")
def rebuild(
    name: Annotated[str, typer.Argument(help="The read model: orders.")] = "orders",
) -> None:
    """Replay the event store into fresh tables and swap them in (the service may keep running)."""
    from projections.rebuild import RebuildReport, rebuild_orders

    if name != "orders":
        raise typer.Exit(_fail(f"unknown read model {name!r}; there is: orders"))

    async def main(res: Resources) -> RebuildReport:
        store = await res.store(pool_size=2)
        return await rebuild_orders(await res.own_pool(size=1), store)

    report = _run(main)
    typer.echo(f"rebuilt orders: {report.events} events replayed, {report.orders} orders")


bus_app = typer.Typer(help="The JetStream streams and consumers, as code.")
app.add_typer(bus_app, name="bus")


@bus_app.command("setup")
def bus_setup() -> None:
    """Create or update the streams and durable consumers (the worker, projector and notifier
    also do at start)."""
    from ordersaga import bus

    async def main(res: Resources) -> list[str]:
        return await bus.setup(await res.jetstream(), res.settings)

    for line in _run(main):
        typer.echo(line)


@bus_app.command("describe")
def bus_describe() -> None:
    """What the server has: subjects, sources, retention, replicas, limits, consumers."""
    from ordersaga import bus

    async def main(res: Resources) -> dict[str, object]:
        return await bus.describe(await res.jetstream(), res.settings)

    typer.echo(json.dumps(_run(main), indent=2))


deadletters = typer.Typer(help="Events a projection could not apply, and what waits behind them.")
app.add_typer(deadletters, name="deadletters")


@deadletters.command("list")
def deadletters_list(
    projection: Annotated[str | None, typer.Option(help="Only this projection.")] = None,
    resolved: Annotated[bool, typer.Option("--all", help="Include resolved ones.")] = False,
) -> None:
    """Open dead letters: failed events, and later events of the same order waiting."""
    from projections.deadletters import list_dead_letters

    async def main(res: Resources) -> list[dict[str, object]]:
        found = await list_dead_letters(await res.pool(size=1), projection, resolved=resolved)
        return [d.as_dict() for d in found]

    typer.echo(json.dumps(_run(main), indent=2))


def _dead_letter_action(dead_letter_id: int, action: str) -> None:
    from projections import deadletters as ops
    from projections.deadletters import DeadLetterError
    from projections.runner import appliers

    async def main(res: Resources) -> str:
        by_name = appliers(await res.store(pool_size=2))
        pool = await res.own_pool(size=1)  # not the store's: a retry reads it in a transaction
        if action == "retry":
            n = await ops.retry(pool, by_name, dead_letter_id, res.settings)
            return f"retried: {n} event(s) of the order applied"
        return await ops.discard(pool, by_name, dead_letter_id, res.settings)

    try:
        typer.echo(_run(main))
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
    from projections import tail

    settings = _settings()
    try:
        query = tail.TailQuery.parse(settings, order, type_, since)
    except ValueError as error:
        raise typer.Exit(_fail(str(error))) from error
    _loop(tail.tail(settings, query, count, as_json, typer.echo))


keys_app = typer.Typer(help="API keys: who may call the API, as a client or an operator.")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="client (orders) or operator (everything).")],
    name: Annotated[str, typer.Option(help="Whose key it is, for the list.")] = "unnamed",
) -> None:
    """Create a key and print it (only now: the database keeps its hash)."""
    from ordersaga import keys

    try:
        wanted = keys.Role(role)
    except ValueError:
        raise typer.Exit(_fail(f"--role is client or operator, not {role!r}")) from None

    async def main(res: Resources) -> tuple[keys.ApiKey, str]:
        async with (await res.pool(size=1)).acquire() as conn:
            return await keys.create(conn, wanted, name)

    record, key = _run(main)
    typer.echo(f"{key}\n(id {record.id}, role {record.role}, name {record.name})")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (`ordersaga keys list`): it stops working at once."""
    from ordersaga import keys

    async def main(res: Resources) -> bool:
        async with (await res.pool(size=1)).acquire() as conn:
            return await keys.revoke(conn, key_id)

    if not _run(main):
        raise typer.Exit(_fail(f"no live key with id {key_id}"))
    typer.echo(f"revoked {key_id}")


@keys_app.command("list")
def keys_list() -> None:
    """Every key's id, name, role and dates (never the key)."""
    from ordersaga import keys

    async def main(res: Resources) -> list[keys.ApiKey]:
        async with (await res.pool(size=1)).acquire() as conn:
            return await keys.listed(conn)

    for k in _run(main):
        revoked = f"  revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else ""
        typer.echo(f"{k.id}  {k.role:<8}  {k.name}  created {k.created_at:%Y-%m-%d %H:%M}{revoked}")


schemas_app = typer.Typer(
    help="The event contracts: JSON Schemas per event type and version, and the AsyncAPI document."
)
app.add_typer(schemas_app, name="schemas")


@schemas_app.command("generate")
def schemas_generate() -> None:
    """Write `schemas/` from the payload models (run `ordersaga schemas check` after)."""
    from ordersaga.contracts import schemas

    written = schemas.generate()
    for path in written:
        typer.echo(f"wrote {path.relative_to(schemas.ROOT)}")
    typer.echo(f"{len(written)} file(s) written" if written else "schemas/ is up to date")


@schemas_app.command("check")
def schemas_check() -> None:
    """Fail when `schemas/` differs from the models, or a version's schema broke its consumers
    (here or in any commit of its history), or a new version lacks its upcaster or its test."""
    from ordersaga.contracts import schemas

    if not schemas.SCHEMAS_DIR.is_dir():
        raise typer.Exit(_fail(f"no {schemas.SCHEMAS_DIR}: run this in the repository"))
    report = schemas.check()
    for note in report.notes:
        typer.echo(f"note: {note}")
    if not report.ok:
        for problem in report.problems:
            typer.secho(f"error: {problem}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo("schemas/ matches the models; every change of a version is additive")


def main() -> None:
    from ordersaga.bus import BusMismatch
    from ordersaga.versions import UnsupportedServer

    try:
        app()
    except (UnsupportedServer, BusMismatch) as error:
        # What an operator must fix on a server: one line, no traceback, nothing changed.
        raise SystemExit(_fail(str(error))) from None
