"""The batch lifecycle's step names and how to queue one (the arq jobs of ``batch/steps.py``).

Kept apart from the steps themselves so that the API and the workers, which only queue steps,
do not import arq's worker, its cron or the input-file parser.
"""

from __future__ import annotations

from arq.connections import ArqRedis
from redis.asyncio import Redis

from llmspool.shared import keys

VALIDATE = "validate_batch"
FAN_OUT = "fan_out_batch"
FINALIZE = "finalize_batch"


async def enqueue_step(redis: Redis, step: str, batch_id: str) -> None:
    """Queue one lifecycle step of ``batch_id`` (a no-op while it is already queued or running)."""
    arq = ArqRedis(redis.connection_pool, default_queue_name=keys.BATCH_JOBS_QUEUE)
    await arq.enqueue_job(step, batch_id, _job_id=keys.batch_job_id(step, batch_id))
