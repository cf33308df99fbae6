"""IncrementalDetokenizer: a sequence's output text, grown one token at a time, with stop strings.

Text only grows by whole characters: the tokenizer's stream decoder holds back a token that ends
in the middle of a UTF-8 sequence (byte fallback, an emoji split over several tokens) until the
character completes, so streamed deltas are always valid text.

Stop strings are searched in the text as it grows, so one spanning several tokens is found; the
text is cut right before the earliest match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class StreamDecoder(Protocol):
    def step(self, ids: int) -> str: ...
    def flush(self) -> str: ...


class StreamingTokenizer(Protocol):
    def stream_decoder(self, *, skip_special_tokens: bool = False) -> StreamDecoder: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: StreamingTokenizer, stop: Sequence[str] = (), skip_special_tokens: bool = True) -> None:
        self.decoder = tokenizer.stream_decoder(skip_special_tokens=skip_special_tokens)
        self.stop = tuple(stop)
        self.text = ""
        self.stopped_by: str | None = None
        # A streaming reader must hold back this many characters: they may begin a stop string.
        self.holdback = max((len(s) for s in self.stop), default=1) - 1

    def add(self, token_id: int, *, check_stop: bool = True) -> None:
        """Append one token; updates `text` and, on a stop string (if `check_stop`), `stopped_by`."""
        delta = self.decoder.step(token_id)
        if delta:
            self._extend(delta, check_stop)

    def flush(self) -> None:
        """At the end: emit what is held back (an incomplete character becomes U+FFFD)."""
        delta = self.decoder.flush()
        if delta and self.stopped_by is None:
            self._extend(delta, check_stop=False)

    def _extend(self, delta: str, check_stop: bool) -> None:
        start = len(self.text)
        self.text += delta
        if not (self.stop and check_stop):
            return
        best: tuple[int, str] | None = None
        for stop in self.stop:
            # A stop string ending in the new text starts at most len(stop) - 1 characters before it.
            index = self.text.find(stop, max(0, start - len(stop) + 1))
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        if best is not None:
            self.text = self.text[: best[0]]
            self.stopped_by = best[1]

    def stream_safe_length(self, finished: bool) -> int:
        """How much of `text` a stream may show: all of it at the end, else all but the stop-string holdback."""
        return len(self.text) if finished or not self.stop else max(0, len(self.text) - self.holdback)
