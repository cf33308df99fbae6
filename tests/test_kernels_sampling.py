"""The Triton sampler vs `reference.filtered_probs`: greedy, kept sets, distribution, reproducibility.

Every row is one program and one draw, and the interpreter is slow, so the distribution tests
use a small vocabulary and a few hundred seeded draws per filter setting; the kept-set tests
use rows longer than one interpreter tile (128 tokens).
"""

from __future__ import annotations

import pytest
import torch

import fastllm.kernels as kernels
from fastllm.kernels import reference

# (temperature, top_k, top_p, min_p): each filter alone, then all of them together.
FILTERS = {
    "temperature": (0.7, 0, 1.0, 0.0),
    "top_k": (1.0, 5, 1.0, 0.0),
    "top_p": (1.3, 0, 0.75, 0.0),
    "min_p": (1.0, 0, 1.0, 0.12),
    "all": (1.1, 9, 0.85, 0.05),
}


def _params(batch: int, temperature: float, top_k: int, top_p: float, min_p: float) -> tuple[torch.Tensor, ...]:
    return (
        torch.full((batch,), temperature),
        torch.full((batch,), top_k, dtype=torch.int32),
        torch.full((batch,), top_p),
        torch.full((batch,), min_p),
    )


def _logits(batch: int, vocab: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 2.5).to(dtype)


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P-value of Pearson's chi-square test of `counts` against `probs` over the cells with p > 0;
    cells expecting fewer than 5 draws are pooled into one, as the test's approximation needs."""
    kept = probs > 0
    counts, expected = counts[kept], probs[kept] * counts.sum()
    rare = expected < 5
    if rare.any():
        counts = torch.cat((counts[~rare], counts[rare].sum().view(1)))
        expected = torch.cat((expected[~rare], expected[rare].sum().view(1)))
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = counts.numel() - 1
    if dof == 0:
        return 1.0
    return torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), statistic / 2).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_greedy_is_argmax(dtype: torch.dtype) -> None:
    logits = _logits(5, 300, seed=1, dtype=dtype)
    logits[1, 7] = logits[1, 250] = logits[1].max() + 1  # ties go to the first index
    temperature = torch.tensor([0.0, 0.0, -1.0, 0.0, 0.0])
    _, top_k, top_p, min_p = _params(5, 1.0, 3, 0.5, 0.2)  # filters do not matter when greedy
    seeds = torch.arange(5, dtype=torch.int64)
    tokens = kernels.sample(logits, temperature, top_k, top_p, min_p, seeds)
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, logits.float().argmax(dim=-1))
    assert tokens[1] == 7


@pytest.mark.parametrize("name", FILTERS)
def test_draws_stay_in_the_kept_set(name: str) -> None:
    batch, vocab = 12, 300
    logits = _logits(batch, vocab, seed=2)
    params = _params(batch, *FILTERS[name])
    seeds = torch.randint(0, 2**62, (batch,), generator=torch.Generator().manual_seed(3))
    tokens = kernels.sample(logits, *params, seeds)
    probs = reference.filtered_probs(logits.double(), *params)
    assert torch.all(probs.gather(1, tokens.unsqueeze(1)) > 0)


@pytest.mark.parametrize("name", FILTERS)
def test_draws_follow_the_filtered_distribution(name: str) -> None:
    draws, vocab = 160, 20
    row = _logits(1, vocab, seed=4)
    params = _params(draws, *FILTERS[name])
    seeds = torch.randint(-(2**63), 2**63 - 1, (draws,), generator=torch.Generator().manual_seed(5))
    tokens = kernels.sample(row.expand(draws, vocab), *params, seeds)
    probs = reference.filtered_probs(row.double(), *(p[:1] for p in params))[0]
    assert probs[tokens].min() > 0, "drew a token outside the kept set"
    counts = torch.bincount(tokens, minlength=vocab).double()
    assert _chi_square_p_value(counts, probs) > 1e-4


@pytest.mark.parametrize("name", ["temperature", "all"])
def test_draws_when_the_first_tile_is_masked(name: str) -> None:
    """A row whose first tile (128 tokens in the interpreter) is all -inf, as banned tokens leave it."""
    draws, vocab = 160, 150
    row = _logits(1, vocab, seed=8)
    row[0, :130] = float("-inf")
    params = _params(draws, *FILTERS[name])
    seeds = torch.randint(-(2**63), 2**63 - 1, (draws,), generator=torch.Generator().manual_seed(9))
    tokens = kernels.sample(row.expand(draws, vocab), *params, seeds)
    probs = reference.filtered_probs(row.double(), *(p[:1] for p in params))[0]
    assert probs[tokens].min() > 0, "drew a token outside the kept set"
    counts = torch.bincount(tokens, minlength=vocab).double()
    assert _chi_square_p_value(counts, probs) > 1e-4


def test_a_rows_draw_depends_only_on_its_seed() -> None:
    vocab = 150
    logits = _logits(6, vocab, seed=6)
    params = [torch.tensor(values) for values in ([1.0, 0.8, 1.2, 1.0, 0.0, 2.0], [0, 4, 0, 20, 0, 7],
                                                   [1.0, 1.0, 0.8, 0.9, 1.0, 0.95], [0.0, 0.0, 0.0, 0.1, 0.0, 0.02])]
    params[1] = params[1].to(torch.int32)
    seeds = torch.tensor([11, 12, 13, 14, 15, 16])
    batched = kernels.sample(logits, *params, seeds)
    for row in range(6):
        alone = kernels.sample(logits[row:row + 1], *(p[row:row + 1] for p in params), seeds[row:row + 1])
        assert alone.item() == batched[row].item()
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = kernels.sample(logits[order], *(p[order] for p in params), seeds[order])
    assert torch.equal(shuffled, batched[order])
    # Another seed gives (here, for a flat enough row) another token.
    flat = torch.zeros(2, vocab)
    other = kernels.sample(flat, *_params(2, 1.0, 0, 1.0, 0.0), torch.tensor([1, 2]))
    assert other[0] != other[1]


def test_strided_logits_and_empty_batch() -> None:
    logits = _logits(4, 2 * 90, seed=7)[:, :90]  # row stride 180
    params = _params(4, 1.0, 3, 1.0, 0.0)
    tokens = kernels.sample(logits, *params, torch.arange(4))
    assert torch.all(reference.filtered_probs(logits.double(), *params).gather(1, tokens.unsqueeze(1)) > 0)
    assert kernels.sample(torch.randn(0, 5), *_params(0, 1.0, 0, 1.0, 0.0), torch.zeros(0, dtype=torch.int64)).numel() == 0


class TestInputChecks:
    def test_parameter_dtypes_and_shapes(self) -> None:
        logits = torch.randn(2, 10)
        temperature, top_k, top_p, min_p = _params(2, 1.0, 0, 1.0, 0.0)
        seeds = torch.arange(2)
        with pytest.raises(ValueError, match="top_k must have dtype in"):
            kernels.sample(logits, temperature, top_k.long(), top_p, min_p, seeds)
        with pytest.raises(ValueError, match=r"seeds must have shape \(2,\)"):
            kernels.sample(logits, temperature, top_k, top_p, min_p, torch.arange(3))
        with pytest.raises(ValueError, match="logits must have 2 dimensions"):
            kernels.sample(torch.randn(10), temperature, top_k, top_p, min_p, seeds)
        with pytest.raises(ValueError, match="non-empty vocabulary"):
            kernels.sample(torch.randn(2, 0), temperature, top_k, top_p, min_p, seeds)
