"""Per-key limits at the API's door: each request is admitted under its key's limits
(:mod:`llmspool.shared.ratelimits`, shared by every API replica and by batches) and released,
with the tokens it used, when its response is over."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from llmspool.producer.dispatch import Reply
from llmspool.shared import ratelimits
from llmspool.shared.credentials import ApiKey
from llmspool.shared.errors import RateLimitExceeded


@dataclass
class Admission:
    """A request admitted under a key's limits; release it when the response is over."""

    redis: Redis
    key: ApiKey
    request_id: str
    #: the reply whose usage is charged at release (set once the job is enqueued)
    reply: Reply | None = None
    released: bool = False

    async def release(self) -> None:
        """Free the concurrency slot and charge the tokens the request used (once)."""
        if self.released or not (self.key.tpm or self.key.concurrency):
            return
        self.released = True
        await ratelimits.release(self.redis, self.key, self.request_id, self.tokens())

    def tokens(self) -> int:
        """Tokens the request used (0 until its final frame arrived)."""
        usage = self.reply.usage if self.reply is not None else None
        return usage.total_tokens if usage is not None else 0


async def admit(redis: Redis, key: ApiKey, request_id: str, lease: float) -> Admission:
    """Count one request against ``key``'s limits, or raise 429 with the time to wait."""
    admission = Admission(redis, key, request_id)
    if not (key.rpm or key.tpm or key.concurrency):
        return admission
    what, retry_after = await ratelimits.take(redis, key, request_id, lease)
    if what != "ok":
        raise RateLimitExceeded(
            f"Rate limit reached for this API key: {what} (limit {_limit(key, what)}). "
            f"Retry after {retry_after} s.",
            retry_after=max(1, int(retry_after)),
        )
    return admission


def _limit(key: ApiKey, what: str) -> str:
    return {
        "requests": f"{key.rpm}/min",
        "tokens": f"{key.tpm}/min",
        "concurrent requests": str(key.concurrency),
    }[what]
