"""Process settings, read from the environment with the prefix ``LLMSPOOL_``.

One :class:`Settings` object per process; a bad value fails loudly at start. The table in
docs/configuration.md is generated from this class (``llmspool settings --markdown``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings shared by the API, the workers and the command line."""

    model_config = SettingsConfigDict(env_prefix="LLMSPOOL_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="Redis to use. Unset: `llmspool serve` starts its own redis-server "
        "(append-only) on 127.0.0.1:6379; other commands connect there.",
    )
    redis_cluster: bool = Field(
        default=False,
        description="LLMSPOOL_REDIS_URL names a node of a Redis Cluster: reply and cancel "
        "channels then use sharded pub/sub (SSUBSCRIBE/SPUBLISH).",
    )
    registry_url: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9+.-]*://",
        description="Where workers register (the model registry). Unset: hashes in the queue's "
        "Redis. `etcd://[user:password@]host:2379/prefix`: an existing etcd (v3 API), keys under "
        "`/prefix` (default `/llmspool`); see docs/control-plane.md.",
    )
    registry_ttl: float = Field(
        default=10.0,
        ge=2,
        description="Seconds a worker stays registered without a heartbeat (its etcd lease's "
        "TTL); a worker beats every fifth of it.",
    )
    embedded_redis_port: int = Field(
        default=6379,
        ge=1,
        le=65535,
        description="Port of the redis-server that `llmspool serve` starts when no URL is set.",
    )
    config: Path | None = Field(
        default=None,
        description="Models file (TOML). Unset: ./llmspool.toml if present, "
        "else the embedded default (gemma-3-270m on llama.cpp).",
    )
    host: str = Field(default="127.0.0.1", description="Address the API binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the API listens on.")
    request_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Default deadline of a request, in seconds, from "
        "enqueue to its last token; a model's `timeout` overrides it.",
    )
    queue_limit: int = Field(
        default=1000,
        ge=1,
        description="Jobs waiting per model before the API answers 429; "
        "a model's `queue_limit` overrides it.",
    )
    data_dir: Path = Field(
        default=Path.home() / ".local" / "share" / "llmspool",
        description="Where `llmspool serve` keeps the embedded Redis' append-only file.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "llmspool",
        description="Where packaged model files are assembled, once.",
    )
    coalesce_ms: float = Field(
        default=3.0,
        ge=0,
        description="Tokens of one request arriving within this window "
        "leave in one reply frame (the first token never waits).",
    )
    block_ms: int = Field(
        default=1000, ge=1, description="How long a worker's XREADGROUP blocks for new jobs."
    )
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long a worker may finish running jobs "
        "(an API its open streams) before handing back the rest.",
    )
    lease: float = Field(
        default=30.0,
        gt=0,
        description="A job its worker has not touched for this long is taken over by another "
        "worker (XAUTOCLAIM); a worker touches its running jobs every lease/4 (at most 1 s).",
    )
    redis_timeout: float = Field(
        default=5.0,
        gt=0,
        description="How long one Redis command may take before it fails (a stalled Redis "
        "gives bounded errors instead of hanging requests).",
    )
    reply_poll: float = Field(
        default=1.0,
        gt=0,
        description="A request with no reply frame for this long reads its reply log, so "
        "frames that pub/sub lost (a Redis restart) still arrive.",
    )
    cancel_grace: float = Field(
        default=2.0,
        ge=0,
        description="When a client goes away, its job is cancelled after this many seconds "
        "unless it resumed meanwhile (GET /v1/requests/{id}/events, or a repeat with its "
        "Idempotency-Key).",
    )
    replylog_ttl: int = Field(
        default=300,
        ge=1,
        description="Seconds a finished reply's frames stay in its reply log "
        "(resumable streams, idempotent repeats).",
    )
    idempotency_ttl: int = Field(
        default=86400,
        ge=1,
        description="Seconds an Idempotency-Key is remembered.",
    )
    responses_ttl: int = Field(
        default=86400,
        ge=1,
        description="Seconds a stored response of /v1/responses is kept (previous_response_id, "
        "GET /v1/responses/{id}).",
    )
    batch_max_lines: int = Field(
        default=50_000,
        ge=1,
        description="Most requests one batch input file may hold (OpenAI's limit).",
    )
    batch_max_file_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1,
        description="Largest batch input file accepted, in bytes (OpenAI's limit: 200 MB).",
    )
    batch_max_embedding_inputs: int = Field(
        default=50_000,
        ge=1,
        description="Most embedding inputs across all requests of one /v1/embeddings batch.",
    )
    batch_window: float = Field(
        default=86_400.0,
        gt=0,
        description="Seconds the `24h` completion window lasts (shorten it only to test expiry).",
    )
    batch_reserve: int = Field(
        default=1,
        ge=0,
        description="Slots of each worker kept free of batch lines for interactive requests "
        "(at most its capacity minus one, so a one-slot worker still serves batches).",
    )
    batch_cancel_grace: float = Field(
        default=60.0,
        ge=0,
        description="How long a cancelling batch waits for its running lines before it is "
        "finalized without them.",
    )
    batch_retention: float = Field(
        default=30 * 86_400.0,
        gt=0,
        description="Seconds batch files (uploaded and generated) and finished batches are kept.",
    )
    batch_sweep_seconds: int = Field(
        default=5,
        ge=1,
        le=30,
        description="How often the batch worker's sweep checks active batches (expiry, stalls).",
    )
    auth: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="API keys: `on` requires a Bearer key on every route but /health; `off` "
        "serves anyone; `auto` is off when the API binds to a loopback address, on otherwise.",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest request body the API reads (413); a batch file upload (POST "
        "/v1/files) is bounded by `LLMSPOOL_BATCH_MAX_FILE_BYTES` instead.",
    )
    max_messages: int = Field(
        default=1024, ge=1, description="Most messages one chat request may carry (400)."
    )
    max_prompt_chars: int = Field(
        default=500_000,
        ge=1,
        description="Most characters of prompt, messages or embedding input in one request (400).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of every process."
    )

    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`json`: one JSON object per log line (with the request id), for collectors.",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of a worker's own Prometheus /metrics (engine side); unset: none; "
        "0: any free port (recorded in the worker's registry entry).",
    )
    request_log_max: int = Field(
        default=10_000, ge=1, description="Records the request-log stream keeps (MAXLEN ~)."
    )
    request_log_prompts: bool = Field(
        default=True, description="Keep prompts (messages, prompt, input) in the request log."
    )
    request_log_outputs: bool = Field(
        default=True, description="Keep generated text in the request log."
    )
    request_log_max_chars: int = Field(
        default=16_000, ge=0, description="Longer prompts and outputs are cut in the request log."
    )
    request_log_file: Path | None = Field(
        default=None, description="Also append each request-log record to this JSONL file."
    )
    feedback_ttl: float = Field(
        default=30 * 86400.0, gt=0, description="Seconds feedback on a request is kept."
    )

    def auth_enabled(self) -> bool:
        """Whether API keys are required: `auto` means off on loopback only."""
        if self.auth != "auto":
            return self.auth == "on"
        return self.host not in ("127.0.0.1", "::1", "localhost")

    def resolved_redis_url(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.embedded_redis_port}/0"
