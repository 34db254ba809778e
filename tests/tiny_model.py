"""A tiny random-weight Llama and its tokenizer, built and saved locally (no downloads).

Good for testing engines, not for reading: the weights are random, so the text is noise, but it
is the same noise for the same seed. The ``<eos>`` row of the output layer is zeroed so greedy
decoding practically never ends early, and ``max_tokens`` ends generations with ``length``.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|end|>"]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "queues hum and tokens stream from redis to every patient client across the wire",
    "a model deployment layer keeps one api while engines change",
    "<|user|> <|assistant|> <|system|> hello world, how are you today?",
    "0 1 2 3 4 5 6 7 8 9 ! ? . , ; : ( ) [ ] { } - _ + = * / \\ ' \"",
]


def build_tiny_llama(directory: Path, *, vocab_size: int = 384, seed: int = 0) -> Path:
    """Train a byte-level BPE tokenizer, make a random LlamaForCausalLM, save both."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer(vocab_size)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("<|end|>")].zero_()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    return directory


def _train_tokenizer(vocab_size: int):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )
