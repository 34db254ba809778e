"""Fixtures that start real things: a redis-server on a free port, the API and workers."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests.engines import SPECS, LlamaServer, packaged_gemma, quiet_env
from tests.helpers import EtcdServer, RedisServer, Stack, free_port

FAKE_CONFIG = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = 8
capabilities = ["chat", "completion", "embedding"]
[models.options]
ttft_ms = 5
itl_ms = 2
"""


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def start_etcd(directory: Path) -> EtcdServer:
    """A real etcd on free ports; skips (saying why) where none is installed."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (make test installs Debian's etcd-server where it can)")
    server = EtcdServer(directory)
    server.start()
    return server


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the session; each test that asks for ``etcd`` gets its own key prefix."""
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()


_prefixes = itertools.count()


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> EtcdServer:
    """The session's etcd under a fresh prefix (a deployment of its own)."""
    return EtcdServer(
        etcd_server.directory,
        port=etcd_server.port,
        peer_port=etcd_server.peer_port,
        prefix=f"/llmspool-test-{next(_prefixes)}",
        process=etcd_server.process,
    )


@pytest.fixture
def own_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd of this test's own, which it may stop and start again."""
    server = start_etcd(tmp_path_factory.mktemp("own-etcd"))
    yield server
    server.stop()


#: The TTL of the registries that ``registry_env`` selects (short: the tests wait for expiries).
REGISTRY_TTL = 3


@pytest.fixture(params=["redis", "etcd"])
def registry_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings that select each worker registry in turn: Redis (the default), etcd."""
    env = {"LLMSPOOL_REGISTRY_TTL": str(REGISTRY_TTL)}
    if request.param == "etcd":
        etcd: EtcdServer = request.getfixturevalue("etcd")
        env["LLMSPOOL_REGISTRY_URL"] = etcd.url
    return env


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> RedisServer:
    redis_server.client().flushall()
    return redis_server


StackFactory = Callable[..., Stack]


def module_stack(
    redis_server: RedisServer, directory: Path, config: str = FAKE_CONFIG, **env: str
) -> Stack:
    """A stack for a whole test module (on a flushed Redis): the caller starts what it needs
    and stops it. Starting processes costs seconds on a busy machine; modules share one."""
    redis_server.client().flushall()
    path = directory / "llmspool.toml"
    path.write_text(config)
    return Stack(redis_server, path, directory, extra_env=env)


@pytest.fixture
def stack_factory(clean_redis: RedisServer, tmp_path: Path) -> Iterator[StackFactory]:
    stacks: list[Stack] = []

    def make(config: str = FAKE_CONFIG, **env: str) -> Stack:
        path = tmp_path / f"llmspool-{len(stacks)}.toml"
        path.write_text(config)
        stack = Stack(clean_redis, path, tmp_path, extra_env=env)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture
def fake_stack(stack_factory: StackFactory) -> Stack:
    """The API and one worker of the fake model."""
    stack = stack_factory()
    stack.start_api()
    stack.start_worker("fake")
    return stack


@pytest.fixture
def client(fake_stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fake_stack.base_url}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight LlamaForCausalLM and its tokenizer, saved locally."""
    quiet_env()
    from tests.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama-cpp-python's OpenAI server on the packaged gemma-3-270m."""
    if SPECS["llama_cpp"].missing():
        pytest.skip("llama-cpp-python is not installed")
    server = LlamaServer(packaged_gemma(), tmp_path_factory.mktemp("upstream") / "server.log")
    server.start()
    yield server
    server.stop()
