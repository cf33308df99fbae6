"""BlockManager: allocation, ref counts, prefix-cache hits and LRU recycling (no model involved)."""

import pytest

from fastllm.engine.block_manager import BlockManager
from fastllm.engine.sampling_params import SamplingParams
from fastllm.engine.sequence import Sequence

BLOCK = 4


def make_seq(tokens, seq_id=0):
    return Sequence(seq_id, list(tokens), SamplingParams(), max_tokens=8)


def computed(bm, seq):
    """Pretend a step computed all of seq's tokens, then register its full blocks."""
    seq.num_computed_tokens = seq.num_tokens
    bm.register_computed_blocks(seq)


def test_allocate_gives_blocks_for_every_token_and_free_returns_them():
    bm = BlockManager(8, BLOCK)
    seq = make_seq(range(10))
    assert bm.allocate(seq)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    assert bm.num_free_blocks == 5
    assert seq.num_computed_tokens == 0
    bm.free_blocks(seq)
    assert seq.block_table == [] and bm.num_free_blocks == 8


def test_allocate_refuses_without_changing_anything_when_blocks_are_short():
    bm = BlockManager(2, BLOCK)
    seq = make_seq(range(9))  # needs 3 blocks
    assert not bm.allocate(seq)
    assert seq.block_table == [] and bm.num_free_blocks == 2


def test_append_slot_adds_a_block_only_when_the_last_is_full():
    bm = BlockManager(4, BLOCK)
    seq = make_seq(range(4))
    bm.allocate(seq)
    seq.append_token(99)
    assert bm.can_append(seq)
    bm.append_slot(seq)
    assert len(seq.block_table) == 2
    seq.append_token(98)
    bm.append_slot(seq)
    assert len(seq.block_table) == 2  # room left in block 2


def test_can_append_is_false_when_pool_is_exhausted():
    bm = BlockManager(1, BLOCK)
    seq = make_seq(range(4))
    bm.allocate(seq)
    seq.append_token(1)
    assert not bm.can_append(seq)
    with pytest.raises(RuntimeError):
        bm.append_slot(seq)


def test_prefix_hit_shares_full_blocks_and_counts_references():
    bm = BlockManager(8, BLOCK)
    first = make_seq(range(10), 0)
    bm.allocate(first)
    computed(bm, first)  # blocks 0 and 1 full and registered; block 2 partial
    second = make_seq([*range(8), 50, 51, 52], 1)
    assert bm.allocate(second)
    assert second.block_table[:2] == first.block_table[:2]
    assert second.block_table[2] != first.block_table[2]
    assert second.num_computed_tokens == 8
    assert [bm.blocks[b].ref_count for b in first.block_table[:2]] == [2, 2]
    bm.free_blocks(first)
    assert [bm.blocks[b].ref_count for b in second.block_table[:2]] == [1, 1]


def test_prefix_hit_always_leaves_a_token_to_compute():
    bm = BlockManager(8, BLOCK)
    first = make_seq(range(8), 0)
    bm.allocate(first)
    computed(bm, first)
    same = make_seq(range(8), 1)  # fully cached: the last block is recomputed to get logits
    bm.allocate(same)
    assert same.num_computed_tokens == 4
    assert same.block_table[0] == first.block_table[0]
    assert same.block_table[1] != first.block_table[1]


def test_chained_hash_distinguishes_same_block_after_different_prefix():
    bm = BlockManager(8, BLOCK)
    first = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9], 0)
    bm.allocate(first)
    computed(bm, first)
    other = make_seq([0, 0, 0, 0, 5, 6, 7, 8, 9], 1)  # same second block, different first block
    bm.allocate(other)
    assert other.num_computed_tokens == 0


def test_freed_cached_blocks_are_reused_until_recycled_least_recently_freed_first():
    bm = BlockManager(4, BLOCK)
    a = make_seq(range(100, 105), 0)  # 2 blocks, first full
    bm.allocate(a)
    computed(bm, a)
    bm.free_blocks(a)
    assert bm.num_free_blocks == 4
    # The cached block survives unrelated allocations that fit in the other free blocks.
    b = make_seq(range(200, 209), 1)  # 3 blocks
    assert bm.allocate(b)
    again = make_seq(range(100, 105), 2)
    bm.free_blocks(b)
    assert bm.allocate(again) and again.num_computed_tokens == 4
    bm.free_blocks(again)
    # A sequence that needs the whole pool recycles the cached block: the prefix is forgotten.
    big = make_seq(range(300, 316), 3)
    assert bm.allocate(big)
    bm.free_blocks(big)
    late = make_seq(range(100, 105), 4)
    bm.allocate(late)
    assert late.num_computed_tokens == 0


def test_hit_on_free_cached_block_counts_it_against_free_space():
    bm = BlockManager(3, BLOCK)
    a = make_seq(range(9), 0)  # 3 blocks, two full
    bm.allocate(a)
    computed(bm, a)
    bm.free_blocks(a)
    b = make_seq([*range(8), 7, 7, 7, 7, 7], 1)  # hits 2 cached blocks, needs 2 more: 4 > 3
    assert not bm.allocate(b)
    assert bm.num_free_blocks == 3 and b.block_table == []


def test_prefix_caching_disabled_never_hits():
    bm = BlockManager(8, BLOCK, enable_prefix_caching=False)
    a = make_seq(range(9), 0)
    bm.allocate(a)
    computed(bm, a)
    b = make_seq(range(9), 1)
    bm.allocate(b)
    assert b.num_computed_tokens == 0 and not bm.cached


def test_hit_rate_counts_prompt_tokens():
    bm = BlockManager(8, BLOCK)
    a = make_seq(range(9), 0)
    bm.allocate(a)
    computed(bm, a)
    b = make_seq(range(9), 1)
    bm.allocate(b)
    assert bm.prefix_cache_hit_rate == pytest.approx(8 / 18)


@pytest.mark.parametrize("num_blocks, block_size", [(0, 4), (4, 0), (2.5, 4), (True, 4)])
def test_bad_sizes_are_rejected(num_blocks, block_size):
    with pytest.raises(ValueError, match="must be an int >= 1"):
        BlockManager(num_blocks, block_size)
