"""The FastAPI application: lifespan (Redis, relay, consumer groups), routes, error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from llmspool import __version__
from llmspool.consumers.worker import ensure_groups
from llmspool.producer import batches, console, errors, monitoring
from llmspool.producer.admin import router as admin_router
from llmspool.producer.routes import router
from llmspool.producer.service import Producer
from llmspool.shared.config import Config, load_config
from llmspool.shared.redis import UNAVAILABLE, connect
from llmspool.shared.settings import Settings

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
    errors.install(app)
    return app


async def _prepare_streams(producer: Producer) -> None:
    """Create every model's consumer group, so jobs queued before any worker are kept."""
    for name in producer.config.names():
        try:
            await ensure_groups(producer.redis, name)
        except UNAVAILABLE as exc:
            log.warning("redis unavailable at start (%s); groups are created by workers", exc)
            return
