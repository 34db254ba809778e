"""The batch lifecycle's step names and how to queue one (the arq jobs of ``batch/steps.py``).

Kept apart from the steps themselves so that the API and the workers, which only queue steps,
import neither the steps nor the input-file parser; arq itself (whose package imports its
worker and cron) is imported only when a step is queued.
"""

from __future__ import annotations

from redis.asyncio import Redis

from llmspool.shared import keys

VALIDATE = "validate_batch"
FAN_OUT = "fan_out_batch"
FINALIZE = "finalize_batch"


async def enqueue_step(redis: Redis, step: str, batch_id: str) -> None:
    """Queue one lifecycle step of ``batch_id`` (a no-op while it is already queued or running)."""
    from arq.connections import ArqRedis

    arq = ArqRedis(redis.connection_pool, default_queue_name=keys.BATCH_JOBS_QUEUE)
    await arq.enqueue_job(step, batch_id, _job_id=keys.batch_job_id(step, batch_id))
