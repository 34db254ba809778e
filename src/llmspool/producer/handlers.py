"""Exception handlers: every error leaves the API as an OpenAI error body."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from llmspool.shared.errors import LLMSpoolError, ServiceUnavailable
from llmspool.shared.redis import UNAVAILABLE

log = logging.getLogger(__name__)


def error_response(exc: LLMSpoolError) -> JSONResponse:
    """The OpenAI error body and status of ``exc``."""
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers())


def install(app: FastAPI) -> None:
    # Starlette types a handler as taking any Exception; each of ours takes the type it handles
    app.add_exception_handler(LLMSpoolError, _llmspool_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    for exc_type in UNAVAILABLE:
        app.add_exception_handler(exc_type, _redis_unavailable)
    app.add_exception_handler(Exception, _unexpected)


async def _llmspool_error(_: Request, exc: LLMSpoolError) -> JSONResponse:
    return error_response(exc)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        message, param = "The request body is not valid JSON.", None
    elif first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = (
            f"Invalid value for '{param}': {first.get('msg')}." if param else str(first["msg"])
        )
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": "invalid_value" if first.get("type") != "missing" else "missing",
        }
    }
    return JSONResponse(body, status_code=400, headers={"x-should-retry": "false"})


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = _HTTP_CODES.get(exc.status_code)
    body = {"error": {"message": str(exc.detail), "type": kind, "param": None, "code": code}}
    headers = exc.headers
    if exc.status_code == 405:  # Starlette lists one route's methods; a path may have several
        others = {k: v for k, v in (headers or {}).items() if k.lower() != "allow"}
        headers = {**others, "Allow": ", ".join(_allowed(request))}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def _allowed(request: Request) -> list[str]:
    """Every method some route serves on the request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def unavailable(exc: Exception) -> JSONResponse:
    """503 for an error that means Redis is away."""
    log.warning("redis unavailable: %s", exc)
    return error_response(ServiceUnavailable(f"Redis is unavailable: {exc}"))


async def _redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return unavailable(exc)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return error_response(LLMSpoolError(f"Internal error: {type(exc).__name__}"))
