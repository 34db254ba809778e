"""The transformers backend's batched decode loop: concurrent jobs share every forward pass.

One thread owns the model. A job joins through an inbox; it is prefilled alone (its own
``DynamicCache``), samples its first token at once (time to first token does not wait for the
batch), then joins the running batch before the next step: its cache is left-padded to the
batch's length and concatenated along the batch axis. Every step feeds one token per sequence,
with a 2-D attention mask (zeros on padding) and per-row position ids, so a padded row computes
what it would alone. A sequence that finished or was cancelled leaves before the next step: its
rows are dropped, and cache columns that are padding in every remaining row are trimmed.

Each sequence chooses its tokens with its own parameters and, when it has a seed, its own
``torch.Generator`` (:class:`RowSampler`): its tokens do not depend on what else is batched
with it. Stopping is per sequence: end of sequence, ``max_tokens``, or a stop
string (:class:`StopMatcher`).
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmspool.consumers.backends.base import Delta, SamplingParams, StopMatcher
from llmspool.consumers.backends.sampler import RowSampler
from llmspool.shared.errors import EngineError
from llmspool.shared.protocol import ChatCompletionTokenLogprob, FinishReason, Usage

#: Hands an item (a :class:`Delta`, or an exception to raise) to the job's event loop.
Emit = Callable[[object], None]
#: Called before each decode step with the request ids in the batch (tests, instrumentation).
StepHook = Callable[[tuple[str, ...]], None]


class TokenRecorder(Protocol):
    """Makes the logprobs of a sequence's tokens (the backend's), from each step's logits."""

    logits: Any  # the row of raw logits the next ``add`` reads

    def add(self, token: int) -> None: ...

    def take(self) -> list[ChatCompletionTokenLogprob] | None: ...


_STOP = object()


@dataclass(eq=False)
class Sequence:
    """One job in the decode loop: its prompt, sampling, stopping and output channel."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    limit: int
    emit: Emit
    sampler: RowSampler
    #: token ids that end it (the model's end of sequence, ``stop_token_ids``)
    ends: frozenset[int] = frozenset()
    #: the logprobs of its tokens, when the job asked for them
    recorder: TokenRecorder | None = None
    cancelled: bool = False
    finish: FinishReason | None = None
    tokens: list[int] = field(default_factory=list)
    matcher: StopMatcher = field(init=False)
    _pending: int = 0  # tokens whose text is not released yet
    # Incremental detokenizing (vLLM's): text is released from the decode of a few tokens.
    _prefix_offset: int = 0
    _read_offset: int = 0

    def __post_init__(self) -> None:
        self.matcher = StopMatcher(self.params.stop)

    def ids(self) -> list[int]:
        """The prompt and the tokens so far (for processors that read them)."""
        return self.prompt_ids + self.tokens

    @property
    def done(self) -> bool:
        return self.cancelled or self.finish is not None

    def accept(self, token: int, decoder: BatchDecoder) -> None:
        """Take one sampled token: release its text, and finish if it ends the sequence."""
        if token in self.ends:
            return self._end("stop", decoder)
        self.tokens.append(token)
        self._pending += 1
        self._release(self._new_text(decoder.text_of))
        if self.matcher.matched:
            return self._end("stop", decoder)
        if len(self.tokens) >= self.limit:
            self._end("length", decoder)

    def _new_text(self, text_of: Callable[[list[int]], str], final: bool = False) -> str:
        """The text the tokens since the last release add: the decode of a window of tokens
        (a few before them give the context a tokenizer needs for spaces) minus the decode of
        that context."""
        prefix = text_of(self.tokens[self._prefix_offset : self._read_offset])
        full = text_of(self.tokens[self._prefix_offset :])
        if len(full) <= len(prefix) or (full.endswith("\ufffd") and not final):
            return ""  # nothing yet, or the rest of a character comes with the next token
        self._prefix_offset, self._read_offset = self._read_offset, len(self.tokens)
        return full[len(prefix) :]

    def _release(self, text: str) -> None:
        released = self.matcher.feed(text) if text else ""
        logprobs = self.recorder.take() if self.recorder is not None else None
        if released or logprobs:
            self.emit(Delta(text=released, tokens=self._pending, logprobs=logprobs))
            self._pending = 0

    def _end(self, reason: FinishReason, decoder: BatchDecoder) -> None:
        if not self.matcher.matched:
            self._release(self._new_text(decoder.text_of, final=True))
        self.finish = "stop" if self.matcher.matched else reason
        tail = "" if self.matcher.matched else self.matcher.flush()
        logprobs = None if self.matcher.matched or self.recorder is None else self.recorder.take()
        prompt, completion = len(self.prompt_ids), len(self.tokens)
        usage = Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
        end = Delta(text=tail, tokens=self._pending, finish_reason=self.finish, usage=usage)
        end.logprobs = logprobs
        self.emit(end)


@dataclass
class _Batch:
    """The running batch: its sequences, one shared KV cache, mask, positions, next inputs."""

    rows: list[Sequence] = field(default_factory=list)
    cache: Any = None
    mask: Any = None  # [rows, cached tokens], 1 where a row has a real token
    positions: Any = None  # [rows], the position of each row's next token
    next_ids: Any = None  # [rows], each row's last sampled token, fed at the next step

    def add(self, sequence: Sequence, cache: Any, token: int, device: Any) -> None:
        """Append a prefilled sequence; the shorter side (it or the batch) is left-padded."""
        import torch

        length = len(sequence.prompt_ids)
        mask = torch.ones((1, length), dtype=torch.long, device=device)
        if self.mask is None:
            self.cache = cache
        else:
            width = self.mask.shape[1]
            cache, mask = _left_pad(cache, mask, width - length)
            self.cache, self.mask = _left_pad(self.cache, self.mask, length - width)
            _concat(self.cache, cache)
        self.mask = _stack(self.mask, mask)
        self.positions = _stack(self.positions, torch.tensor([length], device=device))
        self.next_ids = _stack(self.next_ids, torch.tensor([token], device=device))
        self.rows.append(sequence)

    def keep(self, rows: list[int], device: Any) -> None:
        """Keep only ``rows``, then trim the columns that are padding in all of them."""
        import torch

        index = torch.tensor(rows, dtype=torch.long, device=device)
        self.rows = [self.rows[i] for i in rows]
        mask = self.mask.index_select(0, index)
        first = int(mask.any(dim=0).nonzero()[0])
        self.mask = mask[:, first:]
        self.positions = self.positions.index_select(0, index)
        self.next_ids = self.next_ids.index_select(0, index)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]


class BatchDecoder:
    """The decode loop: one thread that owns the model and runs every job's steps together."""

    def __init__(self, lm: Any, text_of: Callable[[list[int]], str]) -> None:
        self.lm = lm
        self.text_of = text_of
        self.device = lm.device
        accepted = inspect.signature(lm.forward).parameters
        # transformers 5 names the KV cache argument ``cache``; 4.x ``past_key_values``.
        self.cache_arg = "cache" if "cache" in accepted else "past_key_values"
        # A prefill needs the logits of the last position only.
        self.last_only = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self.on_step: StepHook | None = None
        self.steps = 0
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._batch = _Batch()
        self._thread = threading.Thread(target=self._run, name="decoder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, sequence: Sequence) -> None:
        self._inbox.put(sequence)

    def stop(self) -> None:
        """End the loop; sequences still running get an error."""
        self._inbox.put(_STOP)
        self._thread.join()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while self._admit():
                self._leave()
                if self._batch.rows:
                    self._guarded(self._step, list(self._batch.rows))
        self._fail(list(self._batch.rows), EngineError("the transformers backend stopped"))

    def _admit(self) -> bool:
        """Prefill what waits in the inbox (blocking while the batch is empty); False: stop."""
        block = not self._batch.rows
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            if item is _STOP:
                self._drain()
                return False
            if isinstance(item, Sequence) and not item.cancelled:
                self._guarded(self._prefill, [item], item)
            block = not self._batch.rows

    def _drain(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Sequence):
                self._fail([item], EngineError("the transformers backend stopped"))

    def _guarded(self, work: Callable[..., None], involved: list[Sequence], *args: Any) -> None:
        """Run ``work``; an engine failure fails the sequences involved, and the batch resets."""
        try:
            work(*args)
        except Exception as exc:
            self._fail(involved, exc)
            if any(s in self._batch.rows for s in involved):
                self._batch = _Batch()

    @staticmethod
    def _fail(sequences: list[Sequence], exc: BaseException) -> None:
        for sequence in sequences:
            if not sequence.done:
                sequence.finish = "stop"
                sequence.emit(exc)

    # ------------------------------------------------------------------ prefill and steps

    def _prefill(self, sequence: Sequence) -> None:
        import torch
        from transformers import DynamicCache

        ids = torch.tensor([sequence.prompt_ids], device=self.device)
        cache = DynamicCache(config=self.lm.config)
        kwargs = {self.cache_arg: cache, **self.last_only}
        out = self.lm(input_ids=ids, use_cache=True, **kwargs)
        (token,) = self._sample(out.logits[:, -1, :], [sequence])
        sequence.accept(token, self)
        if not sequence.done:
            self._batch.add(sequence, cache, token, self.device)

    def _step(self) -> None:
        import torch

        batch = self._batch
        if self.on_step is not None:
            self.on_step(tuple(s.request_id for s in batch.rows))
        ones = torch.ones((len(batch.rows), 1), dtype=batch.mask.dtype, device=self.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        out = self.lm(
            input_ids=batch.next_ids[:, None],
            attention_mask=batch.mask,
            position_ids=batch.positions[:, None],
            use_cache=True,
            **{self.cache_arg: batch.cache},  # the cache grows in place
        )
        self.steps += 1
        batch.positions = batch.positions + 1
        tokens = self._sample(out.logits[:, -1, :], batch.rows)
        batch.next_ids = torch.tensor(tokens, device=self.device)
        for sequence, token in zip(batch.rows, tokens, strict=True):
            sequence.accept(token, self)

    def _sample(self, logits: Any, rows: list[Sequence]) -> list[int]:
        """One token per row, each with its row's parameters and generator."""
        chosen: list[int] = logits.argmax(dim=-1).tolist()
        for i, sequence in enumerate(rows):
            if not sequence.sampler.takes_argmax:
                chosen[i] = sequence.sampler.choose(logits[i], sequence.ids)
            recorder = sequence.recorder
            if recorder is not None and chosen[i] not in sequence.ends:
                recorder.logits = logits[i]
                recorder.add(chosen[i])
        return chosen

    # ------------------------------------------------------------------ joining and leaving

    def _leave(self) -> None:
        """Drop finished and cancelled rows, and the columns no remaining row uses."""
        keep = [i for i, s in enumerate(self._batch.rows) if not s.done]
        if not keep:
            self._batch = _Batch()
        elif len(keep) < len(self._batch.rows):
            self._batch.keep(keep, self.device)


def _stack(rows: Any, more: Any) -> Any:
    """``more`` appended to ``rows`` along the batch axis (``rows`` may be None: no batch)."""
    import torch

    return more if rows is None else torch.cat([rows, more], dim=0)


def _left_pad(cache: Any, mask: Any, width: int) -> tuple[Any, Any]:
    """``cache`` and ``mask`` with ``width`` masked columns added on the left (if positive)."""
    import torch.nn.functional as F

    if width <= 0:
        return cache, mask
    for layer in cache.layers:
        layer.keys = F.pad(layer.keys, (0, 0, width, 0))
        layer.values = F.pad(layer.values, (0, 0, width, 0))
    return cache, F.pad(mask, (width, 0))


def _concat(cache: Any, other: Any) -> None:
    """Append ``other``'s rows to ``cache`` (same number of columns)."""
    import torch

    for layer, extra in zip(cache.layers, other.layers, strict=True):
        layer.keys = torch.cat([layer.keys, extra.keys], dim=0)
        layer.values = torch.cat([layer.values, extra.values], dim=0)


def batchable(lm: Any) -> bool:
    """Whether ``lm``'s cache has only full-attention layers, whose rows this loop can pad."""
    from transformers import DynamicCache

    layers = DynamicCache(config=lm.config).layers
    return all(type(layer).__name__ == "DynamicLayer" for layer in layers)
