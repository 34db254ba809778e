"""Fixtures that start real things: a redis-server on a free port, the API and workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests.engines import SPECS, LlamaServer, packaged_gemma, quiet_env
from tests.helpers import RedisServer, Stack, free_port

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
