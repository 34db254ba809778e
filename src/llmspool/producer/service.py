"""The producer's state: one per API process, built in the app's lifespan."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from fastapi import Request
from redis.asyncio import Redis

from llmspool.producer.controlview import ControlView
from llmspool.producer.dispatch import Dispatcher
from llmspool.producer.observe import Observer
from llmspool.producer.relay import ReplyRelay
from llmspool.producer.timeline import Timeline
from llmspool.shared.config import Config
from llmspool.shared.metrics import ApiMetrics
from llmspool.shared.registry import Registry, open_registry
from llmspool.shared.requestlog import RequestLog
from llmspool.shared.settings import Settings
from llmspool.shared.streams import ensure_groups

log = logging.getLogger(__name__)


@dataclass
class Producer:
    """Everything a route needs: settings, models, Redis, the relay, the dispatcher and the
    worker registry."""

    settings: Settings
    config: Config
    redis: Redis
    relay: ReplyRelay
    dispatcher: Dispatcher
    id: str
    timeline: Timeline
    observer: Observer
    registry: Registry
    control: ControlView = field(init=False)

    def __post_init__(self) -> None:
        self.control = ControlView(self.redis, self.config.names, self.adopt)

    async def adopt(self, config: Config) -> None:
        """Serve the models of a reloaded models file from now on."""
        for name in set(config.names()) - set(self.config.names()):
            await ensure_groups(self.redis, name)
        self.config = config
        self.control.models = config.names
        log.info("now serving %s", ", ".join(config.names()))

    @classmethod
    def create(cls, settings: Settings, config: Config, redis: Redis) -> Producer:
        producer_id = uuid.uuid4().hex[:12]
        relay = ReplyRelay(redis, producer_id)
        timeline = Timeline(redis)
        dispatcher = Dispatcher(redis, relay, settings, timeline)
        observer = Observer(ApiMetrics(config.names()), RequestLog(redis, settings))
        registry = open_registry(settings, redis)
        return cls(
            settings, config, redis, relay, dispatcher, producer_id, timeline, observer, registry
        )


async def get_producer(request: Request) -> Producer:
    """The process's producer (async: FastAPI would run a plain function in a thread)."""
    producer: Producer = request.app.state.producer
    return producer
