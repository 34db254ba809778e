"""The processes a benchmark runs against, and their CPU time.

Redis and the llmspool API and workers are started with the test suite's own helpers
(:mod:`tests.helpers`); the baseline server, LiteLLM and llama-cpp-python's server are started
here, each as a subprocess on a free port, polled until it answers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.helpers import RedisServer, Stack, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = ROOT / "bench" / ".venvs" / "litellm"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (from /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (LiteLLM forks workers)."""
    total = cpu_seconds(pid)
    for child in _children(pid):
        total += tree_cpu_seconds(child)
    return total


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def _healthy(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, timeout=2, headers=headers).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Server:
    """A subprocess serving HTTP on ``port``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def start_server(
    name: str, args: list[str], workdir: Path, health: str, env: dict[str, str] | None = None
) -> Server:
    """Start ``args`` (with ``{port}`` filled in) and wait until ``health`` answers 200."""
    port = free_port()
    log = workdir / f"{name}.log"
    process = subprocess.Popen(
        [a.replace("{port}", str(port)) for a in args],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=workdir,
        start_new_session=True,  # its own group: LiteLLM's children stop with it
    )
    server = Server(name, port, process, log)
    headers = {"Authorization": "Bearer sk-bench"}
    try:
        wait_until(
            lambda: process.poll() is not None or _healthy(server.base_url + health, headers),
            180,
            what=f"{name} (see {log})",
        )
    except TimeoutError:
        server.stop()
        raise
    if process.poll() is not None:
        raise RuntimeError(f"{name} exited: {log.read_text(errors='replace')[-2000:]}")
    return server


def start_direct(workdir: Path, ttft_ms: float, itl_ms: float) -> Server:
    args = [sys.executable, "-m", "bench.direct", "--port", "{port}"]
    args += ["--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms)]
    return start_server("direct", args, workdir, "/health", env={"PYTHONPATH": _pythonpath()})


def litellm_available() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").exists()


def start_litellm(workdir: Path, upstream: Server) -> Server:
    """LiteLLM's proxy (its own venv) in front of ``upstream``, offline."""
    args = [str(LITELLM_VENV / "bin" / "litellm"), "--model", "openai/fake"]
    args += ["--api_base", f"{upstream.base_url}/v1", "--port", "{port}", "--host", "127.0.0.1"]
    env = {
        "LITELLM_MASTER_KEY": "sk-bench",
        "OPENAI_API_KEY": "dummy",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
    }
    return start_server("litellm", args, workdir, "/health/liveliness", env=env)


def start_llama_server(workdir: Path, model_path: Path, threads: int) -> Server:
    """llama-cpp-python's own OpenAI server on ``model_path``."""
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path)]
    args += ["--model_alias", "gemma", "--n_threads", str(threads), "--n_ctx", "2048"]
    args += ["--port", "{port}", "--host", "127.0.0.1", "--verbose", "False"]
    return start_server("llama-server", args, workdir, "/v1/models")


def source_at(commit: str, dest: Path) -> Path:
    """Export ``src/`` as it was at ``commit`` into ``dest``; returns the new src directory."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", commit, "src"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def commit_before(subject: str) -> str | None:
    """The parent of the newest commit whose subject starts with ``subject``, if any."""
    out = subprocess.run(
        ["git", "log", "--format=%H %s", "-200"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        commit, _, title = line.partition(" ")
        if title.startswith(subject):
            return f"{commit}^"
    return None


def _pythonpath() -> str:
    parts = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


@dataclass
class Llmspool:
    """Redis, ``apis`` llmspool API processes and ``workers`` workers of one model."""

    workdir: Path
    config: str
    model: str
    workers: int = 1
    apis: int = 1
    env: dict[str, str] = field(default_factory=dict)
    redis: RedisServer | None = None
    stacks: list[Stack] = field(default_factory=list)
    named: dict[str, int] = field(default_factory=dict)

    def start(self) -> Llmspool:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (make redis)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(free_port(), self.workdir / "redis")
        self.redis.start()
        if self.redis.process is not None:
            self.named["redis"] = self.redis.process.pid
        path = self.workdir / "llmspool.toml"
        path.write_text(self.config)
        env = {"PYTHONPATH": _pythonpath(), **self.env}
        for i in range(max(self.apis, 1)):
            stack = Stack(self.redis, path, self.workdir, extra_env=env)
            self.stacks.append(stack)
            self.named[_nth("api", i)] = stack.start_api().pid
        for i in range(self.workers):
            self.named[_nth("worker", i)] = self.stacks[0].start_worker(self.model).pid
        return self

    @property
    def base_url(self) -> str:
        return self.base_urls[0]

    @property
    def base_urls(self) -> list[str]:
        if not self.stacks:
            raise RuntimeError("not started")
        return [stack.base_url for stack in self.stacks]

    def pids(self) -> dict[str, int]:
        """Component name -> pid: api, worker (api2, worker2, ... when there are more), redis."""
        return dict(self.named)

    def publishes(self) -> int:
        """PUBLISH commands Redis has run since start."""
        if self.redis is None:
            return 0
        stats = self.redis.client().info("commandstats")
        return int(stats.get("cmdstat_publish", {}).get("calls", 0))

    def stop(self) -> None:
        for stack in self.stacks:
            stack.stop()
        if self.redis is not None:
            self.redis.stop()


def _nth(name: str, i: int) -> str:
    return name if i == 0 else f"{name}{i + 1}"
