"""fastllm.string_array.StringArray: the GGUF reader's string arrays, as the tokenizer reads them."""

from __future__ import annotations

import pytest

from fastllm.string_array import StringArray

STRINGS = ["Ġthe", "", "héllo", "\U0001f600", "a b", "\udcff\udc80"]  # the last: two undecodable bytes


def test_items_read_back_as_given_and_as_bytes():
    array = StringArray.from_strings(STRINGS)
    assert len(array) == len(STRINGS)
    assert list(array) == STRINGS and [array[i] for i in range(len(STRINGS))] == STRINGS
    assert array[-1] == STRINGS[-1] and array[1:4] == STRINGS[1:4] and array[::-2] == STRINGS[::-2]
    assert array.raw(2) == "héllo".encode() and array.raw(5) == b"\xff\x80" and array.raw(1) == b""
    with pytest.raises(IndexError):
        array[len(STRINGS)]
    with pytest.raises(IndexError):
        array.raw(-len(STRINGS) - 1)


def test_equal_to_the_lists_it_holds_and_unhashable():
    array = StringArray.from_strings(STRINGS)
    assert array == STRINGS and array == tuple(STRINGS) and array == StringArray.from_strings(STRINGS)
    assert array != STRINGS[:-1] and array != [*STRINGS[:-1], "x"] and array != "not a sequence"
    with pytest.raises(TypeError):
        hash(array)
    assert "6 items" in repr(array)


def test_bad_buffers_and_strings_are_refused():
    assert list(StringArray(b"abcd", [1, 1, 4])) == ["a", "", "bcd"]
    for ends in ([1, 5], [2, 1, 4], [3]):
        with pytest.raises(ValueError, match="ends must rise"):
            StringArray(b"abcd", ends)
    with pytest.raises(ValueError, match=r"string 1 \('\\ud800'\) cannot be encoded"):
        StringArray.from_strings(["ok", "\ud800"])
    assert len(StringArray(b"", [])) == 0
