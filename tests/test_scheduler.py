"""Scheduler: continuous batching with decode first, token budget, chunked prefill, preemption (no model)."""

from fastllm.engine.block_manager import BlockManager
from fastllm.engine.sampling_params import SamplingParams
from fastllm.engine.scheduler import Scheduler
from fastllm.engine.sequence import Sequence, SequenceStatus

BLOCK = 4


def make(num_blocks=64, max_num_seqs=8, max_num_batched_tokens=64):
    bm = BlockManager(num_blocks, BLOCK)
    return Scheduler(bm, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens)


def add(scheduler, length, seq_id, max_tokens=4, first_token=0):
    seq = Sequence(seq_id, list(range(first_token, first_token + length)), SamplingParams(), max_tokens)
    scheduler.add(seq)
    return seq


def run_step(scheduler, finished_after=None):
    """Schedule, pretend the model ran (token 7 sampled), retire sequences that reached max_tokens."""
    batch = scheduler.schedule()
    if batch is None:
        return None
    sampled = batch.sampled_seqs
    scheduler.update_after_step(batch)
    for seq in sampled:
        seq.append_token(7)
        if seq.num_output_tokens >= seq.max_tokens:
            scheduler.finish(seq)
    return batch


def test_prefill_batches_prompts_together_then_decodes_them_together():
    s = make()
    a, b = add(s, 5, 0), add(s, 9, 1)
    batch = run_step(s)
    assert batch.decode_seqs == [] and batch.prefill_seqs == [a, b] and batch.num_new_tokens == [5, 9]
    batch = run_step(s)
    assert batch.is_decode_only and batch.seqs == [a, b] and batch.num_new_tokens == [1, 1]


def test_token_budget_chunks_a_long_prompt_and_only_its_last_chunk_samples():
    s = make(max_num_batched_tokens=8)
    seq = add(s, 20, 0)
    chunks = []
    while seq.num_output_tokens == 0:
        batch = run_step(s)
        assert batch.prefill_seqs == [seq] and batch.num_tokens <= 8
        assert batch.sampled_seqs == ([seq] if sum(chunks) + batch.num_tokens == 20 else [])
        chunks.append(batch.num_new_tokens[0])
    assert chunks == [8, 8, 4]


def test_decode_goes_first_and_prompts_share_the_leftover_budget():
    s = make(max_num_batched_tokens=10)
    a = add(s, 6, 0)
    b = add(s, 6, 1)
    batch = run_step(s)
    assert batch.prefill_seqs == [a, b] and batch.prefill_counts == [6, 4]  # b chunked
    batch = run_step(s)  # a decodes while b's prefill goes on: a mixed step
    assert batch.decode_seqs == [a] and batch.prefill_seqs == [b] and batch.num_new_tokens == [1, 2]
    assert batch.sampled_seqs == [a, b]
    assert run_step(s).is_decode_only


def test_running_sequences_decode_every_step_while_a_long_prompt_is_chunked():
    s = make(num_blocks=64, max_num_batched_tokens=16)
    decoding = [add(s, 3, i, max_tokens=30, first_token=10 * i) for i in range(4)]
    run_step(s)
    long = add(s, 90, 9, max_tokens=2, first_token=100)
    chunks = []
    while long.num_output_tokens == 0:
        batch = run_step(s)
        assert batch.decode_seqs == decoding and batch.num_tokens <= 16
        chunks.append(batch.prefill_counts[0])
    assert chunks == [12] * 7 + [6]


def test_a_prompt_left_with_one_token_is_a_decode_row():
    s = make(max_num_batched_tokens=8)
    seq = add(s, 9, 0)
    run_step(s)
    batch = run_step(s)
    assert batch.decode_seqs == [seq] and batch.sampled_seqs == [seq] and seq.num_output_tokens == 1


def test_max_num_seqs_caps_running_sequences():
    s = make(max_num_seqs=2)
    seqs = [add(s, 3, i) for i in range(3)]
    batch = run_step(s)
    assert batch.seqs == seqs[:2]
    assert list(s.waiting) == [seqs[2]]


def test_running_count_never_exceeds_the_token_budget():
    s = make(max_num_seqs=8, max_num_batched_tokens=3)
    for i in range(5):
        add(s, 1, i)
    while (batch := run_step(s)) is not None:
        assert batch.num_tokens <= 3 and len(s.running) <= 3


def test_decode_out_of_blocks_preempts_the_newest_and_it_resumes_with_its_tokens():
    s = make(num_blocks=4, max_num_batched_tokens=64)
    old = add(s, 4, 0, max_tokens=6)  # needs up to 3 blocks
    new = add(s, 4, 1, max_tokens=6, first_token=50)
    run_step(s)  # both prefilled: 1 block each, 2 free
    for _ in range(10):
        run_step(s)
        if new.status is SequenceStatus.WAITING:
            break
    assert new.metrics.num_preemptions == 1 and old.metrics.num_preemptions == 0
    assert new.block_table == [] and new.num_computed_tokens == 0
    generated_before = list(new.token_ids)
    assert new.num_output_tokens > 0
    while s.has_unfinished():
        run_step(s)
    assert old.is_finished and new.is_finished
    assert new.num_output_tokens == 6 and new.token_ids[: len(generated_before)] == generated_before
    assert s.block_manager.num_free_blocks == 4


def test_preempted_sequences_go_back_to_the_front_of_the_queue_oldest_first():
    s = make(num_blocks=3, max_num_seqs=8)
    a = add(s, 4, 0, max_tokens=5)
    b = add(s, 4, 1, max_tokens=5, first_token=20)
    c = add(s, 4, 2, max_tokens=5, first_token=40)
    d = add(s, 4, 3, max_tokens=5, first_token=60)
    run_step(s)  # a, b, c prefilled: the pool is full, d waits
    batch = run_step(s)  # a needs a block: c (newest) goes, then b needs one: b goes
    assert batch.seqs == [a]
    assert list(s.waiting) == [b, c, d]


def test_everything_finishes_under_heavy_pressure():
    s = make(num_blocks=6, max_num_seqs=4, max_num_batched_tokens=6)
    seqs = [add(s, 3 + i % 5, i, max_tokens=12, first_token=10 * i) for i in range(10)]
    for _ in range(1000):
        if run_step(s) is None:
            break
    assert not s.has_unfinished()
    assert all(seq.is_finished and seq.num_output_tokens == 12 for seq in seqs)
    assert s.num_preemptions > 0
    assert s.block_manager.num_free_blocks == 6


def test_waiting_prompt_is_admitted_only_when_all_its_blocks_fit():
    s = make(num_blocks=3)
    a = add(s, 8, 0, max_tokens=3)  # 2 blocks
    b = add(s, 8, 1, max_tokens=3, first_token=30)  # 2 blocks: waits
    batch = run_step(s)
    assert batch.seqs == [a] and list(s.waiting) == [b]


def test_finish_of_a_waiting_sequence_removes_it():
    s = make()
    a = add(s, 3, 0)
    s.finish(a)
    assert not s.has_unfinished() and a.is_finished
