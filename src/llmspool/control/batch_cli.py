"""``llmspool batch …``: submit, watch, list, download and cancel batches through the API.

Talks HTTP to a running API (``--api``, default http://LLMSPOOL_HOST:LLMSPOOL_PORT), exactly
as the openai client does, so it works against any llmspool deployment.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmspool.shared.settings import Settings

batch_app = typer.Typer(
    help="Batch jobs (the OpenAI Batch API): submit, status, list, download, cancel.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

FINAL = {"completed", "failed", "expired", "cancelled"}

ApiOption = Annotated[
    str | None,
    typer.Option("--api", envvar="LLMSPOOL_API_URL", help="The API's base URL."),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="LLMSPOOL_API_KEY", help="Bearer key, if the API needs one."),
]


def _client(api: str | None, api_key: str | None) -> httpx.Client:
    if api is None:
        settings = Settings()
        api = f"http://{settings.host}:{settings.port}"
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=api.rstrip("/"), headers=headers, timeout=60)


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] cannot reach the API at {client.base_url}: {exc}")
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        err.print(f"[red]error {response.status_code}:[/red] {message}", highlight=False)
        raise typer.Exit(1)
    return response


# --------------------------------------------------------------------------- submit


def prepare_lines(content: bytes, endpoint: str, model: str | None) -> bytes:
    """The input file as the API wants it: a line that is only a request body is wrapped in
    ``{custom_id, method, url, body}``, and ``--model`` fills in bodies that name no model.
    Lines that are not JSON are passed through (they fail on their own)."""
    lines = []
    for number, raw in enumerate(content.splitlines(), start=1):
        if raw.strip():
            lines.append(_prepare_line(raw, number, endpoint, model))
    return b"\n".join(lines) + b"\n"


def _prepare_line(raw: bytes, number: int, endpoint: str, model: str | None) -> bytes:
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(item, dict):
        return raw
    if "body" not in item:
        item = {"custom_id": f"line-{number}", "method": "POST", "url": endpoint, "body": item}
    body = item.get("body")
    if model is not None and isinstance(body, dict):
        body.setdefault("model", model)
    return orjson.dumps(item)


def _endpoint_of(content: bytes, default: str) -> str:
    for raw in content.splitlines():
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            return str(item["url"])
    return default


@batch_app.command()
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL input.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model for lines without one.")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Default: the lines' url, else chat.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it to the end.")] = False,
    api: ApiOption = None,
    api_key: KeyOption = None,
) -> None:
    """Upload FILE and start a batch on it; with --wait, show its progress until it ends."""
    content = file.read_bytes()
    endpoint = endpoint or _endpoint_of(content, "/v1/chat/completions")
    with _client(api, api_key) as client:
        files = {"file": (file.name, prepare_lines(content, endpoint, model))}
        uploaded = _call(client, "POST", "/v1/files", files=files, data={"purpose": "batch"})
        body = {
            "input_file_id": uploaded.json()["id"],
            "endpoint": endpoint,
            "completion_window": "24h",
        }
        batch = _call(client, "POST", "/v1/batches", json=body).json()
        out.print(batch["id"])
        if wait:
            batch = _follow(client, batch["id"])
            _print_batch(batch)
            raise typer.Exit(0 if batch["status"] == "completed" else 1)


#: A batch object as the API returns it (JSON; see llmspool.batch.models.Batch).
BatchJSON = dict[str, Any]


def _follow(client: httpx.Client, batch_id: str) -> BatchJSON:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("validating", total=None, failed=0)
        while True:
            batch = _call(client, "GET", f"/v1/batches/{batch_id}").json()
            counts = batch["request_counts"]
            progress.update(
                task,
                description=batch["status"],
                total=counts["total"] or None,
                completed=counts["completed"] + counts["failed"],
                failed=counts["failed"],
            )
            if batch["status"] in FINAL:
                return dict(batch)
            time.sleep(0.5)


# --------------------------------------------------------------------------- the others


@batch_app.command()
def status(batch_id: str, api: ApiOption = None, api_key: KeyOption = None) -> None:
    """Show one batch: status, request counts, files, times."""
    with _client(api, api_key) as client:
        _print_batch(_call(client, "GET", f"/v1/batches/{batch_id}").json())


def _print_batch(batch: BatchJSON) -> None:
    table = Table(show_header=False, box=None)
    counts = batch.get("request_counts") or {}
    rows = {
        "id": batch["id"],
        "status": batch["status"],
        "endpoint": batch["endpoint"],
        "model": batch.get("model"),
        "requests": f"{counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed "
        f"of {counts.get('total', 0)}",
        "output_file_id": batch.get("output_file_id"),
        "error_file_id": batch.get("error_file_id"),
        "created_at": _when(batch.get("created_at")),
        "expires_at": _when(batch.get("expires_at")),
    }
    for name in ("completed_at", "failed_at", "expired_at", "cancelled_at"):
        if batch.get(name):
            rows[name] = _when(batch[name])
    for error in (batch.get("errors") or {}).get("data") or []:
        rows[f"error {error.get('code')}"] = error.get("message")
    for name, value in rows.items():
        table.add_row(name, "" if value is None else str(value))
    out.print(table)


def _when(stamp: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


@batch_app.command("list")
def list_batches(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    api: ApiOption = None,
    api_key: KeyOption = None,
) -> None:
    """List batches, newest first."""
    with _client(api, api_key) as client:
        page = _call(client, "GET", "/v1/batches", params={"limit": limit}).json()
    table = Table()
    table.add_column("id", no_wrap=True, min_width=38)
    for name in ("status", "model", "done", "failed", "total", "created"):
        table.add_column(name)
    for batch in page["data"]:
        counts = batch["request_counts"]
        table.add_row(
            batch["id"],
            batch["status"],
            batch.get("model") or "",
            str(counts["completed"]),
            str(counts["failed"]),
            str(counts["total"]),
            _when(batch["created_at"]),
        )
    out.print(table)


@batch_app.command()
def download(
    batch_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSONL.")],
    errors: Annotated[bool, typer.Option("--errors", help="The error file instead.")] = False,
    api: ApiOption = None,
    api_key: KeyOption = None,
) -> None:
    """Write a finished batch's output file (or, with --errors, its error file) to OUTPUT."""
    with _client(api, api_key) as client:
        batch = _call(client, "GET", f"/v1/batches/{batch_id}").json()
        file_id = batch.get("error_file_id" if errors else "output_file_id")
        if not file_id:
            which = "error" if errors else "output"
            err.print(f"batch {batch_id} ({batch['status']}) has no {which} file")
            raise typer.Exit(1)
        content = _call(client, "GET", f"/v1/files/{file_id}/content").content
    output.write_bytes(content)
    lines = content.count(b"\n")
    err.print(f"wrote {lines} lines to {output}")


@batch_app.command()
def cancel(batch_id: str, api: ApiOption = None, api_key: KeyOption = None) -> None:
    """Cancel a batch: no more lines start; finished ones are kept in its output."""
    with _client(api, api_key) as client:
        batch = _call(client, "POST", f"/v1/batches/{batch_id}/cancel").json()
    out.print(f"{batch['id']} {batch['status']}")
