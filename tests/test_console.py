"""The operator console in a real browser: Debian's chromium driven by Playwright.

Skipped, with the reason, only where no chromium can be installed (``make test`` runs
scripts/ensure-chromium.sh first). Set CONSOLE_SCREENSHOT=docs/console.png to refresh the
screenshot the README shows.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmspool.shared import keys
from tests.conftest import StackFactory
from tests.helpers import CHROMIUM_ARGS, Stack, chromium_executable, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CONSOLE_CONFIG = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = 2
[models.options]
ttft_ms = 30
itl_ms = 25

[[models]]
name = "fake-idle"
backend = "fake"
min_workers = 0
"""

BURST = 24


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_executable()
    if executable is None:
        pytest.skip("chromium is not installed and could not be (scripts/ensure-chromium.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 960},
        )
        yield context
        context.close()


@pytest.fixture
def console_stack(stack_factory: StackFactory) -> Stack:
    stack = stack_factory(CONSOLE_CONFIG)
    stack.start_api()
    stack.start_worker("fake")
    return stack


class Page:
    """A console page, recording every console error, warning and uncaught exception."""

    def __init__(self, browser: Any, stack: Stack) -> None:
        self.problems: list[str] = []
        self.page = browser.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        self.page.goto(f"{stack.base_url}/console?interval=250")
        self.wait_ticks(2)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"{message.type}: {message.text}")

    def wait_ticks(self, count: int) -> None:
        """Wait for ``count`` more successful polls."""
        now = int(self.page.evaluate("Number(document.body.dataset.ticks || 0)"))
        self.page.wait_for_function(
            f"Number(document.body.dataset.ticks || 0) >= {now + count}", timeout=20_000
        )

    def field(self, model: str, name: str) -> str:
        return str(self.page.text_content(f'[data-model="{model}"] [data-field="{name}"]'))

    def wait_field(self, model: str, name: str, condition: str) -> None:
        """Wait until the number shown in ``name`` satisfies ``condition`` (JS, on ``v``)."""
        selector = f'[data-model="{model}"] [data-field="{name}"]'
        self.page.wait_for_function(
            f"(() => {{ const e = document.querySelector('{selector}');"
            f" const v = e ? Number(e.textContent) : NaN; return {condition}; }})()",
            timeout=30_000,
        )


def _chat(base_url: str) -> int:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60).status_code


def test_console_shows_a_burst_grow_and_drain(
    browser: Any, console_stack: Stack, tmp_path: Path
) -> None:
    state = httpx.get(f"{console_stack.base_url}/admin/console/state", timeout=10).json()
    if state["features"]["batches"]:  # a small batch runs behind the burst, in the screenshot
        console_stack.start_batch_worker(wait=True)
        _submit_batch(console_stack.base_url, lines=12, max_tokens=8)
    page = Page(browser, console_stack)
    assert page.page.title() == "llmspool console"
    assert "no live workers" in str(page.page.text_content('[data-model="fake-idle"]'))

    with ThreadPoolExecutor(BURST) as pool:
        replies = [pool.submit(_chat, console_stack.base_url) for _ in range(BURST)]
        page.wait_field("fake", "lag", "v >= 4")  # the queue grows: jobs wait for a slot
        page.wait_ticks(2)
        shot = os.environ.get("CONSOLE_SCREENSHOT") or str(tmp_path / "console.png")
        page.page.screenshot(path=shot, full_page=True)
        statuses = [r.result() for r in replies]
    assert statuses == [200] * BURST

    page.wait_field("fake", "backlog", "v === 0")  # ... and drains
    page.wait_field("fake", "pending", "v === 0")
    # The timeline has this burst's TTFT and throughput.
    page.page.wait_for_function(
        'document.querySelector(\'[data-model="fake"] [data-chart^="TTFT"] .now\')'
        ".textContent.indexOf('\\u2013') < 0",  # a number, not the en dash of "no data"
        timeout=20_000,
    )
    assert page.page.locator('[data-model="fake"] [data-worker]').count() == 1
    if state["features"]["requests"] and state["features"]["feedback"]:
        _check_request_log_and_feedback(page, console_stack)
    assert page.problems == []


def _check_request_log_and_feedback(page: Page, stack: Stack) -> None:
    """The burst's requests are listed with their worker; a thumbs-up attaches feedback."""
    page.page.wait_for_function(
        "document.querySelectorAll('#requests [data-request]').length >= 10", timeout=20_000
    )
    row = page.page.locator("#requests [data-request]").first
    request_id = str(row.get_attribute("data-request"))
    assert "fake@" in str(row.text_content())  # the worker that served it
    row.locator('[data-action="feedback-up"]').click()
    page.page.wait_for_selector(
        f'#requests [data-request="{request_id}"] [data-action="feedback-up"].chosen',
        timeout=20_000,
    )
    record = httpx.get(f"{stack.base_url}/admin/requests/{request_id}", timeout=10).json()
    assert record["feedback"]["rating"] == 1


def test_sections_without_their_routes_say_not_available(
    browser: Any, console_stack: Stack
) -> None:
    page = Page(browser, console_stack)
    state = httpx.get(f"{console_stack.base_url}/admin/console/state", timeout=10).json()
    if not state["features"]["batches"]:
        assert "not available" in str(page.page.text_content("#batches"))
    if not state["features"]["requests"]:
        assert "not available" in str(page.page.text_content("#requests"))
    assert (
        page.page.is_hidden('[data-model="fake"] [data-role="scale"]') != state["features"]["scale"]
    )
    assert page.problems == []


def test_console_shows_batch_progress_and_cancels_it(browser: Any, console_stack: Stack) -> None:
    state = httpx.get(f"{console_stack.base_url}/admin/console/state", timeout=10).json()
    assert state["features"]["batches"]  # the page shows the batch section
    console_stack.start_batch_worker(wait=True)
    batch = _submit_batch(console_stack.base_url, lines=40, max_tokens=16)
    page = Page(browser, console_stack)
    row = f'[data-batch="{batch}"]'
    # Progress shows while the lines run (2 slots, ~0.4 s a line: ~8 s in all).
    page.page.wait_for_function(
        f"(() => {{ const b = document.querySelector('{row} [role=progressbar]');"
        " return b && Number(b.getAttribute('aria-valuenow')) > 0"
        " && Number(b.getAttribute('aria-valuenow')) < Number(b.getAttribute('aria-valuemax'));"
        " })()",
        timeout=30_000,
    )
    assert page.page.get_attribute(row, "data-status") == "in_progress"
    page.page.click(f'{row} [data-action="cancel-batch"]')
    page.page.wait_for_function(
        f"['cancelling', 'cancelled'].includes(document.querySelector('{row}').dataset.status)",
        timeout=30_000,
    )
    status = httpx.get(f"{console_stack.base_url}/v1/batches/{batch}", timeout=10).json()
    assert status["status"] in ("cancelling", "cancelled")
    assert page.problems == []


def _submit_batch(base_url: str, lines: int, max_tokens: int) -> str:
    body = "".join(
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "fake",
                    "messages": [{"role": "user", "content": f"line {i}"}],
                    "max_tokens": max_tokens,
                },
            }
        )
        + "\n"
        for i in range(lines)
    )
    uploaded = httpx.post(
        f"{base_url}/v1/files",
        files={"file": ("input.jsonl", body.encode())},
        data={"purpose": "batch"},
        timeout=30,
    ).json()
    created = httpx.post(
        f"{base_url}/v1/batches",
        json={
            "input_file_id": uploaded["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
        timeout=30,
    ).json()
    return str(created["id"])


def test_console_actions_pin_auto_and_drain(browser: Any, console_stack: Stack) -> None:
    page = Page(browser, console_stack)
    state = httpx.get(f"{console_stack.base_url}/admin/console/state", timeout=10).json()
    assert state["features"]["scale"] and state["features"]["drain"]  # the page shows the buttons
    card = page.page.locator('[data-model="fake"]')
    pool = card.locator('[data-field="pool"]')
    card.locator('[data-role="pin-count"]').fill("0")
    card.locator('[data-action="pin"]').click()
    page.page.wait_for_function(
        'document.querySelector(\'[data-model="fake"] [data-field="pool"]\')'
        ".dataset.mode === 'pinned'",
        timeout=20_000,
    )
    assert "pinned to 0" in str(pool.text_content())
    admin = httpx.get(f"{console_stack.base_url}/admin/models/fake", timeout=10).json()
    assert admin["pin"] == 0
    assert "done" in str(page.page.text_content("#notice"))

    card.locator('[data-action="auto"]').click()
    page.page.wait_for_function(
        'document.querySelector(\'[data-model="fake"] [data-field="pool"]\')'
        ".dataset.mode === 'auto'",
        timeout=20_000,
    )
    assert (
        httpx.get(f"{console_stack.base_url}/admin/models/fake", timeout=10).json()["pin"] is None
    )

    card.locator('[data-worker] [data-action="drain"]').click()  # the worker finishes and exits
    page.page.wait_for_selector(
        '[data-model="fake"] [data-worker]', state="detached", timeout=30_000
    )
    assert console_stack.consumers("fake") == 0
    assert page.problems == []


def test_console_requeues_a_dead_job(browser: Any, console_stack: Stack) -> None:
    state = httpx.get(f"{console_stack.base_url}/admin/console/state", timeout=10).json()
    assert state["features"]["requeue"]  # the page shows the requeue button
    client = console_stack.redis.client()
    dead_id = client.xadd(keys.dead_stream("fake"), _dead_job("chatcmpl-dead-1"))
    page = Page(browser, console_stack)
    page.wait_field("fake", "dead", "v === 1")
    page.page.click(f'[data-model="fake"] [data-dead="{dead_id}"] [data-action="requeue"]')
    page.wait_field("fake", "dead", "v === 0")
    assert client.xlen(keys.dead_stream("fake")) == 0
    again = f"{console_stack.base_url}/admin/models/fake/dead/{dead_id}/requeue"
    assert httpx.post(again, timeout=10).status_code == 404  # requeued once only
    bad = f"{console_stack.base_url}/admin/models/fake/dead/nonsense/requeue"
    assert httpx.post(bad, timeout=10).json()["error"]["param"] == "path.entry_id"
    requeued = client.xinfo_stream(keys.requests_stream("fake"))["last-generated-id"]
    wait_until(lambda: _served(client, requeued), 30, what="the requeued job to be served")
    assert page.problems == []


def _dead_job(request_id: str) -> dict[str, str]:
    """A job as the dead stream holds it: its fields plus why it died."""
    body = {"model": "fake", "messages": [{"role": "user", "content": "again"}], "max_tokens": 3}
    return {
        "v": "1",
        "request_id": request_id,
        "kind": "chat",
        "model": "fake",
        "enqueued_at": "1.0",
        "deadline": "2.0",  # long past: a requeued job gets a fresh one
        "body": json.dumps(body),
        "error": "worker crashed",
        "attempts": "3",
        "source_stream": keys.requests_stream("fake"),
        "source_id": "1-0",
        "failed_at": "3.0",
    }


def _served(client: Any, entry_id: str) -> bool:
    """The group has delivered ``entry_id`` and nothing is left unacknowledged."""
    group = client.xinfo_groups(keys.requests_stream("fake"))[0]
    return bool(group["pending"] == 0 and _id(group["last-delivered-id"]) >= _id(entry_id))


def _id(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def test_console_works_with_keys_on(browser: Any, stack_factory: StackFactory) -> None:
    """Keys on: the console asks for an admin key, then reads and acts with it."""
    stack = stack_factory(CONSOLE_CONFIG, LLMSPOOL_AUTH="on")
    stack.start_api()
    stack.start_worker("fake")
    admin = stack.cli("keys", "create", "--admin").strip()
    page = browser.new_page()
    page.goto(f"{stack.base_url}/console?interval=250")
    page.wait_for_function(
        "document.querySelector('#status').textContent.includes('admin key needed')",
        timeout=20_000,
    )
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.fill("#admin-key", admin)
    page.dispatch_event("#admin-key", "change")
    page.wait_for_selector('[data-model="fake"] [data-worker]', timeout=20_000)
    page.wait_for_function("Number(document.body.dataset.ticks || 0) >= 2", timeout=20_000)
    card = page.locator('[data-model="fake"]')
    card.locator('[data-role="pin-count"]').fill("1")
    card.locator('[data-action="pin"]').click()  # an action, with the same key
    headers = {"authorization": f"Bearer {admin}"}
    wait_until(
        lambda: (
            httpx.get(f"{stack.base_url}/admin/models/fake", headers=headers, timeout=10).json()[
                "pin"
            ]
            == 1
        ),
        20,
        what="the pin made through the console",
    )
    assert problems == []
    page.close()
