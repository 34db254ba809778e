"""Tokenizing with a Hugging Face tokenizer, as vLLM's ``/tokenize`` does: shared by the
``transformers`` and ``vllm`` backends, whose engines both hold one."""

from __future__ import annotations

from typing import Any

from llmspool.consumers.backends.base import Tokenization, check_token_ids
from llmspool.shared.errors import UnsupportedCapability


def tokenize(tokenizer: Any, request: Tokenization, model: str) -> list[int]:
    """A prompt's token ids; messages are rendered through the chat template first."""
    prompt = request.prompt
    text = prompt.text
    if text is None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise UnsupportedCapability(f"the model '{model}' has no chat template")
        messages = [m.model_dump(include={"role", "content"}) for m in prompt.messages]
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=request.add_generation_prompt, tokenize=False
        )
    ids: list[int] = tokenizer.encode(text, add_special_tokens=request.add_special_tokens)
    return list(ids)


def detokenize(tokenizer: Any, tokens: list[int]) -> str:
    """The text of ``tokens`` (special tokens included, as vLLM's ``/detokenize``)."""
    check_token_ids(tokens, len(tokenizer))
    return str(tokenizer.decode(tokens))
