"""The work streams' consumer group, created by whoever touches a model's streams first.

The API (before it enqueues), the control loop (before it reads the backlog) and each worker
(before it reads) all call :func:`ensure_groups`, so none depends on the others having started.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from llmspool.shared import keys


async def ensure_groups(redis: Redis, model: str) -> None:
    """Create the consumer group on each of ``model``'s streams (from the start: jobs added
    before any worker existed are served too)."""
    for stream in keys.model_streams(model):
        try:
            await redis.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
