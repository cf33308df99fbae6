"""fastllm.Tokenizer: byte-level BPE and SentencePiece BPE in C++ (fastllm._tokenizer), exact to Hugging Face `tokenizers`.

API (the engine and users rely on these; see README "Tokenizer"):
    Tokenizer.from_path(path)                         a model's tokenizer: GGUF file or HF folder
    Tokenizer.from_gguf(path, *, pre_tokenizer=None)  the tokenizer of a GGUF file (tokenizer.ggml.*)
    Tokenizer.from_gguf_metadata(metadata, *, source) the same from a GGUF header already read
    Tokenizer.from_file(path)                         an HF tokenizer.json (+ tokenizer_config.json beside it)
    Tokenizer.from_json(spec, config, *, source)      the same from those files' parsed JSON
    Tokenizer(tokens, merges, *, pre_tokenizer, ...)  byte-level BPE from its parts
    Tokenizer.sentencepiece(tokens, *, scores | merges, token_types, ...)   SentencePiece BPE from its parts
    tok.encode(text, *, allow_special=True) -> list[int]        never adds BOS/EOS; never raises on a str
    tok.encode_batch(texts, *, allow_special=True, num_threads=None) -> list[list[int]]   GIL released
    tok.decode(ids, *, skip_special_tokens=False) -> str        invalid UTF-8 -> U+FFFD
    tok.decode_bytes(ids, *, skip_special_tokens=False) -> bytes
    tok.stream_decoder(*, skip_special_tokens=False) -> StreamDecoder   .step(ids) -> str, .flush() -> str
    tok.pre_tokenize(text) -> list[str]                         the pieces the model encodes one by one
    tok.model ("byte-level-bpe" | "sentencepiece-bpe"), tok.pre_tokenizer (None for SentencePiece)
    tok.vocab_size, tok.bos_id, tok.eos_id, tok.bos_token, tok.eos_token, tok.chat_template (str | None)
    tok.token_to_id(token) -> int | None, tok.id_to_token(id) -> str, tok.is_special(id) -> bool
Invalid ids raise ValueError; unreadable files ValueError (FileNotFoundError when missing).
"""

from __future__ import annotations

import codecs
import os
import unicodedata
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Union

from fastllm import _tokenizer
from fastllm.string_array import StringArray

__all__ = ["PRE_TOKENIZERS", "SPACE_PREFIXES", "StreamDecoder", "Tokenizer", "TokenType"]

PRE_TOKENIZERS = ("gpt2", "smollm", "llama-bpe", "qwen2")
SPACE_PREFIXES = ("none", "first", "every_segment")

_MAX_VOCAB = 1 << 31

TokenIds = Union[Sequence[int], Iterable[int]]


class TokenType:
    """What a SentencePiece token is, numbered as GGUF's `tokenizer.ggml.token_type` (gguf.TokenType)."""

    NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# The core's piece kinds: merged (normal), byte fallback, never merged (the rest).
_KIND_NORMAL, _KIND_BYTE, _KIND_OTHER = 0, 1, 2


class _Vocabulary:
    """The vocabulary's strings by id, held for the process's life: a StringArray (the one the
    GGUF reader made, or a copy of a list's) and, for ids it has no string for, the added
    tokens' contents (None where there is none)."""

    def __init__(self, tokens: Sequence[str | None], size: int, extra: dict[int, str]) -> None:
        if isinstance(tokens, StringArray):
            self._strings, gaps = tokens, []
        else:
            self._strings = StringArray.from_strings("" if token is None else token for token in tokens)
            gaps = [token_id for token_id, token in enumerate(tokens) if token is None]
        self._others = {token_id: extra.get(token_id) for token_id in chain(gaps, range(len(self._strings), size))}
        self._size = size

    def __getitem__(self, token_id: int) -> str | None:
        if token_id in self._others:
            return self._others[token_id]
        return self._strings[token_id]

    def items(self) -> Iterable[tuple[int, str]]:
        """(id, string) of every id that has a string."""
        for token_id in range(self._size):
            token = self[token_id]
            if token is not None:
                yield token_id, token


class Tokenizer:
    """A tokenizer with a C++ core: byte-level BPE (GPT-2, SmolLM, Llama-3, Qwen2 families) or
    SentencePiece BPE (Llama 2, Mistral, TinyLlama, Gemma).

    Build one with `from_path`, `from_gguf` or `from_file`, or from its parts: this constructor
    makes a byte-level BPE tokenizer, `Tokenizer.sentencepiece` a SentencePiece one. Here
    `tokens` are the vocabulary's strings by id in the byte-level alphabet (None for unused ids),
    `merges` the merge pairs in rank order, `added_tokens` (id, content, special) triples matched
    in the text before pre-tokenization, `pre_tokenizer` one of PRE_TOKENIZERS. A byte with no
    token of its own becomes `unknown_id` (a run of them one, with `fuse_unknown`) or, with no
    unknown token, is dropped, as in HF tokenizers. With `nfc`, text is put in Unicode
    normalization form C first (Qwen2's tokenizer.json normalizer).
    """

    def __init__(
        self,
        tokens: Sequence[str | None],
        merges: Sequence[tuple[str, str]],
        *,
        pre_tokenizer: str,
        added_tokens: Sequence[tuple] = (),
        ignore_merges: bool = False,
        unknown_id: int | None = None,
        fuse_unknown: bool = False,
        nfc: bool = False,
        bos_id: int | None = None,
        eos_id: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        if pre_tokenizer not in PRE_TOKENIZERS:
            raise ValueError(f"pre_tokenizer must be one of {PRE_TOKENIZERS}, got {pre_tokenizer!r}")
        added = _check_added_tokens(added_tokens)
        core = _tokenizer.CoreTokenizer(
            [_raw_token(t) for t in tokens],
            [(_raw_token(a), _raw_token(b)) for a, b in merges],
            added,
            pre_tokenizer,
            bool(ignore_merges),
            unknown_id,
            bool(fuse_unknown),
        )
        self._setup(core, tokens, added, "byte-level-bpe", pre_tokenizer, False, bos_id, eos_id, chat_template)
        self._nfc = bool(nfc)

    @classmethod
    def sentencepiece(
        cls,
        tokens: Sequence[str | None],
        *,
        scores: Sequence[float] | None = None,
        merges: Sequence[tuple[str, str]] | None = None,
        token_types: Sequence[int] | None = None,
        added_tokens: Sequence[tuple] = (),
        space_prefix: str = "none",
        split_at_every_space: bool = False,
        strip_space_prefix: bool | None = None,
        unknown_id: int | None = None,
        fuse_unknown: bool = False,
        bos_id: int | None = None,
        eos_id: int | None = None,
        chat_template: str | None = None,
    ) -> Tokenizer:
        """A SentencePiece BPE tokenizer from its parts.

        tokens: the pieces by id as SentencePiece spells them ("▁the" for " the", "<0x0A>" for a
          byte token), None for unused ids.
        scores (one per token) or merges (HF tokenizer.json's pairs, in rank order): what orders
          the merges. With scores, SentencePiece's rule: the adjacent pair whose merged piece has
          the highest score merges first, the leftmost on ties.
        token_types: per token, TokenType's numbering (GGUF's); only NORMAL pieces are merged,
          BYTE ones are the byte fallback. None: "<0xNN>" tokens are BYTE, the rest NORMAL.
        added_tokens: (id, content, special[, normalized]): non-normalized ones are matched in the
          raw text, normalized ones in the text with its spaces written as "▁".
        space_prefix: where a "▁" is written before the text: "none", "first" (before the text
          when it begins with ordinary text: SentencePiece's add_dummy_prefix) or "every_segment"
          (before each stretch of text between non-normalized added tokens: HF's Prepend
          normalizer). split_at_every_space: HF Metaspace(split=True).
        strip_space_prefix: decoding drops one leading space (default: when space_prefix is not "none").
        unknown_id, fuse_unknown: for characters without a piece or byte tokens (else dropped).
        """
        if space_prefix not in SPACE_PREFIXES:
            raise ValueError(f"space_prefix must be one of {SPACE_PREFIXES}, got {space_prefix!r}")
        if (scores is None) == (merges is None):
            raise ValueError("give exactly one of scores (SentencePiece's rule) and merges (a tokenizer.json's list)")
        if scores is not None and len(scores) != len(tokens):
            raise ValueError(f"scores has {len(scores)} entries for {len(tokens)} tokens")
        added = _check_added_tokens(added_tokens)
        if token_types is None:
            token_types = [
                TokenType.BYTE if _is_byte_token(token) else TokenType.CONTROL if token is None else TokenType.NORMAL
                for token in tokens
            ]
        if len(token_types) > len(tokens):
            raise ValueError(f"token_types has {len(token_types)} entries for {len(tokens)} tokens")
        kinds = [
            _KIND_NORMAL if kind == TokenType.NORMAL else _KIND_BYTE if kind == TokenType.BYTE else _KIND_OTHER
            for kind in (int(t) for t in token_types)
        ]
        core = _tokenizer.CoreTokenizer.sentencepiece(
            [_raw_token(t) for t in tokens],
            kinds,
            [] if scores is None else [float(s) for s in scores],
            [] if merges is None else [(_raw_token(a), _raw_token(b)) for a, b in merges],
            added,
            space_prefix,
            bool(split_at_every_space),
            unknown_id,
            bool(fuse_unknown),
        )
        tokenizer = cls.__new__(cls)
        strip = space_prefix != "none" if strip_space_prefix is None else bool(strip_space_prefix)
        tokenizer._setup(core, tokens, added, "sentencepiece-bpe", None, strip, bos_id, eos_id, chat_template)
        return tokenizer

    def _setup(
        self,
        core: Any,
        tokens: Sequence[str | None],
        added: list[tuple[int, str, bool, bool]],
        model: str,
        pre_tokenizer: str | None,
        strip_space_prefix: bool,
        bos_id: int | None,
        eos_id: int | None,
        chat_template: str | None,
    ) -> None:
        self._core = core
        self._added = added
        contents: dict[int, str] = {}
        for token_id, content, _, _ in added:
            contents.setdefault(token_id, content)
        self._tokens = _Vocabulary(tokens, core.vocab_size, contents)
        self._token_ids: dict[str, int] | None = None
        self._nfc = False
        self.model = model
        self.pre_tokenizer = pre_tokenizer
        self._strip_space_prefix = strip_space_prefix
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
        """Load the tokenizer stored in a GGUF model file (`tokenizer.ggml.*` metadata):
        `tokenizer.ggml.model` "gpt2" is byte-level BPE, "llama" SentencePiece BPE.

        pre_tokenizer overrides a byte-level file's `tokenizer.ggml.pre` (one of PRE_TOKENIZERS).
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
        from fastllm import tokenizer_files

        return tokenizer_files.from_gguf_metadata(cls, metadata, source=source, pre_tokenizer=pre_tokenizer)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load an HF `tokenizer.json` (or a folder holding one) whose model is BPE: byte-level, or
        over "▁" pieces with byte fallback (SentencePiece style).

        The chat template and the bos/eos tokens come from `tokenizer_config.json` beside it, if any.
        """
        from fastllm import tokenizer_files

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        path = Path(_existing_file(path))
        config_path = path.with_name("tokenizer_config.json")
        config = tokenizer_files.read_json(config_path) if config_path.is_file() else {}
        return cls.from_json(tokenizer_files.read_json(path), config, source=str(path))

    @classmethod
    def from_json(cls, spec: dict, config: dict | None = None, *, source: str) -> Tokenizer:
        """The tokenizer of a parsed tokenizer.json (`spec`) and tokenizer_config.json (`config`, or
        None); `source` (the tokenizer.json path) prefixes error messages."""
        from fastllm import tokenizer_files

        return tokenizer_files.from_json(cls, spec, config or {}, source=source)

    # ----------------------------------------------------------------------------- encoding

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Token ids of `text`. BOS/EOS are never added.

        With allow_special, added and special tokens written in the text (e.g. "<|im_start|>") map
        to their ids (leftmost-longest, before pre-tokenization, as HF does); without it special
        tokens are ordinary text. Lone surrogates are encoded as U+FFFD.
        """
        return self._core.encode(self._normalized(text), bool(allow_special))

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
        if self._nfc:
            texts = [self._normalized(text) for text in texts]
        return self._core.encode_batch(texts, bool(allow_special), num_threads)

    def pre_tokenize(self, text: str) -> list[str]:
        """The pieces the model encodes one by one: the pre-tokenizer's (byte-level BPE), or the
        chunks of the text with spaces written as "▁" that merge independently (SentencePiece)."""
        return self._core.pre_tokenize(self._normalized(text))

    def _normalized(self, text: str) -> str:
        """NFC by Python's unicodedata, on the whole text at once. (HF normalizes the text between
        added tokens, so the two differ only where a combining mark directly follows an added
        token whose last character it composes with; and where Python's Unicode version and the
        `tokenizers` crate's differ on a character added since.)"""
        if self._nfc and isinstance(text, str) and not unicodedata.is_normalized("NFC", text):
            try:
                return unicodedata.normalize("NFC", text)
            except UnicodeError:  # lone surrogates: the core turns them into U+FFFD
                return text
        return text

    # ----------------------------------------------------------------------------- decoding

    def decode(self, ids: TokenIds, *, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        text = self._core.decode(ids, bool(skip_special_tokens))
        return text[1:] if self._strip_space_prefix and text.startswith(" ") else text

    def decode_bytes(self, ids: TokenIds, *, skip_special_tokens: bool = False) -> bytes:
        """The raw bytes of `ids`, concatenated (less the space prefix, as `decode`)."""
        data = self._core.decode_bytes(ids, bool(skip_special_tokens))
        return data[1:] if self._strip_space_prefix and data.startswith(b" ") else data

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
        """The vocabulary string of `token_id` (byte-level alphabet, e.g. 'Ġthe'; SentencePiece: '▁the')."""
        self._check_id(token_id, "token_id")
        return self._tokens[token_id]

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary string or added token, None if there is none."""
        if self._token_ids is None:
            self._token_ids = {t: i for i, t in self._tokens.items()}
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
        kind = f"pre_tokenizer={self.pre_tokenizer!r}" if self.pre_tokenizer else "sentencepiece"
        return f"Tokenizer(vocab_size={self.vocab_size}, {kind}, bos_id={self.bos_id}, eos_id={self.eos_id})"

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
        self._core = tokenizer._core
        self._strip_space_prefix = tokenizer._strip_space_prefix
        self._skip_special_tokens = bool(skip_special_tokens)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_start = True

    def step(self, ids: int | TokenIds) -> str:
        """Feed one id or several; return the newly completed text."""
        if isinstance(ids, int) and not isinstance(ids, bool):
            ids = (ids,)
        data = self._core.decode_bytes(ids, self._skip_special_tokens)
        if self._at_start and data:
            self._at_start = False
            if self._strip_space_prefix and data.startswith(b" "):  # as decode() drops it
                data = data[1:]
        return self._utf8.decode(data, final=False)

    def flush(self) -> str:
        """Return the held-back bytes (an incomplete character as U+FFFD) and start afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        self._at_start = True
        return text


# --------------------------------------------------------------------------------- helpers


def _existing_file(path: str | os.PathLike) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: {os.fspath(path)}")
    return os.fspath(path)


def _is_byte_token(token: str | None) -> bool:
    """Whether `token` is a byte-fallback token, "<0xNN>" (HF's ByteFallback reads either case)."""
    if token is None or len(token) != 6 or not token.startswith("<0x") or not token.endswith(">"):
        return False
    return all(c in "0123456789abcdefABCDEF" for c in token[3:5])


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
