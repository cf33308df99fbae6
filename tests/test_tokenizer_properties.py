"""Property tests over random Unicode: fastllm.Tokenizer against HF tokenizers, in every mode."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizer_reference import MODES, hf_reference, reference_encode, round_trips

from fastllm import Tokenizer, default_model_path

# Pieces that make the regex alternatives interact: contractions, space runs before letters,
# digits and newlines, special tokens, multi-byte characters of every class.
ATOMS = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "'", "'s", "'S", "'ll", "'ve", "'\u017f", "7", "42",
         "١٢", "½", "a", "Z", "é", "ß", "日本", "🙂", "👨\u200d👩", "\u0301", "!", "...", "<|im_start|>", "<|im_end",
         "<filename>", "ĠĠ", "\x00", "\ufffd"]
text_strategy = st.lists(st.one_of(st.sampled_from(ATOMS), st.text(max_size=6)), max_size=24).map("".join)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizers_by_mode() -> dict[str, Tokenizer]:
    return {mode: Tokenizer.from_gguf(default_model_path(), pre_tokenizer=mode) for mode in MODES}


@pytest.mark.parametrize("mode", MODES)
@SETTINGS
@given(text=text_strategy, allow_special=st.booleans())
def test_encode_matches_reference(tokenizers_by_mode, mode: str, text: str, allow_special: bool) -> None:
    ours = tokenizers_by_mode[mode]
    assert ours.encode(text, allow_special=allow_special) == reference_encode(mode, text, allow_special=allow_special)
    assert ours.pre_tokenize(text) == [
        text[begin:end] for _, (begin, end) in hf_reference(mode).pre_tokenizer.pre_tokenize_str(text)
    ]


@SETTINGS
@given(texts=st.lists(text_strategy, max_size=8), threads=st.integers(1, 4))
def test_round_trip_and_batch(tokenizers_by_mode, texts: list[str], threads: int) -> None:
    tokenizer = tokenizers_by_mode["smollm"]
    batch = tokenizer.encode_batch(texts, num_threads=threads)
    assert batch == [tokenizer.encode(t) for t in texts]
    for text, ids in zip(texts, batch):
        if round_trips(text):
            assert tokenizer.decode(ids) == text


@SETTINGS
@given(text=st.text(st.characters(codec=None, exclude_categories=()), max_size=20))
def test_any_str_encodes_surrogates_as_replacement(tokenizers_by_mode, text: str) -> None:
    tokenizer = tokenizers_by_mode["llama-bpe"]
    fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # what tiktoken does
    assert tokenizer.encode(text) == tokenizer.encode(fixed) == reference_encode("llama-bpe", fixed)


@SETTINGS
@given(ids=st.lists(st.integers(0, 49151), max_size=30), skip=st.booleans())
def test_decode_and_stream_match_reference(tokenizers_by_mode, ids: list[int], skip: bool) -> None:
    tokenizer = tokenizers_by_mode["smollm"]
    text = tokenizer.decode(ids, skip_special_tokens=skip)
    assert text == hf_reference("smollm").decode(ids, skip_special_tokens=skip)
    decoder = tokenizer.stream_decoder(skip_special_tokens=skip)
    assert "".join(decoder.step(i) for i in ids) + decoder.flush() == text
