"""Schemathesis against the real API (fake worker behind it): no 5xx, no response off-spec.

Runs the schemathesis command line (its pytest plugin does not work with pytest 9) with a
bounded number of examples per operation, every check on, and a fixed seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import StackFactory

pytestmark = [pytest.mark.e2e, pytest.mark.fuzz]

FUZZ_CONFIG = """
[[models]]
name = "fake"
backend = "fake"
max_concurrency = 64
context_length = 256
default_max_tokens = 16
capabilities = ["chat", "completion", "embedding"]
"""

#: Admin actions left out of the run: fuzzed, they take the fake worker away (then every
#: request ends in a 504) or restart and reload it mid-run.
ADMIN_ACTIONS = r"^/admin/(workers/.+|models/[^/]+/(scale|offline|online|restart)|reload)$"


def test_schemathesis_finds_nothing(stack_factory: StackFactory) -> None:
    stack = stack_factory(FUZZ_CONFIG, LLMSPOOL_REQUEST_TIMEOUT="20")
    stack.start_api()
    stack.start_worker("fake")
    binary = str(Path(sys.executable).parent / "schemathesis")
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": path}
    command = [
        binary,
        "run",
        f"{stack.base_url}/openapi.json",
        "--checks=all",
        # A schema-valid body may still break a rule across fields that JSON Schema does not
        # state (one output constraint per reply, tool_choice needs tools, a named function must
        # be among the tools): those are 400s naming the parameter, by design.
        "--exclude-checks=positive_data_acceptance",
        "--max-examples=25",
        "--seed=1",
        "--phases=examples,coverage,fuzzing",
        "--request-timeout=60",
        "--workers=1",
        "--suppress-health-check=all",
        "--no-color",
        "--output-truncate=false",
        # the control plane's actions drain, stop and scale the very worker the run needs
        f"--exclude-path-regex={ADMIN_ACTIONS}",
    ]
    result = subprocess.run(  # in the test's directory: schemathesis keeps a cache in its cwd
        command, env=env, cwd=stack.workdir, capture_output=True, text=True, timeout=540
    )
    (stack.workdir / "schemathesis.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
