"""Helpers for the model-files tests: tiny Llama GGUF files and HF folders that carry a tokenizer,
so that `fastllm.loader.load` and `LLM(path)` take them like real models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

VOCAB, HIDDEN, INTER, HEADS, KV_HEADS, LAYERS = 40, 32, 48, 4, 2, 2
BOS, EOS = 1, 2


def vocabulary(size: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Tokens and merges: one token per character from '!' (0x21) on, characters byte-level BPE maps
    to themselves, and a last token '!"' with its merge (GGUF writers drop an empty merge list)."""
    return [chr(0x21 + i) for i in range(size - 1)] + ['!"'], [("!", '"')]


TOKENS, MERGES = vocabulary(VOCAB)


def write_char_tokenizer(writer: gguf.GGUFWriter) -> int:
    """The one-character-per-token byte-level tokenizer (BOS 1, EOS 2); returns its vocabulary size."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3 if i in (BOS, EOS) else 1 for i in range(VOCAB)])
    writer.add_token_merges([" ".join(merge) for merge in MERGES])
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    return VOCAB


def write_llama_gguf(
    path: Path, *, seed: int = 0, add_bos_token: bool | None = None,
    write_tokenizer: Callable[[gguf.GGUFWriter], int] = write_char_tokenizer, **token_ids: int,
) -> str:
    """A random tiny llama GGUF file with a one-character-per-token tokenizer (or the fields that
    write_tokenizer writes; it returns the vocabulary size).

    token_ids: extra `tokenizer.ggml.<name>` ids, e.g. eot_token_id=7, eom_token_id=9 (bos 1 and
    eos 2 are always written). The same seed writes the same weights.
    """
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in {
        "context_length": 256, "embedding_length": HIDDEN, "block_count": LAYERS, "feed_forward_length": INTER,
        "attention.head_count": HEADS, "attention.head_count_kv": KV_HEADS,
    }.items():
        writer.add_uint32(f"llama.{key}", value)
    vocab_size = write_tokenizer(writer)
    if add_bos_token is not None:
        writer.add_add_bos_token(add_bos_token)
    for name, value in token_ids.items():
        writer.add_uint32(f"tokenizer.ggml.{name}", value)
    head_dim = HIDDEN // HEADS
    shapes = {"token_embd.weight": (vocab_size, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (HIDDEN,), f"blk.{i}.ffn_norm.weight": (HIDDEN,),
            f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN), f"blk.{i}.attn_k.weight": (KV_HEADS * head_dim, HIDDEN),
            f"blk.{i}.attn_v.weight": (KV_HEADS * head_dim, HIDDEN), f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.ffn_gate.weight": (INTER, HIDDEN), f"blk.{i}.ffn_up.weight": (INTER, HIDDEN),
            f"blk.{i}.ffn_down.weight": (HIDDEN, INTER),
        })
    for name, shape in shapes.items():
        scale = 0.1 if len(shape) == 1 else 0.5
        writer.add_tensor(name, ((1.0 if len(shape) == 1 else 0.0) + scale * rng.standard_normal(shape)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def write_tokenizer_json(folder: Path, vocab_size: int, *, bos_in_post_processor: bool = False) -> None:
    """tokenizer.json (byte-level BPE, one character per token, BOS and EOS special) and a
    tokenizer_config.json naming them, as transformers writes them."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens, merges = vocabulary(vocab_size)
    tokenizer = Tokenizer(models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in (BOS, EOS)])
    if bos_in_post_processor:  # how Llama 3's tokenizer.json asks for BOS
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tokens[BOS]} $A", special_tokens=[(tokens[BOS], BOS)]
        )
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"bos_token": tokens[BOS], "eos_token": tokens[EOS]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
