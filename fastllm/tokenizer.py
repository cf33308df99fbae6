"""fastllm.Tokenizer: byte-level BPE in C++ (fastllm._tokenizer), exact to Hugging Face `tokenizers`.

API (the engine and users rely on these; see README "Tokenizer"):
    Tokenizer.from_path(path)                         a model's tokenizer: GGUF file or HF folder
    Tokenizer.from_gguf(path, *, pre_tokenizer=None)  tokens, merges, token types, pre-tokenizer,
                                                      bos/eos and chat template of a GGUF file
    Tokenizer.from_gguf_metadata(metadata, *, source) the same from a GGUF header already read
    Tokenizer.from_file(path)                         an HF tokenizer.json (+ tokenizer_config.json beside it)
    Tokenizer.from_json(spec, config, *, source)      the same from those files' parsed JSON
    tok.encode(text, *, allow_special=True) -> list[int]        never adds BOS/EOS; never raises on a str
    tok.encode_batch(texts, *, allow_special=True, num_threads=None) -> list[list[int]]   GIL released
    tok.decode(ids, *, skip_special_tokens=False) -> str        invalid UTF-8 -> U+FFFD
    tok.decode_bytes(ids, *, skip_special_tokens=False) -> bytes
    tok.stream_decoder(*, skip_special_tokens=False) -> StreamDecoder   .step(ids) -> str, .flush() -> str
    tok.pre_tokenize(text) -> list[str]                         the pre-tokenizer's pieces
    tok.vocab_size, tok.bos_id, tok.eos_id, tok.bos_token, tok.eos_token, tok.chat_template (str | None)
    tok.token_to_id(token) -> int | None, tok.id_to_token(id) -> str, tok.is_special(id) -> bool
Invalid ids raise ValueError; unreadable files ValueError (FileNotFoundError when missing).
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

from fastllm import _tokenizer

__all__ = ["PRE_TOKENIZERS", "StreamDecoder", "Tokenizer"]

PRE_TOKENIZERS = ("gpt2", "smollm", "llama-bpe")

# GGUF `tokenizer.ggml.pre` names (as llama.cpp writes them) -> the pre-tokenizer they denote.
_GGUF_PRE_TOKENIZERS = {
    "gpt2": "gpt2",
    "gpt-2": "gpt2",
    "smollm": "smollm",
    "llama-bpe": "llama-bpe",
    "llama3": "llama-bpe",
    "llama-v3": "llama-bpe",
}
# GGUF token types (gguf.TokenType): CONTROL tokens are special, USER_DEFINED ones are added text.
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4

# The Llama-3 split regex, as tokenizer.json files spell it.
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_MAX_VOCAB = 1 << 31

TokenIds = Union[Sequence[int], Iterable[int]]


class Tokenizer:
    """A byte-level BPE tokenizer (GPT-2, SmolLM, Llama-3 families) with a C++ core.

    Build one with `from_gguf` or `from_file`, or directly from its parts:
    `tokens` are the vocabulary's strings by id in the byte-level alphabet (None for unused ids),
    `merges` the merge pairs in rank order, `added_tokens` (id, content, special) triples matched
    in the text before pre-tokenization, `pre_tokenizer` one of PRE_TOKENIZERS. A byte with no
    token of its own becomes `unknown_id` (a run of them one, with `fuse_unknown`) or, with no
    unknown token, is dropped, as in HF tokenizers.
    """

    def __init__(
        self,
        tokens: Sequence[str | None],
        merges: Sequence[tuple[str, str]],
        *,
        pre_tokenizer: str,
        added_tokens: Sequence[tuple[int, str, bool]] = (),
        ignore_merges: bool = False,
        unknown_id: int | None = None,
        fuse_unknown: bool = False,
        bos_id: int | None = None,
        eos_id: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        if pre_tokenizer not in PRE_TOKENIZERS:
            raise ValueError(f"pre_tokenizer must be one of {PRE_TOKENIZERS}, got {pre_tokenizer!r}")
        self._added = _check_added_tokens(added_tokens)
        self._core = _tokenizer.CoreTokenizer(
            [_raw_token(t) for t in tokens],
            [(_raw_token(a), _raw_token(b)) for a, b in merges],
            [(i, content, special, normalized) for i, content, special, normalized in self._added],
            pre_tokenizer,
            bool(ignore_merges),
            unknown_id,
            bool(fuse_unknown),
        )
        self._tokens = list(tokens) + [None] * (self._core.vocab_size - len(tokens))
        for token_id, content, _, _ in self._added:
            if self._tokens[token_id] is None:
                self._tokens[token_id] = content
        self._token_ids: dict[str, int] | None = None
        self.pre_tokenizer = pre_tokenizer
        self.bos_id = self._check_optional_id(bos_id, "bos_id")
        self.eos_id = self._check_optional_id(eos_id, "eos_id")
        self.chat_template = chat_template

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> Tokenizer:
        """A model's tokenizer: an HF folder's tokenizer.json, or the vocabulary inside a GGUF file."""
        return cls.from_file(path) if os.path.isdir(path) else cls.from_gguf(path)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, *, pre_tokenizer: str | None = None) -> Tokenizer:
        """Load the tokenizer stored in a GGUF model file (`tokenizer.ggml.*` metadata).

        pre_tokenizer overrides the file's `tokenizer.ggml.pre` (one of PRE_TOKENIZERS).
        """
        from fastllm.loader.gguf_file import GGUFFile  # the loader's fast metadata reader

        path = _existing_file(path)
        return cls.from_gguf_metadata(GGUFFile(path).metadata, source=path, pre_tokenizer=pre_tokenizer)

    @classmethod
    def from_gguf_metadata(
        cls, metadata: dict[str, Any], *, source: str, pre_tokenizer: str | None = None
    ) -> Tokenizer:
        """The tokenizer in a GGUF header's `tokenizer.ggml.*` keys (see `from_gguf`); `source`
        (the file's path) prefixes error messages."""
        path = source

        def field(key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
            if key not in metadata:
                if default is ...:
                    raise ValueError(f"{path}: GGUF file has no {key!r}: it carries no tokenizer")
                return default
            value = metadata[key]
            if not isinstance(value, kind):
                raise ValueError(f"{path}: GGUF {key!r} has type {type(value).__name__}, expected {kind}")
            return value

        model = field("tokenizer.ggml.model", str)
        if model != "gpt2":
            raise ValueError(f"{path}: tokenizer.ggml.model is {model!r}: only byte-level BPE ('gpt2') is supported")
        if pre_tokenizer is None:
            name = field("tokenizer.ggml.pre", str, "gpt2")
            if name not in _GGUF_PRE_TOKENIZERS:
                raise ValueError(
                    f"{path}: unsupported tokenizer.ggml.pre {name!r}: supported are {sorted(_GGUF_PRE_TOKENIZERS)} "
                    "(or pass pre_tokenizer=)"
                )
            pre_tokenizer = _GGUF_PRE_TOKENIZERS[name]
        tokens = field("tokenizer.ggml.tokens", list)
        if not all(isinstance(token, str) for token in tokens):
            raise ValueError(f"{path}: tokenizer.ggml.tokens must be an array of strings")
        merges = [_split_merge(m, i, path) for i, m in enumerate(field("tokenizer.ggml.merges", list))]
        try:
            types = [int(t) for t in field("tokenizer.ggml.token_type", object, [])]
        except (TypeError, ValueError):
            raise ValueError(f"{path}: tokenizer.ggml.token_type must be an array of integers") from None
        added = [
            (i, tokens[i], kind == _GGUF_CONTROL, False)
            for i, kind in enumerate(types[: len(tokens)])
            if kind in (_GGUF_CONTROL, _GGUF_USER_DEFINED)
        ]
        try:
            return cls(
                tokens,
                merges,
                pre_tokenizer=pre_tokenizer,
                added_tokens=added,
                # llama.cpp and HF both take a whole Llama-3 piece found in the vocabulary as is.
                ignore_merges=pre_tokenizer == "llama-bpe",
                bos_id=field("tokenizer.ggml.bos_token_id", int, None),
                eos_id=field("tokenizer.ggml.eos_token_id", int, None),
                chat_template=field("tokenizer.chat_template", str, None),
            )
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load an HF `tokenizer.json` (or a folder holding one) whose model is byte-level BPE.

        The chat template and the bos/eos tokens come from `tokenizer_config.json` beside it, if any.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        path = Path(_existing_file(path))
        config_path = path.with_name("tokenizer_config.json")
        config = _read_json(config_path) if config_path.is_file() else {}
        return cls.from_json(_read_json(path), config, source=str(path))

    @classmethod
    def from_json(cls, spec: dict, config: dict | None = None, *, source: str) -> Tokenizer:
        """The tokenizer of a parsed tokenizer.json (`spec`) and tokenizer_config.json (`config`, or
        None); `source` (the tokenizer.json path) prefixes error messages."""
        try:
            return cls._from_tokenizer_json(spec, config or {})
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{source}: malformed tokenizer.json ({type(error).__name__}: {error})") from None
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def _from_tokenizer_json(cls, spec: dict, config: dict) -> Tokenizer:
        model = spec["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"model type is {model.get('type')!r}: only BPE is supported")
        for option, allowed in (("dropout", (None,)), ("byte_fallback", (False, None)),
                                ("continuing_subword_prefix", (None, "")), ("end_of_word_suffix", (None, ""))):
            if model.get(option) not in allowed:
                raise ValueError(f"unsupported BPE option {option}={model.get(option)!r}")
        if spec.get("normalizer") not in (None, {"type": "Sequence", "normalizers": []}):
            raise ValueError(f"unsupported normalizer {spec['normalizer'].get('type')!r}: only none is supported")
        decoder = spec.get("decoder")
        if decoder is not None and decoder.get("type") != "ByteLevel":
            raise ValueError(f"unsupported decoder {decoder.get('type')!r}: only ByteLevel is supported")
        pre_tokenizer = _pre_tokenizer_of(spec.get("pre_tokenizer"))

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
        return cls(
            tokens,
            merges,
            pre_tokenizer=pre_tokenizer,
            added_tokens=added,
            ignore_merges=bool(model.get("ignore_merges")),
            unknown_id=None if unknown is None else vocab[unknown],
            fuse_unknown=bool(model.get("fuse_unk")),
            bos_id=special_id("bos_token"),
            eos_id=special_id("eos_token"),
            chat_template=config.get("chat_template") if isinstance(config.get("chat_template"), str) else None,
        )

    # ----------------------------------------------------------------------------- encoding

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Token ids of `text`. BOS/EOS are never added.

        With allow_special, added and special tokens written in the text (e.g. "<|im_start|>") map
        to their ids (leftmost-longest, before pre-tokenization, as HF does); without it special
        tokens are ordinary text. Lone surrogates are encoded as U+FFFD.
        """
        return self._core.encode(text, bool(allow_special))

    def encode_batch(
        self, texts: Sequence[str], *, allow_special: bool = True, num_threads: int | None = None
    ) -> list[list[int]]:
        """`[encode(t) for t in texts]`, computed in parallel in C++ without the GIL.

        num_threads: worker threads (default: one per CPU).
        """
        if num_threads is None:
            num_threads = 0
        elif isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        return self._core.encode_batch(texts, bool(allow_special), num_threads)

    def pre_tokenize(self, text: str) -> list[str]:
        """The pieces the pre-tokenizer cuts `text` into (what BPE then encodes one by one)."""
        return self._core.pre_tokenize(text)

    # ----------------------------------------------------------------------------- decoding

    def decode(self, ids: TokenIds, *, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self._core.decode(ids, bool(skip_special_tokens))

    def decode_bytes(self, ids: TokenIds, *, skip_special_tokens: bool = False) -> bytes:
        """The raw bytes of `ids`, concatenated."""
        return self._core.decode_bytes(ids, bool(skip_special_tokens))

    def stream_decoder(self, *, skip_special_tokens: bool = False) -> StreamDecoder:
        """An incremental decoder for streaming generation (see StreamDecoder)."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # ----------------------------------------------------------------------------- vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of token ids: 1 + the largest id (added tokens included)."""
        return self._core.vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary string of `token_id` (byte-level alphabet, e.g. 'Ġthe')."""
        self._check_id(token_id, "token_id")
        return self._tokens[token_id]

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary string (byte-level alphabet) or added token, None if there is none."""
        if self._token_ids is None:
            self._token_ids = {t: i for i, t in enumerate(self._tokens) if t is not None}
            self._token_ids.update({content: i for i, content, _, _ in self._added})
        return self._token_ids.get(token)

    def is_special(self, token_id: int) -> bool:
        """Whether `token_id` is a special token (skipped by skip_special_tokens)."""
        self._check_id(token_id, "token_id")
        return self._core.is_special(token_id)

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_id is None else self._tokens[self.bos_id]

    @property
    def eos_token(self) -> str | None:
        return None if self.eos_id is None else self._tokens[self.eos_id]

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, pre_tokenizer={self.pre_tokenizer!r}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id})"
        )

    def _check_id(self, token_id: Any, name: str) -> None:
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise TypeError(f"{name} must be an int, got {type(token_id).__name__}")
        if not 0 <= token_id < self.vocab_size or self._tokens[token_id] is None:
            raise ValueError(f"{name}={token_id} is not a token id: valid ids are 0..{self.vocab_size - 1}")

    def _check_optional_id(self, token_id: int | None, name: str) -> int | None:
        if token_id is not None:
            self._check_id(token_id, name)
        return token_id


class StreamDecoder:
    """Decodes ids as they arrive without ever emitting half a UTF-8 character.

    `step(ids)` returns the text completed by the new ids (possibly ""); bytes that may still
    be completed by the next ids are held back. `flush()` returns what is held (an incomplete
    character becomes U+FFFD) and resets. Concatenating every result equals `decode(all ids)`.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = bool(skip_special_tokens)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, ids: int | TokenIds) -> str:
        """Feed one id or several; return the newly completed text."""
        if isinstance(ids, int) and not isinstance(ids, bool):
            ids = (ids,)
        data = self._tokenizer.decode_bytes(ids, skip_special_tokens=self._skip_special_tokens)
        return self._utf8.decode(data, final=False)

    def flush(self) -> str:
        """Return the held-back bytes (an incomplete character as U+FFFD) and start afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


# --------------------------------------------------------------------------------- helpers


def _existing_file(path: str | os.PathLike) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: {os.fspath(path)}")
    return os.fspath(path)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _raw_token(token: str | None) -> str | bytes | None:
    """Token strings pass to C++ as UTF-8; ones holding undecodable bytes (kept by the GGUF
    reader as surrogate escapes) pass as those original bytes."""
    if token is None or token.isascii():
        return token
    try:
        token.encode("utf-8")
        return token
    except UnicodeEncodeError:
        return token.encode("utf-8", "surrogateescape")


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


def _split_merge(merge: Any, index: int, source: str) -> tuple[str, str]:
    parts = merge.split(" ") if isinstance(merge, str) else []
    if len(parts) != 2:
        raise ValueError(f"{source}: merge {index} is {merge!r}, expected two tokens separated by one space")
    return parts[0], parts[1]


def _check_added_tokens(added_tokens: Sequence[tuple]) -> list[tuple[int, str, bool, bool]]:
    checked = []
    for entry in added_tokens:
        token_id, content, special, *rest = entry
        normalized = bool(rest[0]) if rest else False
        if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < _MAX_VOCAB:
            raise ValueError(f"added token {content!r} has id {token_id!r}: expected an int in [0, {_MAX_VOCAB})")
        if not isinstance(content, str) or not content:
            raise ValueError(f"added token {token_id} has content {content!r}: expected a non-empty str")
        checked.append((token_id, content, bool(special), normalized))
    return checked


def _pre_tokenizer_of(config: dict | None) -> str:
    """Map a tokenizer.json pre_tokenizer to one of PRE_TOKENIZERS, or raise naming what is unsupported."""
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
        and steps[0].get("pattern") == {"Regex": _LLAMA3_PATTERN}
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and byte_level(steps[1], False)
    ):
        return "llama-bpe"
    raise ValueError(
        f"unsupported pre_tokenizer {json.dumps(config)[:300]}: supported are ByteLevel (gpt2), "
        "Sequence[Digits(individual_digits), ByteLevel] (smollm) and Sequence[Split(Llama-3 regex), "
        "ByteLevel(use_regex=false)] (llama-bpe), all without add_prefix_space"
    )
