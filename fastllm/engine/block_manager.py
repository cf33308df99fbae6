"""BlockManager: the paged KV cache's bookkeeping (which physical block holds which tokens).

The pool is `num_blocks` blocks of `block_size` token slots. A sequence owns an ordered list of
blocks (its block table). Blocks are reference-counted so that sequences with a common prompt
prefix share the blocks that hold it.

Prefix caching: once a block is full and its keys/values computed, it is registered under a
chained hash of (hash of the previous block, its token ids), so the hash names the whole prefix
up to and including that block. A new sequence walks its own full blocks' hashes and reuses every
leading block found. Freed blocks keep their content and registration in a least-recently-freed
queue and are only recycled (and unregistered) when the free list runs dry, so a prefix can hit
after every sequence that used it has finished.
"""

from __future__ import annotations

from collections import OrderedDict

from fastllm.engine.sequence import Sequence


def hash_block(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """The chained hash of a full block: depends on its tokens and, through parent_hash, on every earlier token.

    Only meaningful within one process: before Python 3.12, hash(None) (the first block's parent)
    varies between runs. Hits are confirmed against the block's tokens, so a collision is harmless.
    """
    return hash((parent_hash, token_ids))


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None  # set while registered in the prefix cache
        self.token_ids: tuple[int, ...] = ()  # the registered content, checked on every hit

    def __repr__(self) -> str:
        return f"Block({self.block_id}, ref={self.ref_count}, cached={self.hash is not None})"


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True) -> None:
        for name, value in (("num_blocks", num_blocks), ("block_size", block_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Blocks with ref_count 0, in eviction order: the first is recycled first. Blocks that hold
        # nothing reusable go to the front; registered ones to the back (least recently freed first).
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}  # chained hash -> block id
        # Tokens looked up / found at each admission (a preempted sequence's re-admission counts
        # again, its generated tokens included), for hit-rate reporting.
        self.num_cache_queries = 0
        self.num_cache_hits = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        """How many blocks hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    # -- allocation ---------------------------------------------------------------------------

    def allocate(self, seq: Sequence) -> bool:
        """Give a waiting `seq` blocks for all its tokens, reusing cached prefix blocks.

        Sets `seq.num_computed_tokens` to the length of the reused prefix. Returns False (and
        changes nothing) when the free blocks do not suffice.
        """
        if seq.block_table:
            raise RuntimeError(f"{seq} already holds KV blocks")
        hits = self._match_prefix(seq) if self.enable_prefix_caching else []
        # Hit blocks that sit in the free list stop being free once reused.
        reclaimed = sum(1 for block_id in hits if self.blocks[block_id].ref_count == 0)
        needed = self.blocks_for(seq.num_tokens) - len(hits)
        if needed > self.num_free_blocks - reclaimed:
            return False
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
        seq.block_table = hits + [self._take_free_block() for _ in range(needed)]
        seq.num_registered_blocks = len(hits)
        seq.num_computed_tokens = len(hits) * self.block_size
        if self.enable_prefix_caching:
            self.num_cache_queries += seq.num_tokens
            self.num_cache_hits += seq.num_computed_tokens
        return True

    def can_append(self, seq: Sequence) -> bool:
        """Whether `seq` can get a slot for its newest token (possibly one more block)."""
        return len(seq.block_table) * self.block_size >= seq.num_tokens or self.num_free_blocks > 0

    def append_slot(self, seq: Sequence) -> None:
        """Make room for `seq`'s newest token: a new block when the last one is full."""
        if len(seq.block_table) * self.block_size < seq.num_tokens:
            if not self.free:
                raise RuntimeError("append_slot called with no free block: check can_append first")
            seq.block_table.append(self._take_free_block())

    def free_blocks(self, seq: Sequence) -> None:
        """Release `seq`'s blocks. Registered blocks stay cached until recycled."""
        # Reverse order: a sequence's last blocks (least likely shared) are recycled first.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
                if block.hash is None:
                    self.free.move_to_end(block_id, last=False)
        seq.block_table = []
        seq.num_registered_blocks = 0

    def _take_free_block(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # recycling a cached block: forget its content
            if self.cached.get(block.hash) == block_id:
                del self.cached[block.hash]
            block.hash = None
            block.token_ids = ()
        block.ref_count = 1
        return block_id

    # -- prefix cache -------------------------------------------------------------------------

    def _block_hash(self, seq: Sequence, index: int) -> int:
        """The chained hash of `seq`'s full block `index`, computing the chain up to it as needed."""
        hashes, size = seq.block_hashes, self.block_size
        while len(hashes) <= index:
            i = len(hashes)
            hashes.append(hash_block(hashes[-1] if hashes else None, tuple(seq.token_ids[i * size : (i + 1) * size])))
        return hashes[index]

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of `seq`'s full blocks.

        At least one token is always left to compute: the step that computes the last token
        produces the logits to sample from.
        """
        size = self.block_size
        hits: list[int] = []
        for index in range((seq.num_tokens - 1) // size):
            block_id = self.cached.get(self._block_hash(seq, index))
            if block_id is None:
                break
            tokens = tuple(seq.token_ids[index * size : (index + 1) * size])
            if self.blocks[block_id].token_ids != tokens:  # a hash collision: not the same content
                break
            hits.append(block_id)
        return hits

    def register_computed_blocks(self, seq: Sequence) -> None:
        """Offer `seq`'s newly full, computed blocks to the prefix cache (call after each step)."""
        if not self.enable_prefix_caching:
            return
        size = self.block_size
        num_full = min(seq.num_computed_tokens // size, len(seq.block_table))
        for index in range(seq.num_registered_blocks, num_full):
            block_hash = self._block_hash(seq, index)
            block = self.blocks[seq.block_table[index]]
            # The same prefix computed twice (two sequences prefilled together) keeps the first copy.
            if block.hash is None and block_hash not in self.cached:
                block.hash = block_hash
                block.token_ids = tuple(seq.token_ids[index * size : (index + 1) * size])
                self.cached[block_hash] = block.block_id
        seq.num_registered_blocks = max(seq.num_registered_blocks, num_full)

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.num_cache_hits / self.num_cache_queries if self.num_cache_queries else 0.0
