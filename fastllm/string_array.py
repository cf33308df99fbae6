"""StringArray: a read-only sequence of strings stored as their bytes end to end.

A vocabulary as one str object per token costs about 80 bytes a token (4 MB for 49k tokens,
20 MB for Gemma's 262k), and a load that builds and then drops those objects leaves the
interpreter's small-object pools scattered with the few objects made meanwhile: memory the
process keeps. A StringArray is two buffers, whatever its length; each item is decoded when
it is read.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

# Bytes that are not UTF-8 (a GGUF vocabulary may hold some) read as surrogate escapes and
# encode back to the same bytes.
_ERRORS = "surrogateescape"


class StringArray(Sequence[str]):
    """Strings by index over `data` (their UTF-8 bytes, end to end) and `ends` (where each ends
    in `data`, nondecreasing); `raw(i)` is item i's bytes."""

    __slots__ = ("_data", "_ends")

    def __init__(self, data: bytes, ends: Sequence[int]) -> None:
        ends = array("q", ends)
        rises = np.diff(np.frombuffer(ends, dtype=np.int64), prepend=0)  # numpy: a loop is slow on 262k ends
        if (rises < 0).any() or int(rises.sum()) != len(data):
            raise ValueError(f"ends must rise from 0 to len(data) = {len(data)}")
        self._data = bytes(data)
        self._ends = ends

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> StringArray:
        """The strings of an iterable, copied; ValueError for a str that cannot be UTF-8 (a lone
        surrogate other than an escaped byte)."""
        data = bytearray()
        ends = array("q")
        for index, string in enumerate(strings):
            try:
                data += string.encode("utf-8", _ERRORS)
            except UnicodeEncodeError:
                raise ValueError(f"string {index} ({string!r}) cannot be encoded as UTF-8") from None
            ends.append(len(data))
        return cls(bytes(data), ends)

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.raw(index).decode("utf-8", _ERRORS)

    def raw(self, index: int) -> bytes:
        """Item `index`'s bytes (negative indices count from the end)."""
        count = len(self._ends)
        if not -count <= index < count:
            raise IndexError(f"StringArray index {index} out of range for {count} items")
        index %= count
        return self._data[self._ends[index - 1] if index else 0 : self._ends[index]]

    def __iter__(self) -> Iterator[str]:
        data, start = self._data, 0
        for end in self._ends:
            yield data[start:end].decode("utf-8", _ERRORS)
            start = end

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray):
            return self._data == other._data and self._ends == other._ends
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which are unhashable

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"StringArray([{head}{', ...' if len(self) > 3 else ''}], {len(self)} items)"
