"""Sampler: penalties (HF / OpenAI semantics), min_tokens, seeds, logprobs, on hand-made logits."""

import pytest
import torch

from fastllm.engine.sampler import Sampler, step_seed
from fastllm.engine.sampling_params import SamplingParams
from fastllm.engine.sequence import Sequence
from fastllm.model.backend import get_backend

VOCAB = 37
EOS = 3


@pytest.fixture
def sampler():
    return Sampler(get_backend("torch"), eos_token_ids=[EOS])


def seq(prompt, output=(), **params):
    s = Sequence(0, list(prompt), SamplingParams(**params), max_tokens=64)
    for token in output:
        s.append_token(token)
    return s


def random_logits(rows, seed=0):
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax(sampler):
    logits = random_logits(4)
    out = sampler(logits, [seq([1], temperature=0) for _ in range(4)])
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs == [None] * 4


def test_greedy_takes_argmaxs_first_maximum_and_nans(sampler):
    # Rows: ties (the first wins), a NaN among finite values, two NaNs, +inf twice, all -inf.
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([
        [1.0, 5.0, 2.0, 5.0, 5.0],
        [1.0, 9.0, nan, 9.0, 0.0],
        [nan, 1.0, nan, 2.0, 0.0],
        [0.0, inf, 1.0, inf, -inf],
        [-inf, -inf, -inf, -inf, -inf],
    ])
    generator = torch.Generator().manual_seed(0)
    ties = torch.randint(-2, 3, (64, 1000), generator=generator).float()  # many equal maxima per row
    assert logits.argmax(-1).tolist() == [1, 2, 0, 1, 0]
    for batch in (logits, ties):
        out = sampler(batch, [seq([1], temperature=0) for _ in range(batch.shape[0])])
        assert out.token_ids == batch.argmax(-1).tolist()


def test_repetition_penalty_matches_transformers(sampler):
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = random_logits(1, seed=1)
    s = seq([4, 5, 6, 5], [7, 8], repetition_penalty=1.7)
    penalized = sampler._apply_penalties(logits, [s])
    expected = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([s.token_ids]), logits.clone())
    torch.testing.assert_close(penalized, expected)


def test_presence_and_frequency_penalties_follow_openai_over_output_only(sampler):
    logits = random_logits(1, seed=2)
    s = seq([9, 9, 9], [4, 4, 5], presence_penalty=0.5, frequency_penalty=0.25)
    penalized = sampler._apply_penalties(logits, [s])
    expected = logits.clone()
    expected[0, 4] -= 0.5 + 2 * 0.25
    expected[0, 5] -= 0.5 + 1 * 0.25
    torch.testing.assert_close(penalized, expected)  # token 9 (prompt only) untouched


def test_penalties_touch_only_their_rows(sampler):
    logits = random_logits(2, seed=3)
    seqs = [seq([1, 2], [2], repetition_penalty=2.0), seq([1, 2], [2])]
    penalized = sampler._apply_penalties(logits, seqs)
    torch.testing.assert_close(penalized[1], logits[1])
    assert not torch.equal(penalized[0], logits[0])


def test_min_tokens_bans_eos_and_stop_ids_until_reached(sampler):
    logits = torch.zeros(2, VOCAB)
    logits[:, EOS] = 10.0
    logits[:, 11] = 9.0
    logits[:, 12] = 8.0
    early = seq([1], [5], temperature=0, min_tokens=3, stop_token_ids=[11])
    done = seq([1], [5, 6, 7], temperature=0, min_tokens=3, stop_token_ids=[11])
    assert sampler(logits, [early, done]).token_ids == [12, EOS]
    ignoring = seq([1], [], temperature=0, min_tokens=3, ignore_eos=True)
    assert sampler(logits[:1], [ignoring]).token_ids == [EOS]  # ignore_eos: EOS is just a token


def test_seeded_sampling_is_reproducible_and_batch_independent(sampler):
    logits = random_logits(3, seed=4)
    target = seq([1, 2], [3], temperature=0.9, top_p=0.95, seed=1234)
    alone = sampler(logits[1:2], [target]).token_ids[0]
    others = [seq([1], temperature=1.0), seq([2], temperature=0)]
    for _ in range(5):
        batch = sampler(logits, [others[0], target, others[1]]).token_ids
        assert batch[1] == alone


def test_seed_stream_changes_with_the_step():
    assert len({step_seed(7, step) for step in range(100)}) == 100
    assert step_seed(7, 3) == step_seed(7, 3) != step_seed(8, 3)
    assert all(0 <= step_seed(s, 0) < 2**63 for s in (-5, 0, 2**70))


def test_seeded_draws_follow_the_distribution(sampler):
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2] + [1e-9] * (VOCAB - 3)]))
    counts = torch.zeros(VOCAB)
    for step in range(600):
        s = seq([1], [9] * (step % 7), temperature=1.0, seed=step)
        counts[sampler(logits, [s]).token_ids[0]] += 1
    freq = counts[:3] / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.07)


def test_logprobs_are_raw_top_n_plus_the_sampled_token(sampler):
    logits = random_logits(2, seed=5)
    seqs = [seq([1], temperature=0, logprobs=3, repetition_penalty=1.5), seq([1], temperature=0.8, seed=1, logprobs=0)]
    out = sampler(logits, seqs)
    raw = torch.log_softmax(logits, -1)
    top = raw[0].topk(3)
    first = out.logprobs[0]
    for value, token in zip(top.values.tolist(), top.indices.tolist()):
        assert first[token] == pytest.approx(value)
    assert out.token_ids[0] in first
    assert set(out.logprobs[1]) == {out.token_ids[1]}
    assert out.logprobs[1][out.token_ids[1]] == pytest.approx(raw[1, out.token_ids[1]].item())


def test_ids_past_the_tokenizers_vocabulary_are_never_drawn():
    padded = Sampler(get_backend("torch"), eos_token_ids=[EOS], num_text_tokens=10)
    logits = torch.zeros(2, VOCAB)
    logits[:, 20] = 50.0  # a padded embedding row the tokenizer cannot decode
    logits[:, 4] = 1.0
    out = padded(logits, [seq([1], temperature=0), seq([1], temperature=1.0, seed=3)])
    assert out.token_ids[0] == 4 and out.token_ids[1] < 10


# -- penalty counts kept on the device, step by step ------------------------------------------------


def recounted_penalties(logits, seqs):
    """The penalties recomputed from each request's whole token lists (what every step used to do)."""
    out = logits.clone()
    for row, s in enumerate(seqs):
        p = s.params
        if not p.has_penalties:
            continue
        seen = torch.zeros(VOCAB, dtype=torch.bool)
        seen[s.token_ids] = True
        counts = torch.bincount(torch.tensor(s.output_token_ids, dtype=torch.int64), minlength=VOCAB).float()
        values = out[row]
        values = torch.where(seen, torch.where(values > 0, values / p.repetition_penalty,
                                               values * p.repetition_penalty), values)
        out[row] = values - p.presence_penalty * (counts > 0) - p.frequency_penalty * counts
    return out


def test_penalty_counts_follow_every_step_preemption_and_finish(sampler):
    from fastllm.engine.sequence import SequenceStatus

    seqs = [
        seq([4, 5, 6, 5], temperature=1.0, seed=1, repetition_penalty=1.3),
        seq([9, 9], [4], temperature=1.0, seed=2, presence_penalty=0.7, frequency_penalty=0.4),
        seq([1], temperature=1.0, seed=3),  # no penalties: no counts
    ]
    late = seq([7, 8, 7], [7, 1, 1], temperature=0.9, seed=4, repetition_penalty=0.8, frequency_penalty=-0.3)
    for step in range(24):
        if step == 10:
            seqs.append(late)  # joins with generated tokens already (e.g. after preemption): counted from them
        if step == 15:
            state = seqs[0].penalty_counts
            seqs[0].status = SequenceStatus.WAITING  # preempted and recomputed: its tokens do not change
            seqs[0].status = SequenceStatus.RUNNING
            assert seqs[0].penalty_counts is state
        logits = random_logits(len(seqs), seed=100 + step)
        tokens = sampler(logits, seqs).token_ids
        torch.testing.assert_close(sampler._apply_penalties(logits, seqs), recounted_penalties(logits, seqs))
        for s, token in zip(seqs, tokens):
            s.append_token(token % 12)  # few distinct tokens: repeats, so the counts matter
    assert seqs[2].penalty_counts is None
    counts = seqs[1].penalty_counts
    assert counts.num_counted == seqs[1].num_tokens - 1  # the last token is counted at its next step
    assert counts.output.sum().item() == counts.num_counted - seqs[1].num_prompt_tokens
    seqs[1].status = SequenceStatus.FINISHED
    assert seqs[1].penalty_counts is None  # the device memory goes with the request
