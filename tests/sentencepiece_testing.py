"""SentencePiece vocabularies for tests: a tiny Llama-style one trained with the `sentencepiece`
package, written as GGUF tokenizer fields and as the tokenizer.json files HF writes for Llama 2
(Prepend + Replace normalizer) and later Llama/Mistral (Metaspace); and a SentencePiece model
(the package's own reference) rebuilt from any GGUF vocabulary."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache

import numpy as np

SPACE_MARK = "\u2581"
USER_DEFINED_SYMBOL = "<think>"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # sentencepiece's and GGUF's numbering


@dataclass(frozen=True)
class Vocabulary:
    pieces: list[str]
    scores: list[float]
    types: list[int]
    model_proto: bytes  # the serialized sentencepiece model

    @property
    def unk_id(self) -> int:
        return self.types.index(UNKNOWN)

    def processor(self):
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)


def training_text() -> list[str]:
    """Sentences to learn merges from: Python's documentation, and a little of other scripts."""
    import pydoc_data.topics

    lines = [line for text in pydoc_data.topics.topics.values() for line in text.splitlines() if line.strip()]
    return lines[:6000] + ["Größe café naïve — 日本語のテキスト 中文 한국어 🙂"] * 20


@cache
def tiny_llama_vocabulary(vocab_size: int = 600) -> Vocabulary:
    """A Llama-2-style BPE vocabulary (byte fallback, dummy prefix), trained on one thread (deterministic)."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=0.9995, num_threads=1, user_defined_symbols=[USER_DEFINED_SYMBOL],
        split_digits=True, allow_whitespace_only_pieces=True, minloglevel=2,
        # Llama 2's normalizer: none, the dummy prefix, whitespace kept as it is.
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    return Vocabulary(
        [p.piece for p in proto.pieces], [p.score for p in proto.pieces], [p.type for p in proto.pieces],
        model.getvalue(),
    )


def write_gguf_tokenizer(writer, vocabulary: Vocabulary, *, add_space_prefix: bool | None = True) -> None:
    """The `tokenizer.ggml.*` fields llama.cpp's converter writes for a SentencePiece vocabulary
    (<unk> 0, <s> 1, </s> 2), on a gguf.GGUFWriter."""
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocabulary.pieces)
    writer.add_token_scores(vocabulary.scores)
    writer.add_token_types(vocabulary.types)
    writer.add_unk_token_id(vocabulary.unk_id)
    writer.add_bos_token_id(vocabulary.pieces.index("<s>"))
    writer.add_eos_token_id(vocabulary.pieces.index("</s>"))
    if add_space_prefix is not None:
        writer.add_add_space_prefix(add_space_prefix)


def hf_merges(vocabulary: Vocabulary) -> list[tuple[str, str]]:
    """The merges HF derives from a SentencePiece vocabulary (transformers' own conversion)."""
    from transformers.tokenization_utils_base import generate_merges

    vocab = {piece: i for i, piece in enumerate(vocabulary.pieces)}
    return generate_merges(vocab, dict(zip(vocabulary.pieces, vocabulary.scores)))


def hf_tokenizer_json(vocabulary: Vocabulary, *, legacy: bool) -> str:
    """tokenizer.json as HF writes it for this vocabulary: Llama 2's (legacy: Prepend("▁") and
    Replace(" ", "▁") normalizers) or the later Metaspace(prepend_scheme="first") form."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {piece: i for i, piece in enumerate(vocabulary.pieces)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=hf_merges(vocabulary), unk_token="<unk>", fuse_unk=True,
                                     byte_fallback=True))
    if legacy:
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Prepend(SPACE_MARK), normalizers.Replace(" ", SPACE_MARK)]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens(
        [AddedToken(p, special=True, normalized=False) for p, t in zip(vocabulary.pieces, vocabulary.types)
         if t in (CONTROL, UNKNOWN)]
    )
    tokenizer.add_tokens([AddedToken(USER_DEFINED_SYMBOL, special=False, normalized=False)])
    return tokenizer.to_str()


def write_hf_tokenizer_files(folder, vocabulary: Vocabulary, *, legacy: bool = True) -> None:
    """tokenizer.json and a tokenizer_config.json naming BOS/EOS (add_bos_token, as Llama 2's)."""
    (folder / "tokenizer.json").write_text(hf_tokenizer_json(vocabulary, legacy=legacy), encoding="utf-8")
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


@cache
def hf_tokenizer_from_gguf(path):
    """The tokenizer transformers builds from a GGUF file (`AutoTokenizer(..., gguf_file=...)`), as
    a `tokenizers.Tokenizer`: the reference of the ids on a real vocabulary.

    Building it from Gemma 3's 262k pieces takes transformers about 25 s here, so the result is
    kept as its tokenizer.json in ~/.cache/fastllm/hf-tokenizers/ under a hash of the file's
    first 16 MiB (its header, vocabulary included) and the transformers and tokenizers versions
    (loading that takes about 2 s).
    """
    import hashlib
    import os
    from pathlib import Path

    import tokenizers
    import transformers

    path = Path(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read(16 << 20)).hexdigest()[:24]
    key = f"{path.name}-{digest}-transformers{transformers.__version__}-tokenizers{tokenizers.__version__}"
    cached = Path.home() / ".cache" / "fastllm" / "hf-tokenizers" / f"{key}.json"
    if cached.is_file():
        return tokenizers.Tokenizer.from_file(str(cached))
    backend = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).backend_tokenizer
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f"{cached.name}.partial-{os.getpid()}")
    backend.save(str(partial))
    partial.rename(cached)  # whole or not at all
    return backend


def sentencepiece_model_from_gguf(metadata: dict) -> bytes:
    """The sentencepiece model a GGUF SentencePiece vocabulary came from, rebuilt: its pieces
    (user-defined ones with their spaces written back as "▁", as the original model has them),
    scores and types, BPE with byte fallback, spaces escaped, the dummy prefix as the file says."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    types = np.array(metadata["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.unknown_token_id" in metadata:  # Gemma's converter marks its <unk> CONTROL
        types[metadata["tokenizer.ggml.unknown_token_id"]] = UNKNOWN
    for piece, score, kind in zip(metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.scores"], types):
        entry = proto.pieces.add()
        entry.piece = piece.replace(" ", SPACE_MARK) if kind == USER_DEFINED else piece
        entry.score = float(score)
        entry.type = int(kind)
    spec = proto.trainer_spec
    spec.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    spec.vocab_size = len(proto.pieces)
    spec.byte_fallback = bool((types == BYTE).any())
    spec.unk_id = int(np.flatnonzero(types == UNKNOWN)[0])
    spec.unk_piece = proto.pieces[spec.unk_id].piece
    spec.bos_id = int(metadata.get("tokenizer.ggml.bos_token_id", -1))
    spec.eos_id = int(metadata.get("tokenizer.ggml.eos_token_id", -1))
    spec.pad_id = int(metadata.get("tokenizer.ggml.padding_token_id", -1))
    for name in ("bos", "eos", "pad"):
        token_id = getattr(spec, f"{name}_id")
        if token_id >= 0:
            setattr(spec, f"{name}_piece", proto.pieces[token_id].piece)
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()
