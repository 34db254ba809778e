"""Schemathesis hooks for tests/test_fuzz.py: most requests name the served model."""

from __future__ import annotations

import hashlib
from typing import Any

import schemathesis


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    """Point most generated bodies at the real model, so they cross Redis to the worker."""
    # an empty name stays: it is how a negative case breaks the schema
    named = isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"]
    if named and hashlib.sha256(repr(body).encode()).digest()[0] < 200:
        body["model"] = "fake"
    return body
