"""SentencePiece BPE: fastllm's ids on Gemma 3's vocabulary and on a tiny Llama-2-style one,
against HF (the tokenizer transformers builds from the same GGUF, or HF tokenizers over the same
tokenizer.json) and against the `sentencepiece` package itself, whose BPE rule fastllm implements.

Which reference each case follows, and why:
- Ordinary text: HF and SentencePiece agree, and fastllm equals both.
- Gemma, runs of more than 31 spaces: Gemma's model has user-defined pieces for runs of 2..31
  spaces, which SentencePiece matches whole, leftmost-longest (35 spaces: 31 then 4; llama.cpp
  does the same). transformers' GGUF conversion turns them into ordinary pieces, so HF merges a
  35-space run into 16 + 19 instead. fastllm follows SentencePiece (its model is the original)
  for the GGUF file; for the tokenizer.json HF writes, whose merge list is the ranking and whose
  space runs are ordinary pieces, it follows that file, as HF does.
- Llama style (a dummy prefix), text that begins with a space: SentencePiece writes the prefix
  before it (" hi" -> "▁▁hi"); HF's Metaspace(prepend_scheme="first") does not ("▁hi"), and its
  decode then drops the text's own space. fastllm follows SentencePiece, so decode(encode(s)) == s.
- Llama style, text that begins with a user-defined token ("<think>a"): SentencePiece writes the
  prefix, then matches the token ("▁", "<think>", "a"); transformers' GGUF tokenizer matches the
  token first and writes no prefix after it. fastllm follows SentencePiece.
- A literal "▁" in the text is a space to all of them: it decodes as " " (round trips exclude it).
"""

from __future__ import annotations

import json
import re

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sentencepiece_testing import (
    USER_DEFINED_SYMBOL, hf_tokenizer_from_gguf, sentencepiece_model_from_gguf, tiny_llama_vocabulary,
    write_gguf_tokenizer, write_hf_tokenizer_files,
)
from test_tokenizer import CODE, EDGE_CASES
from tokenizers import Tokenizer as HFTokenizer

from fastllm import Tokenizer
from fastllm.loader.gguf_file import GGUFFile

GEMMA_CHAT = "<bos><start_of_turn>user\nWrite a haiku.<end_of_turn>\n<start_of_turn>model\nLeaves fall<end_of_turn>\n"
CORPUS = [*EDGE_CASES, CODE, GEMMA_CHAT, " " * 35, "a" + " " * 64 + "b", "\t" * 40 + "\n" * 40, "trailing   "]
ATOMS = [" ", "  ", " " * 7, "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "'s", "7", "42", "١٢", "a", "Z", "é",
         "ß", "日本", "🙂", "👨\u200d👩", "\u0301", "!", "...", "<start_of_turn>", "<end_of_turn", "<bos>", "▁", "<0x0A>",
         "\x00", "\ufffd", "\U000e0001"]
text_strategy = st.lists(st.one_of(st.sampled_from(ATOMS), st.text(max_size=6)), max_size=24).map("".join)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LONG_SPACE_RUN = re.compile(" {32,}")


def round_trips(text: str) -> bool:
    return "\u2581" not in text


# ----------------------------------------------------------------------------- Gemma 3


@pytest.fixture(scope="module")
def gemma(gemma3_gguf_path) -> Tokenizer:
    return Tokenizer.from_gguf(gemma3_gguf_path)


@pytest.fixture(scope="module")
def gemma_hf(gemma3_gguf_path) -> HFTokenizer:
    return hf_tokenizer_from_gguf(gemma3_gguf_path)


@pytest.fixture(scope="module")
def gemma_sentencepiece(gemma3_gguf_path):
    import sentencepiece

    model = sentencepiece_model_from_gguf(GGUFFile(gemma3_gguf_path).metadata)
    return sentencepiece.SentencePieceProcessor(model_proto=model)


def hf_encode(tokenizer: HFTokenizer, text: str, *, allow_special: bool = True) -> list[int]:
    tokenizer.encode_special_tokens = not allow_special
    try:
        return tokenizer.encode(text, add_special_tokens=False).ids
    finally:
        tokenizer.encode_special_tokens = False


def test_gemma_metadata_and_issue_example(gemma: Tokenizer) -> None:
    assert gemma.model == "sentencepiece-bpe" and gemma.pre_tokenizer is None
    assert (gemma.vocab_size, gemma.bos_id, gemma.eos_id) == (262144, 2, 1)
    assert (gemma.bos_token, gemma.eos_token) == ("<bos>", "<eos>")
    assert gemma.encode("The capital of France is") == [818, 5279, 529, 7001, 563]  # FACTS.md, HF's ids less BOS
    assert gemma.is_special(gemma.token_to_id("<start_of_turn>")) and not gemma.is_special(818)
    assert gemma.id_to_token(818) == "The" and gemma.token_to_id("▁capital") == 5279


@pytest.mark.parametrize("allow_special", [True, False])
def test_gemma_corpus_matches_hf(gemma: Tokenizer, gemma_hf: HFTokenizer, allow_special: bool) -> None:
    for text in CORPUS:
        if LONG_SPACE_RUN.search(text):
            continue  # HF departs from SentencePiece there (module docstring); see the next tests
        assert gemma.encode(text, allow_special=allow_special) == hf_encode(
            gemma_hf, text, allow_special=allow_special
        ), text[:80]


def test_gemma_corpus_matches_sentencepiece(gemma: Tokenizer, gemma_sentencepiece) -> None:
    # SentencePiece itself never reads control tokens in text: compare with them as ordinary text.
    for text in CORPUS:
        assert gemma.encode(text, allow_special=False) == gemma_sentencepiece.encode(text), text[:80]


def test_gemma_tokenizer_json_matches_hf(gemma_hf: HFTokenizer) -> None:
    """The tokenizer.json HF writes for Gemma (Replace(" ", "▁"), Split(" "), merges by position):
    read as such, fastllm follows its merges and equals HF everywhere, long space runs included."""
    ours = Tokenizer.from_json(json.loads(gemma_hf.to_str()), {}, source="gemma tokenizer.json")
    for text in CORPUS:
        for allow_special in (True, False):
            assert ours.encode(text, allow_special=allow_special) == hf_encode(
                gemma_hf, text, allow_special=allow_special
            ), text[:80]
        if round_trips(text):
            assert ours.decode(ours.encode(text)) == text


def test_gemma_long_space_runs_follow_sentencepiece(gemma: Tokenizer, gemma_hf: HFTokenizer) -> None:
    run_31, run_4 = gemma.token_to_id(" " * 31), gemma.token_to_id(" " * 4)
    assert gemma.encode(" " * 35) == [run_31, run_4]  # as SentencePiece and llama.cpp: 31 spaces, then 4
    assert [len(gemma.decode([i])) for i in hf_encode(gemma_hf, " " * 35)] == [16, 19]  # HF's derived merges
    assert gemma.decode(gemma.encode("x" + " " * 100 + "y")) == "x" + " " * 100 + "y"


@SETTINGS
@given(text=text_strategy, allow_special=st.booleans())
def test_gemma_random_text_matches_hf_and_sentencepiece(gemma, gemma_hf, gemma_sentencepiece, text, allow_special):
    ids = gemma.encode(text, allow_special=allow_special)
    if not LONG_SPACE_RUN.search(text):
        assert ids == hf_encode(gemma_hf, text, allow_special=allow_special)
    if not allow_special:
        assert ids == gemma_sentencepiece.encode(text)
    if round_trips(text):
        assert gemma.decode(ids) == text


@SETTINGS
@given(texts=st.lists(text_strategy, max_size=6), threads=st.integers(1, 3))
def test_gemma_batch_and_stream(gemma: Tokenizer, texts: list[str], threads: int) -> None:
    batch = gemma.encode_batch(texts, num_threads=threads)
    assert batch == [gemma.encode(t) for t in texts]
    for ids in batch:
        decoder = gemma.stream_decoder(skip_special_tokens=True)
        assert "".join(decoder.step(i) for i in ids) + decoder.flush() == gemma.decode(ids, skip_special_tokens=True)


def test_gemma_chunks_and_byte_fallback(gemma: Tokenizer) -> None:
    assert gemma.pre_tokenize("Hello big world") == ["Hello", "▁big", "▁world"]
    ids = gemma.encode("\U000e0001")  # a tag character no piece holds: its four bytes
    assert [gemma.id_to_token(i) for i in ids] == ["<0xF3>", "<0xA0>", "<0x80>", "<0x81>"]
    assert gemma.decode(ids) == "\U000e0001" and gemma.decode(ids[:2]) == "\ufffd"


# ----------------------------------------------------------------------------- a tiny Llama 2 vocabulary


@pytest.fixture(scope="module")
def llama_files(tmp_path_factory):
    """The tiny vocabulary as a tokenizer-only GGUF file and as HF folders of both tokenizer.json forms."""
    vocabulary = tiny_llama_vocabulary()
    folder = tmp_path_factory.mktemp("llama_sp")
    writer = gguf.GGUFWriter(str(folder / "tokenizer.gguf"), "llama")
    write_gguf_tokenizer(writer, vocabulary)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for legacy in (True, False):
        (folder / f"hf-legacy-{legacy}").mkdir()
        write_hf_tokenizer_files(folder / f"hf-legacy-{legacy}", vocabulary, legacy=legacy)
    return vocabulary, folder


LLAMA_CORPUS = [text for text in CORPUS if not text.startswith((" ", "\t"))] + [
    f"think {USER_DEFINED_SYMBOL}first{USER_DEFINED_SYMBOL} then<s>answer</s>", "Größe café naïve 日本語 🙂"]


def test_llama_gguf_matches_sentencepiece(llama_files) -> None:
    vocabulary, folder = llama_files
    ours = Tokenizer.from_gguf(folder / "tokenizer.gguf")
    reference = vocabulary.processor()
    assert ours.model == "sentencepiece-bpe" and ours.bos_token == "<s>" and ours.eos_token == "</s>"
    for text in LLAMA_CORPUS + [" leading space", "  two", ""]:
        ids = ours.encode(text, allow_special=False)
        assert ids == reference.encode(text), text[:80]
        if round_trips(text):
            assert ours.decode(ids) == text == reference.decode(ids)


@pytest.mark.parametrize("legacy", [True, False], ids=["prepend-normalizer", "metaspace"])
def test_llama_tokenizer_json_matches_hf(llama_files, legacy: bool) -> None:
    vocabulary, folder = llama_files
    hf_folder = folder / f"hf-legacy-{legacy}"
    ours = Tokenizer.from_file(hf_folder)
    reference = HFTokenizer.from_file(str(hf_folder / "tokenizer.json"))
    assert (ours.bos_id, ours.eos_id) == (1, 2)
    for text in LLAMA_CORPUS:
        for allow_special in (True, False):
            assert ours.encode(text, allow_special=allow_special) == hf_encode(
                reference, text, allow_special=allow_special
            ), (text[:80], allow_special)
        assert ours.decode(ours.encode(text)) == reference.decode(reference.encode(text).ids, skip_special_tokens=False)
    gguf_ids = Tokenizer.from_gguf(folder / "tokenizer.gguf").encode(LLAMA_CORPUS[2], allow_special=False)
    assert ours.encode(LLAMA_CORPUS[2], allow_special=False) == gguf_ids  # HF's derived merges rank as the scores


def test_llama_gguf_matches_transformers_gguf_tokenizer(llama_files) -> None:
    _, folder = llama_files
    ours = Tokenizer.from_gguf(folder / "tokenizer.gguf")
    reference = hf_tokenizer_from_gguf(folder / "tokenizer.gguf")
    for text in LLAMA_CORPUS:
        for allow_special in (True, False):
            assert ours.encode(text, allow_special=allow_special) == hf_encode(
                reference, text, allow_special=allow_special
            ), (text[:80], allow_special)
    text = f"{USER_DEFINED_SYMBOL}a"  # the one difference that is not a leading space (module docstring)
    assert ours.encode(text) == [ours.token_to_id("▁"), ours.token_to_id(USER_DEFINED_SYMBOL), ours.token_to_id("a")]
    assert hf_encode(reference, text) == ours.encode(text)[1:]


def test_llama_text_beginning_with_a_space_follows_sentencepiece(llama_files) -> None:
    vocabulary, folder = llama_files
    metaspace = Tokenizer.from_file(folder / "hf-legacy-False")
    reference = HFTokenizer.from_file(str(folder / "hf-legacy-False" / "tokenizer.json"))
    text = " hello"
    assert metaspace.encode(text) == vocabulary.processor().encode(text)  # "▁▁hello", SentencePiece's
    assert metaspace.decode(metaspace.encode(text)) == text
    assert reference.decode(reference.encode(text).ids) == "hello"  # HF's Metaspace loses the space


@pytest.fixture(scope="module")
def llama_gguf_and_reference(llama_files):
    vocabulary, folder = llama_files
    return Tokenizer.from_gguf(folder / "tokenizer.gguf"), vocabulary.processor()


@SETTINGS
@given(text=text_strategy)
def test_llama_random_text(llama_gguf_and_reference, text: str) -> None:
    ours, reference = llama_gguf_and_reference
    ids = ours.encode(text, allow_special=False)
    assert ids == reference.encode(text)
    if round_trips(text):
        assert ours.decode(ids) == text


# ----------------------------------------------------------------------------- loading and errors


def test_gguf_add_space_prefix(tmp_path) -> None:
    vocabulary = tiny_llama_vocabulary()

    def write(name: str, add_space_prefix: bool | None = None) -> str:
        writer = gguf.GGUFWriter(str(tmp_path / name), "llama")
        write_gguf_tokenizer(writer, vocabulary, add_space_prefix=add_space_prefix)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return str(tmp_path / name)

    assert Tokenizer.from_gguf(write("default.gguf")).encode("hi") == vocabulary.processor().encode("hi")  # prefix
    unprefixed = Tokenizer.from_gguf(write("none.gguf", add_space_prefix=False))
    assert unprefixed.pre_tokenize("hi there") == ["hi", "\u2581there"]
    assert unprefixed.decode_bytes(unprefixed.encode("hi there")) == b"hi there"
    with pytest.raises(ValueError, match="applies to byte-level BPE"):
        Tokenizer.from_gguf(write("x.gguf"), pre_tokenizer="gpt2")


def test_sentencepiece_constructor_errors() -> None:
    tokens = ["<unk>", "a", "b", "ab", "\u2581"]
    with pytest.raises(ValueError, match="exactly one of scores"):
        Tokenizer.sentencepiece(tokens)
    with pytest.raises(ValueError, match="scores has 2 entries for 5 tokens"):
        Tokenizer.sentencepiece(tokens, scores=[0, 1])
    with pytest.raises(ValueError, match="space_prefix must be one of"):
        Tokenizer.sentencepiece(tokens, scores=[0] * 5, space_prefix="always")
    with pytest.raises(ValueError, match="merge 0 .* not in the vocabulary"):
        Tokenizer.sentencepiece(tokens, merges=[("a", "c")])
    tokenizer = Tokenizer.sentencepiece(tokens, merges=[("a", "b")], token_types=[2, 1, 1, 1, 1], unknown_id=0)
    assert tokenizer.encode("ab a c") == [3, 4, 1, 4, 0]  # no byte tokens: the unknown id
    assert tokenizer.decode([3, 4, 1]) == "ab a"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(normalizer={"type": "NFKC"}), "unsupported normalizer"),
        (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "unsupported pre_tokenizer"),
        (lambda s: s.update(decoder={"type": "ByteLevel"}), "unsupported decoder"),
        (lambda s: s["model"].update(ignore_merges=True), "ignore_merges"),
        (lambda s: s.update(normalizer=None), "nothing writes its spaces"),
    ],
)
def test_unsupported_sentencepiece_tokenizer_json(tmp_path, llama_files, change, message: str) -> None:
    _, folder = llama_files
    spec = json.loads((folder / "hf-legacy-True" / "tokenizer.json").read_text(encoding="utf-8"))
    change(spec)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_file(path)


def test_loader_hands_the_engine_a_sentencepiece_tokenizer(tmp_path) -> None:
    from fastllm import LLM, SamplingParams
    from fastllm.loader import load
    from model_files_testing import write_llama_gguf

    vocabulary = tiny_llama_vocabulary()

    def write_tokenizer(writer) -> int:
        write_gguf_tokenizer(writer, vocabulary)
        return len(vocabulary.pieces)

    path = write_llama_gguf(tmp_path / "llama2.gguf", write_tokenizer=write_tokenizer)
    files = load(path)
    assert files.tokenizer.model == "sentencepiece-bpe" and files.config.vocab_size == len(vocabulary.pieces)
    assert files.prompt_format.add_bos_token  # a SentencePiece GGUF without the flag gets BOS, as in llama.cpp
    llm = LLM(path, num_kv_blocks=32, block_size=4)
    out = llm.generate("Hello world", SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    assert out.prompt_token_ids == [1, *vocabulary.processor().encode("Hello world")]
    assert out.text == llm.engine.tokenizer.decode(out.token_ids, skip_special_tokens=True)
