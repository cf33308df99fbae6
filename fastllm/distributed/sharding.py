"""Which part of the model each tensor-parallel rank holds (Megatron's split).

Query heads, and with them q's rows and o's columns, split evenly; KV heads split the same way
while there are at least as many as ranks, and beyond that each KV head is replicated on the ranks
whose query heads read it. The MLP's intermediate features split evenly (gate/up rows, down
columns), the vocabulary in equal slices (the last one padded) for the embedding and the lm_head.
"""

from __future__ import annotations

from dataclasses import dataclass


def check_tensor_parallel_size(size: object, num_attention_heads: int, num_key_value_heads: int,
                               device_count: int | None) -> int:
    """`size` if a model with these heads can be split over it on `device_count` devices (None: CPU
    processes, no device limit); a ValueError naming both numbers otherwise."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"tensor_parallel_size must be an int, got {type(size).__name__}")
    if size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {size}")
    if num_attention_heads % size:
        raise ValueError(f"tensor_parallel_size ({size}) must divide the model's query heads ({num_attention_heads})")
    if size > num_key_value_heads and size % num_key_value_heads:
        raise ValueError(
            f"tensor_parallel_size ({size}) above the model's KV heads ({num_key_value_heads}) must be a multiple of them"
        )
    if size <= num_key_value_heads and num_key_value_heads % size:
        raise ValueError(f"tensor_parallel_size ({size}) must divide the model's KV heads ({num_key_value_heads})")
    if device_count is not None and size > device_count:
        raise ValueError(f"tensor_parallel_size ({size}) is larger than the {device_count} CUDA devices present")
    return size


def even_slice(total: int, rank: int, world_size: int) -> range:
    """Rank's part of `total` items split evenly (world_size divides total)."""
    if total % world_size:
        raise ValueError(f"{total} items do not split evenly over {world_size} ranks")
    per_rank = total // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)


@dataclass(frozen=True)
class HeadShard:
    """A rank's query heads and the KV heads they read."""

    q_heads: range
    kv_heads: range


def head_shard(num_heads: int, num_kv_heads: int, rank: int, world_size: int) -> HeadShard:
    """The heads of `rank` (the sizes checked by check_tensor_parallel_size)."""
    q_heads = even_slice(num_heads, rank, world_size)
    if world_size <= num_kv_heads:
        return HeadShard(q_heads, even_slice(num_kv_heads, rank, world_size))
    kv_head = rank // (world_size // num_kv_heads)
    return HeadShard(q_heads, range(kv_head, kv_head + 1))


def vocab_slice(vocab_size: int, rank: int, world_size: int) -> tuple[range, int]:
    """Rank's token rows of the embedding / lm_head, and the padded slice length every rank uses
    (so that the gathered logits are one tensor: the rows past vocab_size are padding)."""
    padded = -(-vocab_size // world_size)
    start = min(rank * padded, vocab_size)
    return range(start, min(start + padded, vocab_size)), padded
