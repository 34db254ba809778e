"""The operator's commands: ``models``, ``workers``, ``queue``, ``scale``, ``top``, ``restart``,
``reload``. They talk to Redis directly (``LLMSPOOL_REDIS_URL``), like the admin API.

Exit codes: 0 done; 1 refused (unknown model or worker, a value out of bounds); 2 bad usage or
configuration; 3 Redis unreachable; 4 no control loop runs or answered in time; 5 the worker
registry (``LLMSPOOL_REGISTRY_URL``, e.g. etcd) unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from redis.asyncio import Redis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from llmspool.control.modelsfile import load_models
from llmspool.shared import keys, operations
from llmspool.shared.backlog import QueueSummary, queue_stats
from llmspool.shared.config import Config
from llmspool.shared.errors import ConfigError, LLMSpoolError, NoControlLoop, RegistryUnavailable
from llmspool.shared.operations import ModelStatus
from llmspool.shared.redis import UNAVAILABLE, connect
from llmspool.shared.registry import Registry, RegistryEvent, WorkerInfo, open_registry
from llmspool.shared.settings import Settings

T = TypeVar("T")
EXIT_REFUSED, EXIT_USAGE, EXIT_REDIS, EXIT_TIMEOUT, EXIT_REGISTRY = 1, 2, 3, 4, 5

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

models_app = typer.Typer(help="List models; take one offline or online.", no_args_is_help=False)
workers_app = typer.Typer(help="List live workers; drain or stop one.", no_args_is_help=False)


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def run(op: Callable[[Redis, Config], Awaitable[T]]) -> T:
    """Run ``op`` against Redis and the models in force; errors become one line and a code."""
    return run_live(lambda redis, _, config: op(redis, config))


def run_live(op: Callable[[Redis, Registry, Config], Awaitable[T]]) -> T:
    """:func:`run` for an ``op`` that also reads the worker registry."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise fail(str(exc).replace("\n", " "), EXIT_USAGE) from None

    async def main() -> T:
        redis = connect(settings, max_connections=8)
        try:
            registry = open_registry(settings, redis)
            try:
                return await op(redis, registry, await _models_in_force(redis, settings))
            finally:
                with contextlib.suppress(Exception):  # an unreachable registry closes late
                    await registry.close()
        finally:
            await redis.aclose()

    try:
        return asyncio.run(main())
    except RegistryUnavailable as exc:
        raise fail(f"{exc.message} (is it running?)", EXIT_REGISTRY) from None
    except ConfigError as exc:
        raise fail(exc.message, EXIT_USAGE) from None
    except NoControlLoop as exc:
        raise fail(exc.message, EXIT_TIMEOUT) from None
    except LLMSpoolError as exc:
        raise fail(exc.message, EXIT_REFUSED) from None
    except UNAVAILABLE as exc:
        url = settings.resolved_redis_url()
        raise fail(f"cannot reach Redis at {url}: {exc}", EXIT_REDIS) from None


async def _models_in_force(redis: Redis, settings: Settings) -> Config:
    """The running control loop's models; the local models file only when none runs (a broken
    local file then is an error)."""
    try:
        local = load_models(settings.config)
    except ConfigError:
        published = await operations.published_config(redis)
        if published is None:
            raise
        return published
    return await operations.effective_config(redis, local)


def dump(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


# --------------------------------------------------------------------------- models


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List models with their live workers, desired count and queue depth."""
    if ctx.invoked_subcommand is not None:
        return
    status = run_live(operations.models_status)
    if as_json:
        dump([m.model_dump() for m in status])
    else:
        out.print(models_table(status))


@models_app.command("offline")
def models_offline(model: str) -> None:
    """Refuse new requests for MODEL with 503; queued and running ones are still served."""
    run_live(lambda r, reg, c: operations.set_offline(r, reg, c, model, True))
    out.print(f"{model}: offline (new requests get 503 model_offline; the queue drains)")


@models_app.command("online")
def models_online(model: str) -> None:
    """Take requests for MODEL again."""
    run_live(lambda r, reg, c: operations.set_offline(r, reg, c, model, False))
    out.print(f"{model}: online")


def models_table(status: list[ModelStatus], rates: dict[str, float | None] | None = None) -> Table:
    table = Table("model", "backend", "workers", "desired", "bounds", "mode", "backlog", "lag",
                  "pending", "oldest", "dead", title="models")  # fmt: skip
    if rates is not None:
        table.add_column("enqueued/s")
    for m in status:
        q = m.queue
        mode = f"pinned {m.pin}" if m.pin is not None else "auto"
        table.add_row(
            m.name,
            m.backend,
            str(len(m.workers)),
            "-" if m.desired is None else str(m.desired),
            f"{m.min_workers}..{m.max_workers}",
            mode + (", offline" if m.offline else ""),
            str(q.backlog),
            str(q.lag),
            str(q.pending),
            _age(q.oldest_age),
            str(q.dead),
            *([] if rates is None else [_rate(rates.get(m.name))]),
        )
    return table


# --------------------------------------------------------------------------- workers


@workers_app.callback(invoke_without_command=True)
def workers(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    as_json: JsonOpt = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Then print arrivals and departures until Ctrl-C.")
    ] = False,
) -> None:
    """List live workers (the registry) with their in-flight jobs."""
    if ctx.invoked_subcommand is not None:
        return
    if watch:
        with contextlib.suppress(KeyboardInterrupt):
            run_live(lambda _r, registry, _c: watch_workers(registry, model, as_json))
        return
    live = run_live(lambda _r, registry, _c: registry.live_workers(model))
    if as_json:
        dump([w.model_dump() for w in live])
    else:
        out.print(workers_table(live))


@workers_app.command("drain")
def workers_drain(worker: str) -> None:
    """Ask WORKER (its id, or a unique part of it) to finish its jobs and exit."""
    info = run_live(lambda r, reg, _: operations.drain_worker(r, reg, worker, "drain"))
    out.print(f"{info.id}: draining ({info.in_flight} in flight); it exits when they finish")


@workers_app.command("stop")
def workers_stop(worker: str) -> None:
    """Ask WORKER to exit now; its running jobs go back to the queue."""
    info = run_live(lambda r, reg, _: operations.drain_worker(r, reg, worker, "stop"))
    out.print(f"{info.id}: stopping; its {info.in_flight} running jobs are handed back")


async def watch_workers(registry: Registry, model: str | None, as_json: bool) -> None:
    """One line per worker that is registered, arrives or leaves (heartbeats are not shown);
    with ``as_json``, those events as JSON lines."""
    present: set[str] = set()
    async for event in registry.watch():
        if model is not None and (event.worker is None or event.worker.model != model):
            continue
        arrived = event.kind == "put"
        if arrived == (event.worker_id in present):
            continue  # a heartbeat of a worker already shown
        if arrived:
            present.add(event.worker_id)
        else:
            present.discard(event.worker_id)
        _print_event(event, as_json)


def _print_event(event: RegistryEvent, as_json: bool) -> None:
    if as_json:
        typer.echo(event.model_dump_json())
        return
    info = event.worker
    where = f" {info.model} on {info.host} pid {info.pid}" if info else ""
    out.print(f"{'+' if event.kind == 'put' else '-'} {event.worker_id}{where}")


def workers_table(live: list[WorkerInfo]) -> Table:
    table = Table("id", "model", "backend", "host", "pid", "in flight", "state", "up",
                  title="workers")  # fmt: skip
    now = time.time()
    for w in live:
        table.add_row(w.id, w.model, w.backend, w.host, str(w.pid),
                      f"{w.in_flight}/{w.capacity}", w.state, _age(now - w.started))  # fmt: skip
    return table


# --------------------------------------------------------------------------- single commands


def queue(model: str, as_json: JsonOpt = False) -> None:
    """Depth of MODEL's queues: lag, pending, oldest age and dead jobs (as XINFO shows them)."""

    async def read(redis: Redis, config: Config) -> QueueSummary:
        name = config.model(model).name
        return (await queue_stats(redis, name)).summary()

    summary = run(read)
    if as_json:
        dump(summary.model_dump())
        return
    table = Table("stream", "length", "lag", "pending", "consumers", title=f"queue of {model}")
    for s in summary.streams:
        table.add_row(s.stream, *(str(n) for n in (s.length, s.lag, s.pending, s.consumers)))
    out.print(table)
    out.print(f"backlog {summary.backlog}  oldest {_age(summary.oldest_age)}  dead {summary.dead}")


def scale(
    model: str,
    workers: Annotated[int | None, typer.Argument(help="Workers to pin.")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="Back to autoscaling.")] = False,
) -> None:
    """Pin MODEL to N workers, or hand it back to the autoscaler with --auto."""
    if (workers is None) == (not auto):
        raise fail("give a worker count or --auto", EXIT_USAGE)
    status = run_live(
        lambda r, reg, c: operations.scale(r, reg, c, model, None if auto else workers)
    )
    out.print(f"{status.name}: " + ("autoscaled" if auto else f"pinned to {workers} workers"))


def restart(model: str) -> None:
    """Rolling restart of MODEL's workers: new ones come up before old ones drain."""
    number = run(lambda r, c: operations.restart(r, c, model))
    out.print(f"{model}: rolling restart requested (#{number})")


def reload(
    wait: Annotated[float, typer.Option(help="Seconds to wait for the control loop.")] = 15.0,
) -> None:
    """Apply the edited models file (add, remove, change models) without stopping anything."""
    status = run(lambda r, _: operations.reload(r, wait))
    if status.applied < status.requested:
        raise fail("no control loop applied the reload (is `llmspool serve` running?)", 4)
    if status.result.startswith("error"):
        raise fail(f"reload refused: {status.result.removeprefix('error: ')}", EXIT_REFUSED)
    out.print(f"reloaded: {status.result.removeprefix('ok: ')}")


def top(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
) -> None:
    """A live view of models, queues, workers and throughput."""
    meter = Throughput()
    if once:  # an unreachable registry is an error (exit 5), not a banner
        out.print(run_live(lambda r, reg, c: frame(r, reg, c, meter)))
        return
    with contextlib.suppress(KeyboardInterrupt), Live(console=out, auto_refresh=False) as live:
        while True:
            shown = run_live(lambda r, reg, c: frame(r, reg, c, meter, banner=True))
            live.update(shown, refresh=True)
            time.sleep(interval)


class Throughput:
    """Jobs enqueued per second per model, from the streams' ``entries-added`` between frames."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[float, int]] = {}

    def rate(self, model: str, added: int) -> float | None:
        now = time.monotonic()
        before = self.last.get(model)
        self.last[model] = (now, added)
        if before is None or now <= before[0]:
            return None
        return max(0, added - before[1]) / (now - before[0])


async def frame(
    redis: Redis, registry: Registry, config: Config, meter: Throughput, banner: bool = False
) -> Group:
    """One screen of ``top``: the models table (with rates) over the workers table; with
    ``banner``, an unreachable registry shows as a line saying so (the next frame tries again)."""
    try:
        status = await operations.models_status(redis, registry, config)
    except RegistryUnavailable as exc:
        if not banner:
            raise
        return Group(Text(f"registry down: {exc.message}; retrying", style="bold red"))
    rates = {m.name: meter.rate(m.name, await _entries_added(redis, m.name)) for m in status}
    live = [w for m in status for w in m.workers]
    return Group(models_table(status, rates), workers_table(live))


async def _entries_added(redis: Redis, model: str) -> int:
    """Entries ever added to the model's streams (XINFO STREAM), trimming notwithstanding."""
    total = 0
    for stream in keys.model_streams(model):
        if await redis.exists(stream):
            info: dict[str, Any] = await redis.xinfo_stream(stream)  # redis-py's reply type
            total += int(info.get("entries-added") or info.get("length") or 0)
    return total


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.0f}h"


def register(app: typer.Typer) -> None:
    """Add the operator's commands to the ``llmspool`` command line."""
    app.add_typer(models_app, name="models")
    app.add_typer(workers_app, name="workers")
    for command in (queue, scale, top, restart, reload):
        app.command()(command)
