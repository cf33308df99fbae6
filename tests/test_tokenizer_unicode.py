"""The pre-tokenizers' character classes agree with the reference regexes on all of Unicode.

csrc/unicode_tables.h is generated (scripts/gen_unicode_tables.py) for the Unicode versions of
the reference build; this sweep catches a table that drifted from it. Every code point of
planes 0-3 and 14 (all assigned characters) is checked, and a stride through the unassigned
and private-use planes. Each code point sits in contexts whose split reveals its class:
"a"+c (letter), "1"+c (number), "\t"+c (space) with gpt2; "!"+c (digit split) with smollm;
"'"+c+"x" (case-folded contraction) with llama-bpe.
"""

from __future__ import annotations

import pytest
from tokenizer_reference import reference_pieces

from fastllm import Tokenizer, default_model_path

FULL_PLANES = [*range(0x0000, 0x40000), *range(0xE0000, 0xF0000)]
SAMPLED = [*range(0x40000, 0xE0000, 61), *range(0xF0000, 0x110000, 61)]
CODE_POINTS = [c for c in FULL_PLANES + SAMPLED if not 0xD800 <= c <= 0xDFFF]
CHUNK = 8192

CONTEXTS = {
    "gpt2": ("a{c}1{c}\t{c}", CODE_POINTS),
    "smollm": ("!{c}", CODE_POINTS),
    "llama-bpe": ("'{c}x", [c for c in CODE_POINTS if c < 0x10000]),
}


@pytest.mark.parametrize("mode", list(CONTEXTS))
def test_every_code_point_splits_like_the_reference(mode: str) -> None:
    tokenizer = Tokenizer.from_gguf(default_model_path(), pre_tokenizer=mode)
    template, code_points = CONTEXTS[mode]
    for start in range(0, len(code_points), CHUNK):
        text = "".join(template.format(c=chr(c)) for c in code_points[start : start + CHUNK])
        ours = tokenizer.pre_tokenize(text)
        if ours != reference_pieces(mode, text):
            expected = reference_pieces(mode, text)
            first = next(i for i, (a, b) in enumerate(zip(ours, expected)) if a != b)
            pytest.fail(f"{mode}: split differs at piece {first}: ours {ours[first:first + 3]!r}, "
                        f"reference {expected[first:first + 3]!r}")
