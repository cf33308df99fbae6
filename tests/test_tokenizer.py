"""fastllm.Tokenizer: exact ids against HF tokenizers, decoding, streaming, loading and errors."""

from __future__ import annotations

import inspect
import json
import random
import resource
import subprocess
import sys
import textwrap

import pytest
from tokenizer_reference import MODES, default_vocabulary, hf_reference, reference_encode, round_trips

from fastllm import Tokenizer, default_model_path

SPECIALS = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|endoftext|>"

EDGE_CASES = [
    "",
    "x\n\n7",
    "Hello world! It's 2024, HE'S here; they'LL, we'VE, I'M, she'D, it'S, don't.",
    "'s 't 're 've 'm 'll 'd ''s '  's",
    "  leading and trailing  ",
    "tabs\t\tand\t \tmixed \t\n\t whitespace\n\n\n\n",
    "windows\r\nline\r\n\r\nendings\r",
    "nbsp\u00a0here \u00a0\u00a0 and\u202fnarrow\u2009thin\u3000ideographic\u3000\u3000x",
    "digits 0123456789 ١٢٣٤٥ ۱۲۳ ०१२३ ๑๒๓ ১২৩ ①②③ ½ Ⅻ 12,345.67 1e-9 0x1F",
    "emoji 🙂😀 👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇫🇷🇯🇵 ❤️ keycap 1️⃣",
    "combining e\u0301 a\u0308 \u0915\u094d\u0937 ñ vs n\u0303 Å",
    "日本語のテキスト、中文文本，한국어 텍스트。Русский текст. Ελληνικά. עברית ועוד. العربية. हिन्दी. ไทย.",
    "\u017f\u017ft 'ſ I'ſ K\u212a ß ẞ İı",
    "control \x00\x01\x04\x06\x13\x1b\x7f\x85\u200b\u200d\ufeff\ufffd end",
    "private \ue000\U000f0000 unassigned \U00040000\U0010ffff",
    "<|im_start|>inside<|im_end|>text<|im_start|",
    "<|endoftext|><|endoftext|><filename>a.py<file_sep><gh_stars>10",
    "===== ----- ***** !!!??? ... …… —— (( )) [[ ]] {{ }}",
    "a" * 300 + " " + "ab" * 200 + " " + "🙂" * 100,
    " " * 50 + "\n" * 20 + "x",
]

CODE = textwrap.dedent(inspect.getsource(json.decoder)) + inspect.getsource(random.Random.shuffle)


@pytest.fixture(scope="session")
def tokenizers_by_mode() -> dict[str, Tokenizer]:
    path = default_model_path()
    return {mode: Tokenizer.from_gguf(path, pre_tokenizer=mode) for mode in MODES}


@pytest.fixture(scope="session")
def tokenizer(tokenizers_by_mode) -> Tokenizer:
    return tokenizers_by_mode["smollm"]


def test_default_model_metadata(tokenizer: Tokenizer) -> None:
    assert tokenizer.pre_tokenizer == "smollm"  # from tokenizer.ggml.pre
    assert tokenizer.vocab_size == len(tokenizer) == 49152
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.token_to_id("Ġthe") == 260 and tokenizer.id_to_token(260) == "Ġthe"
    assert tokenizer.token_to_id("<|im_end|>") == 2 and tokenizer.token_to_id("no such token") is None
    assert tokenizer.is_special(0) and not tokenizer.is_special(260)


def test_every_id_maps_to_its_vocabulary_string(tokenizer: Tokenizer) -> None:
    from fastllm.loader.gguf_file import GGUFFile

    tokens = GGUFFile(default_model_path()).metadata["tokenizer.ggml.tokens"]
    assert [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)] == tokens
    assert all(tokenizer.token_to_id(token) == i for i, token in enumerate(tokens))


def test_ids_without_a_string_and_added_tokens_past_the_vocabulary() -> None:
    tokens = ["a", "b", None, "ab", "\u0120"]
    added = [(7, "<x>", True), (2, "<gap>", False)]
    tok = Tokenizer(tokens, [("a", "b")], pre_tokenizer="gpt2", added_tokens=added)
    assert tok.vocab_size == 8
    assert [tok.id_to_token(i) for i in (0, 1, 2, 3, 4, 7)] == ["a", "b", "<gap>", "ab", "\u0120", "<x>"]
    for unused in (5, 6):
        with pytest.raises(ValueError, match="not a token id"):
            tok.id_to_token(unused)
    assert (tok.token_to_id("<x>"), tok.token_to_id("<gap>"), tok.token_to_id("ab")) == (7, 2, 3)
    assert tok.encode("ab<x>") == [3, 7]


def test_issue_example(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode("x\n\n7") == [104, 1116, 39]


@pytest.mark.parametrize("mode", MODES)
def test_edge_cases_match_reference(tokenizers_by_mode, mode: str) -> None:
    ours = tokenizers_by_mode[mode]
    for text in EDGE_CASES + [SPECIALS, CODE]:
        for allow_special in (True, False):
            assert ours.encode(text, allow_special=allow_special) == reference_encode(
                mode, text, allow_special=allow_special
            ), (mode, text[:80], allow_special)


@pytest.mark.parametrize("mode", MODES)
def test_mixed_corpus_matches_reference(tokenizers_by_mode, mode: str) -> None:
    text = "\n".join(EDGE_CASES) + CODE + SPECIALS
    rng = random.Random(0)
    pieces = [text[i : i + rng.randint(1, 200)] for i in range(0, len(text), 97)]
    ours = tokenizers_by_mode[mode].encode_batch(pieces)
    expected = [e.ids for e in hf_reference(mode).encode_batch(pieces, add_special_tokens=False)]
    assert ours == expected


def test_special_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(SPECIALS)
    assert ids[0] == 1 and ids.count(2) == 2 and ids[-1] == 0
    plain = tokenizer.encode(SPECIALS, allow_special=False)
    assert not {0, 1, 2} & set(plain)
    assert tokenizer.decode(plain) == SPECIALS == tokenizer.decode(ids)
    assert tokenizer.decode(ids, skip_special_tokens=True) == SPECIALS.replace("<|im_start|>", "").replace(
        "<|im_end|>", ""
    ).replace("<|endoftext|>", "")


def test_round_trip_and_batch(tokenizer: Tokenizer) -> None:
    texts = EDGE_CASES + [CODE, SPECIALS]
    batch = tokenizer.encode_batch(texts, num_threads=3)
    assert batch == [tokenizer.encode(t) for t in texts]
    assert tokenizer.encode_batch(texts, allow_special=False, num_threads=1) == [
        tokenizer.encode(t, allow_special=False) for t in texts
    ]
    for text, ids in zip(texts, batch):
        if not round_trips(text):
            continue
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode_bytes(ids) == text.encode()
    assert tokenizer.encode_batch([]) == []


# Encodes a batch with the address space capped at what is in use + SPARE MiB.
_BATCH_UNDER_MEMORY_CAP = """
import resource, sys
from fastllm import Tokenizer
tokenizer = Tokenizer(["a", "b", "ab", "\u0120"], [("a", "b")], pre_tokenizer="gpt2")
texts = ["ab ab a"] * 50
expected = tokenizer.encode_batch(texts, num_threads=1)
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + (int(sys.argv[1]) << 20), resource.RLIM_INFINITY))
print(tokenizer.encode_batch(texts, num_threads=8) == expected)
"""


@pytest.mark.parametrize(
    "stack_mib, spare_mib", [(256, 64), (32, 112)], ids=["no-worker-starts", "some-workers-start"]
)
def test_encode_batch_works_when_threads_cannot_start(stack_mib: int, spare_mib: int) -> None:
    """Threads that fail to start leave the work to those running (once, an abort: joinable threads destroyed)."""
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    if hard != resource.RLIM_INFINITY and hard < stack_mib << 20:
        pytest.skip("cannot raise the stack limit")

    def thread_stacks() -> None:  # glibc sizes new threads' stacks by RLIMIT_STACK at startup
        resource.setrlimit(resource.RLIMIT_STACK, (stack_mib << 20, hard))

    done = subprocess.run([sys.executable, "-c", _BATCH_UNDER_MEMORY_CAP, str(spare_mib)], preexec_fn=thread_stacks,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr[-2000:]


def test_lone_surrogates_become_replacement_characters(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode("a\ud800b") == tokenizer.encode("a\ufffdb")
    assert tokenizer.encode("\udfff") == tokenizer.encode("\ufffd")
    assert tokenizer.encode("\ud83d\ude00") == tokenizer.encode("😀")  # a surrogate pair is its character
    assert tokenizer.encode_batch(["x\udc00"]) == [tokenizer.encode("x\ufffd")]
    assert tokenizer.pre_tokenize("a \ud800") == ["a", " \ufffd"]


def test_decode_replaces_invalid_utf8(tokenizer: Tokenizer) -> None:
    smile = tokenizer.encode("🙂")
    assert len(smile) > 1
    assert tokenizer.decode(smile[:-1]) == "\ufffd"
    assert tokenizer.decode(smile[:-1] + tokenizer.encode("a")) == "\ufffda"
    assert tokenizer.decode_bytes(smile[:1]) == "🙂".encode()[: len(tokenizer.decode_bytes(smile[:1]))]


def test_stream_decoder_never_splits_a_character(tokenizer: Tokenizer) -> None:
    text = EDGE_CASES[9] + EDGE_CASES[11] + SPECIALS
    ids = tokenizer.encode(text)
    for skip in (False, True):
        decoder = tokenizer.stream_decoder(skip_special_tokens=skip)
        parts = [decoder.step(i) for i in ids]
        assert "\ufffd" not in "".join(parts)
        assert "".join(parts) + decoder.flush() == tokenizer.decode(ids, skip_special_tokens=skip)
    decoder = tokenizer.stream_decoder()
    assert decoder.step(tokenizer.encode("🙂")[:1]) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.step(tokenizer.encode("ok")) == "ok"  # flush started afresh


def test_ids_of_any_integer_sequence(tokenizer: Tokenizer) -> None:
    numpy = pytest.importorskip("numpy")
    ids = tokenizer.encode("hello there")
    assert tokenizer.decode(tuple(ids)) == tokenizer.decode(numpy.array(ids)) == tokenizer.decode(iter(ids))


@pytest.mark.parametrize("bad", [-1, 49152, 2**40, 10**30])
def test_invalid_ids_raise_value_error(tokenizer: Tokenizer, bad: int) -> None:
    with pytest.raises(ValueError, match="not a token id"):
        tokenizer.decode([5, bad])
    with pytest.raises(ValueError, match="not a token id"):
        tokenizer.decode_bytes([bad])
    with pytest.raises(ValueError, match="not a token id"):
        tokenizer.stream_decoder().step(bad)
    with pytest.raises(ValueError, match="token_id"):
        tokenizer.id_to_token(bad)


def test_wrong_types_raise_type_error(tokenizer: Tokenizer) -> None:
    with pytest.raises(TypeError, match="text must be str"):
        tokenizer.encode(b"bytes")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        tokenizer.encode_batch(["a", 3])
    with pytest.raises(TypeError, match="sequence of str"):
        tokenizer.encode_batch("abc")
    with pytest.raises(TypeError, match=r"ids\[1\] must be an int"):
        tokenizer.decode([1, "2"])
    with pytest.raises(TypeError):
        tokenizer.decode("12")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="num_threads"):
            tokenizer.encode_batch(["a"], num_threads=bad)


def test_from_file_matches_reference(tmp_path, tokenizers_by_mode) -> None:
    for mode in MODES:
        folder = tmp_path / mode
        folder.mkdir()
        hf_reference(mode).save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(
            json.dumps({"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "chat_template": "{{x}}"})
        )
        loaded = Tokenizer.from_file(folder / "tokenizer.json")
        assert loaded.pre_tokenizer == mode
        assert (loaded.bos_id, loaded.eos_id, loaded.chat_template) == (1, 2, "{{x}}")
        for text in (SPECIALS, EDGE_CASES[2], EDGE_CASES[8], CODE[:2000]):
            assert loaded.encode(text) == tokenizers_by_mode[mode].encode(text) == reference_encode(mode, text)
    assert Tokenizer.from_file(tmp_path / "gpt2").pre_tokenizer == "gpt2"  # a folder works too


def test_bytes_without_tokens_are_dropped_like_hf(tokenizer: Tokenizer) -> None:
    # SmolLM2's vocabulary has no token for bytes such as 0x04; HF drops them and merges across.
    text = "ab\x04cd\x06 x"
    assert tokenizer.encode(text) == reference_encode("smollm", text)
    assert tokenizer.decode(tokenizer.encode(text)) == "abcd x"
    assert not round_trips(text) and round_trips("abcd x")


def test_constructor_from_parts() -> None:
    vocabulary = default_vocabulary()
    tokenizer = Tokenizer(vocabulary.tokens, vocabulary.merges, pre_tokenizer="gpt2", added_tokens=[(1, "<|im_start|>", True)])
    assert tokenizer.encode("<|im_start|>hi there") == [1] + reference_encode("gpt2", "hi there")
    with pytest.raises(ValueError, match="pre_tokenizer must be one of"):
        Tokenizer(vocabulary.tokens, vocabulary.merges, pre_tokenizer="bert")
    with pytest.raises(ValueError, match="merge 1 .* not in the vocabulary"):
        Tokenizer(vocabulary.tokens, [vocabulary.merges[0], ("Ġzzzq", "Ġzzzq")], pre_tokenizer="gpt2")
    with pytest.raises(ValueError, match="added token"):
        Tokenizer(vocabulary.tokens, [], pre_tokenizer="gpt2", added_tokens=[(-1, "<x>", True)])
    with pytest.raises(ValueError, match="bos_id"):
        Tokenizer(vocabulary.tokens, [], pre_tokenizer="gpt2", bos_id=10**6)
