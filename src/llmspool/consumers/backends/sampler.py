"""How one sequence of the batched decode loop chooses its tokens.

transformers' own logits processors and warpers (those ``model.generate`` builds from the same
parameters) applied to the sequence's row of a step's logits, then the highest score (greedy,
at temperature 0) or a draw from the sequence's own ``torch.Generator`` when it has a seed, so
its tokens do not depend on what else is batched with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmspool.consumers.backends.base import SamplingParams


class RowSampler:
    """The token choice of one sequence: its processors, greedy or sampled, its generator."""

    def __init__(
        self, params: SamplingParams, device: Any, prompt_tokens: int, limit: int, ends: set[int]
    ) -> None:
        """``limit``: tokens the sequence may generate; ``ends``: the tokens that
        ``min_tokens`` (or ``ignore_eos``) keeps out. transformers' ``ValueError`` for a
        parameter it refuses comes from here."""
        self.greedy = params.temperature <= 0
        self.processors = processors(params, prompt_tokens, limit, ends, device)
        self.generator = _generator(params.seed, device)

    @property
    def takes_argmax(self) -> bool:
        """Whether the row's plain argmax is its choice (nothing to process, no draw)."""
        return self.greedy and not self.processors

    def choose(self, logits: Any, ids: Callable[[], list[int]]) -> int:
        """One token from ``logits`` (one row); ``ids()``: the sequence's tokens so far."""
        import torch

        scores = logits[None].float()
        if self.processors:
            scores = self.processors(torch.tensor([ids()], device=logits.device), scores)
        if self.greedy:
            return int(scores.argmax())
        probs = scores[0].softmax(dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def processors(
    params: SamplingParams, prompt_tokens: int, limit: int, ends: set[int], device: Any = "cpu"
) -> Any:
    """The ``LogitsProcessorList`` for ``params``, in ``model.generate``'s order (and from the
    same arguments as the per-job path's ``generation_kwargs``), its tensors on ``device``."""
    from transformers import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    chain = LogitsProcessorList()
    if params.repetition_penalty is not None:
        chain.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    least = limit if params.ignore_eos else min(params.min_tokens, limit)
    if least > 0 and ends:
        ends_at = sorted(ends)
        chain.append(MinNewTokensLengthLogitsProcessor(prompt_tokens, least, ends_at, str(device)))
    if params.temperature > 0:
        chain.extend(_warpers(params))
    return chain


def _warpers(params: SamplingParams) -> list[Any]:
    from transformers import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers: list[Any] = []
    if params.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k is not None and params.top_k > 0:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    if params.min_p:
        warpers.append(MinPLogitsWarper(params.min_p))
    return warpers


def _generator(seed: int | None, device: Any) -> Any:
    """A generator of the sequence's own for a seed; None: torch's process-wide one."""
    import torch

    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
