"""The Gemma 3 turn template.

gemma-3-270m's GGUF carries no ``tokenizer.chat_template``; without one llama-cpp-python falls
back to a Llama-2 prompt and the model generates nothing. This renders Gemma 3's own template:
system (and developer) messages are folded into the first user turn, assistant turns are
``model`` turns, and generation starts a ``model`` turn. Generation stops on token ids 1
(``<eos>``) and 106 (``<end_of_turn>``).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmspool.shared.protocol import ChatMessage

STOP_TOKEN_IDS = (1, 106)
_SYSTEM_ROLES = ("system", "developer")


def render(messages: Sequence[ChatMessage]) -> str:
    """The prompt text (without ``<bos>``, which the tokenizer adds) for ``messages``."""
    system = "\n\n".join(m.text().strip() for m in messages if m.role in _SYSTEM_ROLES)
    turns = [m for m in messages if m.role not in _SYSTEM_ROLES]
    parts = []
    for i, message in enumerate(turns):
        role = "model" if message.role == "assistant" else "user"
        text = message.text().strip()
        if i == 0 and system:
            text = f"{system}\n\n{text}"
        parts.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
    if not turns and system:
        parts.append(f"<start_of_turn>user\n{system}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n")
    return "".join(parts)
