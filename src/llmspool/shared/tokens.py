"""The ``/tokenize`` and ``/detokenize`` protocol, as vLLM's OpenAI server has it.

``POST /tokenize`` takes a ``prompt`` (tokenized as a completion prompt) or chat ``messages``
(rendered through the model's chat template first) and answers with the token ids, their count
and the model's context length; ``POST /detokenize`` turns token ids back into text. Both are
answered by the model's workers, whose engine owns the tokenizer.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import ConfigDict, Field, model_validator

from llmspool.shared.protocol import ChatMessage, OpenAIBaseModel, RequestModel
from llmspool.shared.responses_api import document_not_set

TokenId = Annotated[int, Field(ge=0, lt=2**31)]


def _tokenize_schema(schema: dict[str, Any]) -> None:
    """The OpenAPI schema says what is checked: exactly one of ``prompt`` and ``messages``, and
    refused parameters only unset."""
    properties = schema["properties"]
    for name in ("prompt", "messages"):
        options = [o for o in properties[name].get("anyOf", ()) if o.get("type") != "null"]
        properties[name] = {"title": properties[name].get("title", name), **options[0]}
    schema["oneOf"] = [{"required": ["prompt"]}, {"required": ["messages"]}]
    document_not_set(schema, _UNSUPPORTED)


class TokenizeRequest(RequestModel):
    """vLLM's ``TokenizeCompletionRequest`` and ``TokenizeChatRequest`` in one body: exactly one
    of ``prompt`` and ``messages``."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_tokenize_schema)

    model: Annotated[str, Field(min_length=1)]
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    #: The tokenizer's own special tokens (BOS…); default: on for a prompt, off for messages,
    #: whose chat template already holds them (as vLLM).
    add_special_tokens: bool | None = None
    #: Messages only: end the rendered conversation with the start of an assistant turn.
    add_generation_prompt: bool = True
    #: Refused when set (see :func:`unsupported_tokenize_parameters`).
    return_token_strs: bool | None = None
    continue_final_message: bool | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, object] | None = None
    tools: list[object] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> Self:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        return self

    def special_tokens(self) -> bool:
        """Whether to add the tokenizer's special tokens (the default depends on the input)."""
        if self.add_special_tokens is not None:
            return self.add_special_tokens
        return self.messages is None

    def text_chars(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(m.text()) for m in self.messages or ())


#: Tokenize parameters no backend honours, with the values that mean "not set".
_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "return_token_strs": (None, False),
    "continue_final_message": (None, False),
    "chat_template": (None,),
    "chat_template_kwargs": (None, {}),
    "tools": (None, []),
}


def unsupported_tokenize_parameters(request: TokenizeRequest) -> list[str]:
    """Names of the request's parameters that llmspool's tokenizers do not honour."""
    return [name for name, ok in _UNSUPPORTED.items() if getattr(request, name) not in ok]


class TokenizeResponse(OpenAIBaseModel):
    count: int
    #: The model's context length (None while no worker has said it and none is configured).
    max_model_len: int | None
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestModel):
    model: Annotated[str, Field(min_length=1)]
    tokens: Annotated[list[TokenId], Field(max_length=1_000_000)]


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str
