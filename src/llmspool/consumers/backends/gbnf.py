"""llama.cpp grammars (GBNF) for a job's constraint on its text.

JSON schemas and regular expressions go through llama-cpp-python's own converter
(``llama_cpp.llama_grammar``, a port of llama.cpp's json-schema-to-grammar); a choice is an
alternation of literals; a grammar is taken as it is. Two adjustments keep a small model's
replies valid and finite:

- arrays without ``maxItems`` get one (:data:`MAX_ITEMS`, or ``minItems`` if larger) and free
  strings without ``maxLength`` get one (:data:`MAX_LENGTH` characters), so a small model that
  repeats itself (gemma-3-270m writes "0000…" into a string until the tokens run out) still
  closes them; any such value validates;
- a string's characters exclude control characters, which JSON does not allow raw (the
  converter lets a raw newline through, and ``json.loads`` then refuses the reply);
- whitespace between tokens may be a newline and indentation, as in llama.cpp's own rule.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

from llmspool.consumers.tools import Constraint
from llmspool.shared.errors import InvalidRequest

MAX_ITEMS = 5
MAX_LENGTH = 64
_CHAR_RULE = r'char ::= [^"\\] |'
_STRICT_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] |'
#: Whitespace between JSON tokens: llama.cpp's own rule (a model may pretty-print; a grammar
#: that refuses what the model prefers costs a whole-vocabulary pass per refused token).
_SPACE_RULE = 'space ::= " "?'
_PRETTY_SPACE_RULE = 'space ::= | " " | "\\n" [ \\t]*'


def grammar_text(constraint: Constraint) -> str:
    """The GBNF text of ``constraint`` (root rule ``root``); a 400 naming its parameter when
    it cannot be converted."""
    try:
        text = _convert(constraint)
    except (AssertionError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(
            f"'{constraint.param}' cannot be turned into a grammar: {exc}",
            param=constraint.param,
        ) from None
    return text.replace(_CHAR_RULE, _STRICT_CHAR_RULE).replace(_SPACE_RULE, _PRETTY_SPACE_RULE)


def _convert(constraint: Constraint) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    if constraint.kind == "json_schema":
        return str(json_schema_to_gbnf(json.dumps(bounded(constraint.value))))
    if constraint.kind == "json_object":
        return str(json_schema_to_gbnf(json.dumps({"type": "object"})))
    if constraint.kind == "regex":
        return regex_to_gbnf(constraint.value)
    if constraint.kind == "choice":
        return "root ::= " + " | ".join(json.dumps(str(choice)) for choice in constraint.value)
    return str(constraint.value)


def regex_to_gbnf(pattern: str) -> str:
    """A grammar whose language is the strings ``pattern`` matches whole."""
    from llama_cpp.llama_grammar import SchemaConverter

    converter: Any = SchemaConverter(  # type: ignore[no-untyped-call]  # llama-cpp's types
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=True
    )
    body = expand_classes(pattern.removeprefix("^").removesuffix("$")).replace("(?:", "(")
    converter._visit_pattern(f"^{body}$", "root")  # the converter's regex translation
    return str(converter.format_grammar())


#: Class escapes the converter does not know, outside and inside brackets.
_CLASSES = {
    "d": ("[0-9]", "0-9"),
    "w": ("[a-zA-Z0-9_]", "a-zA-Z0-9_"),
    "s": ("[ \\t\\n\\r]", " \\t\\n\\r"),
}


def expand_classes(pattern: str) -> str:
    """``pattern`` with ``\\d``, ``\\w`` and ``\\s`` spelled as character ranges."""
    out, i, in_brackets = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            pair = pattern[i : i + 2]
            spelled = _CLASSES.get(pattern[i + 1])
            out.append(spelled[1 if in_brackets else 0] if spelled else pair)
            i += 2
            continue
        in_brackets = (in_brackets or c == "[") and not (in_brackets and c == "]")
        out.append(c)
        i += 1
    return "".join(out)


def bounded(schema: Any) -> Any:
    """``schema`` with a ``maxItems`` on every array and a ``maxLength`` on every free string
    that has none (a list of types becomes an ``anyOf``, which the converter bounds)."""
    if isinstance(schema, list):
        return [bounded(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    if isinstance(kind, list):
        rest = {key: value for key, value in schema.items() if key != "type"}
        return {"anyOf": [bounded({**rest, "type": one}) for one in kind]}
    out = {key: bounded(value) for key, value in schema.items()}
    is_array = kind == "array" or "items" in out
    if is_array and "maxItems" not in out and "prefixItems" not in out:
        out["maxItems"] = max(MAX_ITEMS, int(out.get("minItems", 0)))
    if kind == "string" and not _FIXED_STRING.intersection(out):
        out["maxLength"] = max(MAX_LENGTH, int(out.get("minLength", 0)))
    return out


#: Keywords that already bound a string (or that the converter handles its own way).
_FIXED_STRING = {"maxLength", "pattern", "format", "enum", "const"}


class GrammarSampling:
    """Sampling under a grammar with llama.cpp's "reject first" trick.

    llama-cpp-python puts the grammar first in its sampler chain, so every token is checked
    against the grammar for the whole vocabulary (262k tokens for Gemma 3: seconds per token on
    a CPU). Here the token is sampled as usual and checked alone; only when the grammar refuses
    it are the whole vocabulary's candidates filtered and the token sampled again — as
    llama.cpp's own ``common_sampler_sample`` does.
    """

    def __init__(self, llm: Any, text: str, param: str) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llm = llm
        self._grammar = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, text.encode(), b"root"
        )
        if not self._grammar:
            raise InvalidRequest(f"the grammar of '{param}' does not parse", param=param)

    def close(self) -> None:
        grammar, self._grammar = self._grammar, None
        if grammar:
            self._lib.llama_sampler_free(grammar)

    def sample(self, chain: Any) -> int:
        """The next token: the chain's choice if the grammar allows it, else the chain's
        choice among the tokens the grammar allows; the grammar takes the token."""
        lib = self._lib
        token: int = chain.sample(self._llm._ctx, -1)
        if not self._allows(token):
            token = self._resample(chain)
        lib.llama_sampler_accept(self._grammar, token)
        return token

    def _allows(self, token: int) -> bool:
        lib = self._lib
        data = (lib.llama_token_data * 1)(lib.llama_token_data(token, 1.0, 0.0))
        candidates = lib.llama_token_data_array(data, 1, -1, False)
        lib.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        return bool(data[0].logit != float("-inf"))

    def _resample(self, chain: Any) -> int:
        import numpy as np

        lib, llm = self._lib, self._llm
        n_vocab = llm.n_vocab()
        logits = lib.llama_get_logits_ith(llm._ctx.ctx, -1)
        data = (lib.llama_token_data * n_vocab)()
        view = np.frombuffer(data, dtype=_token_data_dtype(), count=n_vocab)
        view["id"] = np.arange(n_vocab, dtype=np.int32)
        view["logit"] = np.ctypeslib.as_array(logits, shape=(n_vocab,))
        view["p"] = 0.0
        candidates = lib.llama_token_data_array(data, n_vocab, -1, False)
        lib.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        lib.llama_sampler_apply(chain.sampler, ctypes.byref(candidates))
        token = int(candidates.data[candidates.selected].id)
        lib.llama_sampler_accept(chain.sampler, token)
        return token


def _token_data_dtype() -> Any:
    import numpy as np

    return np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
