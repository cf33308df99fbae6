"""IncrementalDetokenizer with the default model's tokenizer: UTF-8-safe growth and stop strings."""

import pytest

from fastllm.engine.detokenizer import IncrementalDetokenizer
from fastllm.loader.default_model import default_model_path
from fastllm.tokenizer import Tokenizer

TEXT = "Café ☕ costs 3€ — 🙂🙃 naïve 日本語 text.\n\nEnd"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_gguf(default_model_path())


def feed(detokenizer, ids, check_stop=True):
    texts = []
    for token in ids:
        detokenizer.add(token, check_stop=check_stop)
        texts.append(detokenizer.text)
        if detokenizer.stopped_by is not None:
            break
    return texts


def test_text_grows_by_whole_characters_and_ends_exact(tokenizer):
    ids = tokenizer.encode(TEXT)
    detokenizer = IncrementalDetokenizer(tokenizer)
    texts = feed(detokenizer, ids)
    assert all("\ufffd" not in t and TEXT.startswith(t) for t in texts)
    detokenizer.flush()
    assert detokenizer.text == TEXT


@pytest.fixture(scope="module")
def emoji_byte_tokens(tokenizer):
    """The single-byte tokens spelling 🙂 (byte-level BPE has one token per byte)."""
    by_bytes = {tokenizer.decode_bytes([i]): i for i in range(tokenizer.vocab_size)}
    return [by_bytes[bytes([b])] for b in "🙂".encode()]


def test_byte_pieces_of_one_character_are_held_back(tokenizer, emoji_byte_tokens):
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert feed(detokenizer, emoji_byte_tokens + tokenizer.encode(" ok")) == ["", "", "", "🙂", "🙂 ok"]


def test_incomplete_character_at_the_end_flushes_as_replacement(tokenizer, emoji_byte_tokens):
    detokenizer = IncrementalDetokenizer(tokenizer)
    feed(detokenizer, emoji_byte_tokens[:2])
    assert detokenizer.text == ""
    detokenizer.flush()
    assert detokenizer.text == "\ufffd"


def test_stop_string_spanning_tokens_cuts_the_text(tokenizer):
    ids = tokenizer.encode(TEXT)
    detokenizer = IncrementalDetokenizer(tokenizer, stop=["日本", "\n\n"])
    feed(detokenizer, ids)
    assert detokenizer.stopped_by == "日本" and detokenizer.text == TEXT[: TEXT.index("日本")]


def test_earliest_stop_wins_and_holdback_covers_the_longest(tokenizer):
    detokenizer = IncrementalDetokenizer(tokenizer, stop=["costs 3€", "€"])
    assert detokenizer.holdback == len("costs 3€") - 1
    feed(detokenizer, tokenizer.encode(TEXT))
    assert detokenizer.stopped_by == "costs 3€" and detokenizer.text == "Café ☕ "


def test_stop_strings_are_ignored_while_check_stop_is_off(tokenizer):
    detokenizer = IncrementalDetokenizer(tokenizer, stop=["Café"])
    feed(detokenizer, tokenizer.encode(TEXT), check_stop=False)
    assert detokenizer.stopped_by is None


def test_stream_safe_length_holds_back_a_possible_stop_prefix(tokenizer):
    detokenizer = IncrementalDetokenizer(tokenizer, stop=["XYZ"])
    feed(detokenizer, tokenizer.encode("hello world"))
    assert detokenizer.stream_safe_length(finished=False) == len("hello world") - 2
    assert detokenizer.stream_safe_length(finished=True) == len("hello world")


def test_special_tokens_are_skipped_or_kept(tokenizer):
    ids = tokenizer.encode("Hi<|im_end|>")
    skipped, kept = IncrementalDetokenizer(tokenizer), IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    feed(skipped, ids)
    feed(kept, ids)
    assert skipped.text == "Hi" and kept.text == "Hi<|im_end|>"
