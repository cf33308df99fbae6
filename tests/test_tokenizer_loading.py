"""Loading tokenizers from GGUF and tokenizer.json files, and the errors for files that cannot be."""

from __future__ import annotations

import json

import gguf
import pytest
from tokenizer_reference import default_vocabulary, hf_reference, reference_encode
from tokenizers import Tokenizer as HFTokenizer

from fastllm import Tokenizer, default_model_path
from fastllm.loader.gguf_file import GGUFFile
from fastllm.string_array import StringArray

CONTROL, NORMAL = 3, 1


def write_gguf(path, *, model="gpt2", pre="smollm", tokens=True, merges=True) -> str:
    """A GGUF file holding only the default model's tokenizer, with the given fields."""
    vocabulary = default_vocabulary()
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    if tokens:
        writer.add_token_list(vocabulary.tokens)
        special = set(vocabulary.special_ids)
        writer.add_token_types([CONTROL if i in special else NORMAL for i in range(len(vocabulary.tokens))])
    if merges:
        writer.add_token_merges([" ".join(m) for m in vocabulary.merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.fixture(scope="module")
def llama_bpe_gguf(tmp_path_factory) -> str:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "llama.gguf", pre="llama-bpe")


def test_gguf_pre_tokenizer_name_selects_the_mode(llama_bpe_gguf: str) -> None:
    tokenizer = Tokenizer.from_gguf(llama_bpe_gguf)
    assert tokenizer.pre_tokenizer == "llama-bpe" and tokenizer.chat_template is None
    text = "HE'S got 12345 apples,\n\n  they'RE sure. <|im_start|>"
    assert tokenizer.encode(text) == reference_encode("llama-bpe", text)
    assert Tokenizer.from_gguf(llama_bpe_gguf, pre_tokenizer="gpt2").encode(text) == reference_encode("gpt2", text)


def test_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        Tokenizer.from_gguf(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="not found"):
        Tokenizer.from_file(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_file(tmp_path)  # a folder without tokenizer.json
    with pytest.raises(TypeError, match="path must be"):
        Tokenizer.from_gguf(3)


def test_corrupt_gguf_files(tmp_path, llama_bpe_gguf: str) -> None:
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ValueError, match="not a GGUF file"):
        Tokenizer.from_gguf(not_gguf)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(open(llama_bpe_gguf, "rb").read()[:50_000])
    with pytest.raises(ValueError, match="truncated"):
        Tokenizer.from_gguf(truncated)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ValueError):
        Tokenizer.from_gguf(empty)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pre": "bert-ish"}, "unsupported tokenizer.ggml.pre 'bert-ish'"),
        ({"model": "bert"}, "unsupported tokenizer.ggml.model 'bert': supported are 'gpt2' .* and 'llama'"),
        ({"model": "llama"}, "no 'tokenizer.ggml.scores'"),  # SentencePiece: scores rank its merges
        ({"tokens": False}, "no 'tokenizer.ggml.tokens'"),
        ({"merges": False}, "no 'tokenizer.ggml.merges'"),
    ],
)
def test_unsupported_gguf_tokenizers(tmp_path, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_gguf(write_gguf(tmp_path / "t.gguf", **fields))


def test_unsupported_pre_tokenizer_override() -> None:
    with pytest.raises(ValueError, match="pre_tokenizer must be one of"):
        Tokenizer.from_gguf(default_model_path(), pre_tokenizer="whitespace")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(normalizer={"type": "NFKC"}), "unsupported normalizer 'NFKC'"),
        (lambda s: s["pre_tokenizer"].update(add_prefix_space=True), "unsupported pre_tokenizer"),
        (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "unsupported pre_tokenizer"),
        (lambda s: s["model"].update(type="WordPiece"), "only BPE"),
        (lambda s: s["model"].update(dropout=0.1), "dropout"),
        (lambda s: s.update(decoder={"type": "WordPiece"}), "unsupported decoder"),
        (lambda s: s["added_tokens"][0].update(lstrip=True), "lstrip"),
        (lambda s: s["model"].update(merges=["Ġ t", "no_such merge"]), "merge 1"),
        (lambda s: s["model"].pop("vocab"), "malformed tokenizer.json"),
        (lambda s: s["model"]["vocab"].update(x=-1), "token ids must be non-negative integers, got -1"),
        (lambda s: s["model"]["vocab"].update(x="7"), "token ids must be non-negative integers, got '7'"),
        (lambda s: s["added_tokens"][0].update(id=2**31 - 1), "token id 2147483647 is far beyond"),
    ],
)
def test_unsupported_tokenizer_json(tmp_path, change, message: str) -> None:
    spec = json.loads(hf_reference("gpt2").to_str())
    change(spec)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_file(path)


def test_invalid_json(tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Tokenizer.from_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        Tokenizer.from_file(path)


@pytest.mark.parametrize("fuse", [False, True])
def test_unknown_token_for_bytes_without_tokens(tmp_path, fuse: bool) -> None:
    spec = json.loads(hf_reference("gpt2").to_str())
    spec["model"].update(unk_token="<|endoftext|>", fuse_unk=fuse)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    reference = HFTokenizer.from_file(str(path))
    text = "a\x04\x06b \x04\x04\x13!"  # SmolLM2 has no tokens for these control bytes
    assert Tokenizer.from_file(path).encode(text) == reference.encode(text, add_special_tokens=False).ids


def test_qwen2_gguf_and_nfc_tokenizer_json(tmp_path) -> None:
    """Qwen2 / Qwen3: GGUF `tokenizer.ggml.pre` "qwen2" (one digit per piece), and their tokenizer.json,
    whose NFC normalizer composes "e" + U+0301 into "é" before splitting."""
    from tokenizers import normalizers

    tokenizer = Tokenizer.from_gguf(write_gguf(tmp_path / "qwen2.gguf", pre="qwen2"))
    text = "HE'S got 12345 apples,\n\n  they'RE sure. <|im_start|>"
    assert tokenizer.pre_tokenizer == "qwen2" and tokenizer.encode(text) == reference_encode("qwen2", text)
    reference = HFTokenizer.from_str(hf_reference("qwen2").to_str())
    reference.normalizer = normalizers.NFC()
    path = tmp_path / "tokenizer.json"
    reference.save(str(path))
    loaded = Tokenizer.from_file(path)
    for text in ("cafe\u0301 na\u0131\u0308ve 12\u0301", "<|im_start|>e\u0301<|im_end|>", "plain"):
        assert loaded.encode(text) == reference.encode(text, add_special_tokens=False).ids
        assert loaded.encode_batch([text]) == [loaded.encode(text)]


@pytest.mark.parametrize("container", [list, StringArray.from_strings])
def test_a_gguf_merge_without_one_space_is_named(container) -> None:
    metadata = dict(GGUFFile(default_model_path()).metadata)
    assert isinstance(metadata["tokenizer.ggml.merges"], StringArray)  # as the reader gives them
    merges = list(metadata["tokenizer.ggml.merges"][:100])
    metadata["tokenizer.ggml.merges"] = container([*merges, "Ġt"])
    with pytest.raises(ValueError, match=r"t\.gguf: tokenizer\.ggml\.merges: merge 100 is 'Ġt', expected two tokens"):
        Tokenizer.from_gguf_metadata(metadata, source="t.gguf")
