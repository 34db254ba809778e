"""Whole replies from reply frames: the choices of a chat completion or a text completion.

The API (a non-streamed reply) and the batch runner (a batch line's result) build the same
objects from the same frames, here. A frame belongs to choice ``frame.choice``; its text and
logprobs (and tool-call pieces) add to that choice, its finish reason ends it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from llmspool.shared.messages import ReplyFrame
from llmspool.shared.protocol import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionTokenLogprob,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    FinishReason,
    ToolCallDelta,
    Usage,
    assistant_message,
)


@dataclass
class Choice:
    """One choice as its frames made it."""

    parts: list[str] = field(default_factory=list)
    logprobs: list[ChatCompletionTokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def fold(frames: Iterable[ReplyFrame]) -> list[Choice]:
    """The choices of one attempt's frames, by index."""
    choices: dict[int, Choice] = {}
    for frame in frames:
        choice = choices.setdefault(frame.choice, Choice())
        choice.parts.append(frame.text)
        if frame.logprobs is not None:
            choice.logprobs = (choice.logprobs or []) + frame.logprobs
        choice.finish_reason = frame.finish_reason or choice.finish_reason
        if frame.tool_calls:
            choice.tool_calls += frame.tool_calls
    return [choices[i] for i in sorted(choices)]


def chat_completion(
    request_id: str,
    created: int,
    model: str,
    frames: list[ReplyFrame],
    usage: Usage | None,
    legacy_functions: bool = False,
) -> ChatCompletion:
    """``legacy_functions``: the request used ``functions``, its call is ``function_call``."""
    return ChatCompletion(
        id=request_id,
        created=created,
        model=model,
        choices=[
            ChatCompletionChoice(
                index=i,
                message=assistant_message(choice.text, choice.tool_calls, legacy_functions),
                logprobs=None
                if choice.logprobs is None
                else ChoiceLogprobs(content=choice.logprobs),
                finish_reason=choice.finish_reason,
            )
            for i, choice in enumerate(fold(frames))
        ],
        usage=usage or Usage(),
    )


def completion(
    request_id: str, created: int, model: str, frames: list[ReplyFrame], usage: Usage | None
) -> Completion:
    return Completion(
        id=request_id,
        created=created,
        model=model,
        choices=[
            CompletionChoice(
                index=i,
                text=choice.text,
                logprobs=None
                if choice.logprobs is None
                else completion_logprobs(choice.logprobs, _echoed(choice)),
                finish_reason=choice.finish_reason,
            )
            for i, choice in enumerate(fold(frames))
        ],
        usage=usage or Usage(),
    )


def _echoed(choice: Choice) -> int:
    """Characters before the first token with a logprob: an echoed prompt."""
    made = sum(len(token.token) for token in choice.logprobs or [])
    return max(len(choice.text) - made, 0)


def completion_logprobs(
    tokens: list[ChatCompletionTokenLogprob], offset: int = 0
) -> CompletionLogprobs:
    """Tokens' logprobs in the legacy completions shape; ``offset``: the first one's place in
    the choice's text."""
    result = CompletionLogprobs()
    for token in tokens:
        result.tokens.append(token.token)
        result.token_logprobs.append(token.logprob)
        result.top_logprobs.append({top.token: top.logprob for top in token.top_logprobs})
        result.text_offset.append(offset)
        offset += len(token.token)
    return result
