"""The errors llmspool raises, each mapped to one OpenAI-style error body and HTTP status.

::

    LLMSpoolError                 500 server_error
    ├── InvalidRequest            400 invalid_request_error
    │   ├── UnsupportedParameter  400 invalid_request_error, param = the parameter
    │   ├── ContextLengthExceeded 400 invalid_request_error, code context_length_exceeded
    │   └── UnsupportedCapability 400 invalid_request_error (model cannot do this kind of request)
    │   ├── IdempotencyConflict   400 an Idempotency-Key reused for a different request
    │   └── PayloadTooLarge       413 invalid_request_error, code payload_too_large
    ├── AuthenticationFailed      401 invalid_request_error, code invalid_api_key
    ├── PermissionDenied          403 permission_error (key lacks the scope or the model)
    ├── ModelNotFound             404 invalid_request_error, code model_not_found
    ├── RequestNotFound           404 a request id whose reply log is unknown or expired
    ├── NotFound                  404 invalid_request_error (no such file, batch or worker)
    ├── QueueFull                 429 rate_limit_error, Retry-After
    │   └── RateLimitExceeded     429 rate_limit_error, a key's limit (Retry-After)
    ├── ServiceUnavailable        503 service_unavailable (Redis away)
    │   ├── ModelOffline          503 service_unavailable, code model_offline
    │   ├── NoControlLoop         503 service_unavailable (an action needs a running control loop)
    │   └── RegistryUnavailable   503 service_unavailable, code registry_unavailable (etcd away)
    ├── DeadlineExceeded          504 timeout (no worker served the request before its deadline)
    ├── ConfigError               a models file or setting is wrong (raised at start, not served)
    └── EngineError               500 engine_error (the backend failed the job)
        ├── JobFailed             500 job_failed (failed max_attempts times; in the dead stream)
        └── StreamInterrupted     500 stream_interrupted (a streamed reply cannot go on)

Errors a client retry cannot fix carry ``x-should-retry: false`` so the openai SDK does not
retry them.
"""

from __future__ import annotations

from typing import Any, ClassVar


class LLMSpoolError(Exception):
    """Base of every llmspool error."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    #: None: leave the decision to the client; False: tell it a retry cannot help.
    should_retry: ClassVar[bool | None] = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error body (JSON, as ``protocol.ErrorResponse`` describes it)."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.should_retry is None:
            return {}
        return {"x-should-retry": "true" if self.should_retry else "false"}


class InvalidRequest(LLMSpoolError):
    status_code = 400
    error_type = "invalid_request_error"
    should_retry = False


class UnsupportedParameter(InvalidRequest):
    default_code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    """The prompt (with the tokens asked for) does not fit the model's context: found by the
    API's check or by the engine itself. A request error: never retried, never dead-lettered."""

    default_code = "context_length_exceeded"


class UnsupportedCapability(InvalidRequest):
    default_code = "unsupported_capability"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    default_code = "payload_too_large"


class AuthenticationFailed(LLMSpoolError):
    """No API key, or one that is unknown or revoked."""

    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"
    should_retry = False

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "www-authenticate": "Bearer"}


class PermissionDenied(LLMSpoolError):
    """A valid key asked for something it may not use (an admin route, another model)."""

    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"
    should_retry = False


class ModelNotFound(LLMSpoolError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"
    should_retry = False

    def __init__(self, model: str):
        super().__init__(f"The model '{model}' does not exist.", param="model")


class IdempotencyConflict(InvalidRequest):
    default_code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was already used for a different request.",
            param="Idempotency-Key",
        )


class RequestNotFound(LLMSpoolError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "request_not_found"
    should_retry = False

    def __init__(self, request_id: str):
        super().__init__(
            f"No reply is kept for request '{request_id}': unknown, or expired.",
            param="request_id",
        )


class NotFound(LLMSpoolError):
    """A file or batch id that does not exist (any more)."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"
    should_retry = False


class QueueFull(LLMSpoolError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "queue_full"

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class RateLimitExceeded(QueueFull):
    """A key went over its requests/min, tokens/min or concurrent-requests limit."""

    default_code = "rate_limit_exceeded"


class ServiceUnavailable(LLMSpoolError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"


class ModelOffline(ServiceUnavailable):
    default_code = "model_offline"
    should_retry = False

    def __init__(self, model: str):
        super().__init__(
            f"The model '{model}' is offline: an operator took it out of service. Try again later.",
            param="model",
        )


class NoControlLoop(ServiceUnavailable):
    default_code = "no_control_loop"

    def __init__(self) -> None:
        super().__init__(
            "no control loop is running (start `llmspool serve` or `llmspool controller`)"
        )


class RegistryUnavailable(ServiceUnavailable):
    """The worker registry (an external one, such as etcd) cannot be reached: who serves what
    is unknown for now; jobs still flow through Redis."""

    default_code = "registry_unavailable"


class DeadlineExceeded(LLMSpoolError):
    status_code = 504
    error_type = "timeout"
    default_code = "deadline_exceeded"
    should_retry = False


class EngineError(LLMSpoolError):
    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"


class JobFailed(EngineError):
    """The job failed (or killed its worker) ``max_attempts`` times; it is in the dead stream."""

    default_code = "job_failed"
    should_retry = False


class StreamInterrupted(EngineError):
    """The worker of a streamed reply failed after sending text; the retry's text cannot be
    spliced into the stream. Retrying the whole request can succeed."""

    default_code = "stream_interrupted"


class ConfigError(LLMSpoolError):
    """A models file or a setting is wrong; raised at start with the offending key named."""


def _subclasses(cls: type[LLMSpoolError]) -> list[type[LLMSpoolError]]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


def from_wire(kind: str, message: str, code: str | None, param: str | None) -> LLMSpoolError:
    """Rebuild an error that crossed Redis in a reply frame (``kind`` is its class name)."""
    by_name = {cls.__name__: cls for cls in _subclasses(LLMSpoolError)}
    cls = by_name.get(kind, EngineError)
    if cls in (
        ModelNotFound,
        NotFound,
        QueueFull,
        RateLimitExceeded,
        IdempotencyConflict,
        RequestNotFound,
        ModelOffline,
    ):
        cls = EngineError
    error = cls(message, param=param, code=code)
    return error
