"""Check the carried wheels and redis-server (scripts/gpu-carry.sh --verify).

Run by a bare python3.12 whose path holds only the carried wheels and the checkout: imports what
gpu-check.sh needs besides torch, starts redis-server, the API and a fake-engine worker, and
serves one streamed chat request through them with the openai client.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from tests.conftest import FAKE_CONFIG
from tests.helpers import RedisServer, Stack, free_port

NEEDED = ["fastapi", "uvicorn", "redis", "arq", "openai", "pytest", "pytest_asyncio"]
NEEDED += [
    "pytest_timeout",
    "aiohttp",
    "uvloop",
    "orjson",
    "httptools",
    "yaml",
    "prometheus_client",
]


def main(work: Path) -> None:
    for name in NEEDED:
        importlib.import_module(name)
    import openai

    redis = RedisServer(free_port(), work / "redis")
    redis.start()
    config = work / "llmspool.toml"
    config.write_text(FAKE_CONFIG)
    stack = Stack(redis, config, work)
    try:
        stack.start_api()
        stack.start_worker("fake")
        client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)
        stream = client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        print(f"carried wheels work on Python {sys.version.split()[0]}: streamed {text!r}")
    finally:
        stack.stop()
        redis.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
