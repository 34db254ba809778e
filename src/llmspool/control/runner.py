"""Running llmspool's long-lived processes: the API, a worker, and ``serve`` (all of them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine
from typing import Any

import uvicorn

from llmspool.consumers.backends import create_backend
from llmspool.consumers.worker import Worker
from llmspool.control.controller import Controller
from llmspool.control.driver import LocalDriver
from llmspool.control.modelsfile import load_models
from llmspool.control.redis_server import port_in_use, start_redis
from llmspool.control.supervisor import BATCH_POOL, Supervisor
from llmspool.producer.app import create_app
from llmspool.shared.config import Config
from llmspool.shared.redis import UNAVAILABLE, connect
from llmspool.shared.registry import open_registry
from llmspool.shared.settings import Settings

log = logging.getLogger(__name__)


def run_async(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def run_api(settings: Settings, config: Config) -> None:
    app = create_app(settings, config)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        log_config=None,  # uvicorn's records go through llmspool's handler (text or JSON)
        # open SSE streams get drain_timeout (see routes._stream); this bounds the rest
        timeout_graceful_shutdown=int(settings.drain_timeout) + 2,
        loop="auto",
        http="auto",
    )


def run_worker(settings: Settings, config: Config, model_name: str) -> None:
    model = config.model(model_name)

    async def main() -> None:
        redis = connect(settings)
        try:
            await Worker(settings, model, create_backend(model), redis).serve()
        finally:
            await redis.aclose()

    run_async(main())


def run_batch_worker(settings: Settings, config: Config) -> None:
    """The arq worker running the batch lifecycle; stops on SIGTERM (arq's handlers)."""
    from llmspool.batch.steps import create_worker

    while True:
        try:
            # arq cancels running steps on SIGTERM (they are retried by the next batch worker)
            # and its close() then re-raises that cancellation: a clean stop, not an error.
            with contextlib.suppress(asyncio.CancelledError):
                create_worker(settings, config).run()
            return
        except UNAVAILABLE as exc:  # arq stops when Redis goes away: start it again
            log.warning("batch worker lost redis (%s); starting again in 1 s", exc)
            time.sleep(1)


def run_serve(settings: Settings, config: Config) -> None:
    """Redis (unless LLMSPOOL_REDIS_URL is set), the API, and each model's workers."""
    redis_process = None
    env: dict[str, str] = {}
    if settings.redis_url is None and port_in_use("127.0.0.1", settings.embedded_redis_port):
        log.warning(
            "a server already listens on 127.0.0.1:%d; using it as Redis (set "
            "LLMSPOOL_REDIS_URL to choose another)",
            settings.embedded_redis_port,
        )
        check_redis(settings)
    elif settings.redis_url is None:
        redis_process = start_redis(settings.data_dir / "redis", port=settings.embedded_redis_port)
        log.info("started redis-server (append-only) in %s", settings.data_dir / "redis")
    else:
        check_redis(settings)
    env["LLMSPOOL_REDIS_URL"] = settings.resolved_redis_url()
    if settings.config is not None:
        env["LLMSPOOL_CONFIG"] = str(settings.config.resolve())
    try:
        run_async(_supervise(settings, config, env))
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(timeout=30)


async def _supervise(settings: Settings, config: Config, env: dict[str, str]) -> None:
    """The API and the worker pools, sized by the control loop (local driver)."""
    supervisor = Supervisor(env)
    for model in config.models:
        supervisor.set_desired(model.name, model.min_workers, model.max_workers)
    supervisor.run_service(BATCH_POOL, "batch-worker")
    redis = connect(settings, max_connections=16)
    registry = open_registry(settings, redis)
    controller = Controller(
        config, redis, LocalDriver(supervisor), lambda: _reload(settings), registry
    )
    stopping = asyncio.Event()

    def stop() -> None:
        supervisor.request_stop()
        stopping.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    log.info("serving %s on http://%s:%d", ", ".join(config.names()), settings.host, settings.port)
    control_loop = asyncio.create_task(controller.run(stopping), name="control")
    try:
        await supervisor.run()
    finally:
        stopping.set()
        await supervisor.stop(settings.drain_timeout)
        await control_loop
        await registry.close()
        await redis.aclose()


def run_controller(settings: Settings, config: Config, namespace: str, prefix: str) -> None:
    """The control loop alone, with the Kubernetes driver."""
    from llmspool.control.kubernetes import KubernetesDriver

    driver = KubernetesDriver.from_environment(namespace, prefix)

    async def main() -> None:
        redis = connect(settings, max_connections=16)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        registry = open_registry(settings, redis)
        controller = Controller(config, redis, driver, lambda: _reload(settings), registry)
        log.info("controlling %s in namespace %s", ", ".join(config.names()), namespace)
        try:
            await controller.run(stopping)
        finally:
            await registry.close()
            await redis.aclose()

    run_async(main())


def _reload(settings: Settings) -> Config:
    """The models file as it reads now (``llmspool reload``)."""
    return load_models(settings.config)


def check_redis(settings: Settings) -> None:
    """Warn when an external Redis does not persist its streams."""

    async def check() -> None:
        redis = connect(settings)
        try:
            info = await redis.info("persistence")
            if not info.get("aof_enabled"):
                log.warning(
                    "Redis at %s has append-only persistence off: queued jobs are lost if it "
                    "restarts (CONFIG SET appendonly yes)",
                    settings.resolved_redis_url(),
                )
        finally:
            await redis.aclose()

    asyncio.run(check())
