"""Redis with least-privilege ACL users (compose/redis-users.acl), and with TLS and a password:
the real API, worker and command line work through them; each user can do no more."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from llmspool.shared import keys
from tests.batch_helpers import chat_lines, submit, wait_status
from tests.conftest import FAKE_CONFIG
from tests.helpers import RedisServer, Stack, free_port, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
HI = [{"role": "user", "content": "Hi"}]
PASSWORDS = {
    "admin": "pw-admin-1",
    "api": "pw-api-2",
    "worker": "pw-worker-3",
    "controller": "pw-control-5",
    "keda": "pw-k-4",
}


def make_stack(server: RedisServer, workdir: Path) -> Stack:
    config = workdir / "llmspool.toml"
    config.write_text(FAKE_CONFIG)
    return Stack(server, config, workdir)


def chat_both_ways(stack: Stack, key: str = "none") -> None:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    whole = client.chat.completions.create(model="fake", messages=HI, max_tokens=4)
    streamed = client.chat.completions.create(model="fake", messages=HI, max_tokens=4, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == whole.choices[0].message.content and len(text.split()) == 4


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    acl = (ROOT / "compose" / "redis-users.acl").read_text()
    for user, password in PASSWORDS.items():
        acl = acl.replace(f">change-me-{user}", f">{password}")
    (tmp_path / "users.acl").write_text(acl)
    server = RedisServer(
        free_port(),
        tmp_path / "redis",
        extra=("--aclfile", str(tmp_path / "users.acl")),
        username="llmspool-admin",
        password=PASSWORDS["admin"],
    )
    server.start()
    yield server
    server.stop()


def as_user(server: RedisServer, user: str) -> redis.Redis:
    return redis.Redis.from_url(server.url_for(f"llmspool-{user}", PASSWORDS[user]))


def test_least_privilege_users(acl_server: RedisServer, tmp_path: Path) -> None:
    stack = make_stack(acl_server, tmp_path)
    try:
        api_url = acl_server.url_for("llmspool-api", PASSWORDS["api"])
        stack.start_api(LLMSPOOL_REDIS_URL=api_url, LLMSPOOL_AUTH="on")
        worker_url = acl_server.url_for("llmspool-worker", PASSWORDS["worker"])
        stack.start_worker("fake", LLMSPOOL_REDIS_URL=worker_url)
        key = stack.cli("keys", "create").strip()  # the command line runs as llmspool-admin
        chat_both_ways(stack, key)
    finally:
        stack.stop()
    worker, api = as_user(acl_server, "worker"), as_user(acl_server, "api")
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.hgetall(keys.API_KEY_INDEX)  # workers cannot see API keys
    with pytest.raises(redis.exceptions.NoPermissionError):
        api.hset(keys.api_key("forged"), "scope", "admin")  # nor can the API mint them
    for user in (worker, api):
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.flushall()
    keda = as_user(acl_server, "keda")
    stream = keys.requests_stream("fake")
    assert keda.xinfo_groups(stream)[0]["name"] == keys.GROUP.encode()
    assert keda.xlen(keys.waiting(stream)) == 0  # what KEDA's streamLength trigger reads
    with pytest.raises(redis.exceptions.NoPermissionError):
        keda.xadd(stream, {"x": "1"})
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_server.port).get(keys.CONFIG)


def test_every_path_runs_under_its_acl_user(acl_server: RedisServer, tmp_path: Path) -> None:
    """Chat, streaming, a cancel, a batch and admin actions, each process as its own user:
    whatever Redis key or channel the system writes (arq's included), its user may."""
    stack = make_stack(acl_server, tmp_path)
    urls = {user: acl_server.url_for(f"llmspool-{user}", PASSWORDS[user]) for user in PASSWORDS}
    try:
        stack.start_api(LLMSPOOL_REDIS_URL=urls["api"], LLMSPOOL_AUTH="on")
        stack.start_worker("fake", LLMSPOOL_REDIS_URL=urls["worker"])
        stack.start_batch_worker(wait=True, LLMSPOOL_REDIS_URL=urls["controller"])
        key = stack.cli("keys", "create", "--admin").strip()  # as llmspool-admin
        chat_both_ways(stack, key)
        cancelled = _cancel_midway(stack, key)
        wait_until(lambda: stack.pending("fake") == 0, 30, what="the cancelled job settled")
        log = acl_server.client().xrange(keys.reply_log(cancelled))
        assert not any(b"finish_reason" in fields.get(b"f", b"") for _, fields in log)
        client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
        done = wait_status(client, submit(client, chat_lines(3)).id)
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.completed == 3, done
        admin = {"authorization": f"Bearer {key}"}
        for action in ("offline", "online"):  # through the API, as llmspool-api
            url = f"{stack.base_url}/admin/models/fake/{action}"
            assert httpx.post(url, headers=admin, timeout=30).status_code == 200
        as_controller = {"LLMSPOOL_REDIS_URL": urls["controller"]}
        assert stack.llmspool("scale", "fake", "1", **as_controller).returncode == 0
        assert stack.llmspool("queue", "fake", **as_controller).returncode == 0
    finally:
        stack.stop()
    for line in (tmp_path / "batch-worker.log").read_text().splitlines():
        assert "NOPERM" not in line, line


def _cancel_midway(stack: Stack, key: str) -> str:
    """Start a long streamed request, read a little, go away; its request id."""
    body = {"model": "fake", "messages": HI, "max_tokens": 2000, "stream": True}
    headers = {"authorization": f"Bearer {key}"}
    url = f"{stack.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data:") and '"content"' in line:
                break  # the client goes away
    return request_id


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_tls_and_password(tmp_path: Path) -> None:
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        ["openssl", *request, "-keyout", str(key), "-out", str(cert), *subject],
        check=True,
        capture_output=True,
    )
    tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    server = RedisServer(
        free_port(),
        tmp_path / "redis",
        extra=(*tls, "--requirepass", "s3cret"),
        password="s3cret",
        tls_ca=cert,
    )
    server.start()
    stack = make_stack(server, tmp_path)
    try:
        assert stack.env()["LLMSPOOL_REDIS_URL"].startswith("rediss://:s3cret@")
        stack.start_api()
        stack.start_worker("fake")
        chat_both_ways(stack)
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis(port=server.port, password="s3cret", socket_timeout=2).ping()  # no TLS
    finally:
        stack.stop()
        server.stop()
