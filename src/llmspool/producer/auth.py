"""API keys and request limits at the door, as one ASGI middleware around the whole app.

Being a middleware, it covers every route and mount, including routers added later: a request
to a public path (``/health``) passes; any other needs ``Authorization: Bearer <key>`` when keys
are on (401 without one), paths under ``/admin`` need an admin key (403), and each key's limits
are counted before the request runs (429 with Retry-After) and released after its response.
Bodies are bounded whether keys are on or not (413).
"""

from __future__ import annotations

import contextlib
import uuid

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmspool.producer.dispatch import Reply
from llmspool.producer.handlers import error_response, unavailable
from llmspool.producer.limits import Admission, admit
from llmspool.shared import credentials
from llmspool.shared.credentials import ApiKey
from llmspool.shared.errors import (
    AuthenticationFailed,
    LLMSpoolError,
    PayloadTooLarge,
    PermissionDenied,
)
from llmspool.shared.redis import UNAVAILABLE
from llmspool.shared.settings import Settings

#: Served without a key: health, metrics, and the console's static page (it holds no data; its
#: script sends the operator's admin key to /admin/console/state).
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/console"})
PUBLIC_PREFIXES = ("/console/assets/",)
ADMIN_PREFIX = "/admin"
#: Batch input files are uploaded here, bounded by ``batch_max_file_bytes`` (multipart overhead
#: aside), not by ``max_body_bytes``.
FILES_PATH = "/v1/files"
#: How long a concurrency slot outlives its request's deadline if its API process dies.
LEASE_GRACE = 60.0


class AuthMiddleware:
    """Bounds bodies, authenticates keys and applies their limits (see the module doc)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.enabled = settings.auth_enabled()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._body_limit(scope)
        try:
            _check_length(scope, limit)
            admission = await self._admit(scope)
        except LLMSpoolError as exc:
            await error_response(exc)(scope, receive, send)
            return
        except UNAVAILABLE as exc:
            await unavailable(exc)(scope, receive, send)
            return
        bounded = _bounded(receive, limit)
        if admission is None:
            await self.app(scope, bounded, send)
            return
        scope.setdefault("state", {})["admission"] = admission
        try:
            await self.app(scope, bounded, _releasing(send, admission))
        finally:
            await _release(admission)

    def _body_limit(self, scope: Scope) -> int:
        """A batch input file upload may be as large as its own limit; any other body less."""
        if scope["path"] == FILES_PATH and scope["method"] == "POST":
            return max(self.settings.max_body_bytes, self.settings.batch_max_file_bytes + 65536)
        return self.settings.max_body_bytes

    async def _admit(self, scope: Scope) -> Admission | None:
        path: str = scope["path"]
        if not self.enabled or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        key = await self._authenticate(scope)
        if path.startswith(ADMIN_PREFIX) and not key.admin:
            raise PermissionDenied("This route needs an API key with the admin scope.")
        redis = scope["app"].state.producer.redis
        lease = self.settings.request_timeout + LEASE_GRACE
        return await admit(redis, key, uuid.uuid4().hex, lease)

    async def _authenticate(self, scope: Scope) -> ApiKey:
        secret = _bearer(scope)
        if secret is None:
            raise AuthenticationFailed(
                "You didn't provide an API key: send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        key = await credentials.lookup(scope["app"].state.producer.redis, secret)
        if key is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return key


def current_key(request: Request) -> ApiKey | None:
    """The key a request came with; None when keys are off (everything is allowed)."""
    admission: Admission | None = getattr(request.state, "admission", None)
    return admission.key if admission is not None else None


def visible_owner(request: Request) -> str | None:
    """Whose requests the request may read: its key's own; None (everyone's) with keys off or
    an admin key."""
    key = current_key(request)
    return None if key is None or key.admin else key.id


def check_model(request: Request, model: str) -> None:
    """403 when the request's key may not use ``model``."""
    key = current_key(request)
    if key is not None and not key.allows(model):
        raise PermissionDenied(
            f"This API key may not use the model '{model}'.",
            param="model",
            code="model_not_allowed",
        )


def track(request: Request, reply: Reply) -> None:
    """Charge ``reply``'s tokens to the request's key when its response is over."""
    admission: Admission | None = getattr(request.state, "admission", None)
    if admission is not None:
        admission.reply = reply


async def require_admin(request: Request) -> None:
    """A dependency for admin routers mounted outside ``/admin``: 403 without the admin scope."""
    key = current_key(request)
    if key is not None and not key.admin:
        raise PermissionDenied("This route needs an API key with the admin scope.")


def _bearer(scope: Scope) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, secret = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
    return None


def _check_length(scope: Scope, limit: int) -> None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes.")


def _bounded(receive: Receive, limit: int) -> Receive:
    """``receive`` that fails with 413 once the body passes ``limit`` bytes (chunked bodies)."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, _too_large(limit).message)
        return message

    return bounded


def _releasing(send: Send, admission: Admission) -> Send:
    """``send`` that releases the admission just before the response's last bytes leave, so a
    client's next request already sees the tokens this one used."""

    async def releasing(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            await _release(admission)
        await send(message)

    return releasing


async def _release(admission: Admission) -> None:
    with contextlib.suppress(*UNAVAILABLE):  # the slot's lease runs out by itself
        await admission.release()
