"""Every Redis key and channel name llmspool uses: built here and nowhere else.

Braces are literal: ``{<model>}`` is a Redis Cluster hash tag, so all of one model's keys share
a slot. Inspect them with plain redis-cli, e.g.
``redis-cli XINFO GROUPS 'llmspool:{gemma-3-270m}:requests'``.
"""

from __future__ import annotations

import hashlib

PREFIX = "llmspool"

#: The consumer group every model stream is read through.
GROUP = "workers"


def cancel_channel(model: str) -> str:
    """Pub/sub channel carrying the ids of ``model``'s requests whose client went away: only
    that model's workers hear them (sharded with the model's keys on a cluster)."""
    return f"{PREFIX}:{{{model}}}:cancel"


def requests_stream(model: str) -> str:
    """Interactive jobs for ``model``."""
    return f"{PREFIX}:{{{model}}}:requests"


def batch_stream(model: str) -> str:
    """Batch jobs for ``model``, served when interactive work leaves capacity."""
    return f"{PREFIX}:{{{model}}}:batch"


def dead_stream(model: str) -> str:
    """Jobs that failed ``max_attempts`` times, with their last error."""
    return f"{PREFIX}:{{{model}}}:dead"


def last_errors(model: str) -> str:
    """Hash: stream entry id -> the last error a retried job of ``model`` failed with."""
    return f"{PREFIX}:{{{model}}}:errors"


def handbacks(model: str) -> str:
    """Hash: stream entry id -> deliveries handed back unrun (unknown schema, shutdown);
    they do not count as attempts."""
    return f"{PREFIX}:{{{model}}}:handbacks"


# ------------------------------------------------------------------ fair turns between tenants
# Each work stream (requests, batch) has a waiting room in front of it, holding the jobs that
# wait their tenant's turn; shared/tenants.py moves them. All share the model's hash tag.

#: The tenant of requests made without an API key (keys off).
ANONYMOUS_TENANT = "anonymous"


def waiting(stream: str) -> str:
    """Stream: every job of ``stream`` that waits for its tenant's turn (XLEN: how many)."""
    return f"{stream}:waiting"


def tenant_queue(stream: str, tenant: str) -> str:
    """List: the waiting entry ids of one tenant, oldest first."""
    return f"{stream}:tenant:{tenant}"


def tenant_queue_prefix(stream: str) -> str:
    """What :func:`tenant_queue` puts before the tenant (the take script appends it)."""
    return tenant_queue(stream, "")


def turns(stream: str) -> str:
    """Sorted set: the tenants with jobs waiting, scored by the virtual time of their turn."""
    return f"{stream}:turns"


def shares(stream: str) -> str:
    """Hash: ``clock`` (the virtual time of the last turn), ``weight:<tenant>``,
    ``pass:<tenant>`` (the virtual time of the tenant's next turn)."""
    return f"{stream}:shares"


def doorbell(stream: str) -> str:
    """List: one element per job enqueued since a worker last found nothing to take; idle
    workers wait on it with BLPOP."""
    return f"{stream}:doorbell"


def model_streams(model: str) -> tuple[str, str]:
    """The work streams of ``model``, highest priority first."""
    return requests_stream(model), batch_stream(model)


def timeline(model: str) -> str:
    """Per-second TTFT and throughput tallies of ``model``, written by every API process."""
    return f"{PREFIX}:{{{model}}}:timeline"


#: The request log: one entry per request, capped with ``MAXLEN ~`` (see shared/requestlog.py).
REQUEST_LOG = f"{PREFIX}:requestlog"


def feedback(request_id: str) -> str:
    """Feedback on one request (hash with a TTL), joined into its request-log record."""
    return f"{PREFIX}:feedback:{request_id}"


def reply_channel(request_id: str) -> str:
    """Live reply frames of one request."""
    return f"{PREFIX}:reply:{request_id}"


def reply_log(request_id: str) -> str:
    """The same frames kept for a short time, so a reply can be resumed."""
    return f"{PREFIX}:replylog:{request_id}"


def idempotency(tenant: str, key: str) -> str:
    """The request an ``Idempotency-Key`` header of one tenant (API key id) was first used for
    (the header is hashed: it is the client's text)."""
    return f"{PREFIX}:idempotency:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"


def response(response_id: str) -> str:
    """A stored response of ``/v1/responses`` (string, JSON, with a TTL): the response object
    and its conversation, for ``previous_response_id`` and ``GET /v1/responses/{id}``."""
    return f"{PREFIX}:response:{response_id}"


def worker(worker_id: str) -> str:
    """Registry entry of one live worker."""
    return f"{PREFIX}:worker:{worker_id}"


def worker_pattern() -> str:
    """SCAN pattern matching every registry entry."""
    return f"{PREFIX}:worker:*"


def producer_channel(producer_id: str) -> str:
    """A producer's own channel; its relay stays subscribed to it for its lifetime."""
    return f"{PREFIX}:producer:{producer_id}"


# --------------------------------------------------------------------------- control plane


def control(model: str) -> str:
    """Control state of ``model`` (hash): ``pin`` (a pinned worker count), ``offline`` ("1"),
    ``restart`` (the generation a rolling restart asked for)."""
    return f"{PREFIX}:{{{model}}}:control"


def drain(worker_id: str) -> str:
    """A request that one worker stop (string ``drain`` or ``stop``, with a TTL)."""
    return f"{PREFIX}:drain:{worker_id}"


#: The running control loop's view (hash, with a TTL): ``desired:<model>``, ``driver``, ``beat``.
CONTROLLER = f"{PREFIX}:controller"

#: Reload requests and their outcome (hash): ``requested`` (a counter bumped by `llmspool reload`),
#: ``applied`` (the last request the control loop handled), ``result`` (``ok`` or the error).
RELOAD = f"{PREFIX}:reload"

#: The models file in force (string, JSON), written by the control loop on start and on reload;
#: API processes follow it (``CONFIG_GENERATION`` tells them when it changed).
CONFIG = f"{PREFIX}:config"
CONFIG_GENERATION = f"{PREFIX}:config:generation"
# ---------------------------------------------------------------------------- batch jobs
# One batch's keys share the hash tag ``{<batch_id>}``, one file's keys ``{<file_id>}``.

#: Sorted set of every file id, scored by creation time (``GET /v1/files`` pages through it).
FILES_INDEX = f"{PREFIX}:files"

#: Sorted set of every batch id, scored by creation time.
BATCHES_INDEX = f"{PREFIX}:batches"

#: Set of batches not yet in a final state; the lifecycle sweep looks only at these.
BATCHES_ACTIVE = f"{PREFIX}:batches:active"

#: The arq queue the batch lifecycle jobs (validate, fan out, finalize, sweep) run from.
BATCH_JOBS_QUEUE = f"{PREFIX}:batchjobs"


#: The arq name of the periodic sweep; each run's job id is ``<name>:<its time in ms>``. Like
#: :func:`batch_job_id`, it starts with ``llmspool:``, so every job key arq writes
#: (:func:`arq_job` and the rest, below) matches ``arq:*:llmspool:*`` in a Redis ACL.
BATCH_SWEEP_JOB = f"{PREFIX}:sweep:batches"


def file(file_id: str) -> str:
    """Hash: one uploaded or generated file's metadata (the OpenAI file object)."""
    return f"{PREFIX}:file:{{{file_id}}}"


def file_content(file_id: str) -> str:
    """String: one file's bytes."""
    return f"{PREFIX}:file:{{{file_id}}}:content"


def batch(batch_id: str) -> str:
    """Hash: one batch's state, timestamps and counters."""
    return f"{PREFIX}:batch:{{{batch_id}}}"


def batch_results(batch_id: str) -> str:
    """Hash: line number → that line's result, written once (HSETNX)."""
    return f"{PREFIX}:batch:{{{batch_id}}}:results"


def batch_claims(batch_id: str) -> str:
    """Hash: line number → the stream entry id that runs it (a re-queued copy is skipped)."""
    return f"{PREFIX}:batch:{{{batch_id}}}:claims"


def batch_job_id(step: str, batch_id: str) -> str:
    """The arq job id of one lifecycle step of one batch: enqueued twice, it runs once."""
    return f"{PREFIX}:{step}:{batch_id}"


# ------------------------------------------------------------------- arq's keys (batch steps)
# arq names these itself (``arq.constants``, from the queue name and the job ids above); they are
# declared here so that every name llmspool's processes write is in this module.
# tests/test_keys.py checks them against arq.

#: String: the batch worker's health line (arq writes it every ``health_check_interval``).
BATCH_JOBS_HEALTH_CHECK = f"{BATCH_JOBS_QUEUE}:health-check"

#: Sorted set: ids of arq jobs asked to abort (llmspool never aborts; arq reads it).
ARQ_ABORT = "arq:abort"


def arq_job(job_id: str) -> str:
    """String: one queued arq job (its function and arguments, pickled)."""
    return f"arq:job:{job_id}"


def arq_in_progress(job_id: str) -> str:
    """String with a TTL: the arq job runs now (a second enqueue of it is a no-op)."""
    return f"arq:in-progress:{job_id}"


def arq_retry(job_id: str) -> str:
    """Integer: how many times arq has tried the job."""
    return f"arq:retry:{job_id}"


def arq_result(job_id: str) -> str:
    """String: an arq job's result (batch steps keep none: ``keep_result=0``)."""
    return f"arq:result:{job_id}"


#: API keys and their limit counters live under their own prefix, so a Redis ACL can give the
#: workers ``~llmspool:*`` without letting them read or mint keys (docs/security.md).
AUTH_PREFIX = f"{PREFIX}-auth"


def api_key(digest: str) -> str:
    """An API key's record (hash), found by the SHA-256 hex digest of the key."""
    return f"{AUTH_PREFIX}:apikey:{digest}"


#: Hash from key id to its digest: the list `llmspool keys list` shows.
API_KEY_INDEX = f"{AUTH_PREFIX}:apikeys"


def key_limits(key_id: str) -> tuple[str, str, str]:
    """Requests/min bucket, tokens/min bucket, concurrent-request set of one key (one slot)."""
    base = f"{AUTH_PREFIX}:{{apikey-{key_id}}}"
    return f"{base}:rpm", f"{base}:tpm", f"{base}:inflight"
