"""The reference for fastllm's tokenizer: HF `tokenizers` built from the same vocabulary.

Never transformers' GGUF loader: it drops SmolLM2's Digits step (e.g. "x\\n\\n7" gives
[104, 198, 198, 39] there, [104, 1116, 39] with the real tokenizer). The pre-tokenizers here are
the ones each mode stands for, written as HF configures them in tokenizer.json files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from fastllm.loader.gguf_file import GGUFFile
from fastllm.loader.default_model import default_model_path

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MODES = ("smollm", "gpt2", "llama-bpe", "qwen2")
CONTROL = 3  # GGUF token type of special tokens


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    merges: list[tuple[str, str]]
    special_ids: list[int]


@cache
def default_vocabulary() -> Vocabulary:
    metadata = GGUFFile(default_model_path()).metadata
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ")) for m in metadata["tokenizer.ggml.merges"]]
    types = metadata["tokenizer.ggml.token_type"]
    return Vocabulary(tokens, merges, [i for i, kind in enumerate(types) if kind == CONTROL])


@cache
def bytes_without_tokens() -> frozenset[int]:
    """Bytes the default vocabulary has no token for: encoding drops them, as HF does."""
    present = set()
    for token in default_vocabulary().tokens:
        if len(token) == 1:
            present.add(ord(token))
    alphabet = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    code_points = alphabet + [0x100 + i for i in range(256 - len(alphabet))]
    byte_order = alphabet + [b for b in range(256) if b not in alphabet]
    return frozenset(b for b, cp in zip(byte_order, code_points) if cp not in present)


def round_trips(text: str) -> bool:
    """Whether decode(encode(text)) == text with the default vocabulary (no byte is dropped)."""
    return not bytes_without_tokens().intersection(text.encode())


def hf_pre_tokenizer(mode: str) -> pre_tokenizers.PreTokenizer:
    if mode == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if mode == "smollm":  # SmolLM2's own tokenizer.json
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    if mode in ("llama-bpe", "qwen2"):  # Llama-3's and Qwen2's tokenizer.json
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_PATTERN if mode == "llama-bpe" else QWEN2_PATTERN),
                                     behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise ValueError(f"unknown mode {mode!r}")


@cache
def hf_reference(mode: str) -> HFTokenizer:
    """HF tokenizer of the default model's vocabulary with the `mode` pre-tokenizer."""
    vocabulary = default_vocabulary()
    bpe = models.BPE(
        vocab={token: i for i, token in enumerate(vocabulary.tokens)},
        merges=vocabulary.merges,
        ignore_merges=mode == "llama-bpe",  # as llama.cpp and Llama-3's tokenizer.json
    )
    tokenizer = HFTokenizer(bpe)
    tokenizer.pre_tokenizer = hf_pre_tokenizer(mode)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(vocabulary.tokens[i], special=True, normalized=False) for i in vocabulary.special_ids]
    )
    return tokenizer


def reference_encode(mode: str, text: str, *, allow_special: bool = True) -> list[int]:
    tokenizer = hf_reference(mode)
    tokenizer.encode_special_tokens = not allow_special
    try:
        return tokenizer.encode(text, add_special_tokens=False).ids
    finally:
        tokenizer.encode_special_tokens = False


def reference_pieces(mode: str, text: str) -> list[str]:
    """The reference pre-tokenizer's pieces, as substrings of text."""
    return [text[begin:end] for _, (begin, end) in hf_pre_tokenizer(mode).pre_tokenize_str(text)]
