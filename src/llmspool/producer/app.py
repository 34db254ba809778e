"""The FastAPI application: lifespan (Redis, relay, consumer groups), routes, error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from llmspool import __version__
from llmspool.producer import batches, console, handlers, monitoring, responses_api
from llmspool.producer.admin import router as admin_router
from llmspool.producer.auth import AuthMiddleware
from llmspool.producer.routes import BODY_MODELS, router
from llmspool.producer.service import Producer
from llmspool.shared import capabilities
from llmspool.shared.config import Config, load_config
from llmspool.shared.protocol import ErrorResponse
from llmspool.shared.redis import UNAVAILABLE, connect
from llmspool.shared.settings import Settings
from llmspool.shared.streams import ensure_groups

#: An OpenAPI document or a part of it, as FastAPI's get_openapi builds it.
Schema = dict[str, Any]

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, config: Config | None = None) -> FastAPI:
    """Build the API for ``settings`` and the models in ``config``."""
    settings = settings or Settings()
    config = config or load_config(settings.config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = connect(settings)
        producer = Producer.create(settings, config, redis)
        await _prepare_streams(producer)
        await producer.relay.start()
        await producer.timeline.start()
        await producer.control.start()
        app.state.producer = producer
        try:
            yield
        finally:
            await producer.control.stop()
            await producer.timeline.stop()
            await producer.relay.stop()
            await producer.observer.request_log.drain()
            await producer.registry.close()
            await redis.aclose()

    app = FastAPI(
        title="llmspool",
        version=__version__,
        description="OpenAI-compatible API; every request crosses a Redis stream to a worker.",
        lifespan=lifespan,
    )
    app.include_router(router)
    console.install(app)
    app.include_router(monitoring.router)
    app.include_router(admin_router)
    app.include_router(batches.router)
    app.include_router(responses_api.router)
    handlers.install(app)
    app.add_middleware(AuthMiddleware, settings=settings)
    # FastAPI's documented way to extend the schema is to replace app.openapi (a method to mypy)
    app.openapi = lambda: _openapi(app, settings, config)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, settings: Settings, config: Config) -> Schema:
    """FastAPI's spec, made to say what the API enforces: our 400 instead of the default 422,
    and the limits that come from settings and models (max_tokens up to the largest context)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                _document_errors(operation.setdefault("responses", {}))
        schemas.update(_error_schemas())
        for model in BODY_MODELS:  # request bodies the routes parse themselves
            _add_schema(schemas, model)
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        _document_limits(schemas, settings, config)
        app.openapi_schema = schema
    return app.openapi_schema


#: What any route may answer besides its own: 400 (invalid), 401/403 (keys), 404, 413 (body
#: size), 429 (limits), 500 and 503 (Redis away), each with an OpenAI error body.
_ANY_ROUTE_ERRORS = {
    "400": "Bad Request",
    "401": "Unauthorized",
    "403": "Forbidden",
    "404": "Not Found",
    "413": "Content Too Large",
    "429": "Too Many Requests",
    "500": "Internal Server Error",
    "503": "Service Unavailable",
}


def _document_errors(responses: Schema) -> None:
    """Replace FastAPI's 422 by the errors the app really returns, on every operation."""
    responses.pop("422", None)
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for code, description in _ANY_ROUTE_ERRORS.items():
        responses.setdefault(code, {"description": description, "content": body})


def _add_schema(schemas: Schema, model: type[BaseModel]) -> None:
    """``model``'s input schema and the models it uses, as components (those FastAPI already
    put there are kept)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas[model.__name__] = schema


def _error_schemas() -> Schema:
    defs = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**defs.pop("$defs", {}), "ErrorResponse": defs}


def _document_limits(schemas: Schema, settings: Settings, config: Config) -> None:
    lengths = [model.context_length for model in config.models if model.context_length]
    for name in ("ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest"):
        _document_parameters(schemas.get(name, {}), config)
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas.get(name, {}).get("properties", {})
        if len(lengths) == len(config.models):  # else an engine's length: the spec cannot know
            for field in ("max_tokens", "max_completion_tokens"):
                _bound(props.get(field, {}), "integer", "maximum", max(lengths))
        _bound(props.get("messages", {}), "array", "maxItems", settings.max_messages)
        _bound(props.get("prompt", {}), "string", "maxLength", settings.max_prompt_chars)
    upload = schemas.get("Body_create_file_v1_files_post", {}).get("properties", {})
    if "file" in upload:  # an empty batch input file is refused (400 empty_file)
        upload["file"]["minLength"] = 1


def _document_parameters(schema: Schema, config: Config) -> None:
    """Offer only the "not set" values of parameters no configured model's backend honours,
    and no unknown field unless a backend passes them on (see shared/capabilities.py)."""
    rows = [capabilities.of(model.backend) for model in config.models]
    if schema and not any(row.passthrough for row in rows):
        schema["additionalProperties"] = False
    for name, prop in schema.get("properties", {}).items():
        if any(row.honours(name) for row in rows):
            continue
        kept = {k: v for k, v in prop.items() if k in ("title", "description")}
        prop.clear()
        prop.update(
            kept,
            enum=list(capabilities.NOT_SET.get(name, (None,))),
            description="Accepted only as 'not set': no backend served here honours it.",
        )


def _bound(prop: Schema, kind: str, keyword: str, limit: int) -> None:
    """Set ``keyword`` on ``prop`` or on its ``anyOf`` branch of type ``kind``."""
    for branch in [prop, *prop.get("anyOf", [])]:
        if branch.get("type") == kind:
            branch[keyword] = min(limit, branch.get(keyword, limit))


async def _prepare_streams(producer: Producer) -> None:
    """Create every model's consumer group, so jobs queued before any worker are kept."""
    for name in producer.config.names():
        try:
            await ensure_groups(producer.redis, name)
        except UNAVAILABLE as exc:
            log.warning("redis unavailable at start (%s); groups are created by workers", exc)
            return
