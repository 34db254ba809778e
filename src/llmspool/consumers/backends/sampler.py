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

    def __init__(self, params: SamplingParams, device: Any) -> None:
        self.greedy = params.temperature <= 0
        self.processors = processors(params)
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


def processors(params: SamplingParams) -> Any:
    """The ``LogitsProcessorList`` for ``params``, in ``model.generate``'s order."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    chain = LogitsProcessorList()
    if params.temperature > 0:
        if params.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(params.temperature))
        if params.top_p < 1.0:
            chain.append(TopPLogitsWarper(params.top_p))
    return chain


def _generator(seed: int | None, device: Any) -> Any:
    """A generator of the sequence's own for a seed; None: torch's process-wide one."""
    import torch

    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
