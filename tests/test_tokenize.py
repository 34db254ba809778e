"""/tokenize and /detokenize (vLLM's routes) through the real API and workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import FAKE_CONFIG, module_stack
from tests.helpers import RedisServer, Stack

pytestmark = pytest.mark.e2e

WORDS = "the quick brown fox"
HI = [{"role": "user", "content": "the quick brown fox"}]


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The fake model, and "proxy": the openai backend in front of this same API's fake."""
    directory = tmp_path_factory.mktemp("tokenize")
    stack = module_stack(redis_server, directory, FAKE_CONFIG)
    proxy = f"""
[[models]]
name = "proxy"
backend = "openai"
[models.options]
base_url = "{stack.base_url}/v1"
model = "fake"
check_model = false
"""
    (directory / "llmspool.toml").write_text(FAKE_CONFIG + proxy)
    stack.start_api()
    stack.start_worker("fake")
    stack.start_worker("proxy")
    yield stack
    stack.stop()


def post(stack: Stack, route: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/{route}", json=body, timeout=30)


def test_tokenize_a_prompt_and_back(stack: Stack) -> None:
    answer = post(stack, "tokenize", {"model": "fake", "prompt": WORDS})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["count"] == 4 and len(body["tokens"]) == 4
    assert body["max_model_len"] == 2048  # the model's context length
    back = post(stack, "detokenize", {"model": "fake", "tokens": body["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": WORDS}


def test_tokenize_messages_counts_the_chats_prompt_tokens(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)
    reply = client.chat.completions.create(model="fake", messages=HI, max_tokens=1)  # type: ignore[arg-type]
    answer = post(stack, "tokenize", {"model": "fake", "messages": HI}).json()
    assert reply.usage is not None and answer["count"] == reply.usage.prompt_tokens


def test_the_openai_backend_forwards_to_the_upstreams_routes(stack: Stack) -> None:
    direct = post(stack, "tokenize", {"model": "fake", "prompt": WORDS}).json()
    forwarded = post(stack, "tokenize", {"model": "proxy", "prompt": WORDS})
    assert forwarded.status_code == 200, forwarded.text
    assert forwarded.json()["tokens"] == direct["tokens"]
    back = post(stack, "detokenize", {"model": "proxy", "tokens": direct["tokens"]})
    assert back.json() == {"prompt": WORDS}


@pytest.mark.parametrize(
    ("route", "body", "status", "param"),
    [
        ("tokenize", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("tokenize", {"model": "fake", "prompt": "x", "messages": HI}, 400, None),
        ("tokenize", {"model": "fake"}, 400, None),
        ("tokenize", {"model": "fake", "prompt": "x", "return_token_strs": True}, 400, None),
        ("tokenize", {"model": "fake", "messages": HI, "chat_template": "{{x}}"}, 400, None),
        ("detokenize", {"model": "fake", "tokens": [-1]}, 400, None),
        ("tokenize", {"model": "proxy", "prompt": "x", "return_token_strs": True}, 400, None),
    ],
)
def test_bad_requests_are_openai_errors(
    stack: Stack, route: str, body: dict[str, object], status: int, param: str | None
) -> None:
    answer = post(stack, route, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if "return_token_strs" in body:
        assert error["param"] == "return_token_strs"
    if "chat_template" in body:
        assert error["param"] == "chat_template"


@pytest.mark.llama
@pytest.mark.slow
def test_gemma_on_llama_cpp(stack_factory: object, tmp_path: Path) -> None:
    gemma = stack_factory(  # type: ignore[operator]
        """
[[models]]
name = "gemma"
backend = "llama_cpp"
[models.options]
n_ctx = 512
n_threads = 2
"""
    )
    gemma.start_api()
    gemma.start_worker("gemma")
    client = openai.OpenAI(base_url=f"{gemma.base_url}/v1", api_key="none", max_retries=0)
    text = "The capital of France is Paris."
    plain = post(gemma, "tokenize", {"model": "gemma", "prompt": text}).json()
    assert plain["tokens"][0] == 2  # <bos>
    completion = client.completions.create(model="gemma", prompt=text, max_tokens=1)
    assert completion.usage is not None and plain["count"] == completion.usage.prompt_tokens
    bare = post(gemma, "tokenize", {"model": "gemma", "prompt": text, "add_special_tokens": False})
    assert bare.json()["tokens"] == plain["tokens"][1:]
    back = post(gemma, "detokenize", {"model": "gemma", "tokens": bare.json()["tokens"]})
    assert back.json() == {"prompt": text}
    chat = post(gemma, "tokenize", {"model": "gemma", "messages": HI}).json()
    reply = client.chat.completions.create(model="gemma", messages=HI, max_tokens=1)  # type: ignore[arg-type]
    assert reply.usage is not None and chat["count"] == reply.usage.prompt_tokens
    no_turn = {"model": "gemma", "messages": HI, "add_generation_prompt": False}
    assert post(gemma, "tokenize", no_turn).json()["count"] < chat["count"]
    unknown = post(gemma, "detokenize", {"model": "gemma", "tokens": [2, 10**9]})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "tokens"
