"""Sampler: next tokens (and log-probabilities) from one step's logits.

Per row, in order: min_tokens masking, repetition / presence / frequency penalties (here, in
torch), then temperature, top-k, top-p, min-p and the draw (the backend's `sample`). Work that
no row asks for is skipped, so an all-greedy batch costs one argmax. The penalties' token
counts live on the device with each request (`PenaltyCounts`) and grow by each step's new
token, so no step builds or uploads a [rows, vocab] table.

Seeds: a row's draw depends only on its logits, its parameters and a 64-bit seed. A seeded
sample's per-step seed is a hash of (its seed, how many tokens it has generated), so the same
request samples the same tokens whatever else is in the batch (and after a preemption);
unseeded requests take fresh seeds from a process-level generator.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from fastllm.engine.sequence import Sequence
from fastllm.model.backend import Backend

_MASK64 = (1 << 64) - 1


def step_seed(seed: int, step: int) -> int:
    """A well-mixed seed in [0, 2**63) for draw number `step` of a request seeded with `seed` (splitmix64)."""
    z = (seed + (step + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


@dataclass
class SamplerOutput:
    token_ids: list[int]
    # Per row: {token id: log-probability} for the top-N tokens (descending) plus the sampled one
    # (last, when not among them); None for rows that did not ask for logprobs.
    logprobs: list[dict[int, float] | None]


class Sampler:
    """Samples with `backend.sample`. Only ids below `num_text_tokens` (the tokenizer's vocabulary)
    are ever drawn: a model whose embedding table is padded past it must not emit undecodable ids."""

    def __init__(self, backend: Backend, eos_token_ids: Seq[int], num_text_tokens: int | None = None) -> None:
        self.backend = backend
        self.eos_token_ids = tuple(eos_token_ids)
        self.num_text_tokens = num_text_tokens
        self._unseeded = random.Random()

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """Sample one token per row of `logits` (float32 [N, vocab]); row i belongs to seqs[i]."""
        params = [seq.params for seq in seqs]
        if self.num_text_tokens is not None and self.num_text_tokens < logits.shape[1]:
            logits = logits.clone()
            logits[:, self.num_text_tokens :] = float("-inf")
        # Only the rows that ask: a batch without logprobs pays one scan of its parameters.
        logprob_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        raw_logprobs = torch.log_softmax(logits[logprob_rows], dim=-1) if logprob_rows else None

        logits = self._mask_early_stops(logits, seqs)
        logits = self._apply_penalties(logits, seqs)
        if all(p.is_greedy for p in params):
            # max's indices are argmax's (the first maximum; a NaN counts as the maximum), and
            # torch's CPU kernel for max is the faster one (benchmarks/README.md, "Generation").
            tokens = logits.max(dim=-1).indices
        else:
            tokens = self._draw(logits, seqs)
        token_ids = tokens.tolist()

        logprobs: list[dict[int, float] | None] = [None] * len(seqs)
        if raw_logprobs is not None:
            rows = logprob_rows
            top_n = max(params[i].logprobs for i in rows)
            sampled = raw_logprobs.gather(1, tokens[rows].unsqueeze(1)).squeeze(1).tolist()
            top = raw_logprobs.topk(top_n, dim=-1)
            top_values, top_ids = top.values.tolist(), top.indices.tolist()
            for j, row in enumerate(rows):
                n = params[row].logprobs
                entry = dict(zip(top_ids[j][:n], top_values[j][:n]))  # descending
                entry.setdefault(token_ids[row], sampled[j])  # the sampled token last, when not in the top n
                logprobs[row] = entry
        return SamplerOutput(token_ids, logprobs)

    def _mask_early_stops(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Rows short of min_tokens cannot pick EOS (unless ignored) or one of their stop token ids."""
        masks = []
        for row, seq in enumerate(seqs):
            p = seq.params
            if seq.num_output_tokens < p.min_tokens:
                banned = set(p.stop_token_ids) | (set() if p.ignore_eos else set(self.eos_token_ids))
                masks.extend((row, token) for token in banned if token < logits.shape[1])
        if not masks:
            return logits
        rows, cols = zip(*masks)
        logits = logits.clone()
        logits[list(rows), list(cols)] = float("-inf")
        return logits

    def _apply_penalties(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        rows = [i for i, seq in enumerate(seqs) if seq.params.has_penalties]
        if not rows:
            return logits
        device = logits.device
        picked = [seqs[i] for i in rows]
        params = [s.params for s in picked]
        prompt_seen, output_counts = _penalty_counts(picked, logits.shape[1], device)
        out = logits.clone()
        sub = out[rows]
        # Which penalties apply is read off the host-side parameters: no device sync.
        if any(p.repetition_penalty != 1 for p in params):
            repetition = _on_device([p.repetition_penalty for p in params], torch.float32, device).unsqueeze(1)
            seen = prompt_seen | (output_counts > 0)  # in the prompt or the output
            penalized = torch.where(sub > 0, sub / repetition, sub * repetition)
            sub = torch.where(seen, penalized, sub)
        if any(p.presence_penalty != 0 or p.frequency_penalty != 0 for p in params):
            presence = _on_device([p.presence_penalty for p in params], torch.float32, device).unsqueeze(1)
            frequency = _on_device([p.frequency_penalty for p in params], torch.float32, device).unsqueeze(1)
            sub = sub - presence * (output_counts > 0) - frequency * output_counts.float()
        out[rows] = sub
        return out

    def _draw(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        device = logits.device
        params = [seq.params for seq in seqs]
        seeds = [
            step_seed(seq.seed, seq.num_output_tokens) if seq.seed is not None else self._unseeded.getrandbits(63)
            for seq in seqs
        ]
        return self.backend.sample(
            logits,
            _on_device([p.temperature for p in params], torch.float32, device),
            _on_device([p.top_k for p in params], torch.int32, device),
            _on_device([p.top_p for p in params], torch.float32, device),
            _on_device([p.min_p for p in params], torch.float32, device),
            _on_device(seeds, torch.int64, device),
        )


@dataclass
class PenaltyCounts:
    """One penalized request's token counts, on the device of its logits (Sequence.penalty_counts).

    prompt: bool [vocab], the tokens its prompt holds (for the repetition penalty); output: int32
    [vocab], how often it generated each token (for all three penalties); num_counted: how many of
    its token_ids these include. Built from its tokens at its first penalized step; each later
    step adds the tokens generated since. Preemption changes nothing here: a recomputed request
    keeps its prompt and its generated tokens.
    """

    prompt: torch.Tensor
    output: torch.Tensor
    num_counted: int

    @classmethod
    def of(cls, seq: Sequence, vocab_size: int, device: torch.device) -> PenaltyCounts:
        tokens = _on_device(seq.token_ids, torch.int64, device)
        prompt_tokens, output_tokens = tokens[: seq.num_prompt_tokens], tokens[seq.num_prompt_tokens :]
        prompt = torch.zeros(vocab_size, dtype=torch.bool, device=device).index_fill_(0, prompt_tokens, True)
        output = torch.zeros(vocab_size, dtype=torch.int32, device=device)
        # scatter_add_ rather than bincount, which reads the largest id back to the host on CUDA.
        output.scatter_add_(0, output_tokens, torch.ones_like(output_tokens, dtype=torch.int32))
        return cls(prompt, output, seq.num_tokens)


def _penalty_counts(seqs: list[Sequence], vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt masks and output counts of `seqs`, stacked ([rows, vocab] bool and int32), after
    bringing each request's counts up to date: its first penalized step builds them, later steps
    add the tokens generated since, all in one device-side add over single-element views."""
    views: list[torch.Tensor] = []
    increments: list[int] = []
    for seq in seqs:
        state = seq.penalty_counts
        if state is None:
            seq.penalty_counts = PenaltyCounts.of(seq, vocab_size, device)
            continue
        for token, times in Counter(seq.token_ids[state.num_counted :]).items():
            views.append(state.output[token])
            increments.append(times)
        state.num_counted = seq.num_tokens
    if views:
        torch._foreach_add_(views, increments)
    states = [seq.penalty_counts for seq in seqs]
    return torch.stack([c.prompt for c in states]), torch.stack([c.output for c in states])


def _on_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host values as a tensor on `device`, uploaded without waiting for the GPU to go idle
    (`torch.tensor(..., device="cuda")` would sync the stream: the step's one sync is the draw's)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)
