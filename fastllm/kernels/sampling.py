"""Sampling without sorting: temperature, top-k, top-p and min-p, then one exact draw.

One program per row streams the row's logits a few times; nothing of vocabulary size is ever
written. Work in y = (max_logit - logit) * log2(e) / temperature, so y >= 0, the most likely
token has y = 0, and a token's unnormalized probability is exp2(-y). Every filter keeps the
tokens more likely than some cut-off (top-k: fewer than k tokens are more likely; top-p: their
mass, renormalized after top-k, is below top_p; min-p: probability at least min_p times the
largest), so the kept set is {y < cut} for one cut. The kernel finds that cut exactly with a
pivot search over values, in the spirit of FlashInfer's and Qrita's samplers: each pass reads
the row once and, for four pivots at a time, counts the tokens and sums the mass below each
pivot and reports the nearest token values on both sides of it, so the interval of unknown
tokens shrinks about five-fold per pass and ends empty (in a simulation of the search on
128k-token rows, 5 passes on average and 13 at most per filter). When top-k and top-p are both
on, a first search finds the top-k cut, whose mass renormalizes top-p. Then one more pass
draws: the first token whose running mass exceeds u * kept_mass, for one uniform u per row.

The uniform comes from a counter-based hash (SplitMix64's finalizer) of the row's seed, so a
row's token depends only on its logits, its parameters and its seed, never on the batch.
Tokens tied exactly at a cut-off are kept together (as vLLM's top-k does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastllm.kernels._checks import check_sample
from fastllm.kernels._runtime import INTERPRETER, LOG2E, check_launchable

_LOG2E: tl.constexpr = tl.constexpr(LOG2E)
_FLT_MIN: tl.constexpr = tl.constexpr(1.1754943508222875e-38)  # smallest normal float32
_FLT_MAX: tl.constexpr = tl.constexpr(3.4028234663852886e38)
_BLOCK_V = 128 if INTERPRETER else 1024
# Pivots per pass: each pass shrinks the unknown interval about NUM_PIVOTS + 1 times, for a few
# more comparisons per element (the row is read from memory once per pass either way).
_NUM_PIVOTS = 4
# Evenly spaced values narrow the interval fastest on real distributions; after this many passes
# the pivots are spread over the float bit patterns instead, which bounds the worst case.
_VALUE_PASSES = 8


@triton.jit
def _uniform(seed):
    """A float32 uniform in [0, 1) from an int64 seed: SplitMix64's output function."""
    z = seed.to(tl.uint64) + 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    z = z ^ (z >> 31)
    return (z >> 40).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _probe(row_ptr, vocab, row_max, scale, pivots, BLOCK_V: tl.constexpr, NUM_PIVOTS: tl.constexpr):
    """One pass over the row. For each pivot: the count and mass of the tokens with y < pivot,
    the largest token y below it (-1 if none) and the smallest token y above it (+inf if none)."""
    count = tl.zeros([BLOCK_V, NUM_PIVOTS], tl.int32)
    mass = tl.zeros([BLOCK_V, NUM_PIVOTS], tl.float32)
    below = tl.full([BLOCK_V, NUM_PIVOTS], -1.0, tl.float32)
    above = tl.full([BLOCK_V, NUM_PIVOTS], float("inf"), tl.float32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
        y = ((row_max - x) * scale)[:, None]  # padding lanes: +inf
        less = y < pivots[None, :]
        count += less.to(tl.int32)
        mass += tl.where(less, tl.exp2(-y), 0.0)
        below = tl.maximum(below, tl.where(less, y, -1.0))
        above = tl.minimum(above, tl.where(y > pivots[None, :], y, float("inf")))
    return tl.sum(count, axis=0), tl.sum(mass, axis=0), tl.max(below, axis=0), tl.min(above, axis=0)


@triton.jit
def _search_cut(
    row_ptr, vocab, row_max, scale, active, top_k, mass_budget, y_min_p,
    known_below, cut, cut_mass, unknown_top,
    BLOCK_V: tl.constexpr, NUM_PIVOTS: tl.constexpr, VALUE_PASSES: tl.constexpr,
):
    """Find the cut of the kept set {y < cut}: a token is kept when fewer than top_k tokens and
    less than mass_budget of mass are strictly more likely, and its y is at most y_min_p.

    Invariants: every token with y < known_below is kept; no token with y >= cut is; the
    tokens still unknown lie in [known_below, unknown_top]. Each pass spreads NUM_PIVOTS pivots
    over that interval (evenly in value, then evenly in float bits so the worst case stays
    bounded) and moves both ends past the pivots around the kept/cut boundary to the nearest
    token values, so the search ends, exactly, when the interval holds no token.
    Returns (cut, cut_mass, unknown_top).
    """
    index = tl.arange(0, NUM_PIVOTS)
    fraction = (index + 1).to(tl.float32) / (NUM_PIVOTS + 1)
    passes = 0
    while active & (known_below <= unknown_top):
        if passes < VALUE_PASSES:
            pivots = known_below + (unknown_top - known_below) * fraction
        else:
            lo_bits = known_below.to(tl.int32, bitcast=True).to(tl.int64)
            hi_bits = unknown_top.to(tl.int32, bitcast=True).to(tl.int64)
            pivot_bits = lo_bits + (hi_bits - lo_bits) * (index + 1) // (NUM_PIVOTS + 1)
            pivots = pivot_bits.to(tl.int32).to(tl.float32, bitcast=True)
        pivots = tl.minimum(tl.maximum(pivots, known_below), unknown_top)
        count, mass, below, above = _probe(row_ptr, vocab, row_max, scale, pivots, BLOCK_V, NUM_PIVOTS)
        # `kept` holds for a prefix of the (ascending) pivots: the first `num_kept` of them.
        kept = (count < top_k) & (mass < mass_budget) & (pivots <= y_min_p)
        num_kept = tl.sum(kept.to(tl.int32), axis=0)
        last_kept = index == num_kept - 1
        first_cut = index == num_kept
        if num_kept > 0:
            known_below = tl.max(tl.where(last_kept, above, float("-inf")), axis=0)
        if num_kept < NUM_PIVOTS:
            cut = tl.max(tl.where(first_cut, pivots, float("-inf")), axis=0)
            cut_mass = tl.max(tl.where(first_cut, mass, float("-inf")), axis=0)
            unknown_top = tl.max(tl.where(first_cut, below, float("-inf")), axis=0)
        passes += 1
    return cut, cut_mass, unknown_top


@triton.jit
def _sample_kernel(
    logits_ptr, stride_row, vocab,
    temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr, seeds_ptr, out_ptr,
    BLOCK_V: tl.constexpr, NUM_PIVOTS: tl.constexpr, VALUE_PASSES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    temperature = tl.load(temperature_ptr + row)
    sampling = temperature > 0.0
    # log2(e) / T, finite for every positive temperature (denormal ones act as the smallest normal).
    scale = tl.where(sampling, _LOG2E / tl.maximum(temperature, _FLT_MIN), 1.0)

    # Pass 1: the first argmax, the largest and smallest finite logits, the total mass (online).
    row_max = float("-inf")
    row_min = float("inf")
    total = 0.0
    token = 0
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        in_row = offs < vocab
        x = tl.load(row_ptr + offs, mask=in_row, other=float("-inf")).to(tl.float32)
        block_max = tl.max(x, axis=0)
        block_arg = start + tl.argmax(x, axis=0, tie_break_left=True)
        token = tl.where(block_max > row_max, block_arg, token)
        new_max = tl.maximum(row_max, block_max)
        # Shifted by 0 while only -inf has been seen (banned tokens): -inf - -inf would be NaN.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        total = total * tl.exp2((row_max - shift) * scale) + tl.sum(tl.exp2((x - shift) * scale), axis=0)
        row_max = new_max
        row_min = tl.minimum(row_min, tl.min(tl.where(in_row & (x > float("-inf")), x, float("inf")), axis=0))

    if sampling:
        top_k = tl.load(top_k_ptr + row)
        top_k = tl.where((top_k <= 0) | (top_k > vocab), vocab, top_k)
        top_p = tl.load(top_p_ptr + row)
        min_p = tl.minimum(tl.load(min_p_ptr + row), 1.0)
        y_min_p = tl.where(min_p > 0.0, -tl.log2(tl.maximum(min_p, 1e-30)), float("inf"))
        use_top_k = top_k < vocab
        use_top_p = top_p < 1.0
        # Start: only the most likely token(s) (y = 0) are known to be kept; nothing is known cut.
        # (Named values, not literals, go into _search_cut: its loop carries them as tensors.)
        floor = _FLT_MIN
        unlimited = float("inf")
        cut = unlimited
        cut_mass = total
        # Capped at the largest float: a token whose y overflows to +inf has no mass and stays cut.
        unknown_top = tl.minimum((row_max - row_min) * scale, _FLT_MAX)
        # Top-k's cut first when top-p needs its kept mass to renormalize.
        cut, cut_mass, unknown_top = _search_cut(
            row_ptr, vocab, row_max, scale, use_top_k & use_top_p, top_k, unlimited, unlimited,
            floor, cut, cut_mass, unknown_top, BLOCK_V, NUM_PIVOTS, VALUE_PASSES,
        )
        mass_budget = tl.where(use_top_p, top_p * cut_mass, unlimited)
        cut, cut_mass, unknown_top = _search_cut(
            row_ptr, vocab, row_max, scale, use_top_k | use_top_p | (min_p > 0.0), top_k, mass_budget, y_min_p,
            floor, cut, cut_mass, unknown_top, BLOCK_V, NUM_PIVOTS, VALUE_PASSES,
        )

        # Draw: the first kept token whose running mass exceeds u * cut_mass. Rounding can leave
        # the running total a hair short of cut_mass; the last kept token then takes the draw.
        target = _uniform(tl.load(seeds_ptr + row)) * cut_mass
        drawn = -1
        last_kept = token
        running = 0.0
        start = 0
        while (start < vocab) & (drawn < 0):
            offs = start + tl.arange(0, BLOCK_V)
            x = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
            y = (row_max - x) * scale
            weight = tl.where(y < cut, tl.exp2(-y), 0.0)
            hit = ((tl.cumsum(weight, axis=0) + running) > target) & (weight > 0.0)
            first_hit = tl.min(tl.where(hit, offs, vocab), axis=0)
            drawn = tl.where(first_hit < vocab, first_hit, drawn)
            last_kept = tl.maximum(last_kept, tl.max(tl.where(weight > 0.0, offs, -1), axis=0))
            running += tl.sum(weight, axis=0)
            start += BLOCK_V
        token = tl.where(drawn >= 0, drawn, last_kept)
    tl.store(out_ptr + row, token.to(tl.int64))


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
) -> torch.Tensor:
    """Draw one token id per row from the filtered distribution; int64 [B].

    logits [B, V] (fp16, bf16 or fp32; last dim contiguous); per row: float32 temperature
    (<= 0: greedy argmax), int32 top_k (<= 0: off), float32 top_p (>= 1: off), float32 min_p
    (<= 0: off), int64 seeds. Filters apply in that order, each on the renormalized result of
    the one before; the draw is exact (up to float32 rounding) and depends only on the row.
    """
    check_sample(logits, temperature, top_k, top_p, min_p, seeds)
    check_launchable(("logits", logits), ("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                     ("min_p", min_p), ("seeds", seeds))
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    batch, vocab = logits.shape
    out = torch.empty(batch, dtype=torch.int64, device=logits.device)
    if batch == 0:
        return out
    params = [t.contiguous() for t in (temperature, top_k, top_p, min_p, seeds)]
    _sample_kernel[(batch,)](
        logits, logits.stride(0), vocab, *params, out,
        BLOCK_V=_BLOCK_V, NUM_PIVOTS=_NUM_PIVOTS, VALUE_PASSES=_VALUE_PASSES, num_warps=1 if INTERPRETER else 8,
    )
    return out
