"""Stored responses of ``/v1/responses``: the response object and the conversation that led to
it, one JSON string per response with a TTL (``LLMSPOOL_RESPONSES_TTL``), under
:func:`llmspool.shared.keys.response`. A response belongs to the API key that made it: another
key sees a 404, as for files and batches.
"""

from __future__ import annotations

from pydantic import BaseModel
from redis.asyncio import Redis

from llmspool.shared import keys
from llmspool.shared.credentials import ApiKey
from llmspool.shared.errors import NotFound
from llmspool.shared.protocol import ChatMessage
from llmspool.shared.responses_api import Response


class StoredResponse(BaseModel):
    """One stored response: what ``GET`` answers and what ``previous_response_id`` continues."""

    #: The id of the API key that made it ("" with keys off).
    owner: str = ""
    response: Response
    #: The conversation as chat messages, the response's own output last; without the
    #: request's instructions (they do not carry over).
    messages: list[ChatMessage]


class ResponseStore:
    """Reads and writes stored responses."""

    def __init__(self, redis: Redis, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl

    async def put(self, stored: StoredResponse) -> None:
        name = keys.response(stored.response.id)
        await self.redis.set(name, stored.model_dump_json(exclude_none=True), ex=self.ttl)

    async def get(
        self, response_id: str, key: ApiKey | None, param: str | None = None
    ) -> StoredResponse:
        """The stored response, if ``key`` may see it; else a 404 naming ``param``."""
        raw = await self.redis.get(keys.response(response_id))
        stored = StoredResponse.model_validate_json(raw) if raw is not None else None
        if stored is None or not _visible(stored, key):
            raise not_found(response_id, param)
        return stored

    async def delete(self, response_id: str, key: ApiKey | None) -> None:
        await self.get(response_id, key)
        await self.redis.delete(keys.response(response_id))


def owner(key: ApiKey | None) -> str:
    return key.id if key is not None else ""


def _visible(stored: StoredResponse, key: ApiKey | None) -> bool:
    return key is None or key.admin or stored.owner == key.id


def not_found(response_id: str, param: str | None) -> NotFound:
    if param == "previous_response_id":
        return NotFound(
            f"Previous response with id '{response_id}' not found.",
            param=param,
            code="previous_response_not_found",
        )
    return NotFound(f"Response with id '{response_id}' not found.", param=param)
