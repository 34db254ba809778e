"""Prometheus metric definitions, named as vLLM names its own so that vLLM dashboards read them.

Every family has the prefix ``llmspool:`` and a ``model_name`` label. Each process builds its own
:class:`~prometheus_client.CollectorRegistry` (never the global default one): the API holds an
:class:`ApiMetrics`, a worker a :class:`WorkerMetrics`. Families whose values live in Redis
(queue depth, workers) are computed at scrape time by :mod:`llmspool.producer.queue_metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "llmspool:"

# Buckets as vLLM's, with finer steps below 10 ms: a relay hop is a few milliseconds.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

# 1-2-5 steps, as vLLM's token-count histograms.
TOKEN_BUCKETS = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000,
)  # fmt: skip

#: Finish reasons whose success counters exist from the start (at zero) for every model.
FINISH_REASONS = ("stop", "length", "abort")

MODEL = "model_name"


@dataclass(frozen=True)
class ModelMetrics:
    """The API's metrics of one model, bound to its label once (cheap on the per-frame path)."""

    ttft: Histogram
    itl: Histogram
    e2e: Histogram
    queue_time: Histogram
    prompt_tokens: Counter
    generation_tokens: Counter
    prompt_tokens_per_request: Histogram
    generation_tokens_per_request: Histogram
    running: Gauge
    waiting: Gauge
    frames_relayed: Counter
    tokens_relayed: Counter
    success: Counter
    errors: Counter
    model: str

    def succeeded(self, finish_reason: str) -> None:
        self.success.labels(self.model, finish_reason).inc()

    def failed(self, error_type: str) -> None:
        self.errors.labels(self.model, error_type).inc()


class ApiMetrics:
    """Every metric family the API process exposes on ``/metrics``."""

    def __init__(self, models: list[str]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from the request reaching the API to its first token reaching the API.",
            [MODEL], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self._itl = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Time between tokens as the API receives them (a frame of k tokens after a gap "
            "of t counts k tokens of t/k).",
            [MODEL], buckets=ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self._e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "Time from the request reaching the API to its last frame reaching the API.",
            [MODEL], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._queue = Histogram(
            PREFIX + "request_queue_time_seconds",
            "Time a job waited in its Redis stream, from enqueue to a worker picking it up.",
            [MODEL], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._prompt_hist = Histogram(
            PREFIX + "request_prompt_tokens",
            "Prompt tokens per finished request.",
            [MODEL], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self._generation_hist = Histogram(
            PREFIX + "request_generation_tokens",
            "Generated tokens per finished request.",
            [MODEL], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self._prompt = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens of finished requests.", [MODEL], registry=r
        )
        self._generation = Counter(
            PREFIX + "generation_tokens",
            "Generated tokens of finished requests.",
            [MODEL],
            registry=r,
        )
        self._success = Counter(
            PREFIX + "request_success",
            "Requests that finished, by finish reason (abort: the client went away).",
            [MODEL, "finished_reason"],
            registry=r,
        )
        self._errors = Counter(
            PREFIX + "request_errors",
            "Requests that ended in an error, by error type (the OpenAI error code).",
            [MODEL, "error_type"],
            registry=r,
        )
        self._running = Gauge(
            PREFIX + "num_requests_running",
            "Requests of this API process a worker is generating (their first frame arrived).",
            [MODEL],
            registry=r,
        )
        self._waiting = Gauge(
            PREFIX + "num_requests_waiting",
            "Requests of this API process waiting for a worker (no frame arrived yet).",
            [MODEL],
            registry=r,
        )
        self._frames = Counter(
            PREFIX + "reply_frames_relayed",
            "Reply frames the API received from workers and relayed to clients.",
            [MODEL],
            registry=r,
        )
        self._tokens = Counter(
            PREFIX + "reply_tokens_relayed",
            "Tokens carried by the reply frames the API relayed.",
            [MODEL],
            registry=r,
        )
        self._bound: dict[str, ModelMetrics] = {}
        for model in models:
            self.model(model)

    def model(self, name: str) -> ModelMetrics:
        """The metrics of model ``name`` (created at zero on first use)."""
        bound = self._bound.get(name)
        if bound is None:
            bound = self._bound[name] = self._bind(name)
        return bound

    def _bind(self, name: str) -> ModelMetrics:
        for reason in FINISH_REASONS:
            self._success.labels(name, reason)
        return ModelMetrics(
            ttft=self._ttft.labels(name),
            itl=self._itl.labels(name),
            e2e=self._e2e.labels(name),
            queue_time=self._queue.labels(name),
            prompt_tokens=self._prompt.labels(name),
            prompt_tokens_per_request=self._prompt_hist.labels(name),
            generation_tokens_per_request=self._generation_hist.labels(name),
            generation_tokens=self._generation.labels(name),
            running=self._running.labels(name),
            waiting=self._waiting.labels(name),
            frames_relayed=self._frames.labels(name),
            tokens_relayed=self._tokens.labels(name),
            success=self._success,
            errors=self._errors,
            model=name,
        )


class _PublisherTotals(Collector):
    """Reads a worker publisher's plain counters at scrape time (nothing on the hot path)."""

    def __init__(self, model: str, frames: Callable[[], int], tokens: Callable[[], int]) -> None:
        self._model = model
        self._frames = frames
        self._tokens = tokens

    def collect(self) -> Iterable[Metric]:
        frames = CounterMetricFamily(
            PREFIX + "reply_frames_published",
            "Reply frames this worker published (several tokens coalesce into one frame).",
            labels=[MODEL],
        )
        frames.add_metric([self._model], self._frames())
        tokens = CounterMetricFamily(
            PREFIX + "reply_tokens_published",
            "Tokens carried by the reply frames this worker published.",
            labels=[MODEL],
        )
        tokens.add_metric([self._model], self._tokens())
        return [frames, tokens]


class _EngineTotals(Collector):
    """The engine's own counts, read at scrape time: requests it runs (as of its last step,
    where the backend reports it) and tokens it generated (aborted requests' included)."""

    def __init__(
        self, model: str, running: Callable[[], int], generated: Callable[[], int]
    ) -> None:
        self._model = model
        self._running = running
        self._generated = generated

    def collect(self) -> Iterable[Metric]:
        running = GaugeMetricFamily(
            PREFIX + "worker_engine_requests_running",
            "Requests the engine runs as of its last step (vllm); other backends: the jobs "
            "this worker runs.",
            labels=[MODEL],
        )
        running.add_metric([self._model], self._running())
        generated = CounterMetricFamily(
            PREFIX + "worker_engine_generation_tokens",
            "Tokens the engine generated, aborted requests' included (backends that count "
            "them: vllm, fake).",
            labels=[MODEL],
        )
        generated.add_metric([self._model], self._generated())
        return [running, generated]


class WorkerMetrics:
    """The engine-side metrics of one worker process, served on its optional metrics port."""

    def __init__(
        self,
        model: str,
        *,
        frames: Callable[[], int],
        tokens: Callable[[], int],
        running: Callable[[], int],
        capacity: int,
        engine_running: Callable[[], int] | None = None,
        engine_tokens: Callable[[], int] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        r = self.registry
        self.registry.register(_PublisherTotals(model, frames, tokens))
        self.registry.register(
            _EngineTotals(model, engine_running or running, engine_tokens or (lambda: 0))
        )
        self._jobs = Counter(
            PREFIX + "worker_jobs",
            "Jobs this worker settled, by outcome (a finish reason, an error code, or "
            "'cancelled').",
            [MODEL, "outcome"],
            registry=r,
        )
        gauge = Gauge(
            PREFIX + "worker_jobs_running", "Jobs this worker is running.", [MODEL], registry=r
        )
        gauge.labels(model).set_function(lambda: float(running()))
        Gauge(
            PREFIX + "worker_capacity", "Jobs this worker runs at once.", [MODEL], registry=r
        ).labels(model).set(capacity)
        self.first_token = Histogram(
            PREFIX + "worker_time_to_first_token_seconds",
            "Time from this worker picking a job up to its first token (engine side).",
            [MODEL], buckets=TTFT_BUCKETS, registry=r,
        ).labels(model)  # fmt: skip
        self.job_time = Histogram(
            PREFIX + "worker_job_seconds",
            "Time from this worker picking a job up to its final frame.",
            [MODEL], buckets=LATENCY_BUCKETS, registry=r,
        ).labels(model)  # fmt: skip

    def settled(self, outcome: str) -> None:
        self._jobs.labels(self.model, outcome).inc()


class MetricsServer:
    """A registry served on its own port by prometheus-client's threaded HTTP server (it never
    touches the event loop)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
        """Serve ``registry`` on ``host:port`` (0: any free port)."""
        server, thread = start_http_server(port, addr=host, registry=registry)
        return cls(server, thread)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def stop(self) -> None:
        """Blocking: call it from a thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def observe_many(histogram: Histogram, value: float, count: int) -> None:
    """The same as ``count`` calls of ``histogram.observe(value)``, in one step.

    A coalesced frame of k tokens is k inter-token latencies; observing them one by one was
    the API's largest cost per token. This adds to the sum and the one bucket directly, as
    prometheus_client's ``observe`` does, and falls back to a loop if its internals change."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if count == 1 or bounds is None or buckets is None or total is None:
        for _ in range(count):
            histogram.observe(value)
        return
    total.inc(value * count)
    for bound, bucket in zip(bounds, buckets, strict=True):
        if value <= bound:
            bucket.inc(count)
            return
