"""``llmspool keys``: create, list and revoke API keys (stored hashed in Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from llmspool.shared import credentials
from llmspool.shared.credentials import ApiKey
from llmspool.shared.redis import connect
from llmspool.shared.settings import Settings

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
out = Console()
T = TypeVar("T")

Limit = Annotated[int, typer.Option(min=0, help="0: unlimited.")]


def _run(action: Callable[[Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        redis = connect(Settings())
        try:
            return await action(redis)
        finally:
            await redis.aclose()

    return asyncio.run(main())


@app.command()
def create(
    name: Annotated[str, typer.Option(help="A label, for `keys list`.")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="Allow /admin routes.")] = False,
    rpm: Limit = 0,
    tpm: Limit = 0,
    concurrency: Limit = 0,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Allowed model (repeat); none: all.")
    ] = None,
    weight: Annotated[
        float, typer.Option(min=0.01, help="Share of a model's turns against other keys.")
    ] = 1.0,
) -> None:
    """Create a key and print it: it is shown only this once."""
    secret, record = _run(
        lambda redis: credentials.create(
            redis,
            name=name,
            scope="admin" if admin else "user",
            rpm=rpm,
            tpm=tpm,
            concurrency=concurrency,
            models=tuple(model or ()),
            weight=weight,
        )
    )
    typer.echo(secret)
    Console(stderr=True).print(f"created key {record.id} ({record.scope})", highlight=False)


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List live keys (ids and limits, never the keys)."""
    records = _run(credentials.list_keys)
    if as_json:
        for record in records:
            typer.echo(record.model_dump_json())
        return
    table = Table("id", "name", "scope", "rpm", "tpm", "concurrency", "weight", "models", "created")
    table.columns[0].no_wrap = True
    for record in records:
        table.add_row(*_row(record))
    out.print(table)


@app.command()
def revoke(key_id: Annotated[str, typer.Argument(help="The id `keys list` shows.")]) -> None:
    """Revoke a key at once, on every API process."""
    if not _run(lambda redis: credentials.revoke(redis, key_id)):
        Console(stderr=True).print(f"[red]error:[/red] no key with id {key_id}")
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


def _row(record: ApiKey) -> list[str]:
    created = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M")
    limits = [str(v or "-") for v in (record.rpm, record.tpm, record.concurrency)]
    models = ",".join(record.models) or "*"
    return [record.id, record.name, record.scope, *limits, f"{record.weight:g}", models, created]
