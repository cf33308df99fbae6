"""SamplingParams: defaults, normalization, and a clear error for every bad field."""

import math

import pytest

from fastllm import SamplingParams


def test_defaults_are_valid_and_plain():
    p = SamplingParams()
    assert p.temperature == 1.0 and p.top_k == 0 and p.top_p == 1.0 and p.min_p == 0.0
    assert p.stop == () and p.stop_token_ids == () and not p.has_penalties and not p.is_greedy


def test_normalization():
    p = SamplingParams(stop="###", stop_token_ids=[5, 6], top_k=-1, temperature=0)
    assert p.stop == ("###",) and p.stop_token_ids == (5, 6) and p.top_k == 0 and p.is_greedy
    assert SamplingParams(stop=["a", "bc"]).stop == ("a", "bc")
    assert SamplingParams(repetition_penalty=1.2).has_penalties


def test_is_immutable():
    with pytest.raises(AttributeError):
        SamplingParams().temperature = 0.5


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", -0.1, "temperature must be a finite float >= 0"),
        ("temperature", math.inf, "temperature"),
        ("temperature", math.nan, "temperature"),
        ("temperature", "hot", "temperature"),
        ("top_k", -2, "top_k must be an int >= 0"),
        ("top_k", 1.5, "top_k"),
        ("top_k", True, "top_k"),
        ("top_p", 0.0, r"top_p must be a float in \(0, 1\]"),
        ("top_p", 1.01, "top_p"),
        ("min_p", -0.1, r"min_p must be a float in \[0, 1\]"),
        ("min_p", 2, "min_p"),
        ("repetition_penalty", 0, "repetition_penalty must be a finite float > 0"),
        ("presence_penalty", 2.5, r"presence_penalty must be a float in \[-2, 2\]"),
        ("frequency_penalty", -3, "frequency_penalty"),
        ("max_tokens", 0, "max_tokens must be an int >= 1 or None"),
        ("max_tokens", 3.0, "max_tokens"),
        ("min_tokens", -1, "min_tokens must be an int >= 0"),
        ("stop", "", "stop must be a non-empty string"),
        ("stop", ["ok", ""], "stop"),
        ("stop", 5, "stop"),
        ("stop_token_ids", [-1], "stop_token_ids must be a list of ints >= 0"),
        ("stop_token_ids", "12", "stop_token_ids"),
        ("ignore_eos", 1, "ignore_eos must be a bool"),
        ("skip_special_tokens", None, "skip_special_tokens must be a bool"),
        ("seed", 1.5, "seed must be an int or None"),
        ("logprobs", -1, "logprobs must be an int >= 0 or None"),
    ],
)
def test_bad_field_is_named_with_its_range(field, value, message):
    with pytest.raises(ValueError, match=f"SamplingParams.{message}"):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens():
    with pytest.raises(ValueError, match=r"min_tokens \(5\) must be <= max_tokens \(4\)"):
        SamplingParams(min_tokens=5, max_tokens=4)
    SamplingParams(min_tokens=500, max_tokens=None)


def test_unknown_field_is_a_type_error():
    with pytest.raises(TypeError):
        SamplingParams(temprature=0.5)
