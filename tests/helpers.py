"""Starting real things for tests: redis-server, the API and workers as processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from llmspool.shared import keys
from llmspool.shared.redis import connect
from llmspool.shared.registry import WorkerInfo, open_registry
from llmspool.shared.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


async def async_wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Await ``predicate()`` until it is true, for at most ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:  # a condition in another process: polled, as wait_until does
                if await predicate():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}") from None


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()
    #: the user the tests and the command line connect as (None: the default user)
    username: str | None = None
    password: str | None = None
    #: a CA certificate: the server listens with TLS only, on ``port``
    tls_ca: Path | None = None

    @property
    def url(self) -> str:
        return self.url_for(self.username, self.password)

    def url_for(self, username: str | None, password: str | None) -> str:
        """A URL as another user would write it: rediss:// with the CA when TLS is on."""
        auth = f"{username or ''}:{password}@" if password else ""
        if self.tls_ca is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls_ca}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make test`, which installs it")
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = ["--port", str(self.port)]
        if self.tls_ca is not None:
            ports = ["--port", "0", "--tls-port", str(self.port)]
        args = [
            binary,
            *ports,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--loglevel",
            "warning",
            *self.extra,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        client = self.client()
        wait_until(lambda: _pings(client), 10, what="redis-server")
        if self.process.poll() is not None:  # another server answered on this port
            raise RuntimeError(f"redis-server on port {self.port} exited at start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def cli(self, *args: str) -> str:
        """Run redis-cli against this server, as an operator would."""
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *self.cli_auth(), *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout

    def cli_auth(self) -> list[str]:
        args = ["--user", self.username] if self.username else []
        if self.password:
            args += ["--pass", self.password, "--no-auth-warning"]
        if self.tls_ca is not None:
            args += ["--tls", "--cacert", str(self.tls_ca)]
        return args


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


@dataclass
class RedisClusterServers:
    """A real Redis Cluster of three masters on local ports (`redis-cli --cluster create`)."""

    directory: Path
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for i in range(3):
            node_dir = self.directory / f"node{i}"
            extra = ("--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "n.conf"))
            extra += ("--cluster-port", str(free_port()))  # port + 10000 may not exist
            self.nodes.append(RedisServer(free_port(), node_dir, extra=extra))
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = ["--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(
            ["redis-cli", *create],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self._ok, 30, interval=0.2, what="cluster_state:ok on every node")

    def _ok(self) -> bool:
        return all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, decode_responses=True)

    def cli(self, *args: str) -> str:
        """redis-cli in cluster mode (-c follows redirections)."""
        out = subprocess.run(
            ["redis-cli", "-c", "-p", str(self.nodes[0].port), *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout


async def read_registry(settings: Settings) -> list[WorkerInfo]:
    """Every live worker in the registry ``settings`` name."""
    redis = connect(settings, max_connections=4)
    registry = open_registry(settings, redis)
    try:
        return await registry.live_workers()
    finally:
        await registry.close()
        await redis.aclose()


@dataclass
class EtcdServer:
    """A real single-member etcd (Debian's etcd-server) on free local ports."""

    directory: Path
    port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    prefix: str = "/llmspool-test"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The LLMSPOOL_REGISTRY_URL of this server and prefix."""
        return f"etcd://127.0.0.1:{self.port}{self.prefix}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wipe: bool = False) -> None:
        """Start (again: with the data it had, unless ``wipe``: an etcd that lost everything)."""
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not installed: run `make test`, which installs it")
        if wipe:
            shutil.rmtree(self.directory / "data", ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [binary, "--name", "test", "--data-dir", str(self.directory / "data"),
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"test={peer}", "--logger", "zap", "--log-level", "warn",
                ]  # fmt: skip
        log = open(self.directory / "etcd.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._healthy, 30, interval=0.1, what=f"etcd (see {self.directory}/etcd.log)")

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"etcd exited: see {self.directory}/etcd.log")
        try:
            reply = httpx.get(f"{self.client_url}/health", timeout=1)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and reply.json().get("health") == "true"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)

    def ctl(self, *args: str) -> str:
        """Run etcdctl against this server, as an operator would."""
        out = subprocess.run(
            ["etcdctl", "--endpoints", self.client_url, *args],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return out.stdout


@dataclass
class Stack:
    """The real API and worker processes on one models file."""

    redis: RedisServer | RedisClusterServers
    config: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSPOOL_")}
        env.update(
            LLMSPOOL_REDIS_URL=self.redis.url,
            LLMSPOOL_CONFIG=str(self.config),
            LLMSPOOL_PORT=str(self.port),
            LLMSPOOL_DRAIN_TIMEOUT="5",
        )
        env.update(self.extra_env)
        return env

    def spawn(self, *args: str, log: str, **env: str) -> subprocess.Popen[bytes]:
        out = open(self.workdir / log, "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", "llmspool", *args],
            env={**self.env(), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        self.processes.append(process)
        return process

    def llmspool(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run an ``llmspool`` command (the operator's CLI) against this stack."""
        return subprocess.run(
            [sys.executable, "-m", "llmspool", *args],
            env={**self.env(), **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=self.workdir,
        )

    def start_serve(self) -> subprocess.Popen[bytes]:
        """``llmspool serve`` on this stack's Redis: the API, the control loop and workers."""
        process = self.spawn("serve", log="serve.log")
        wait_until(self._healthy, 60, what=f"serve (see {self.workdir}/serve.log)")
        return process

    def cli(self, *args: str) -> str:
        """Run the ``llmspool`` command line against this stack's Redis; returns stdout."""
        out = subprocess.run(
            [sys.executable, "-m", "llmspool", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            cwd=self.workdir,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"llmspool {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def start_api(self, **env: str) -> subprocess.Popen[bytes]:
        process = self.spawn("api", log="api.log", **env)
        wait_until(self._healthy, 60, what=f"API on {self.base_url} (see {self.workdir}/api.log)")
        return process

    def start_worker(self, model: str, wait: bool = True, **env: str) -> subprocess.Popen[bytes]:
        process = self.spawn(
            "worker", "--model", model, log=f"worker-{model.replace('/', '_')}.log", **env
        )
        if wait:  # until this process is in the registry (a dead worker's entry may linger)
            wait_until(
                lambda: self.registered(process.pid) or process.poll() is not None,
                60,
                what=f"worker of {model}",
            )
            if process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log(f'worker-{model}.log')}")
        return process

    def start_batch_worker(self, wait: bool = False, **env: str) -> subprocess.Popen[bytes]:
        """The arq worker running the batch lifecycle (jobs wait in Redis until it runs);
        ``wait``: until it has joined its queue (arq's health-check key)."""
        client = self.redis.client()
        client.delete(keys.BATCH_JOBS_HEALTH_CHECK)
        process = self.spawn("batch-worker", log="batch-worker.log", **env)
        if wait:
            wait_until(
                lambda: client.exists(keys.BATCH_JOBS_HEALTH_CHECK) or process.poll() is not None,
                60,
                what="the batch worker",
            )
        return process

    def live_workers(self) -> list[WorkerInfo]:
        """The live workers, read through llmspool's registry interface from whichever registry
        this stack's settings name (Redis hashes, or etcd with LLMSPOOL_REGISTRY_URL)."""
        env = self.env()
        settings = Settings(**{
            name: env[f"LLMSPOOL_{name.upper()}"]
            for name in ("redis_url", "redis_cluster", "registry_url", "registry_ttl")
            if f"LLMSPOOL_{name.upper()}" in env
        })  # fmt: skip
        with ThreadPoolExecutor(1) as pool:  # a test may run inside an event loop itself
            return pool.submit(asyncio.run, read_registry(settings)).result()

    def consumers(self, model: str) -> int:
        """Live workers of ``model`` in the registry."""
        return sum(1 for w in self.live_workers() if w.model == model)

    def registered(self, pid: int) -> bool:
        """Whether the worker process ``pid`` is in the registry (it serves)."""
        return any(w.pid == pid for w in self.live_workers())

    def engine_tokens(self, model: str) -> int:
        """Tokens the engines of ``model``'s live workers generated (their registry entries)."""
        return sum(w.engine_tokens for w in self.live_workers() if w.model == model)

    def heartbeats(self, model: str, count: int = 2) -> None:
        """Wait for ``count`` heartbeats of each of ``model``'s live workers from now: their
        registry entries (``engine_tokens``) then tell what the engines did until now and
        for a heartbeat after."""

        def oldest_beat() -> float:
            beats = [w.last_beat for w in self.live_workers() if w.model == model]
            return min(beats, default=0.0)

        since = time.time()
        for _ in range(count):
            wait_until(lambda after=since: oldest_beat() > after, 30, what=f"a beat of {model}")
            since = oldest_beat()

    def pending(self, model: str) -> int:
        """Jobs of ``model`` delivered to a worker and not yet acknowledged."""
        summary = self.redis.client().xpending(keys.requests_stream(model), keys.GROUP)
        return int(summary["pending"])

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


# ------------------------------------------------------------------ a real browser

#: Flags for a headless Chromium that never reaches the network by itself.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_executable() -> str | None:
    """Debian's chromium (installed by scripts/ensure-chromium.sh), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Samples(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    """Prometheus samples by (name, labels); look one up with ``samples[name, {labels}]``."""

    def __getitem__(self, key: tuple[str, dict[str, str]]) -> float:  # type: ignore[override]
        name, labels = key
        return super().__getitem__((name, frozenset(labels.items())))

    def get(self, key: tuple[str, dict[str, str]], default: float | None = None) -> float | None:  # type: ignore[override]
        name, labels = key
        return super().get((name, frozenset(labels.items())), default)


def scrape(url: str) -> Samples:
    """Every sample of a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=10).text
    samples = Samples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            dict.__setitem__(samples, (sample.name, frozenset(sample.labels.items())), sample.value)
    return samples


@dataclass
class Event:
    """One server-sent event."""

    id: str | None
    data: str

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.data)  # type: ignore[no-any-return]

    @property
    def text(self) -> str:
        """The content of a chat chunk ('' for others)."""
        if self.data == "[DONE]" or not self.data.startswith("{"):
            return ""
        choices = self.json().get("choices") or [{}]
        return choices[0].get("delta", {}).get("content") or choices[0].get("text") or ""

    @property
    def error(self) -> dict | None:  # type: ignore[type-arg]
        if not self.data.startswith("{"):
            return None
        return self.json().get("error")  # type: ignore[no-any-return]


def events(response: httpx.Response) -> Iterator[Event]:
    """The events of an SSE response, as they arrive."""
    event_id, data = None, []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield Event(event_id, "\n".join(data))
            event_id, data = None, []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield Event(event_id, "\n".join(data))


def fake_text(prompt: str, tokens: int, seed: int | None = None) -> str:
    """What the fake engine answers to a one-message chat ``prompt`` in ``tokens`` tokens."""
    from llmspool.consumers.backends.fake import token_stream

    words = token_stream(prompt, seed)
    return "".join(next(words) for _ in range(tokens))


def chat(model: str, prompt: str, tokens: int, **extra: object) -> dict[str, object]:
    """A chat request body."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        **extra,
    }
