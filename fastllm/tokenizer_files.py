"""A tokenizer from a model's files: a GGUF header's `tokenizer.ggml.*` keys or an HF tokenizer.json.

Each format names its model, and this module maps it onto one of `Tokenizer`'s two:
- byte-level BPE: GGUF `tokenizer.ggml.model` "gpt2"; tokenizer.json BPE with a ByteLevel
  pre-tokenizer (and the Digits, Llama-3 or Qwen2 splits before it) and decoder;
- SentencePiece BPE: GGUF "llama" (tokens, scores, token types; add_space_prefix); tokenizer.json
  BPE over "▁" pieces with byte fallback: spaces written as "▁" by a Replace normalizer (with a
  Prepend, the older Llama files) or a Metaspace pre-tokenizer, and the matching decoder.
Anything else is refused with a ValueError naming what is unsupported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastllm.string_array import StringArray
from fastllm.tokenizer import Tokenizer, TokenType

# GGUF `tokenizer.ggml.pre` names (as llama.cpp writes them) -> the pre-tokenizer they denote.
GGUF_PRE_TOKENIZERS = {
    "gpt2": "gpt2",
    "gpt-2": "gpt2",
    "smollm": "smollm",
    "llama-bpe": "llama-bpe",
    "llama3": "llama-bpe",
    "llama-v3": "llama-bpe",
    "qwen2": "qwen2",
    "deepseek-r1-qwen": "qwen2",
}
GGUF_MODELS = ("gpt2", "llama")  # byte-level BPE, SentencePiece BPE

# The split regexes of tokenizer.json files -> the byte-level pre-tokenizer that reproduces them.
SPLIT_PATTERNS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}

SPACE_MARK = "\u2581"  # "▁", SentencePiece's space


def read_json(path: Path) -> dict:
    """A JSON object from `path`; ValueError naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------- GGUF


def from_gguf_metadata(
    cls: type[Tokenizer], metadata: dict[str, Any], *, source: str, pre_tokenizer: str | None
) -> Tokenizer:
    """`Tokenizer.from_gguf_metadata`: the tokenizer a GGUF header describes."""
    try:
        return _from_gguf_metadata(cls, metadata, pre_tokenizer)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _from_gguf_metadata(cls: type[Tokenizer], metadata: dict[str, Any], pre_tokenizer: str | None) -> Tokenizer:
    def field(key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in metadata:
            if default is ...:
                raise ValueError(f"GGUF file has no {key!r}: it carries no tokenizer")
            return default
        value = metadata[key]
        if not isinstance(value, kind):
            raise ValueError(f"GGUF {key!r} has type {type(value).__name__}, expected {kind}")
        return value

    model = field("tokenizer.ggml.model", str)
    if model not in GGUF_MODELS:
        raise ValueError(
            f"unsupported tokenizer.ggml.model {model!r}: supported are 'gpt2' (byte-level BPE) "
            "and 'llama' (SentencePiece BPE)"
        )
    tokens = field("tokenizer.ggml.tokens", (list, StringArray))
    if not isinstance(tokens, StringArray) and not all(isinstance(token, str) for token in tokens):
        raise ValueError("tokenizer.ggml.tokens must be an array of strings")
    try:
        types = np.asarray(field("tokenizer.ggml.token_type", object, []), dtype=np.int64)[: len(tokens)]
    except (TypeError, ValueError):
        raise ValueError("tokenizer.ggml.token_type must be an array of integers") from None
    common = dict(
        bos_id=field("tokenizer.ggml.bos_token_id", int, None),
        eos_id=field("tokenizer.ggml.eos_token_id", int, None),
        chat_template=field("tokenizer.chat_template", str, None),
    )
    if model == "gpt2":
        return _byte_level_gguf(cls, field, tokens, types, pre_tokenizer, common)
    if pre_tokenizer is not None:
        raise ValueError(f"pre_tokenizer={pre_tokenizer!r} applies to byte-level BPE, not to a SentencePiece vocabulary")
    return _sentencepiece_gguf(cls, field, tokens, types, common)


def _byte_level_gguf(cls, field, tokens, types, pre_tokenizer, common) -> Tokenizer:
    if pre_tokenizer is None:
        name = field("tokenizer.ggml.pre", str, "gpt2")
        if name not in GGUF_PRE_TOKENIZERS:
            raise ValueError(
                f"unsupported tokenizer.ggml.pre {name!r}: supported are {sorted(GGUF_PRE_TOKENIZERS)} "
                "(or pass pre_tokenizer=)"
            )
        pre_tokenizer = GGUF_PRE_TOKENIZERS[name]
    merges = _MergePairs(field("tokenizer.ggml.merges", (list, StringArray)), "tokenizer.ggml.merges")
    # CONTROL tokens are special, USER_DEFINED ones added text, both matched before pre-tokenization.
    added = [
        (int(i), tokens[i], types[i] == TokenType.CONTROL, False)
        for i in np.flatnonzero((types == TokenType.CONTROL) | (types == TokenType.USER_DEFINED))
    ]
    return cls(
        tokens,
        merges,
        pre_tokenizer=pre_tokenizer,
        added_tokens=added,
        # llama.cpp and HF both take a whole Llama-3 piece found in the vocabulary as is (not Qwen2s).
        ignore_merges=pre_tokenizer == "llama-bpe",
        **common,
    )


def _sentencepiece_gguf(cls, field, tokens, types, common) -> Tokenizer:
    """SentencePiece BPE as llama.cpp's converter stores it: pieces with their scores and types.

    CONTROL tokens are special tokens (matched with allow_special, as HF and llama.cpp do);
    USER_DEFINED ones are always matched whole, in the text with spaces written as "▁", as
    SentencePiece matches them (the converter stores their "▁" as spaces: Gemma's space runs).
    """
    scores = field("tokenizer.ggml.scores", (list, np.ndarray))
    if len(scores) != len(tokens):
        raise ValueError(f"tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens")
    if len(types) < len(tokens):
        types = np.concatenate([types, np.full(len(tokens) - len(types), TokenType.NORMAL)])
    added = [(int(i), tokens[i], True, False) for i in np.flatnonzero(types == TokenType.CONTROL)]
    added += [
        (int(i), tokens[i].replace(" ", SPACE_MARK), False, True) for i in np.flatnonzero(types == TokenType.USER_DEFINED)
    ]
    unknown = field("tokenizer.ggml.unknown_token_id", int, None)
    if unknown is None and (types == TokenType.UNKNOWN).any():
        unknown = int(np.flatnonzero(types == TokenType.UNKNOWN)[0])
    return cls.sentencepiece(
        tokens,
        scores=np.asarray(scores, dtype=np.float32),
        token_types=types.tolist(),
        added_tokens=added,
        # llama.cpp's default for a SentencePiece vocabulary that does not say.
        space_prefix="first" if field("tokenizer.ggml.add_space_prefix", (bool, np.bool_), True) else "none",
        unknown_id=unknown,
        **common,
    )


# --------------------------------------------------------------------------------- tokenizer.json


def from_json(cls: type[Tokenizer], spec: dict, config: dict, *, source: str) -> Tokenizer:
    """`Tokenizer.from_json`: the tokenizer of a parsed tokenizer.json and tokenizer_config.json."""
    try:
        return _from_tokenizer_json(cls, spec, config)
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{source}: malformed tokenizer.json ({type(error).__name__}: {error})") from None
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _from_tokenizer_json(cls: type[Tokenizer], spec: dict, config: dict) -> Tokenizer:
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"model type is {model.get('type')!r}: only BPE is supported")
    for option, allowed in (("dropout", (None,)), ("continuing_subword_prefix", (None, "")),
                            ("end_of_word_suffix", (None, ""))):
        if model.get(option) not in allowed:
            raise ValueError(f"unsupported BPE option {option}={model.get(option)!r}")
    sentencepiece = _sentencepiece_shape(spec)

    vocab: dict[str, int] = model["vocab"]
    added = []
    for entry in spec.get("added_tokens", []):
        for option in ("single_word", "lstrip", "rstrip"):
            if entry.get(option):
                raise ValueError(f"added token {entry['content']!r} uses {option}, which is not supported")
        added.append((entry["id"], entry["content"], bool(entry.get("special")), bool(entry.get("normalized"))))
    size = _table_size([*vocab.values(), *(a[0] for a in added)])
    tokens: list[str | None] = [None] * size
    for token, token_id in vocab.items():
        tokens[token_id] = token
    merges = [
        tuple(m) if isinstance(m, list) else _split_merge(m, i, "tokenizer.json")
        for i, m in enumerate(model["merges"])
    ]

    def special_id(name: str) -> int | None:
        token = config.get(name)
        if isinstance(token, dict):
            token = token.get("content")
        if token is None:
            return None
        for token_id, content, _, _ in added:
            if content == token:
                return token_id
        if token not in vocab:
            raise ValueError(f"tokenizer_config.json {name} {token!r} is not in the vocabulary")
        return vocab[token]

    unknown = model.get("unk_token")
    if unknown is not None and unknown not in vocab:
        raise ValueError(f"unk_token {unknown!r} is not in the vocabulary")
    common = dict(
        added_tokens=added,
        unknown_id=None if unknown is None else vocab[unknown],
        fuse_unknown=bool(model.get("fuse_unk")),
        bos_id=special_id("bos_token"),
        eos_id=special_id("eos_token"),
        chat_template=config.get("chat_template") if isinstance(config.get("chat_template"), str) else None,
    )
    if sentencepiece is not None:
        if model.get("ignore_merges"):
            raise ValueError("unsupported BPE option ignore_merges=True over '▁' pieces")
        return cls.sentencepiece(tokens, merges=merges, **sentencepiece, **common)
    if model.get("byte_fallback"):
        raise ValueError("unsupported BPE option byte_fallback=True with a byte-level pre-tokenizer")
    normalizer = spec.get("normalizer")
    nfc = normalizer == {"type": "NFC"}
    if not nfc and normalizer not in (None, {"type": "Sequence", "normalizers": []}):
        raise ValueError(f"unsupported normalizer {normalizer.get('type')!r}: supported are none and NFC")
    decoder = spec.get("decoder")
    if decoder is not None and decoder.get("type") != "ByteLevel":
        raise ValueError(f"unsupported decoder {decoder.get('type')!r}: only ByteLevel is supported")
    return cls(
        tokens,
        merges,
        pre_tokenizer=_pre_tokenizer_of(spec.get("pre_tokenizer")),
        ignore_merges=bool(model.get("ignore_merges")),
        nfc=nfc,
        **common,
    )


def _steps(component: dict | None) -> list[dict]:
    """A tokenizer.json normalizer, pre-tokenizer or decoder as its list of steps."""
    if component is None:
        return []
    if component.get("type") == "Sequence":
        return list(component.get("normalizers") or component.get("pretokenizers") or component.get("decoders") or [])
    return [component]


def _is_replace(step: dict, pattern: str, content: str) -> bool:
    return step.get("type") == "Replace" and step.get("pattern") == {"String": pattern} and step.get("content") == content


def _sentencepiece_shape(spec: dict) -> dict | None:
    """`Tokenizer.sentencepiece`'s space options for a tokenizer.json over "▁" pieces, None for
    one that is not such (a byte-level one); ValueError naming the part that is not supported.

    Supported, as HF writes them: normalizer Replace(" ", "▁") (Gemma), Sequence[Prepend("▁"),
    Replace(" ", "▁")] (Llama 2, Mistral, TinyLlama) or none with pre-tokenizer Metaspace("▁",
    prepend_scheme, split); Gemma's Split(" ", merged_with_previous) pre-tokenizer (which finds
    no space once they are "▁"); decoder Replace("▁", " "), ByteFallback, Fuse, then Strip(" ", 1, 0)
    when a prefix is written (or the older Metaspace decoder).
    """
    normalizers = _steps(spec.get("normalizer"))
    pre_tokenizers = _steps(spec.get("pre_tokenizer"))
    decoders = _steps(spec.get("decoder"))
    kinds = {step.get("type") for step in normalizers + pre_tokenizers + decoders}
    if not (spec["model"].get("byte_fallback") or kinds & {"Metaspace", "Prepend", "ByteFallback"}
            or any(_is_replace(step, " ", SPACE_MARK) for step in normalizers)):
        return None

    if [step.get("type") for step in normalizers] == ["Prepend", "Replace"] and normalizers[0].get("prepend") == SPACE_MARK:
        escaped, prefix = _is_replace(normalizers[1], " ", SPACE_MARK), "every_segment"
    elif len(normalizers) == 1:
        escaped, prefix = _is_replace(normalizers[0], " ", SPACE_MARK), "none"
    else:
        escaped, prefix = False, "none"
    if normalizers and not escaped:
        raise ValueError(f"unsupported normalizer {json.dumps(spec.get('normalizer'))[:200]} over '▁' pieces: "
                         "supported are Replace(' ', '▁') and Sequence[Prepend('▁'), Replace(' ', '▁')]")
    split = False
    if len(pre_tokenizers) == 1 and pre_tokenizers[0].get("type") == "Metaspace" and not normalizers:
        metaspace = pre_tokenizers[0]
        if metaspace.get("replacement", SPACE_MARK) != SPACE_MARK:
            raise ValueError(f"unsupported Metaspace replacement {metaspace.get('replacement')!r}")
        prefix = _metaspace_prefix(metaspace)
        escaped, split = True, bool(metaspace.get("split", True))
    elif pre_tokenizers and not (
        escaped and len(pre_tokenizers) == 1 and pre_tokenizers[0].get("type") == "Split"
        and pre_tokenizers[0].get("pattern") == {"String": " "} and not pre_tokenizers[0].get("invert")
    ):
        raise ValueError(f"unsupported pre_tokenizer {json.dumps(spec.get('pre_tokenizer'))[:200]} over '▁' pieces: "
                         "supported are none, Metaspace('▁') and Split(' ') after a Replace(' ', '▁') normalizer")
    if not escaped:
        raise ValueError("unsupported tokenizer.json over '▁' pieces: nothing writes its spaces as '▁' "
                         "(no Replace(' ', '▁') normalizer nor Metaspace pre-tokenizer)")

    if len(decoders) == 1 and decoders[0].get("type") == "Metaspace":
        strip = _metaspace_prefix(decoders[0]) != "none"
    else:
        kinds = [step.get("type") for step in decoders]
        strip = kinds[-1:] == ["Strip"]
        body = decoders[:-1] if strip else decoders
        if not (
            [step.get("type") for step in body] in (["Replace", "ByteFallback", "Fuse"], ["Replace", "Fuse"])
            and _is_replace(body[0], SPACE_MARK, " ")
            and (not strip or (decoders[-1].get("content") == " " and decoders[-1].get("start") == 1
                               and not decoders[-1].get("stop")))
        ):
            raise ValueError(f"unsupported decoder {json.dumps(spec.get('decoder'))[:200]} over '▁' pieces: "
                             "supported is Sequence[Replace('▁', ' '), ByteFallback, Fuse(, Strip(' ', 1, 0))]")
    return dict(space_prefix=prefix, split_at_every_space=split, strip_space_prefix=strip)


def _metaspace_prefix(metaspace: dict) -> str:
    """A Metaspace's prepend_scheme (or older add_prefix_space) as a space_prefix. fastllm writes
    the prefix also before text that begins with a space, which HF's Metaspace does not (then
    decode(encode(text)) would lose that space)."""
    scheme = metaspace.get("prepend_scheme")
    if scheme is None:
        scheme = "always" if metaspace.get("add_prefix_space", True) else "never"
    prefixes = {"first": "first", "always": "every_segment", "never": "none"}
    if scheme not in prefixes:
        raise ValueError(f"unsupported Metaspace prepend_scheme {scheme!r}: supported are {sorted(prefixes)}")
    return prefixes[scheme]


def _pre_tokenizer_of(config: dict | None) -> str:
    """Map a byte-level tokenizer.json pre_tokenizer to one of PRE_TOKENIZERS, or raise naming what is unsupported."""
    steps = config.get("pretokenizers", []) if config and config.get("type") == "Sequence" else [config]
    kinds = [step.get("type") if step else None for step in steps]

    def byte_level(step: dict, use_regex: bool) -> bool:
        return not step.get("add_prefix_space") and step.get("use_regex", True) == use_regex

    if kinds == ["ByteLevel"] and byte_level(steps[0], True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level(steps[1], True):
        return "smollm"
    if (
        kinds == ["Split", "ByteLevel"]
        and (steps[0].get("pattern") or {}).get("Regex") in SPLIT_PATTERNS
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and byte_level(steps[1], False)
    ):
        return SPLIT_PATTERNS[steps[0]["pattern"]["Regex"]]
    raise ValueError(
        f"unsupported pre_tokenizer {json.dumps(config)[:300]}: supported are ByteLevel (gpt2), "
        "Sequence[Digits(individual_digits), ByteLevel] (smollm) and Sequence[Split(Llama-3 or Qwen2 regex), "
        "ByteLevel(use_regex=false)] (llama-bpe, qwen2), all without add_prefix_space"
    )


def _table_size(ids: list[int]) -> int:
    """Size of the id -> token table for these ids: one past the largest. The ids must be
    non-negative ints and nearly dense (the table is allocated whole, so a corrupt id of 2**31
    must not ask for gigabytes)."""
    bad = next((i for i in ids if isinstance(i, bool) or not isinstance(i, int) or i < 0), None)
    if bad is not None:
        raise ValueError(f"token ids must be non-negative integers, got {bad!r}")
    size = max(ids, default=-1) + 1
    if size > 2 * len(ids) + 256:
        raise ValueError(f"token id {size - 1} is far beyond the {len(ids)} tokens defined: ids must be nearly dense")
    return size


class _MergePairs(Sequence[tuple[str, str]]):
    """Merges written "left right", read as (left, right) pairs when asked for: a list of the
    pairs would be some 150k objects for a 49k-merge vocabulary, made and dropped during the load."""

    def __init__(self, merges: Sequence[Any], source: str) -> None:
        self._merges = merges
        self._source = source

    def __len__(self) -> int:
        return len(self._merges)

    def __getitem__(self, index: int) -> tuple[str, str]:  # type: ignore[override]  # no slices
        return _split_merge(self._merges[index], index, self._source)


def _split_merge(merge: Any, index: int, source: str) -> tuple[str, str]:
    parts = merge.split(" ") if isinstance(merge, str) else []
    if len(parts) != 2:
        raise ValueError(f"{source}: merge {index} is {merge!r}, expected two tokens separated by one space")
    return parts[0], parts[1]
