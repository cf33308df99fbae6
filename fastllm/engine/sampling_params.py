"""SamplingParams: how one request is decoded, validated when it is built."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int, allowed: str) -> None:
    if not _is_int(value) or value < low:
        raise ValueError(f"SamplingParams.{name} must be {allowed}, got {value!r}")


def _check_float(name: str, value: object, ok: bool, allowed: str) -> None:
    """`ok` is the range test, evaluated by the caller on the (already type-checked) value."""
    if not ok:
        raise ValueError(f"SamplingParams.{name} must be {allowed}, got {value!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request (vLLM's names and meanings).

    The logits go through, in order: `repetition_penalty`, `presence_penalty` and
    `frequency_penalty`, then `temperature`, then `top_k`, `top_p` and `min_p`, each filter acting
    on the renormalized result of the one before; the token is drawn from what is left.

    Attributes:
        temperature: 0 = greedy (argmax); higher = more random.
        top_k: keep the k most likely tokens; 0 (or -1) = off.
        top_p: keep the smallest set of most likely tokens whose mass reaches top_p; 1 = off.
        min_p: drop tokens less likely than min_p times the most likely one; 0 = off.
        repetition_penalty: HF semantics over prompt and output tokens: a seen token's logit is
            divided by it when positive, multiplied when negative; 1 = off.
        presence_penalty: OpenAI semantics: subtracted once from every token already generated.
        frequency_penalty: OpenAI semantics: subtracted once per previous occurrence in the output.
        max_tokens: the most tokens to generate; None = until EOS or the model's context is full.
        min_tokens: EOS, `stop_token_ids` and `stop` cannot end generation before this many tokens.
        stop: strings that end generation; the output text stops right before the first one.
        stop_token_ids: token ids that end generation (the id is kept in `token_ids`, not in `text`).
        ignore_eos: keep generating past the end-of-sequence token.
        seed: per-request seed; the same seed gives the same tokens whatever else is batched with it.
        logprobs: return, per generated token, the log-probabilities of the `logprobs` most likely
            tokens plus the sampled one, from the model's raw distribution (before penalties,
            temperature and filtering); None = off.
        skip_special_tokens: leave special tokens (e.g. <|im_end|>) out of the output text.
        n: how many samples to generate from the prompt (RequestOutput.outputs). They share the
            prompt's KV blocks (through the prefix cache); with a `seed`, sample i draws with
            seed + i, so it equals the only sample of the same request with n = 1 and seed + i.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int | None = 256
    min_tokens: int = 0
    stop: str | Sequence[str] | None = None
    stop_token_ids: Sequence[int] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    skip_special_tokens: bool = True
    n: int = 1

    def __post_init__(self) -> None:
        t = self.temperature
        _check_float("temperature", t, _is_real(t) and t >= 0, "a finite float >= 0 (0 = greedy)")
        if _is_int(self.top_k) and self.top_k == -1:
            object.__setattr__(self, "top_k", 0)  # vLLM spells "off" as -1
        _check_int("top_k", self.top_k, 0, "an int >= 0 (0 or -1 = off)")
        p = self.top_p
        _check_float("top_p", p, _is_real(p) and 0 < p <= 1, "a float in (0, 1] (1 = off)")
        m = self.min_p
        _check_float("min_p", m, _is_real(m) and 0 <= m <= 1, "a float in [0, 1] (0 = off)")
        r = self.repetition_penalty
        _check_float("repetition_penalty", r, _is_real(r) and r > 0, "a finite float > 0 (1 = off)")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            _check_float(name, v, _is_real(v) and -2 <= v <= 2, "a float in [-2, 2] (0 = off)")
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 1, "an int >= 1 or None")
        _check_int("min_tokens", self.min_tokens, 0, "an int >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"SamplingParams.min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})"
            )
        object.__setattr__(self, "stop", self._normalize_stop(self.stop))
        object.__setattr__(self, "stop_token_ids", self._normalize_stop_token_ids(self.stop_token_ids))
        for name in ("ignore_eos", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SamplingParams.{name} must be a bool, got {getattr(self, name)!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"SamplingParams.seed must be an int or None, got {self.seed!r}")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0, "an int >= 0 or None")
        _check_int("n", self.n, 1, "an int >= 1")

    @staticmethod
    def _normalize_stop(stop: object) -> tuple[str, ...]:
        if stop is None:
            return ()
        items = [stop] if isinstance(stop, str) else stop
        if not isinstance(items, Sequence) or not all(isinstance(s, str) and s for s in items):
            raise ValueError(f"SamplingParams.stop must be a non-empty string, a list of them, or None, got {stop!r}")
        return tuple(items)

    @staticmethod
    def _normalize_stop_token_ids(ids: object) -> tuple[int, ...]:
        if ids is None:
            return ()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) or not all(
            _is_int(i) and i >= 0 for i in ids
        ):
            raise ValueError(f"SamplingParams.stop_token_ids must be a list of ints >= 0 or None, got {ids!r}")
        return tuple(ids)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0
