"""Which part of the model each tensor-parallel rank holds (Megatron's split).

Query heads, and with them q's rows and o's columns, split evenly; KV heads split the same way
while there are at least as many as ranks, and beyond that each KV head is replicated on the ranks
whose query heads read it. The MLP's intermediate features split evenly (gate/up rows, down
columns), the vocabulary in equal slices (the last one padded) for the embedding and the lm_head.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fastllm.model.config import ModelConfig
from fastllm.model.quantized import QuantizedTensor


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


class ModelShard:
    """Rank `rank`'s part of a Llama-family checkpoint split over `world_size` ranks.

    `config` is the model as this rank sees it: its query and KV heads, its intermediate features
    and its slice of the vocabulary (padded, `vocab_rows` the real ones); `__call__(name, tensor)`
    cuts a checkpoint tensor (HF names) down to this rank's part, a view where the layout allows.
    """

    def __init__(self, config: ModelConfig, rank: int, world_size: int, device_count: int | None = None) -> None:
        check_tensor_parallel_size(world_size, config.num_attention_heads, config.num_key_value_heads, device_count)
        self.rank, self.world_size = rank, world_size
        self.full_config = config
        heads = head_shard(config.num_attention_heads, config.num_key_value_heads, rank, world_size)
        self.vocab_rows, padded_vocab = vocab_slice(config.vocab_size, rank, world_size)
        self.config = replace(
            config, num_attention_heads=len(heads.q_heads), num_key_value_heads=len(heads.kv_heads),
            intermediate_size=len(even_slice(config.intermediate_size, rank, world_size)), vocab_size=padded_vocab,
        )
        d = config.head_dim
        q_rows = range(heads.q_heads.start * d, heads.q_heads.stop * d)
        kv_rows = range(heads.kv_heads.start * d, heads.kv_heads.stop * d)
        mlp = even_slice(config.intermediate_size, rank, world_size)
        # The last dotted parts of a name -> (dimension cut, the range kept) for every split tensor.
        self._cuts = {
            "self_attn.q_proj": (0, q_rows), "self_attn.k_proj": (0, kv_rows), "self_attn.v_proj": (0, kv_rows),
            "self_attn.o_proj": (1, q_rows), "mlp.gate_proj": (0, mlp), "mlp.up_proj": (0, mlp),
            "mlp.down_proj": (1, mlp),
        }

    def __call__(self, name: str, tensor: torch.Tensor | QuantizedTensor) -> torch.Tensor | QuantizedTensor:
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            return self._vocab_rows(tensor)
        module, _, kind = name.rpartition(".")
        cut = self._cuts.get(module.split(".", 3)[-1]) if module.startswith("model.layers.") else None
        if cut is None:
            return tensor  # norms, rope frequencies: every rank holds them whole
        dim, kept = cut
        if kind == "bias":
            if dim == 0:
                return tensor[kept.start : kept.stop].clone()
            # A row-parallel projection's bias joins every rank's partial sum: rank 0 alone adds it.
            return tensor if self.rank == 0 else torch.zeros_like(tensor)
        return _cut(tensor, dim, kept)

    def _vocab_rows(self, tensor: torch.Tensor | QuantizedTensor) -> torch.Tensor | QuantizedTensor:
        rows = self.vocab_rows
        part = _cut(tensor, 0, rows)
        missing = self.config.vocab_size - len(rows)
        if not missing:
            return part
        # Zero rows pad the last slice: every encoding decodes zero bytes to 0.0.
        if isinstance(part, QuantizedTensor):
            data = torch.cat([part.data, part.data.new_zeros(missing, part.data.shape[1])])
            return QuantizedTensor(data, part.qtype, (self.config.vocab_size, part.shape[1]))
        return torch.cat([part, part.new_zeros(missing, part.shape[1])])


def _cut(tensor: torch.Tensor | QuantizedTensor, dim: int, kept: range) -> torch.Tensor | QuantizedTensor:
    """`kept` along `dim` (0: rows, 1: columns) of a 2-D weight."""
    if isinstance(tensor, QuantizedTensor):
        if dim == 0:
            return tensor.rows(kept.start, kept.stop)
        columns = tensor.columns(kept.start, kept.stop)
        if columns is not None:
            return columns
        tensor = tensor.dequantize()  # columns that split blocks: this rank's part decoded to float32
    # A copy: a view would keep the whole tensor alive.
    return tensor[kept.start : kept.stop].clone() if dim == 0 else tensor[:, kept.start : kept.stop].contiguous()
